"""How trustworthy the attribution maps are, as scalars a user watches evolve during training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch

from callbacks.base import View, lightning_net, probe_set
from cnn_explorer.errors import check_positive
from cnn_explorer.interpret import attribution
from cnn_explorer.interpret.attribution.scores import score_methods


class ExplanationScoresCallback(View):
    """Logs, per attribution method, the deletion and insertion AUCs (Petsiuk et al. 2018) on a stratified set of
    validation images and the mean correlation of the randomization check (Adebayo et al. 2018) on the probe set:
    ``explain/<method>/deletion_auc``, ``.../insertion_auc``, ``.../randomization``, and the chance level
    ``explain/random_order/deletion_auc`` and ``.../insertion_auc``.

    These cost many forward passes (each method's maps, 2 x ``steps`` perturbed copies of every image, the
    randomization cascade): the default cadence is every 10 epochs on 60 images, and the last epoch always
    counts (the final scores go to TensorBoard's HParams tab).

    Args:
        every_n_epochs: cadence in epochs; the last epoch is always scored.
        per_class: validation images per class for the deletion/insertion curves.
        methods: registered method names.
        layer: the CAM methods' conv layer; ``None``: the last conv block.
        method_options: per method, its options (as for the attribution callback).
        steps: chunks of the deletion/insertion curves.

    Raises:
        BadArgument: (a ``ValueError``) on a count that is not a positive integer or an unknown method or option.

    Example::

        Trainer(callbacks=[ExplanationScoresCallback(every_n_epochs=5, methods=["gradient", "grad_cam"])], ...)
    """

    at_last_epoch = True  # the end of training is always measured, whatever the budget

    def __init__(
        self,
        every_n_epochs: int = 10,
        per_class: int = 6,
        methods: Sequence[str] = tuple(attribution.METHODS),
        layer: str | None = None,
        method_options: Mapping[str, Mapping[str, Any]] | None = None,
        steps: int = 16,
    ) -> None:
        super().__init__(every_n_epochs)
        check_positive(per_class=per_class, steps=steps)
        self.per_class, self.steps = per_class, steps
        self.methods = attribution.check_methods(methods)
        self.options = {name: attribution.method_options(name, layer, method_options) for name in self.methods}

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        images, sanity = probe_set(trainer, self.per_class), probe_set(trainer, 1)
        if images is None or sanity is None:
            return
        scores, chance = score_methods(
            lightning_net(pl_module),
            images.inputs,
            images.labels,
            sanity.inputs,
            sanity.labels,
            self.methods,
            self.options,
            steps=self.steps,
        )
        values = {
            "explain/random_order/deletion_auc": float(chance.deletion_auc.mean()),
            "explain/random_order/insertion_auc": float(chance.insertion_auc.mean()),
        }
        for name, s in scores.items():
            values[f"explain/{name}/deletion_auc"] = float(s.curves.deletion_auc.mean())
            values[f"explain/{name}/insertion_auc"] = float(s.curves.insertion_auc.mean())
            values[f"explain/{name}/randomization"] = float(s.randomization.spearman_mean.mean())
        self.log_scalars(trainer, values)
        # In the run's final metrics too: train.py gives them to TensorBoard's HParams tab and to Optuna.
        trainer.callback_metrics.update({tag: torch.tensor(value) for tag, value in values.items()})
