"""Lightning's TensorBoardLogger, arranged for people: train and val on one chart, the epoch as the x axis."""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from cnn_explorer.tensorboard_hparams import experiment_summary, session_summaries

# TensorBoard's Time Series page draws one chart per tag with a line per run that has it, groups charts by the
# tag's part before "/", sorts the groups case-sensitively and opens the first two. Keras' convention: train and
# validation are two runs (sub-folders ``train`` and ``validation``) of one tag, so their gap reads on one y
# scale; "Curves" sorts before every lowercase group, so accuracy and loss side by side are the first screen.
CURVES = {"acc": "Curves/accuracy", "loss": "Curves/loss"}
SUBRUNS = {"train": "train", "val": "validation"}  # metric prefix -> sub-run folder


class ExplorerTensorBoardLogger(TensorBoardLogger):
    """Writes scalars with the epoch as their step, train and val curves as two runs of one tag, and a declared
    HParams experiment.

    Lightning logs epoch-level metrics at the global step and adds an ``epoch`` scalar, a straight line that
    crowds the first screen; here the ``epoch`` value becomes the step instead (the images of the view callbacks
    use the same step, so an epoch's curves and pictures line up). ``train/<m>`` and ``val/<m>`` for ``m`` in
    :data:`CURVES` go to the sub-runs ``<run>/train`` and ``<run>/validation`` under one tag (``train/acc`` and
    ``val/acc`` -> ``Curves/accuracy``), so TensorBoard draws both on one chart. Other metrics keep their names in
    the run itself; test metrics sit at the last epoch trained, not one past it. The CSV logger and
    ``trainer.callback_metrics`` are unchanged: analyze.py and checkpointing read the usual names there.
    Accepts every argument of ``TensorBoardLogger``.

    Args:
        declare_experiment: write the HParams experiment (typed domains, order, metrics) with the run's session.
            None (the default): unless the run is a job of a Hydra sweep, whose experiment the sweep declares
            once for all its jobs (cnn_explorer.tensorboard_hparams).
    """

    def __init__(self, *args: Any, declare_experiment: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.declare_experiment = declare_experiment
        self._curve_writers: dict[str, Any] = {}
        self._last_epoch: int | None = None  # the last epoch whose train/val metrics were logged

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_curve_writers"] = {}  # open writers do not pickle (ddp_spawn); reopened where they are used
        return state

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        step = int(epoch) if epoch is not None else step
        if metrics and all(name.startswith("test/") for name in metrics) and self._last_epoch is not None:
            step = min(step, self._last_epoch) if step is not None else self._last_epoch
        elif epoch is not None and any(name.split("/", 1)[0] in SUBRUNS for name in metrics):
            self._last_epoch = step
        rest = {}
        for name, value in metrics.items():
            prefix, _, metric = name.partition("/")
            if prefix in SUBRUNS and metric in CURVES:
                writer = self._curve_writer(SUBRUNS[prefix])
                writer.add_scalar(CURVES[metric], float(value), step)
            else:
                rest[name] = value
        if rest:
            super().log_metrics(rest, step=step)

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, metrics: dict[str, Any] | None = None, step: int | None = None
    ) -> None:
        """Write the run's HParams session (``params``: flat, bool/int/float/str values, in the order to show),
        the experiment (see ``declare_experiment``), and ``metrics`` (``hparams/...``) at the last epoch.

        Lightning's own version declares no experiment and writes the metrics at step 0, as ~30 one-point charts
        far from the epoch they describe.
        """
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        # TensorBoard's types: bool, number, text; anything else (a list) as its text.
        params = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in params.items()}
        self.hparams.update(params)
        writer = self.experiment._get_file_writer()
        start, end = session_summaries(params)
        writer.add_summary(start)
        if self.declare_experiment or (self.declare_experiment is None and not _in_sweep()):
            writer.add_summary(experiment_summary([params], list(metrics or {})))
        if metrics:
            at = step if step is not None else (self._last_epoch or 0)
            super().log_metrics(metrics, step=at)
        writer.add_summary(end)

    @rank_zero_only
    def save(self) -> None:
        super().save()
        for writer in self._curve_writers.values():
            writer.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        for writer in self._curve_writers.values():
            writer.close()
        self._curve_writers = {}

    def _curve_writer(self, subrun: str) -> Any:
        """The event writer of sub-run ``subrun`` (a folder in the run's log dir), opened on first use."""
        if subrun not in self._curve_writers:
            self._curve_writers[subrun] = type(self.experiment)(log_dir=os.path.join(self.log_dir, subrun))
        return self._curve_writers[subrun]


def _in_sweep() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def log_step(trainer: Any) -> int:
    """TensorBoard's step for what a view logs now: the epoch under way, or, once fitting has ended (testing, or
    ``on_fit_end``), the last epoch trained, where its curves end, not one past it (``trainer.current_epoch``
    counts completed epochs, so it is the epoch under way during fitting and one past the last one after it)."""
    progress = trainer.fit_loop.epoch_progress.current
    # Not ``fit_loop.done``: reading it marks the epoch completed when max_epochs is reached (Lightning 2.6).
    limit = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
    ended = trainer.should_stop or (limit is not None and trainer.current_epoch >= limit)
    between_epochs = trainer.testing or (trainer.training and progress.processed == progress.completed and ended)
    return max(0, trainer.current_epoch - 1) if between_epochs else trainer.current_epoch
