"""TensorBoard's HParams tab, declared: a run's settings as typed values, and the experiment (its hparams with
typed domains, in the order a user should read them, and the metrics that matter first).

Without a declaration TensorBoard infers the experiment from the runs: it ticks the first five hparams
alphabetically (often identical across a sweep's runs), shows booleans and integers as floats and leaves the
metrics unordered. With ``hparams_config`` (``tensorboard.plugins.hparams.summary_v2``) the order and the
domains are ours: the settings that differ between the runs come first, then :data:`KEY_HPARAMS`.

A single run declares its own experiment (:func:`experiment_summary` with its one session); a sweep declares one
for all its jobs at the sweep dir (:class:`cnn_explorer.hydra_callbacks.SweepSummary`), its jobs only their
sessions, since TensorBoard reads one declaration and a job's would hide its siblings' values from the filters.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp

KEY_HPARAMS = ("lr", "seed", "model", "net", "batch_size")
"""Shown right after the settings that differ across a sweep (for a single run: first)."""

METRICS = (
    ("hparams/test_acc", "", "test acc"),
    ("hparams/val_acc_best", "", "best val acc"),
    ("Curves/accuracy", "validation", "last val acc"),
    ("hparams/test_loss", "", "test loss"),
)
"""The metrics the HParams table shows first: (tag, run relative to the session's run, display name). The last
validation accuracy is read from the ``validation`` sub-run (callbacks.tensorboard_logger) at its last step."""

Value = bool | int | float | str


def session_summaries(params: Mapping[str, Value]) -> tuple[Summary, Summary]:
    """The start (settings) and end (status: success) of one run's HParams session, to write in its run dir.

    Booleans stay booleans, numbers numbers and text text: TensorBoard types each column from these and the
    declared domains.
    """
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    summary = Summary()  # summary_v2 has no session end, and the v1 module that does needs TensorFlow
    summary.value.add(
        tag=metadata.SESSION_END_INFO_TAG,
        metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_end_info=end)),
        tensor=metadata.NULL_TENSOR,
    )
    return hp.hparams_pb(dict(params)), summary


def experiment_summary(sessions: Sequence[Mapping[str, Value]], metrics: Iterable[str]) -> Summary:
    """The experiment of ``sessions`` (one run's settings, or a sweep's jobs'): its hparams ordered by
    :func:`hparam_order`, each with a typed domain holding every value the sessions took, and its metrics, the
    :data:`METRICS` first, then the other ``metrics`` tags (``hparams/...``) in their order.

    Domains: booleans ``Discrete([False, True])``, integers and text ``Discrete`` of the values taken, other
    numbers a ``RealInterval`` from the least to the largest value (``lr``, ``weight_decay``).
    """
    names = hparam_order(sessions)
    hparams = [hp.HParam(name, _domain([s[name] for s in sessions if name in s])) for name in names]
    declared = [hp.Metric(tag, group=group or None, display_name=shown) for tag, group, shown in METRICS]
    known = {tag for tag, _, _ in METRICS}
    declared += [hp.Metric(tag, display_name=tag.removeprefix("hparams/")) for tag in metrics if tag not in known]
    summary = hp.hparams_config_pb(hparams, declared)
    # TensorBoard 2.21 re-sorts a declared experiment's hparams by (not differs, name) and its table ticks the first
    # five: the order above survives only through `differs`. Set it on what differs between the sessions; for a
    # single run, on the key settings it has.
    varying = {n for n in names if len({repr(s.get(n)) for s in sessions}) > 1} or set(KEY_HPARAMS)
    content = summary.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(content.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in varying
    content.content = data.SerializeToString()
    return summary


def hparam_order(sessions: Sequence[Mapping[str, Value]]) -> list[str]:
    """The hparams of ``sessions`` as TensorBoard should list (and tick) them: those whose value differs between
    the sessions, then the other :data:`KEY_HPARAMS`, then the rest. Within each part the key ones come first in
    :data:`KEY_HPARAMS`' order, the others in the order the sessions list them (alphabetical once read back from
    event files, which keep no order)."""
    names = list(dict.fromkeys(name for session in sessions for name in session))
    differ = [n for n in names if len({repr(s.get(n)) for s in sessions}) > 1]
    key = [n for n in KEY_HPARAMS if n in names and n not in differ]
    rest = [n for n in names if n not in differ and n not in key]
    return sorted(differ, key=_key_rank) + key + rest


def _key_rank(name: str) -> int:
    return KEY_HPARAMS.index(name) if name in KEY_HPARAMS else len(KEY_HPARAMS)


def _domain(values: Sequence[Value]) -> hp.Domain:
    """The typed domain of one hparam's values (see :func:`experiment_summary`); mixed types are text."""
    if all(isinstance(v, bool) for v in values):
        return hp.Discrete([False, True])
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return hp.Discrete(sorted(set(values)))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return hp.RealInterval(float(min(values)), float(max(values)))
    return hp.Discrete(sorted({str(v) for v in values}))


def read_session(run_dir: Path) -> tuple[dict[str, Value], list[str]] | None:
    """The settings a run wrote in its HParams session and the ``hparams/...`` metric tags it logged (the event
    files directly in ``run_dir``), or None if it wrote no session (a job that failed before the end)."""
    params: dict[str, Value] | None = None
    tags: dict[str, None] = {}
    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    params = {name: _plain(v) for name, v in data.session_start_info.hparams.items()}
                elif value.tag.startswith("hparams/"):
                    tags[value.tag] = None
    return None if params is None else (params, list(tags))


def declare_sweep(sweep_dir: Path, job_dirs: Iterable[Path]) -> bool:
    """Write the experiment of a sweep's jobs (:func:`experiment_summary` of their sessions) into ``sweep_dir``,
    where TensorBoard finds it for ``--logdir <sweep_dir>``; False (nothing written) if no job wrote a session."""
    from torch.utils.tensorboard import SummaryWriter  # torch's writer, as Lightning's logger uses

    found = [session for job in job_dirs if (session := read_session(job)) is not None]
    if not found:
        return False
    metrics = list(dict.fromkeys(tag for _, tags in found for tag in tags))
    with SummaryWriter(str(sweep_dir)) as writer:
        writer._get_file_writer().add_summary(experiment_summary([params for params, _ in found], metrics))
    return True


def _plain(value: Any) -> Value:
    """A ``google.protobuf.Value`` as the Python value it was written from (whole numbers as ``int``)."""
    kind = value.WhichOneof("kind")
    if kind == "bool_value":
        return value.bool_value
    if kind == "string_value":
        return value.string_value
    number = value.number_value
    return int(number) if float(number).is_integer() else number
