"""Epoch time of train.py against a plain PyTorch loop doing the same work, in one run, alternating.

    python -m cnn_explorer.benchmark --data-root DIR        # CPU, the CIFAR-10 JPEG copy in DIR, model=small
    python -m cnn_explorer.benchmark --data-root DIR --trials 4 --epochs 6
    python -m cnn_explorer.benchmark --data-root DIR --device cuda --precision bf16-mixed --compile
    python -m cnn_explorer.benchmark --data synthetic       # no dataset needed

The ImageFolder copy (``--data cifar10_folder``, the default) is ``--data-root`` or else the ``CIFAR10_FOLDER``
environment variable; there is no default path.

Each trial runs, each in a fresh process: the plain loop, ``train.py callbacks=minimal`` (interpretability
callbacks off) and ``train.py`` with the default callbacks; in this order, then in the reverse order in the next
trial. Epoch time is one training epoch plus its validation pass, as a user waits for it (train.py logs it as
``time/epoch_s``); medians are over every epoch of every trial. Peak memory is each process's maximum resident
set (and, on CUDA, the plain loop's peak allocated device memory). The views' own seconds (``time/views_s``) are
read from the callbacks-on runs too: their cost measured inside one process, where the on/off ratio also carries
the differences between processes.

The plain loop is what someone would write by hand around the objects train.py trains: it composes the
project's Hydra config with the same overrides as the train.py variants and builds the same DataModule, net,
optimizer and schedule from it (so it measures what train.py runs, whatever the config says), then trains
with in-memory uint8 tensors, shuffling and per-batch augmentation (``prepare_batch``), no Lightning.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from cnn_explorer.allocator import keep_freed_memory
from cnn_explorer.config import register_resolvers
from cnn_explorer.errors import UserError

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("plain loop", "train.py, callbacks off", "train.py, callbacks on")
DATA_ROOT_ENV = "CIFAR10_FOLDER"  # the variable conf/data/source/image_folder.yaml reads too


def composed_config(args: argparse.Namespace) -> DictConfig:
    """conf/train.yaml composed with the overrides the train.py variants get (run dir pinned, nothing written)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        overrides = _train_py_overrides(args, "minimal", Path(tempfile.gettempdir()))
        return compose("train", overrides=[o for o in overrides if not o.startswith("hydra.")] + ["run_dir=unused"])


