"""Where train.py's time per training step goes, on a net whose compute is negligible (issue 23).

    python tools/profile_step.py                      # time only: train.py's objects vs a plain loop, us/step
    python tools/profile_step.py --profile            # + cProfile of trainer.fit, grouped (us/step per group)
    python tools/profile_step.py --steps 600 --overrides model.net.hidden=32

Builds what train.py builds (the same Hydra config, DataModule, net, Classifier, callbacks and loggers; a copy of
its few lines, since nothing may import train.py) and fits it in this process, then trains the same net,
optimizer and batches in a plain loop. The training part of each epoch is timed (from the epoch's start to its
validation), so both figures are per training step. cProfile inflates Python-heavy code, so the groups' sizes are
read against each other and against the profiled total, not against the unprofiled times.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from cnn_explorer.allocator import keep_freed_memory
from cnn_explorer.benchmark import OVERHEAD_OVERRIDES, StepClock
from cnn_explorer.config import register_resolvers
from cnn_explorer.module import Classifier

REPO = Path(__file__).resolve().parents[1]

# Group -> (file suffix, function name) entry points whose cumulative time is the group's. Nested entries are not
# double counted within a group (cProfile's cumtime of the outermost call covers the inner ones).
GROUPS: dict[str, list[tuple[str, str]]] = {
    "whole training step (epoch loop advance)": [("training_epoch_loop.py", "advance")],
    "batch fetch (sampler, gather)": [("fetchers.py", "__next__")],
    "batch transfer + on_after_batch_transfer (augment, normalize)": [("strategy.py", "batch_to_device")],
    "optimizer step incl. closure (forward, backward, step)": [("automatic.py", "run")],
    "  training_step (forward + loss + module bookkeeping)": [("module.py", "training_step")],
    "    self.log": [("module.py", "log")],
    "    training sums (EpochSums.add)": [("cnn_explorer/module.py", "add")],
    "  backward (incl. hooks)": [("strategy.py", "backward")],
    "  optimizer.step (Adam itself)": [("adam.py", "step")],
    "  zero_grad": [("automatic.py", "_on_before_step"), ("module.py", "optimizer_zero_grad")],
    "callbacks' and module's per-step hooks": [("call.py", "_call_callback_hooks")],
    "progress bar": [("tqdm_progress.py", "on_train_batch_end")],
    "logger connector per step": [
        ("logger_connector.py", "on_batch_end"),
        ("logger_connector.py", "update_train_step_metrics"),
    ],
    "scheduler (per-step update_lr_schedulers)": [("training_epoch_loop.py", "update_lr_schedulers")],
    "module on_train_batch_end (non-finite read)": [("cnn_explorer/module.py", "on_train_batch_end")],
}


def compose_cfg(overrides: list[str], run_dir: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"run_dir={run_dir}"])


def build_trainer(cfg, clock: StepClock) -> tuple[L.Trainer, Classifier, L.LightningDataModule]:
    """What train.py's ``train`` builds (without the initial-weights file and the test)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model.net)
    module = Classifier(
        net,
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
        num_classes=cfg.data.num_classes,
        channels_last=cfg.model.get("channels_last", False),
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None] + [clock]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=cfg.run_dir)
    return trainer, module, datamodule


def plain_loop(cfg, epochs: int, clock: Callable[[], float]) -> list[float]:
    """Seconds per training step of each epoch, by hand: same DataModule batches, net, optimizer, schedule."""
    torch.manual_seed(cfg.seed)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    net = instantiate(cfg.model.net).to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.model.optimizer)(net.parameters())
    scheduler = instantiate(cfg.model.scheduler)(optimizer)
    per_step = []
    for _ in range(epochs):
        start, steps = clock(), 0
        for batch in datamodule.train_dataloader():
            images, labels = datamodule.prepare_batch(batch, train=True)
            loss = F.cross_entropy(net(images.contiguous(memory_format=torch.channels_last)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        per_step.append((clock() - start) / steps)
        scheduler.step()
    return per_step


def grouped(stats: pstats.Stats, steps: int) -> list[tuple[str, float]]:
    """us per step of each group of :data:`GROUPS` (cumulative time of its entry points)."""
    table = stats.stats  # type: ignore[attr-defined]
    rows = []
    for group, entries in GROUPS.items():
        total = 0.0
        for (filename, _, function), (_, _, _, cumtime, _) in table.items():
            if any(filename.endswith(suffix) and function == name for suffix, name in entries):
                total += cumtime
        rows.append((group, total / steps * 1e6))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with this thread's CPU time (time.thread_time; with --threads 1 the whole step's work), which a "
        "busy machine's other processes disturb far less than the wall clock",
    )
    parser.add_argument("--top", type=int, default=0, help="also print the top N functions by cumulative time")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    overrides = [*OVERHEAD_OVERRIDES, "test=false", f"trainer.max_epochs={args.epochs}", *args.overrides]
    train_us, loop_us = [], []
    for trial in range(args.trials):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose_cfg(overrides, tmp)
            timer = time.thread_time if args.cpu_time else time.perf_counter
            clock = StepClock(clock=timer)
            trainer, module, datamodule = build_trainer(cfg, clock)
            profiler = cProfile.Profile() if args.profile and trial == args.trials - 1 else None
            if profiler:
                profiler.enable()
            trainer.fit(module, datamodule=datamodule)
            if profiler:
                profiler.disable()
            train_us.append(statistics.median(clock.step_s) * 1e6)
            loop_us.append(statistics.median(plain_loop(cfg, args.epochs, timer)) * 1e6)
            print(f"trial {trial}: train.py objects {train_us[-1]:.0f} us/step, plain loop {loop_us[-1]:.0f} us/step")
            if profiler:
                steps = trainer.global_step
                stats = pstats.Stats(profiler)
                print(f"\ncProfile of trainer.fit, {steps} steps (us per step, profiled):")
                for group, us in grouped(stats, steps):
                    print(f"  {us:8.0f}  {group}")
                if args.top:
                    stats.sort_stats("cumulative").print_stats(args.top)
    ratio = statistics.median(t / p for t, p in zip(train_us, loop_us, strict=True))
    print(
        f"\nmedian: train.py objects {statistics.median(train_us):.0f} us/step, plain loop "
        f"{statistics.median(loop_us):.0f} us/step; ratio {ratio:.3f}x (median of the trials' ratios)"
    )


if __name__ == "__main__":
    main()
