"""SmoothGrad (Smilkov, Thorat, Kim, Viégas, Wattenberg 2017): the vanilla gradient averaged over noisy copies."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cnn_explorer.interpret.attribution.arguments import explaining


def smoothgrad(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    noise: float = 0.15,
    samples: int = 50,
    seed: int = 0,
    batch_size: int = 256,
) -> Tensor:
    """SmoothGrad: the mean gradient of the target logit over Gaussian-noised copies, then ``|.|`` max over channels.

    Smilkov et al. (2017), "SmoothGrad: removing noise by adding noise", section 2, eq. 3:
    ``M(x) = 1/n sum_i dS_t/dx (x + N(0, sigma^2))`` with ``sigma = noise * (x_max - x_min)`` of each image
    (section 3.1 calls ``noise`` the noise level: 10-20% worked best there, 0.15 is its middle; the same
    section finds little gain beyond ``n = 50`` samples). The signed gradients are averaged, as in
    eq. 3, and only then reduced as the vanilla gradient map is (Simonyan et al. 2014, section 3.1):
    absolute value, max over colour channels. With ``noise=0`` the result equals the vanilla gradient map.

    Not Captum's ``NoiseTunnel``: it takes one standard deviation for the whole batch (Smilkov's sigma is
    relative to each image's range, and a batch-wide range would make one image's map depend on the others
    in its batch) and draws from the global RNG. Here the noise comes from a CPU ``torch.Generator``
    seeded with ``seed``: the same seed and ``batch_size`` give the same maps on any device, and the global
    RNG is left alone.

    Runs inside :func:`~cnn_explorer.interpret.attribution.arguments.explaining` (eval mode, gradients on, the
    model left as found); gradients are taken w.r.t. the inputs only, so no parameter's ``.grad`` is touched.

    Args:
        model: maps ``[N, C, H, W]`` -> logits ``[N, num_classes]``.
        images: ``[N, C, H, W]`` float, normalized as the model expects; moved to the model's device.
        targets: ``[N]`` integer class indices whose logit is explained.
        noise: noise standard deviation as a fraction of each image's value range, >= 0.
        samples: noisy copies per image, >= 1.
        seed: seeds the noise.
        batch_size: most noisy images per forward/backward pass (bounds memory), >= 1.

    Returns:
        float ``[N, H, W]``, >= 0, on the device of ``images``.

    Raises:
        ValueError: on malformed images/targets, a target outside the model's classes, ``noise`` negative or
            not finite, ``samples < 1`` or ``batch_size < 1``.
    """
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite fraction >= 0 of the image range, got {noise}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with explaining(model, images, targets) as (pixels, labels):
        device = pixels.device
        sigma = noise * (pixels.amax(dim=(1, 2, 3)) - pixels.amin(dim=(1, 2, 3)))  # [N]
        total = torch.zeros_like(pixels)
        # Pair p = (image p // samples, copy p % samples); batches of pairs keep memory bounded.
        pair_count = pixels.shape[0] * samples
        for start in range(0, pair_count, batch_size):
            image_index = torch.arange(start, min(start + batch_size, pair_count), device=device) // samples
            draw = torch.randn((len(image_index), *pixels.shape[1:]), generator=generator).to(device)
            noisy = (pixels[image_index] + sigma[image_index, None, None, None] * draw).requires_grad_(True)
            logits = model(noisy)  # [B, num_classes]
            # Summing over the batch is exact in eval mode: each copy's score depends on that copy only.
            score = logits.gather(1, labels[image_index, None]).sum()
            (gradient,) = torch.autograd.grad(score, noisy)  # [B, C, H, W]
            total.index_add_(0, image_index, gradient)
    return (total / samples).abs().amax(dim=1).to(images.device)  # [N, H, W]
