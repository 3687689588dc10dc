"""The detector: torchvision's Faster R-CNN with a feature pyramid on EfficientNet-Lite0's ImageNet features.

Why Faster R-CNN (Ren et al. 2015) with an FPN (Lin et al. 2017), of torchvision's detection family: with 120
training images and a pretrained backbone only, its two stages learn from many sampled anchors and RoIs per image
(256 + 512 by default), where the one-stage FCOS/RetinaNet heads must learn dense classification from scratch with
a focal loss that converges slower on few images; SSDlite needs a long schedule (600 epochs in torchvision's
recipe). It is also the detector of torchvision's Penn-Fudan tutorial (the ~0.98 mAP@.5 anchor, COCO-pretrained)
and of pytorch-grad-cam's box-score target, which the explanations reuse.

The backbone starts from the ImageNet weights, or from an EfficientNet-Lite0 classifier trained by this framework
(``model.net.backbone_run_dir=RUN``: a classifier's features reused): that run dir is read as any run dir is, as
untrusted input, and only when the detector is built to be trained (a rebuilt detection run takes every weight from
its own checkpoint and never reads the path its config names).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cnn_explorer.errors import UserError
from cnn_explorer.models import weight_mismatches
from cnn_explorer.safe_config import buildable
from cnn_explorer.standard_nets import LITE0_TIMM_NAME, efficientnet_lite0_imagenet_state_dict, loads_pretrained_weights

# EfficientNet-Lite0 stages 2, 3, 4 of timm's features: 40, 112, 320 channels at strides 8, 16, 32.
FEATURE_STAGES = (2, 3, 4)
# The classifier whose features a detector may reuse (conf/model/efficientnet_lite0.yaml's net).
LITE0_CLASSIFIER = "cnn_explorer.standard_nets.efficientnet_lite0"
TRAIN_LITE0 = "python train.py data=imagenette model=efficientnet_lite0"


def classifier_backbone(run_dir: str | Path) -> tuple[dict[str, Tensor], list[float], list[float]]:
    """The weights of the EfficientNet-Lite0 classifier in a run dir of this framework, and the normalization it
    was trained with.

    The run dir is untrusted input, read as analyze.py reads one (:func:`cnn_explorer.rundir.load_run_config`,
    :func:`~cnn_explorer.rundir.best_checkpoint`, :func:`~cnn_explorer.rundir.load_net`): its config through the
    allowlist without resolvers, its best checkpoint with ``weights_only=True`` once it fits that config's net.

    Returns:
        ``({timm key: tensor}`` of the classifier's best checkpoint (its head included), ``data.mean``,
        ``data.std``) of that run.

    Raises:
        UserError: if ``run_dir`` is not a run dir, is a detection run, its net is not EfficientNet-Lite0 on 3
            channels, or its config or checkpoint is refused (naming the file and why).
    """
    from cnn_explorer.rundir import best_checkpoint, load_net, load_run_config  # rundir imports this package

    run = Path(run_dir).expanduser().resolve()
    where = f"model.net.backbone_run_dir={run_dir}"
    try:
        cfg = load_run_config(run)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
    task = cfg.get("task") or "classification"
    target = cfg.model.net.get("_target_")
    if task != "classification" or target != LITE0_CLASSIFIER:
        what = f"a {task} run" if task != "classification" else f"a classifier of net {target}"
        raise UserError(
            f"{where}: that run is {what}; a detector's backbone can come only from an EfficientNet-Lite0 "
            f"classifier ({LITE0_CLASSIFIER}), such as one trained with: {TRAIN_LITE0}"
        )
    channels = cfg.model.net.get("in_channels", 3)
    if channels != 3:
        raise UserError(f"{where}: that classifier takes {channels}-channel images; the detector's are RGB (3)")
    try:
        net = load_net(cfg, best_checkpoint(run).path)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
    return dict(net.state_dict()), [float(v) for v in cfg.data.mean], [float(v) for v in cfg.data.std]


class EfficientNetLite0FPN(nn.Module):
    """EfficientNet-Lite0's stages 2-4 (timm, ``features_only``) under a feature pyramid: ``images [N, 3, H, W]``
    -> ``{"0": stride 8, "1": stride 16, "2": stride 32, "pool": stride 64}``, each ``out_channels`` wide.

    BatchNorm stays in eval mode with frozen statistics and affine weights, as in torchvision's detection
    backbones (``FrozenBatchNorm2d``): batches of 2-4 images would give noisy statistics. The stem and the first
    ``frozen_blocks`` blocks are not trained (the early, generic filters; fewer gradients on a CPU).

    Args:
        out_channels: channels of every pyramid level.
        pretrained: start from the ImageNet weights (else random), unless ``weights`` are given.
        frozen_blocks: leading blocks (0..7) kept as loaded, with the stem.
        weights: a whole EfficientNet-Lite0's state dict under timm's names (a classifier's: its head, which the
            backbone lacks, is left out), loaded instead of the ImageNet weights.

    Raises:
        UserError: if ``weights`` lack a backbone tensor or have another shape for one.
    """

    def __init__(
        self,
        out_channels: int = 128,
        pretrained: bool = True,
        frozen_blocks: int = 2,
        weights: Mapping[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        import timm

        # TensorFlow's 'SAME' padding and BatchNorm eps, as the weights were trained (see efficientnet_lite0).
        self.body = timm.create_model(LITE0_TIMM_NAME, features_only=True, out_indices=FEATURE_STAGES)
        if weights is not None:
            expected = self.body.state_dict()
            kept = {k: v for k, v in weights.items() if k in expected}  # conv_head, bn2, classifier: not features
            problems = weight_mismatches(expected, kept, "classifier vs backbone")
            if problems:
                raise UserError(
                    f"the classifier's weights do not fit EfficientNet-Lite0's features: {'; '.join(problems)}"
                )
            self.body.load_state_dict(kept)
        elif pretrained and loads_pretrained_weights():
            missing, _ = self.body.load_state_dict(efficientnet_lite0_imagenet_state_dict(), strict=False)
            if missing:
                raise UserError(f"the EfficientNet-Lite0 weights lack {missing[:3]}...: another file?")
        frozen = [self.body.conv_stem, self.body.bn1, *self.body.blocks[:frozen_blocks]]
        for module in frozen:
            module.requires_grad_(False)
        for module in self.body.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.requires_grad_(False)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), out_channels, LastLevelMaxPool())
        self.out_channels = out_channels  # read by torchvision's FasterRCNN

    def train(self, mode: bool = True) -> EfficientNetLite0FPN:
        super().train(mode)
        for module in self.body.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()  # frozen statistics, see the class docstring
        return self

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)  # [N, 40, H/8, W/8], [N, 112, H/16, W/16], [N, 320, H/32, W/32]
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


@buildable("net")
class FasterRCNNLite0(FasterRCNN):
    """torchvision's Faster R-CNN on :class:`EfficientNetLite0FPN`, for images in [0, 1] of any size.

    Training: ``net(images, targets) -> {"loss_classifier", "loss_box_reg", "loss_objectness",
    "loss_rpn_box_reg"}``; evaluation: ``net(images) -> [{"boxes" [D, 4], "labels" [D], "scores" [D]}]`` in the
    input images' pixels. The images are normalized inside with mean = std = 0.5 (EfficientNet-Lite0's ImageNet
    training; ``image_mean``/``image_std`` otherwise) and resized so the shorter side is ``min_size`` (a no-op when
    the DataModule already did).

    Anchors: one size per level, 32 (stride 8) to 256 px (stride 64), aspect ratios 0.5, 1, 2 (height/width
    ratios up to 2, pedestrians' shape).

    Args:
        num_classes: object classes, background not counted (torchvision's count adds it).
        min_size: shorter side the detector resizes to (set it to the data's ``min_size``).
        max_size: longer-side cap of that resize.
        fpn_channels: width of the pyramid and the RPN (128: half torchvision's 256, for the CPU).
        representation_size: width of the box head's two fully connected layers.
        pretrained: backbone from the ImageNet weights.
        frozen_blocks: leading backbone blocks not trained.
        box_detections_per_img: most detections per image in evaluation.
        backbone_run_dir: a run dir of this framework holding an EfficientNet-Lite0 classifier (e.g. made by
            ``python train.py data=imagenette model=efficientnet_lite0``): its best checkpoint's features become the
            backbone, instead of the ImageNet weights. Read only when the detector is built for training (see
            :func:`classifier_backbone`).
        image_mean: per-channel mean the detector normalizes images in [0, 1] with (the backbone's training).
        image_std: per-channel standard deviation of that normalization.

    Raises:
        UserError: on a ``backbone_run_dir`` that is refused (see :func:`classifier_backbone`) or whose classifier
            was trained with another normalization than ``image_mean``/``image_std`` (the message gives the
            values to set).
    """

    def __init__(
        self,
        num_classes: int = 1,
        min_size: int = 320,
        max_size: int = 640,
        fpn_channels: int = 128,
        representation_size: int = 512,
        pretrained: bool = True,
        frozen_blocks: int = 2,
        box_detections_per_img: int = 100,
        backbone_run_dir: str | None = None,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        weights = None
        if backbone_run_dir is not None and loads_pretrained_weights():
            weights, mean, std = classifier_backbone(backbone_run_dir)
            ours = [float(v) for v in (*image_mean, *image_std)]
            if len(ours) != 6 or any(abs(a - b) > 1e-6 for a, b in zip(ours, [*mean, *std], strict=True)):
                raise UserError(
                    f"model.net.backbone_run_dir={backbone_run_dir}: that classifier was trained on images normalized "
                    f"with mean {mean} and std {std}, the detector normalizes with model.net.image_mean="
                    f"{list(image_mean)} model.net.image_std={list(image_std)}. Give the classifier's: "
                    f"model.net.image_mean=[{','.join(map(str, mean))}] model.net.image_std=[{','.join(map(str, std))}]"
                )
        backbone = EfficientNetLite0FPN(fpn_channels, pretrained, frozen_blocks, weights)
        anchors = AnchorGenerator(sizes=((32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
        roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
        super().__init__(
            backbone,
            rpn_anchor_generator=anchors,
            box_roi_pool=roi_pool,
            box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
            box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
            min_size=min_size,
            max_size=max_size,
            image_mean=[float(v) for v in image_mean],
            image_std=[float(v) for v in image_std],
            box_detections_per_img=box_detections_per_img,
        )
