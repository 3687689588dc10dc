"""Attribution maps of the probe set, one card per registered method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L

from callbacks.base import ImageView, check_layer_names, figure_class_names, lightning_net, probe_set
from cnn_explorer.errors import check_positive
from cnn_explorer.interpret import attribution
from cnn_explorer.render.cards import attribution_card


class AttributionCallback(ImageView):
    """Logs, per attribution method, the probe images with their true class's map blended over them.

    Runs in ``on_train_epoch_end``, after that epoch's validation: gradients are available there, unlike
    in the validation hooks, which Lightning runs under ``torch.inference_mode``. Tags:
    ``attributions/<method>`` for the methods of :data:`cnn_explorer.interpret.attribution.METHODS`.

    Args:
        every_n_epochs: cadence in epochs.
        per_class: probe images per class.
        methods: registered method names.
        layer: the conv layer of the CAM methods (dotted name); ``None``: the last conv block.
        method_options: per method, its options, e.g. ``{"integrated_gradients": {"steps": 32}}``.

    Raises:
        BadArgument: (a ``ValueError``) on a count that is not a positive integer, an unknown method or option,
            or (at setup) a layer the net does not have.

    Example::

        Trainer(callbacks=[AttributionCallback(every_n_epochs=5, methods=["gradient", "grad_cam"])], ...)
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        per_class: int = 1,
        methods: Sequence[str] = tuple(attribution.METHODS),
        layer: str | None = None,
        method_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(every_n_epochs)
        check_positive(per_class=per_class)
        self.per_class = per_class
        self.methods = attribution.check_methods(methods)
        self.layer = layer
        self.options = {name: attribution.method_options(name, layer, method_options) for name in self.methods}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        check_layer_names(lightning_net(pl_module), [self.layer] if self.layer else [], "callbacks.attributions.layer")

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (probe := probe_set(trainer, self.per_class)) is None:
            return
        net = lightning_net(pl_module)
        names = figure_class_names(trainer, int(probe.labels.max()) + 1)
        labels = [names[label] for label in probe.labels.tolist()]
        for method in self.methods:
            if trainer.received_sigterm:  # the slowest view: stop between methods, not after all of them
                break
            maps = attribution.attribute(method, net, probe.inputs, probe.labels, **self.options[method])
            title = f"{attribution.METHODS[method].title} of the true class, epoch {trainer.current_epoch}"
            self.log_figure(trainer, f"attributions/{method}", attribution_card(probe.images, maps, labels, title))
