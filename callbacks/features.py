"""What each layer learns, during training: per-layer numbers as scalars, channel cards and the projector at the end."""

from __future__ import annotations

import lightning as L
import torch

from callbacks.base import ImageView, class_names, figure_class_names, last_epoch, lightning_net
from cnn_explorer.data import first_per_class
from cnn_explorer.errors import check_positive
from cnn_explorer.interpret.features import analyze_layers
from cnn_explorer.interpret.features.dataset_examples import crop_examples, example_class_counts
from cnn_explorer.interpret.features.embeddings import penultimate_embeddings
from cnn_explorer.interpret.features.feature_visualization import VisualizationSettings, visualize_fields
from cnn_explorer.interpret.layers import short_layer_name, stages
from cnn_explorer.render.cards import channel_label, channels_card
from cnn_explorer.render.image import to_display_rgb

CARD_CHANNELS = 3  # channels per card, the most class-selective ones: three rows leave room for labels of four
# lines (a long class name in the top-patch mix wraps), at 9.7 px or more, in TensorBoard's 215 px card
CARD_EXAMPLES = 5  # top-activating patches per channel on the card


class FeatureStatsCallback(ImageView):
    """Per stage of the net, on the validation split: ``features/<layer>/sparsity``, ``.../dead_channels``,
    ``.../selectivity`` (Morcos et al. 2018) and ``.../probe_accuracy`` (a linear probe fitted on ``probe_images``
    training images, Alain & Bengio 2016) every ``every_n_epochs`` epochs and at the last one. At the end of
    training: one card per layer (``channels/<layer>``: its most class-selective channels, each with the input
    optimized to excite its central unit, cut to that unit's receptive field, beside its top validation patches,
    labelled with the channel's mean-activation class and the classes of those patches) and the penultimate
    layer's embedding of ``projector_per_class`` validation images per class, with labels and thumbnails, for the
    Projector tab.

    Args:
        every_n_epochs: cadence of the scalars; the last epoch always counts.
        probe_images: training images the probes are fitted on (a seeded subset, not augmented).
        projector_per_class: validation images per class in the projector (0: no projector).
        visualization_steps: Adam steps of each channel card's optimized input (Olah et al. 2017's neuron
            objective, :func:`~cnn_explorer.interpret.features.feature_visualization.visualize_fields`).

    Raises:
        BadArgument: (a ``ValueError``) if a count is not a positive integer.

    Example::

        Trainer(callbacks=[FeatureStatsCallback(every_n_epochs=5)], ...)
    """

    at_last_epoch = True  # the end of training is always measured, whatever the budget

    def __init__(
        self,
        every_n_epochs: int = 5,
        probe_images: int = 5000,
        projector_per_class: int = 100,
        visualization_steps: int = 128,
    ) -> None:
        super().__init__(every_n_epochs)
        check_positive(probe_images=probe_images, visualization_steps=visualization_steps)
        self.visualization_steps = visualization_steps
        if projector_per_class < 0:
            raise ValueError(f"projector_per_class must be >= 0, got {projector_per_class}")
        self.probe_images, self.projector_per_class = probe_images, projector_per_class

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = last_epoch(trainer)
        dm, net = trainer.datamodule, lightning_net(pl_module)
        image_shape = (dm.channels, dm.image_size, dm.image_size)
        layers = stages(net, image_shape)
        analysis = analyze_layers(
            net,
            dm.eval_batches("val"),
            dm.eval_batches("train", limit=self.probe_images),
            layers,
            dm.num_classes,
            image_shape=image_shape,
        )
        for name, layer in analysis.layers.items():
            short = short_layer_name(name)
            self.log_scalars(
                trainer,
                {
                    f"features/{short}/sparsity": layer.stats.sparsity,
                    f"features/{short}/dead_channels": layer.stats.dead_count,
                    f"features/{short}/selectivity": layer.stats.selectivity_mean,
                    f"features/{short}/probe_accuracy": layer.probe.val_accuracy,
                },
            )
        if last:
            self._channel_cards(trainer, net, analysis)
            self._projector(trainer, net)

    def _channel_cards(self, trainer: L.Trainer, net: torch.nn.Module, analysis) -> None:
        dm = trainer.datamodule
        names = figure_class_names(trainer, dm.num_classes)
        for name, layer in analysis.layers.items():
            stats = layer.stats
            live = ~stats.dead & (stats.channel_sparsity < 0.99) & ~stats.selectivity.isnan()
            order = torch.where(live, stats.selectivity, -torch.inf).argsort(descending=True, stable=True)
            channels = [int(c) for c in order[:CARD_CHANNELS] if live[c]]
            if not channels:
                continue
            targets = [(name, c) for c in channels]
            settings = VisualizationSettings(image_size=dm.image_size, steps=self.visualization_steps)
            # All of a layer's crops share its field's size: [K, C, h, w].
            optimized = torch.stack(visualize_fields(net, targets, dm.mean, dm.std, settings, {name: layer.field}))
            crops = crop_examples(dm.val_images.cpu(), layer.examples, layer.field)[channels, :CARD_EXAMPLES]
            counts = example_class_counts(layer.examples, dm.val_labels.cpu(), dm.num_classes, CARD_EXAMPLES)
            labels = [
                channel_label(c, float(stats.selectivity[c]), stats.class_means[:, c], counts[c], names)
                for c in channels
            ]
            short = short_layer_name(name)
            title = f"{short}: top channels, epoch {trainer.current_epoch}"
            self.log_figure(trainer, f"channels/{short}", channels_card(optimized, crops, labels, title))

    def _projector(self, trainer: L.Trainer, net: torch.nn.Module) -> None:
        if not self.projector_per_class:
            return
        dm = trainer.datamodule
        index = first_per_class(dm.val_labels.cpu(), self.projector_per_class, dm.num_classes)
        images, labels = dm.val_images[index.to(dm.val_images.device)], dm.val_labels[index.to(dm.val_labels.device)]
        inputs, _ = dm.prepare_batch((images, labels), train=False)
        embeddings = penultimate_embeddings(net, [(inputs,)])
        names = class_names(trainer, dm.num_classes)
        self._writer.add_embedding(
            embeddings,
            metadata=[names[label] for label in labels.tolist()],
            label_img=to_display_rgb(images),
            global_step=trainer.current_epoch,
            tag="penultimate",
        )
