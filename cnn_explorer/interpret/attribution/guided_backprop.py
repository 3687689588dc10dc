"""Guided backpropagation (Springenberg, Dosovitskiy, Brox, Riedmiller 2015), via Captum's ``GuidedBackprop``.

Kept as the known negative control of the randomization check: Adebayo et al. (2018) found its maps
barely change when the model's weights are randomized, since they mostly reconstruct the image.
"""

from __future__ import annotations

import warnings

from captum.attr import GuidedBackprop
from torch import Tensor, nn

from cnn_explorer.interpret.attribution.arguments import explaining


def guided_backprop(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Guided backpropagation of the target logit, ``|.|`` max over channels.

    Springenberg et al. (2015), "Striving for Simplicity: The All Convolutional Net", section 3.4 and
    figure 1: backward through each ReLU passes only where the ReLU's input was positive (as the gradient
    does) AND the gradient arriving from above is positive (as the "deconvnet" does). The result is
    reduced like the vanilla gradient map (absolute value, max over channels) so the two are comparable.

    Captum overrides the backward of ``nn.ReLU`` modules only: a ReLU called as ``F.relu`` / ``torch.relu``
    inside ``forward`` is differentiated as usual, and one ``nn.ReLU`` instance must not be called twice in
    a forward pass. Captum's hooks are removed when it returns, also on error.

    Runs inside :func:`~cnn_explorer.interpret.attribution.arguments.explaining` (eval mode, gradients on, the
    model left as found); gradients are taken w.r.t. the inputs only.

    Args:
        model: maps ``[N, C, H, W]`` -> logits ``[N, num_classes]``; its ReLUs are ``nn.ReLU`` modules.
        images: ``[N, C, H, W]`` float, normalized as the model expects; moved to the model's device.
        targets: ``[N]`` integer class indices whose logit is explained.

    Returns:
        float ``[N, H, W]``, >= 0, on the device of ``images``.

    Raises:
        ValueError: on malformed images/targets or a target outside the model's classes.
    """
    with explaining(model, images, targets) as (pixels, labels):
        pixels.requires_grad_(True)
        with warnings.catch_warnings():
            # Captum warns on every call that it hooks the ReLUs and will remove the hooks; it does (in a
            # finally), and a callback calling this every few epochs would repeat the warning each time.
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
            attributions = GuidedBackprop(model).attribute(pixels, target=labels)  # [N, C, H, W]
    return attributions.detach().abs().amax(dim=1).to(images.device)  # [N, H, W]
