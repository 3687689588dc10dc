"""Attribution maps of the probe set, one grid per registered method."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from callbacks.base import TensorBoardImageCallback, lightning_net, probe_set
from cnn_explorer.errors import check_positive
from cnn_explorer.interpret.attribution import attribute, check_methods
from cnn_explorer.render.grids import attribution_grid


class AttributionCallback(TensorBoardImageCallback):
    """Logs, per attribution method, the probe images' maps for their true class beside and over them.

    Runs in ``on_train_epoch_end``, after that epoch's validation: gradients are available there, unlike
    in the validation hooks, which Lightning runs under ``torch.inference_mode``. Tags:
    ``saliency/<method>`` (``saliency/gradient``, ...); the methods are those of
    :data:`cnn_explorer.interpret.attribution.METHODS`.

    Args:
        every_n_epochs: cadence in epochs.
        per_class: probe images per class.
        methods: registered method names.

    Raises:
        BadArgument: (a ``ValueError``) on a count that is not a positive integer or an unknown method.

    Example::

        Trainer(callbacks=[AttributionCallback(every_n_epochs=5, methods=["gradient", "gradient_x_input"])], ...)
    """

    def __init__(self, every_n_epochs: int = 1, per_class: int = 1, methods: Sequence[str] = ("gradient",)) -> None:
        super().__init__(every_n_epochs)
        check_positive(per_class=per_class)
        self.per_class = per_class
        self.methods = check_methods(methods)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.draws(trainer) or (probe := probe_set(trainer, self.per_class)) is None:
            return
        net = lightning_net(pl_module)
        for method in self.methods:
            maps = attribute(method, net, probe.inputs, probe.labels)
            self.log_image(trainer, f"saliency/{method}", attribution_grid(probe.images, [maps]))
