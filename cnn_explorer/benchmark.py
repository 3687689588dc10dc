"""Epoch time of train.py against a plain PyTorch loop doing the same work, in one run, alternating.

    python -m cnn_explorer.benchmark --data-root DIR        # CPU, the CIFAR-10 JPEG copy in DIR, model=small
    python -m cnn_explorer.benchmark --data-root DIR --trials 4 --epochs 6
    python -m cnn_explorer.benchmark --data-root DIR --device cuda --precision bf16-mixed --compile
    python -m cnn_explorer.benchmark --data synthetic       # no dataset needed
    python -m cnn_explorer.benchmark --data imagenette --data-root DIR --model resnet18 --precision bf16-mixed \
        --limit-batches 40                                  # ResNet-18 at 128 px (bf16: CPUs with AMX)
    python -m cnn_explorer.benchmark --only-overhead        # train.py's per-step overhead alone (tiny net)
    python -m cnn_explorer.benchmark --only-overhead --cpu-time   # ... in thread CPU time, one thread (busy machine)
    python -m cnn_explorer.benchmark --data-root DIR --model airbench --limit-batches 10 --no-overhead   # airbench94

The ImageFolder copy (``--data cifar10_folder``, the default, or ``--data imagenette``) is ``--data-root`` or else
the ``CIFAR10_FOLDER`` (``IMAGENETTE_FOLDER``) environment variable; there is no default path. ``--precision`` applies
to train.py and the plain loop alike, on the CPU too (bf16-mixed pays on CPUs with bfloat16 matrix units, Intel AMX).

Each trial runs, each in a fresh process: the plain loop, ``train.py callbacks=minimal`` (interpretability
callbacks off) and ``train.py`` with the default callbacks; in this order, then in the reverse order in the next
trial. Epoch time is one training epoch plus its validation pass, as a user waits for it (train.py logs it as
``time/epoch_s``); medians are over every epoch of every trial. Peak memory is each process's maximum resident
set (and, on CUDA, the plain loop's peak allocated device memory). The views' own seconds (``time/views_s``) are
read from the callbacks-on runs too: their cost measured inside one process, where the on/off ratio also carries
the differences between processes.

The overhead variant (issue 23, on by default, ``--only-overhead`` alone) times the training steps of a tiny net
(:data:`OVERHEAD_OVERRIDES`, compute negligible) on generated data: train.py with the minimal callbacks, timed by a
:class:`StepClock` it is given, against the plain loop on the same batches; microseconds per step and their ratio,
the median over the trials' ratios. What is left is the framework's own cost per step, the one a fast GPU exposes.
With ``--cpu-time`` both are timed in their main thread's CPU time on one torch thread (``threads=1``): on a machine
that other jobs keep busy, wall time varies many times over between trials, CPU time by a few percent.

The plain loop is what someone would write by hand around the objects train.py trains: it composes the
project's Hydra config with the same overrides as the train.py variants and builds the same DataModule, net,
optimizer and schedule from it (so it measures what train.py runs, whatever the config says), then trains
with in-memory uint8 tensors, shuffling and per-batch augmentation (``prepare_batch``), no Lightning.

``--model airbench`` (conf/model/airbench.yaml, airbench94: Jordan 2024, arXiv:2404.00498) brings its recipe's
callbacks, which the plain loop then does too, with their values from the composed config and through the same
functions of :mod:`cnn_explorer.airbench` (:func:`train_by_hand`): the whitening conv set from training images
before the first step (``callbacks.whitening``, untimed in both), its bias trained for the first ``bias_epochs``
only, the lookahead every ``every`` steps and the run ending on its average (``callbacks.lookahead``), and the
training loss with ``model.label_smoothing``. Its test-time augmentation (``model.tta``) is not measured: it changes
the test pass alone, and the benchmark times training epochs and their validation (train.py runs with test=false).
An airbench epoch takes minutes on a CPU: ``--limit-batches N`` trains the first N batches of each epoch in every
variant (validation stays whole), so the ratios are of N steps plus a validation pass rather than of whole epochs.
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
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from itertools import islice
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from cnn_explorer.airbench import floating_state, freeze_whitening_bias, lookahead_step, whitening_images
from cnn_explorer.allocator import keep_freed_memory
from cnn_explorer.config import register_resolvers
from cnn_explorer.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# The "overhead" variant's net: one 4-channel conv block and a 16-unit classifier, whose compute is negligible, so
# what a step costs beyond the plain loop's is the framework's (issue 23). More images than --data synthetic's
# default, so the epoch's fixed costs (validation, checkpoints) are spread over enough steps to see the per-step one.
OVERHEAD_OVERRIDES = (
    "data=synthetic",
    "data.source.train_size=20000",
    "data.val_size=500",
    "model.net.architecture=[4,M]",
    "model.net.hidden=16",
    "callbacks=minimal",
)
VARIANTS = ("plain loop", "train.py, callbacks off", "train.py, callbacks on")
OVERHEAD_VARIANTS = ("tiny net, plain loop", "tiny net, train.py")
# Per --data choice read from disk, the environment variable its conf/data option reads too.
DATA_ROOT_ENV = {"cifar10_folder": "CIFAR10_FOLDER", "imagenette": "IMAGENETTE_FOLDER"}


class StepClock(L.Callback):
    """Seconds per training step of each epoch: from the epoch's start to its validation's start (or its end, when
    there is no validation), over the steps trained in between. Appends one number per epoch to ``step_s``, and
    one line to ``path`` if given (the benchmark reads it from train.py's process: ``+callbacks.step_clock=...``).

    Args:
        path: a text file to append each epoch's seconds per step to, or None.
        clock: seconds (``time.thread_time`` counts this thread's CPU time alone: steadier on a shared machine).
    """

    def __init__(self, path: str | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.path, self.clock = path, clock
        self.step_s: list[float] = []
        self._start: tuple[float, int] | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = (self._now(pl_module.device), trainer.global_step)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(trainer, pl_module)

    def _stop(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is None or trainer.sanity_checking:
            return
        (start, first_step), self._start = self._start, None
        steps = trainer.global_step - first_step
        if steps > 0:
            self.step_s.append((self._now(pl_module.device) - start) / steps)
            if self.path:
                with open(self.path, "a") as file:
                    file.write(f"{self.step_s[-1]!r}\n")

    def _now(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the steps queued on the GPU are part of the time
        return self.clock()


def composed_config(args: argparse.Namespace) -> DictConfig:
    """conf/train.yaml composed with the overrides the train.py variants get (run dir pinned, nothing written)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        overrides = _train_py_overrides(args, "minimal", Path(tempfile.gettempdir()), args.worker_overhead)
        return compose("train", overrides=[o for o in overrides if not o.startswith("hydra.")] + ["run_dir=unused"])


def plain_loop(args: argparse.Namespace) -> dict[str, object]:
    """Train ``args.epochs`` epochs by hand; return per-epoch seconds, final val accuracy and peak memory."""
    keep_freed_memory()  # the same process setting train.py makes, so the ratio is the framework's alone
    clock = time.perf_counter
    if args.cpu_time and args.worker_overhead:  # the same clock and thread count as train.py gets (_overhead_trial)
        clock = time.thread_time
        torch.set_num_threads(1)
    result, _ = train_by_hand(composed_config(args), torch.device(args.device), args.precision, clock)
    return result


def training_loss(cfg: DictConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss train.py's Classifier computes: cross-entropy of logits ``[N, K]`` and labels ``[N]``, with
    ``model.label_smoothing`` (0 if the model sets none; Szegedy et al. 2016)."""
    return partial(F.cross_entropy, label_smoothing=cfg.model.get("label_smoothing", 0.0))


def batches_per_epoch(batches: int, limit: int | float | None) -> int:
    """Lightning's ``trainer.num_training_batches``: the loader's ``batches``, or fewer under
    ``trainer.limit_train_batches`` (a count, or a fraction of the loader when a float)."""
    if limit is None:
        return batches
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def train_by_hand(
    cfg: DictConfig, device: torch.device, precision: str = "32-true", clock: Callable[[], float] = time.perf_counter
) -> tuple[dict[str, object], nn.Module]:
    """Train ``trainer.max_epochs`` epochs of ``cfg`` by hand, validating after each; the first
    ``trainer.limit_train_batches`` batches of each epoch if the config sets it.

    Does what train.py's LightningModule and the config's ``callbacks.whitening`` and ``callbacks.lookahead`` do
    (model=airbench), through the same functions of :mod:`cnn_explorer.airbench`: the whitening conv set from the
    training images before the first step, its bias trained for the first ``bias_epochs`` only, the lookahead after
    every optimizer step, and training ending on the average.

    Returns:
        The record (per-epoch seconds ``epoch_s``, training seconds per step ``step_s``, the last ``val_acc``,
        ``train_images`` trained per epoch, on CUDA ``peak_device_mb``) and the trained net.
    """
    torch.manual_seed(cfg.seed)
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
    loss_of = training_loss(cfg)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()
    epochs = cfg.trainer.max_epochs
    batches = batches_per_epoch(len(datamodule.train_dataloader()), cfg.trainer.get("limit_train_batches"))

    # The callbacks' values, validated by their own classes (not built from Lightning: nothing of theirs is called).
    whitening = instantiate(cfg.callbacks.whitening) if cfg.callbacks.get("whitening") else None
    lookahead = instantiate(cfg.callbacks.lookahead) if cfg.callbacks.get("lookahead") else None
    if whitening is not None:  # PatchWhitening.setup, before the first step (not timed, in train.py neither)
        net.whiten_from(whitening_images(datamodule, whitening.images), whitening.eps)
    slow = floating_state(net) if lookahead is not None else {}  # Lookahead.on_train_start

    epoch_seconds, step_seconds, val_acc, train_images, step = [], [], 0.0, 0, 0
    for epoch in range(epochs):
        start, train_images = clock(), 0
        net.train()
        for batch in islice(datamodule.train_dataloader(), batches):
            images, labels = datamodule.prepare_batch(batch, train=True)
            with autocast:
                loss = loss_of(model(images.contiguous(memory_format=memory_format)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if whitening is not None:  # PatchWhitening.on_before_optimizer_step
                freeze_whitening_bias(net, epoch, whitening.bias_epochs)
            optimizer.step()
            step += 1
            train_images += len(labels)
            if lookahead is not None:  # Lookahead.on_train_batch_end; total: trainer.estimated_stepping_batches
                lookahead_step(slow, net, step, epochs * batches, lookahead.every, lookahead.decay, lookahead.power)
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_seconds.append((clock() - start) / max(batches, 1))  # training alone, as StepClock times train.py
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
        epoch_seconds.append(clock() - start)
    result: dict[str, object] = {
        "epoch_s": epoch_seconds,
        "step_s": step_seconds,
        "val_acc": val_acc,
        "train_images": train_images,
    }
    if device.type == "cuda":
        result["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result, net


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


def _train_py_overrides(args: argparse.Namespace, callbacks: str, run_dir: Path, overhead: bool = False) -> list[str]:
    """train.py's overrides for a variant; ``overhead``: the tiny net of :data:`OVERHEAD_OVERRIDES` instead of
    ``args.model`` on ``args.data`` (``callbacks`` is then ``minimal`` whatever is given)."""
    if overhead:
        data = [*OVERHEAD_OVERRIDES, "model=small"]
    elif args.data == "synthetic":
        data = ["data=synthetic", "data.source.train_size=5000", "data.val_size=500", f"model={args.model}"]
    else:
        data = [f"data={args.data}", f"data.source.root={args.data_root}", f"model={args.model}"]
    trainer = [f"trainer.precision={args.precision}"] + (["trainer.accelerator=gpu"] if args.device == "cuda" else [])
    if args.limit_batches is not None and not overhead:
        # ++: added, or set if a trainer option has the key already.
        trainer.append(f"++trainer.limit_train_batches={args.limit_batches}")
    return [
        *data,
        *trainer,
        *([] if overhead else [f"callbacks={callbacks}"]),
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


def benchmark(args: argparse.Namespace, argv: list[str]) -> dict[str, dict[str, list]]:
    """Alternate the three variants ``args.trials`` times; return epoch seconds and peak memory per variant.

    ``argv`` is the command line ``args`` was parsed from, which the plain loop's process gets again.
    """
    results: dict[str, dict[str, list]] = {
        v: {"epoch_s": [], "trial_median_s": [], "views_s": [], "peak_mb": [], "peak_device_mb": [], "train_images": []}
        for v in VARIANTS
    }
    results.update({v: {"step_s": []} for v in OVERHEAD_VARIANTS})  # per trial, seconds per step of each epoch
    # The processes run in the repository, not the user's dir: they get the data root made absolute here.
    root = ["--data-root", str(args.data_root)] if args.data_root else []
    worker = [sys.executable, "-m", "cnn_explorer.benchmark", "--worker", *argv, *root]
    with tempfile.TemporaryDirectory(prefix="cnn-explorer-bench-") as tmp:
        for trial in range(args.trials):
            # ABBA order (plain, off, on, then on, off, plain): the machine's slow drift, which over a long benchmark
            # is as large as what is measured, falls on every variant alike over each pair of trials.
            for variant in () if args.only_overhead else VARIANTS if trial % 2 == 0 else VARIANTS[::-1]:
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
            if args.overhead or args.only_overhead:
                for variant in OVERHEAD_VARIANTS if trial % 2 == 0 else OVERHEAD_VARIANTS[::-1]:
                    step_s = _overhead_trial(args, worker, variant, Path(tmp) / f"{trial}-overhead-{variant[0]}")
                    results[variant]["step_s"].append(step_s)
                    print(
                        f"trial {trial + 1}/{args.trials} {variant:<24} us per step {[round(s * 1e6) for s in step_s]}",
                        flush=True,
                    )
    return results


def _overhead_trial(args: argparse.Namespace, worker: list[str], variant: str, out: Path) -> list[float]:
    """One process of the overhead variant: seconds per training step of each epoch."""
    if variant == OVERHEAD_VARIANTS[0]:
        rc, _ = _run([*worker, "--worker-overhead", "--worker-out", str(out.with_suffix(".json"))])
        step_s = json.loads(out.with_suffix(".json").read_text())["step_s"] if rc == 0 else []
    else:
        clock = _step_clock_overrides(args, Path(f"{out}.txt"))
        rc, _ = _run([sys.executable, "train.py", *_train_py_overrides(args, "minimal", out, overhead=True), *clock])
        step_s = [float(line) for line in Path(f"{out}.txt").read_text().split()] if rc == 0 else []
    if rc != 0:
        raise SystemExit(f"benchmark: {variant} failed with exit status {rc}")
    return step_s


def _step_clock_overrides(args: argparse.Namespace, path: Path) -> list[str]:
    """train.py's overrides that add a :class:`StepClock` writing to ``path``: in thread CPU time on one torch thread
    with ``--cpu-time``, as the plain loop's worker then times itself."""
    overrides = [
        "+callbacks.step_clock._target_=cnn_explorer.benchmark.StepClock",
        f"+callbacks.step_clock.path={path}",
    ]
    if args.cpu_time:
        overrides += [
            "+callbacks.step_clock.clock._target_=hydra.utils.get_method",
            "+callbacks.step_clock.clock.path=time.thread_time",
            "threads=1",
        ]
    return overrides


def per_step_overhead(train_py: list[list[float]], loop: list[list[float]]) -> dict[str, float | list[float]]:
    """train.py against the plain loop per training step, from each trial's seconds per step of every epoch.

    Args:
        train_py: per trial, train.py's seconds per step of each epoch (:class:`StepClock`).
        loop: per trial, the plain loop's, the same shape.

    Returns:
        ``train_py_us`` and ``loop_us``: the median over trials of each trial's median epoch, in microseconds per
        step; ``extra_us``: their difference; ``trial_ratios``: each trial's median epoch of train.py over the
        loop's (the two processes ran next to each other, so the machine's drift cancels best within a trial);
        ``ratio``: the median of those; ``spread``: the largest trial ratio less the smallest (the noise).
    """
    if not train_py or len(train_py) != len(loop):
        raise ValueError(f"need one list of epochs per trial for both, got {len(train_py)} and {len(loop)} trials")
    train_medians = [statistics.median(epochs) for epochs in train_py]
    loop_medians = [statistics.median(epochs) for epochs in loop]
    ratios = [t / p for t, p in zip(train_medians, loop_medians, strict=True)]
    train_us, loop_us = statistics.median(train_medians) * 1e6, statistics.median(loop_medians) * 1e6
    return {
        "train_py_us": train_us,
        "loop_us": loop_us,
        "extra_us": train_us - loop_us,
        "trial_ratios": ratios,
        "ratio": statistics.median(ratios),
        "spread": max(ratios) - min(ratios),
    }


def overhead_report(results: dict[str, dict[str, list]], clock: str = "wall time") -> str:
    """The overhead variant's lines: us per step of each, the ratio and how much the trials differ; ``clock`` says
    what was timed."""
    o = per_step_overhead(results[OVERHEAD_VARIANTS[1]]["step_s"], results[OVERHEAD_VARIANTS[0]]["step_s"])
    trials = ", ".join(f"{r:.3f}x" for r in o["trial_ratios"])  # type: ignore[union-attr]
    return (
        f"\nframework overhead per training step (tiny net: {' '.join(OVERHEAD_OVERRIDES[3:5])}, synthetic data, "
        f"callbacks=minimal; training alone, median epoch; {clock}):\n"
        f"| variant | us per step | ratio vs plain loop |\n|---|---:|---:|\n"
        f"| {OVERHEAD_VARIANTS[0]} | {o['loop_us']:,.0f} | 1.000x |\n"
        f"| {OVERHEAD_VARIANTS[1]} | {o['train_py_us']:,.0f} | {o['ratio']:.3f}x |\n"
        f"train.py spends {o['extra_us']:,.0f} us more per step; the ratio is the median of the trials' ratios "
        f"({trials}; spread {o['spread']:.3f})"
    )


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]], train_images: int) -> str:
    """The summary table: medians, images/s, peak memory, ratios, hardware and versions."""
    median = {v: statistics.median(r["epoch_s"]) for v, r in results.items()}
    batches = "" if args.limit_batches is None else f"the first {args.limit_batches} batches of each epoch: "
    lines = [
        f"model={args.model}, data={args.data} ({batches}{train_images:,} train images + validation), "
        f"{args.epochs} epochs x {args.trials} trials, precision {args.precision}, channels_last {args.channels_last}, "
        f"compile {args.compile}",
        hardware(args),
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


def hardware(args: argparse.Namespace) -> str:
    """The device (the card's name, or the CPU's with its cores) and the versions, for every figure printed."""
    cpu = f"CPU ({_cpu_name()}, {os.cpu_count()} cores)"
    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu
    return (
        f"device: {device}; torch {torch.__version__}, lightning {L.__version__}, "
        f"python {platform.python_version()}, {torch.get_num_threads()} torch threads"
    )


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
    parser.add_argument("--data", choices=("cifar10_folder", "imagenette", "synthetic"), default="cifar10_folder")
    parser.add_argument("--model", default="small", help="a conf/model option")
    parser.add_argument(
        "--data-root",
        type=Path,
        help="the ImageFolder copy for --data cifar10_folder or imagenette (default: $CIFAR10_FOLDER or "
        "$IMAGENETTE_FOLDER; no other default)",
    )
    # Six epochs: the median epoch leaves out the first (every view draws once) and the last (end-of-run checks).
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial")
    parser.add_argument("--trials", type=int, default=2, help="rounds of the three variants, in alternating order")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--limit-batches",
        type=int,
        metavar="N",
        help="train only the first N batches of each epoch (train.py: ++trainer.limit_train_batches=N; the plain loop "
        "stops there), validation whole: the epoch times and ratios are then of N steps plus validation, per step "
        "rather than per epoch (for slow models on a CPU: --model airbench takes minutes an epoch on 2 cores)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--worker-overhead", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--overhead",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the tiny net's training steps, train.py against the plain loop (issue 23)",
    )
    parser.add_argument("--only-overhead", action="store_true", help="time the tiny net's steps alone")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the tiny net's steps in thread CPU time on one torch thread, which other jobs on a busy machine "
        "disturb far less than the wall clock (CPU only)",
    )
    args = parser.parse_args(argv)
    if args.limit_batches is not None and args.limit_batches < 1:
        raise UserError(f"--limit-batches must be a positive number of batches, got {args.limit_batches}")
    if args.cpu_time and args.device != "cpu":
        raise UserError("--cpu-time measures CPU time, which leaves out the GPU's: use it with --device cpu")
    # The overhead variant trains on generated data: it needs no dataset folder.
    from_env = os.environ.get(DATA_ROOT_ENV.get(args.data, ""))
    args.data_root = None if args.only_overhead else data_root(args.data, args.data_root, from_env)
    return args


