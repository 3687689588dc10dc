"""Attribution from the input gradient: vanilla gradient saliency and gradient x input."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnn_explorer.interpret.attribution.arguments import explaining


def input_gradient(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """``d logit[target] / d input`` for each image, the model in eval mode.

    The raw logit, not the softmax, is differentiated so that other classes' scores do not enter. Runs inside
    :func:`~cnn_explorer.interpret.attribution.arguments.explaining` (eval mode, gradients on, the model left as
    found); gradients are taken w.r.t. the input only, so no parameter's ``.grad`` is touched.

    Args:
        model: maps ``[N, C, H, W]`` -> logits ``[N, num_classes]``.
        images: ``[N, C, H, W]`` float, normalized as the model expects.
        targets: ``[N]`` class indices whose logit is explained, one per image.

    Returns:
        float ``[N, C, H, W]`` on the model's device.

    Raises:
        ValueError: if ``images`` is not 4-D float, ``targets`` is not ``[N]``, or a target is not a
            valid class index for the model's logits.
    """
    with explaining(model, images, targets) as (pixels, labels):
        pixels.requires_grad_(True)
        logits = model(pixels)  # [N, num_classes]
        # Summing over the batch is exact in eval mode: image n's score depends on image n only.
        score = logits.gather(1, labels[:, None]).sum()
        (gradient,) = torch.autograd.grad(score, pixels)  # [N, C, H, W]
    return gradient


def gradient(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Vanilla gradient saliency: ``|d logit[target] / d input|``, max over colour channels.

    Simonyan, Vedaldi, Zisserman (2014), "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", section 3.1: the magnitude of the class score's gradient
    says which pixels would change the score most, to first order. See :func:`input_gradient` for the
    model-state contract and the errors raised.

    Returns:
        float ``[N, H, W]``, >= 0, on the model's device.
    """
    return input_gradient(model, images, targets).abs().amax(dim=1)


def gradient_x_input(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Gradient x input: ``sum over channels of input * d logit[target] / d input``, signed.

    Shrikumar et al. (2016), "Not Just a Black Box: Learning Important Features Through Propagating
    Activation Differences"; Ancona et al. (2018), "Towards better understanding of gradient-based attribution
    methods for Deep Neural Networks", section 3. For a linear model it is each pixel's exact contribution
    to the logit; in general it equals Integrated Gradients with a zero baseline when the model is linear
    along the path. The input is the *normalized* image, so zero is the dataset mean colour: a pixel at the
    mean gets no attribution. Positive values support the target class.

    Returns:
        float ``[N, H, W]`` on the model's device.
    """
    gradient_ = input_gradient(model, images, targets)
    return (gradient_ * images.detach().to(gradient_.device)).sum(dim=1)
