"""D-RISE (Petsiuk et al. 2021): a black-box saliency map for one detection, from randomly masked copies of the image.

Petsiuk, Jain, Manjunatha, Ordonez, Saenko (2021), "Black-box Explanation of Object Detectors via Saliency Maps",
CVPR: mask the image at random (RISE's masks, Petsiuk, Das, Saenko 2018), run the detector on each masked copy,
weight each mask by how similar the best detection it produced is to the target detection, and sum. Needs
nothing from the detector but its outputs, so it explains any detector.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnn_explorer.errors import BadArgument, check_positive
from cnn_explorer.interpret.detection.matching import Detections, Detector, check_target, detection_similarity
from cnn_explorer.interpret.model_state import model_device, preserved_model_state


@dataclass(frozen=True)
class DRiseMap:
    """A D-RISE explanation of one detection.

    Attributes:
        saliency: ``[H, W]`` the paper's map, ``sum_i w_i M_i / (N p)``: the mean similarity of the masked copies
            that kept the pixel (RISE's Monte-Carlo estimate, section 3.2 of Petsiuk et al. 2018). Every pixel
            has at least the floor ``mean(w)`` (a pixel that does not matter is kept as often by high- as by
            low-scoring masks), so it is >= 0 everywhere and drawn min-max normalized.
        centered: ``[H, W]`` the same map with that floor removed, ``sum_i (w_i - mean(w)) M_i / (N p)``: the
            sample covariance of the similarity with the pixel's mask value, over ``p``. Positive where keeping the
            pixel raises the target's similarity, about 0 where the pixel does not matter, negative where it
            lowers it. Energy-based localization (:mod:`~cnn_explorer.interpret.detection.localization`) is
            measured on this map: on ``saliency`` the floor spreads energy over the whole image, and the share
            inside any box tends to its area share.
        weights: ``[N]`` the similarity ``w_i`` each mask got (max over its detections, 0 if none).
    """

    saliency: Tensor
    centered: Tensor
    weights: Tensor


def rise_masks(
    count: int,
    size: tuple[int, int],
    *,
    cells: int = 8,
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """RISE's random masks: a ``cells x cells`` binary grid kept with probability ``p``, upsampled bilinearly, shifted.

    Petsiuk, Das, Saenko (2018), "RISE: Randomized Input Sampling for Explanation of Black-box Models", section 3.2:
    each grid cell is 1 with probability ``p``; the grid is upsampled bilinearly to ``(cells + 1) * ceil(H / cells)``
    by ``(cells + 1) * ceil(W / cells)`` pixels and cropped to ``H x W`` at a random offset in
    ``[0, ceil(H / cells)) x [0, ceil(W / cells))``, so the smooth masks are not all aligned to one grid.

    Args:
        count: number of masks, >= 1.
        size: ``(H, W)`` in pixels.
        cells: grid cells per side, in ``[1, min(H, W)]``.
        p: probability that a cell is kept, in (0, 1).
        generator: CPU generator for the grids and offsets (``None``: the global one).

    Returns:
        float ``[count, H, W]`` in [0, 1], on CPU.
    """
    height, width = size
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    grid = (torch.rand((count, 1, cells, cells), generator=generator) < p).float()  # [N, 1, s, s]
    shift_y = torch.randint(0, cell_h, (count,), generator=generator)  # [N]
    shift_x = torch.randint(0, cell_w, (count,), generator=generator)
    upsampled = F.interpolate(
        grid, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear", align_corners=False
    )[:, 0]  # [N, (s + 1) ch, (s + 1) cw]
    rows = shift_y[:, None, None] + torch.arange(height)[None, :, None]  # [N, H, 1]
    columns = shift_x[:, None, None] + torch.arange(width)[None, None, :]  # [N, 1, W]
    # Convex combinations of 0 and 1, but float rounding can land a hair above 1: a mask must not amplify a pixel.
    return upsampled[torch.arange(count)[:, None, None], rows, columns].clamp_(0, 1)  # [N, H, W]


def drise(
    detector: Detector,
    image: Tensor,
    box: Tensor,
    label: int,
    *,
    class_probs: Tensor | None = None,
    masks: int = 1000,
    cells: int = 8,
    p: float = 0.5,
    batch_size: int = 16,
    seed: int = 0,
) -> DRiseMap:
    """D-RISE saliency of one target detection in one image.

    Petsiuk et al. (2021), section 3: ``N`` RISE masks ``M_i`` (:func:`rise_masks`); each masked image
    ``I * M_i`` goes through the detector; the mask's weight is ``w_i = max_j s(d_t, d_j)``, the best
    :func:`~cnn_explorer.interpret.detection.matching.detection_similarity` of its detections ``d_j`` to the target
    ``d_t`` (0 if it has none); the map is ``sum_i w_i M_i``, here divided by ``N p`` as in RISE (eq. 6 of Petsiuk
    et al. 2018) so that it reads as an expected similarity and does not grow with ``N``. The target is a box and
    label (e.g. a detection of the unmasked image, or a ground-truth box).

    Masked pixels become 0 in the detector's input space: black for torchvision's detectors, which take [0, 1]
    images and normalize inside. The masks depend only on ``seed``, ``masks``, ``cells``, ``p`` and the image size
    (not on ``batch_size``): all grids are drawn first from a CPU generator, the global RNG is left alone.

    Cost: ``masks`` detector forward passes, ``batch_size`` images per call, no gradients. The defaults follow
    the brief for a 2-core CPU (1000 masks of 8 x 8 cells; the paper uses 5000 of 16 x 16). Measured: an untrained
    ``fasterrcnn_mobilenet_v3_large_320_fpn`` on a 240 x 320 image took 1.5 s per masked image on a 2-core CPU
    shared with other jobs (32 masks in 48 s; 100 detections per image, no score threshold), so 1000 masks would
    take ~25 minutes there; a trained detector with a score threshold post-processes fewer boxes. The map's noise
    falls as ``1 / sqrt(masks)``; fewer cells make coarser, less noisy maps.

    Args:
        detector: a :class:`~cnn_explorer.interpret.detection.matching.Detector`; an ``nn.Module`` is run in eval
            mode and left in the modes it was found in.
        image: ``[C, H, W]`` float, as the detector takes it.
        box: ``[4]`` target box, xyxy pixels.
        label: target class index.
        class_probs: ``[num_classes]`` the target's class probabilities, for detectors that output
            ``class_probs``; otherwise unused.
        masks: number of masks ``N``, >= 1.
        cells: grid cells per side, in ``[1, min(H, W)]``.
        p: probability that a grid cell is kept, in (0, 1) (the papers use 0.5).
        batch_size: masked images per detector call, >= 1 (bounds memory).
        seed: seeds the masks.

    Returns:
        :class:`DRiseMap` on the image's device.

    Raises:
        BadArgument: on an image that is not ``[C, H, W]`` float, a malformed box or label, or an option outside
            its range.
    """
    if image.ndim != 3 or not image.is_floating_point():
        raise BadArgument(f"image must be float [C, H, W], got {image.dtype} {tuple(image.shape)}")
    target_box = check_target(box, label)
    check_positive(masks=masks, cells=cells, batch_size=batch_size)
    height, width = image.shape[-2:]
    if cells > min(height, width):
        raise BadArgument(f"cells must be at most the image's shorter side {min(height, width)}, got {cells}")
    if not 0 < p < 1:
        raise BadArgument(f"p (the probability a grid cell is kept) must be in (0, 1), got {p}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    # All grids and shifts up front (tiny: N x cells^2), so the result does not depend on batch_size.
    all_masks = rise_masks(masks, (height, width), cells=cells, p=p, generator=generator)  # [N, H, W] on CPU
    device = model_device(detector) if isinstance(detector, nn.Module) else image.device
    pixels = image.detach().to(device)  # [C, H, W]
    weights = torch.empty(masks, dtype=torch.float64)
    # Float64 sums: the centered map is a difference of two sums of N terms that nearly cancel.
    saliency = torch.zeros((height, width), dtype=torch.float64, device=device)
    coverage = torch.zeros((height, width), dtype=torch.float64, device=device)
    guard = preserved_model_state(detector) if isinstance(detector, nn.Module) else nullcontext()
    with guard, torch.no_grad():
        if isinstance(detector, nn.Module):
            detector.eval()
        for start in range(0, masks, batch_size):
            batch = all_masks[start : start + batch_size].to(device)  # [B, H, W]
            outputs = detector(list(pixels * batch[:, None].to(pixels.dtype)))  # B masked images [C, H, W]
            best = torch.stack([_best_similarity(d, target_box, label, class_probs) for d in outputs])  # [B]
            weights[start : start + len(batch)] = best.cpu().double()
            saliency += torch.einsum("b,bhw->hw", best.to(device).double(), batch.double())
            coverage += batch.double().sum(dim=0)
    saliency = saliency / (masks * p)
    # sum_i (w_i - mean w) M_i / (N p) = saliency - mean(w) * sum_i M_i / (N p)
    centered = saliency - weights.mean().item() * coverage / (masks * p)
    return DRiseMap(
        saliency=saliency.float().to(image.device),
        centered=centered.float().to(image.device),
        weights=weights.float().to(image.device),
    )


def _best_similarity(detections: Detections, box: Tensor, label: int, class_probs: Tensor | None) -> Tensor:
    """0-d float: the highest similarity of one masked image's detections to the target, 0 if it has none."""
    similarity = detection_similarity(detections, box, label, class_probs=class_probs)  # [K]
    return similarity.max().float() if similarity.numel() else torch.zeros((), device=similarity.device)