def data_root(data: str, given: Path | None, from_env: str | None) -> Path | None:
    """The dataset folder the benchmark trains on, absolute: ``--data-root``, else the data's environment variable
    (:data:`DATA_ROOT_ENV`).

    None for ``--data synthetic``, which is generated. Made absolute against the current dir, because the
    benchmark's processes run in the repository.

    Raises:
        UserError: for data read from disk without either, or with a path that is not a folder.
    """
    if data not in DATA_ROOT_ENV:
        return None
    if given is None and not from_env:
        raise UserError(
            f"--data {data} needs its ImageFolder copy: give --data-root DIR or set {DATA_ROOT_ENV[data]}=DIR (DIR "
            "holds train/<class>/*.jpg and test/<class>/*.jpg, or val/ for Imagenette), or use --data synthetic"
        )
    root = (given if given is not None else Path(from_env or "")).expanduser().resolve()
    if not root.is_dir():
        source = "--data-root" if given is not None else DATA_ROOT_ENV[data]
        raise UserError(f"{source}={root} is not a folder: give the {data} ImageFolder copy's folder")
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
    overhead = results.pop(OVERHEAD_VARIANTS[0]), results.pop(OVERHEAD_VARIANTS[1])
    if not args.only_overhead:
        print("\n" + report(args, results, int(results["plain loop"]["train_images"][0])))
    if args.overhead or args.only_overhead:
        print(
            ("\n" + hardware(args) if args.only_overhead else "")
            + overhead_report(
                dict(zip(OVERHEAD_VARIANTS, overhead, strict=True)),
                "thread CPU time, 1 torch thread" if args.cpu_time else "wall time",
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
