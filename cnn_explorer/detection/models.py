"""The detector: torchvision's Faster R-CNN with a feature pyramid on EfficientNet-Lite0's ImageNet features.

Why Faster R-CNN (Ren et al. 2015) with an FPN (Lin et al. 2017), of torchvision's detection family: with 120
training images and a pretrained backbone only, its two stages learn from many sampled anchors and RoIs per image
(256 + 512 by default), where the one-stage FCOS/RetinaNet heads must learn dense classification from scratch with
a focal loss that converges slower on few images; SSDlite needs a long schedule (600 epochs in torchvision's
recipe). It is also the detector of torchvision's Penn-Fudan tutorial (the ~0.98 mAP@.5 anchor, COCO-pretrained)
and of pytorch-grad-cam's box-score target, which the explanations reuse.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cnn_explorer.errors import UserError
from cnn_explorer.safe_config import buildable
from cnn_explorer.standard_nets import efficientnet_lite0_imagenet_state_dict, loads_pretrained_weights

# EfficientNet-Lite0 stages 2, 3, 4 of timm's features: 40, 112, 320 channels at strides 8, 16, 32.
FEATURE_STAGES = (2, 3, 4)


class EfficientNetLite0FPN(nn.Module):
    """EfficientNet-Lite0's stages 2-4 (timm, ``features_only``) under a feature pyramid: ``images [N, 3, H, W]``
    -> ``{"0": stride 8, "1": stride 16, "2": stride 32, "pool": stride 64}``, each ``out_channels`` wide.

    BatchNorm stays in eval mode with frozen statistics and affine weights, as in torchvision's detection
    backbones (``FrozenBatchNorm2d``): batches of 2-4 images would give noisy statistics. The stem and the first
    ``frozen_blocks`` blocks are not trained (the early, generic filters; fewer gradients on a CPU).

    Args:
        out_channels: channels of every pyramid level.
        pretrained: start from the ImageNet weights (else random).
        frozen_blocks: leading blocks (0..7) kept as loaded, with the stem.
    """

    def __init__(self, out_channels: int = 128, pretrained: bool = True, frozen_blocks: int = 2) -> None:
        super().__init__()
        import timm

        self.body = timm.create_model("efficientnet_lite0", features_only=True, out_indices=FEATURE_STAGES)
        if pretrained and loads_pretrained_weights():
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
    training) and resized so the shorter side is ``min_size`` (a no-op when the DataModule already did).

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
    ) -> None:
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        backbone = EfficientNetLite0FPN(fpn_channels, pretrained, frozen_blocks)
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
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            box_detections_per_img=box_detections_per_img,
        )