def plain_loop(args: argparse.Namespace) -> dict[str, object]:
    """Train ``args.epochs`` epochs by hand; return per-epoch seconds, final val accuracy and peak memory."""
    keep_freed_memory()  # the same process setting train.py makes, so the ratio is the framework's alone
    cfg = composed_config(args)
    torch.manual_seed(cfg.seed)
    device = torch.device(args.device)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # decoded once (or loaded from the cache), on the CPU
    for name in ("train_images", "train_labels", "val_images", "val_labels"):  # device-resident, as train.py
        setattr(datamodule, name, getattr(datamodule, name).to(device))

    net = instantiate(cfg.model.net).to(device)
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    model = torch.compile(net) if cfg.model.compile else net
    optimizer = instantiate(cfg.model.optimizer)(net.parameters())
    scheduler = instantiate(cfg.model.scheduler)(optimizer)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16-mixed" else nullcontext()

    epoch_seconds, val_acc = [], 0.0
    for _ in range(args.epochs):
        start = time.perf_counter()
        net.train()
        for batch in datamodule.train_dataloader():
            images, labels = datamodule.prepare_batch(batch, train=True)
            with autocast:
                loss = F.cross_entropy(model(images.contiguous(memory_format=memory_format)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        net.eval()
        correct = 0
        with torch.inference_mode(), autocast:
            for batch in datamodule.val_dataloader():
                images, labels = datamodule.prepare_batch(batch, train=False)
                correct += (model(images.contiguous(memory_format=memory_format)).argmax(1) == labels).sum()
        val_acc = int(correct) / len(datamodule.val_labels)  # .item()-like sync once per epoch, as Lightning's log
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - start)
    result: dict[str, object] = {
        "epoch_s": epoch_seconds,
        "val_acc": val_acc,
        "train_images": len(datamodule.train_labels),
    }
    if device.type == "cuda":
        result["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _run(command: list[str]) -> tuple[int, float]:
    """Run ``command``; return its exit status and its own peak resident memory in MB."""
    # stderr to a file, not a pipe: nobody reads a pipe while the child runs, and a full one would block it.
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        # wait4 gives this child's own rusage (getrusage(RUSAGE_CHILDREN) would be the max over all children).
        _, status, usage = os.wait4(process.pid, 0)
        returncode = os.waitstatus_to_exitcode(status)
        if returncode != 0:
            stderr.seek(0)
            sys.stderr.write(stderr.read().decode()[-3000:])
    return returncode, usage.ru_maxrss / 1024  # Linux reports KB


def _train_py_overrides(args: argparse.Namespace, callbacks: str, run_dir: Path) -> list[str]:
    data = (
        ["data=synthetic", "data.source.train_size=5000", "data.val_size=500"]
        if args.data == "synthetic"
        else ["data=cifar10_folder", f"data.source.root={args.data_root}"]
    )
    trainer = ["trainer.accelerator=gpu", f"trainer.precision={args.precision}"] if args.device == "cuda" else []
    return [
        *data,
        *trainer,
        f"model={args.model}",
        f"callbacks={callbacks}",
        f"trainer.max_epochs={args.epochs}",
        "test=false",
        f"seed={args.seed}",
        f"model.channels_last={args.channels_last}",
        f"model.compile={args.compile}",
        f"hydra.run.dir={run_dir}",
    ]


def _seconds_from_csv(run_dir: Path, tags: tuple[str, ...]) -> dict[str, list[float]]:
    """Per tag (``time/epoch_s``, ``time/views_s``), the seconds train.py logged each epoch in its metrics CSV."""
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    with open(metrics, newline="") as file:
        rows = list(csv.DictReader(file))
    return {tag: [float(row[tag]) for row in rows if row.get(tag)] for tag in tags}


def benchmark(args: argparse.Namespace, argv: list[str]) -> dict[str, dict[str, list[float]]]:
    """Alternate the three variants ``args.trials`` times; return epoch seconds and peak memory per variant.

    ``argv`` is the command line ``args`` was parsed from, which the plain loop's process gets again.
    """
    results: dict[str, dict[str, list[float]]] = {
        v: {"epoch_s": [], "trial_median_s": [], "views_s": [], "peak_mb": [], "peak_device_mb": [], "train_images": []}
        for v in VARIANTS
    }
    # The processes run in the repository, not the user's dir: they get the data root made absolute here.
    root = ["--data-root", str(args.data_root)] if args.data_root else []
    worker = [sys.executable, "-m", "cnn_explorer.benchmark", "--worker", *argv, *root]
    with tempfile.TemporaryDirectory(prefix="cnn-explorer-bench-") as tmp:
        for trial in range(args.trials):
            # ABBA order (plain, off, on, then on, off, plain): the machine's slow drift, which over a long benchmark
            # is as large as what is measured, falls on every variant alike over each pair of trials.
            for variant in VARIANTS if trial % 2 == 0 else VARIANTS[::-1]:
                out = Path(tmp) / f"{trial}-{VARIANTS.index(variant)}"
                if variant == "plain loop":
                    rc, peak = _run([*worker, "--worker-out", str(out.with_suffix(".json"))])
                    record = json.loads(out.with_suffix(".json").read_text()) if rc == 0 else {}
                    seconds = record.get("epoch_s", [])
                    results[variant]["peak_device_mb"].append(record.get("peak_device_mb", 0.0))
                    results[variant]["train_images"].append(record.get("train_images", 0))
                else:
                    callbacks = "minimal" if variant.endswith("off") else "default"
                    rc, peak = _run([sys.executable, "train.py", *_train_py_overrides(args, callbacks, out)])
                    logged = _seconds_from_csv(out, ("time/epoch_s", "time/views_s")) if rc == 0 else {}
                    seconds = logged.get("time/epoch_s", [])
                    results[variant]["views_s"] += logged.get("time/views_s", [])
                if rc != 0:
                    raise SystemExit(f"benchmark: {variant} failed with exit status {rc}")
                results[variant]["epoch_s"] += seconds
                results[variant]["trial_median_s"].append(statistics.median(seconds))
                results[variant]["peak_mb"].append(peak)
                print(
                    f"trial {trial + 1}/{args.trials} {variant:<24} epochs {[round(s, 2) for s in seconds]} s, "
                    f"peak RSS {peak:,.0f} MB",
                    flush=True,
                )
    return results


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]], train_images: int) -> str:
    """The summary table: medians, images/s, peak memory, ratios, hardware and versions."""
    import lightning

    median = {v: statistics.median(r["epoch_s"]) for v, r in results.items()}
    cpu = _cpu_name()
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({cpu}, {os.cpu_count()} cores)"
    lines = [
        f"model={args.model}, data={args.data} ({train_images:,} train images + validation), "
        f"{args.epochs} epochs x {args.trials} trials, precision {args.precision}, channels_last {args.channels_last}, "
        f"compile {args.compile}",
        f"device: {device}; torch {torch.__version__}, lightning {lightning.__version__}, "
        f"python {platform.python_version()}, {torch.get_num_threads()} torch threads",
        "",
        "| variant | median epoch s | train images/s | peak RSS MB | ratio vs plain loop |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant, record in results.items():
        lines.append(
            f"| {variant} | {median[variant]:.2f} | {train_images / median[variant]:,.0f} | "
            f"{max(record['peak_mb']):,.0f} | {median[variant] / median['plain loop']:.3f}x |"
        )
    if args.device == "cuda":
        lines.append(f"\nplain loop peak device memory: {max(results['plain loop']['peak_device_mb']):,.0f} MB")
    callbacks_ratio = median["train.py, callbacks on"] / median["train.py, callbacks off"]
    trial_ratios = [
        on / off
        for on, off in zip(
            results["train.py, callbacks on"]["trial_median_s"],
            results["train.py, callbacks off"]["trial_median_s"],
            strict=True,
        )
    ]
    # Each trial's ratio pairs processes that ran minutes apart; pooling every trial's epochs mixes the machine's
    # drift between trials with the outlying last epochs of the callbacks-on runs (their end-of-run checks).
    lines.append(
        f"\ncallbacks on / callbacks off: {statistics.median(trial_ratios):.3f}x (median of the trials' ratios of "
        f"median epochs: {', '.join(f'{ratio:.3f}x' for ratio in trial_ratios)}); {callbacks_ratio:.3f}x (median "
        f"epoch of all trials)"
    )
    # The views spend a time budget over the run (and the feature and explanation scores always run at the last
    # epoch): the sum over every epoch of every trial says what they cost a whole run.
    totals = {v: sum(r["epoch_s"]) for v, r in results.items()}
    lines.append(
        f"callbacks on / callbacks off: {totals['train.py, callbacks on'] / totals['train.py, callbacks off']:.3f}x "
        f"(total time of all epochs); train.py callbacks off / plain loop: "
        f"{totals['train.py, callbacks off'] / totals['plain loop']:.3f}x (total)"
    )
    lines.append(_views_own_time(results["train.py, callbacks on"]))
    return "\n".join(lines)


def _views_own_time(callbacks_on: dict[str, list[float]]) -> str:
    """The views' cost measured inside the callbacks-on runs (``time/views_s`` against the rest of each epoch):
    the same ratio as on/off, without the differences between processes that the on/off ratio also carries."""
    views, epochs = callbacks_on["views_s"], callbacks_on["epoch_s"]
    if len(views) != len(epochs):  # a train.py that does not log time/views_s
        return "views' own time: not logged"
    per_epoch = statistics.median(v / (e - v) for v, e in zip(views, epochs, strict=True))
    total = sum(views) / (sum(epochs) - sum(views))
    return (
        f"views' own time (time/views_s) in the callbacks-on runs: median {statistics.median(views):.2f} s per "
        f"epoch, {1 + per_epoch:.3f}x of the rest of the epoch (median epoch); {sum(views):.1f} s in all, "
        f"{1 + total:.3f}x (total)"
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("cifar10_folder", "synthetic"), default="cifar10_folder")
    parser.add_argument("--model", default="small", help="a conf/model option")
    parser.add_argument(
        "--data-root",
        type=Path,
        help=f"the ImageFolder CIFAR-10 copy for --data cifar10_folder (default: ${DATA_ROOT_ENV}; no other default)",
    )
    # Six epochs: the median epoch leaves out the first (every view draws once) and the last (end-of-run checks).
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial")
    parser.add_argument("--trials", type=int, default=2, help="rounds of the three variants, in alternating order")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data_root = data_root(args.data, args.data_root, os.environ.get(DATA_ROOT_ENV))
    return args


def data_root(data: str, given: Path | None, from_env: str | None) -> Path | None:
    """The dataset folder the benchmark trains on, absolute: ``--data-root``, else ``$CIFAR10_FOLDER``.

    None for ``--data synthetic``, which is generated. Made absolute against the current dir, because the
    benchmark's processes run in the repository.

    Raises:
        UserError: for ``--data cifar10_folder`` without either, or with a path that is not a folder.
    """
    if data != "cifar10_folder":
        return None
    if given is None and not from_env:
        raise UserError(
            f"--data cifar10_folder (the default) needs the CIFAR-10 ImageFolder copy: give --data-root DIR or set "
            f"{DATA_ROOT_ENV}=DIR (DIR holds train/<class>/*.jpg and test/<class>/*.jpg), or use --data synthetic"
        )
    root = (given if given is not None else Path(from_env or "")).expanduser().resolve()
    if not root.is_dir():
        source = "--data-root" if given is not None else DATA_ROOT_ENV
        raise UserError(f"{source}={root} is not a folder: give the CIFAR-10 ImageFolder copy's folder")
    return root


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report; 1 with the message on a mistake the user can fix."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.worker:
        if args.worker_out:
            Path(args.worker_out).write_text(json.dumps(plain_loop(args)))
        return 0
    results = benchmark(args, argv)
    print("\n" + report(args, results, int(results["plain loop"]["train_images"][0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
