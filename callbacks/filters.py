"""First-layer filters as one grid of tiles."""

from __future__ import annotations

import lightning as L

from callbacks.base import ImageView, lightning_net
from cnn_explorer.errors import check_positive
from cnn_explorer.interpret.layers import short_layer_name
from cnn_explorer.models import first_conv
from cnn_explorer.render.cards import filters_card
from cnn_explorer.render.grids import filter_grid


class FilterGridCallback(ImageView):
    """Logs every kernel of the first conv layer as a tile (RGB, or gray for grayscale input), each tile
    min-max scaled on its own.

    Tag: ``filters/<layer>`` (e.g. ``filters/conv1``), after every ``every_n_epochs`` training epochs.

    Args:
        every_n_epochs: cadence in epochs.
        nrow: tiles per row.
        upscale: nearest-neighbour upscaling of each 3x3 kernel, so it is visible.

    Raises:
        BadArgument: (a ``ValueError``) if an argument is not a positive integer.

    Example::

        Trainer(callbacks=[FilterGridCallback(every_n_epochs=1)], logger=TensorBoardLogger("runs"))
    """

    def __init__(self, every_n_epochs: int = 1, nrow: int = 8, upscale: int = 8) -> None:
        super().__init__(every_n_epochs)
        check_positive(nrow=nrow, upscale=upscale)
        self.nrow, self.upscale = nrow, upscale

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        name, conv = first_conv(lightning_net(pl_module))
        grid = filter_grid(conv.weight.detach().float().cpu(), nrow=self.nrow, upscale=self.upscale)
        layer = short_layer_name(name)
        title = f"{layer}: {conv.out_channels} filters, epoch {trainer.current_epoch}"
        self.log_figure(trainer, f"filters/{layer}", filters_card(grid, title))
