"""airbench94's network and the pure pieces of its training recipe, as a model option of this framework.

After Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (2024, arXiv:2404.00498), code at
github.com/KellerJordan/cifar10-airbench (``legacy/airbench94.py``). Written for this framework, not copied:

- :class:`AirbenchNet`: a frozen 2x2 patch-whitening conv (weights from the eigenvectors of the training patches'
  covariance, :func:`patch_whitening`) and its trained bias, then three blocks conv-pool-BN-GELU-conv-BN-GELU of
  widths 64/256/256 whose BatchNorms learn a shift but no scale, a global max-pool and a bias-free linear head
  scaled by 1/9.
- :func:`airbench_sgd`: Nesterov SGD with the BatchNorm shifts (every 1-D parameter) at ``bias_scaler`` times the
  learning rate, their weight decay per step kept the same as the other weights'; the whitening bias is among
  the other weights, as in airbench94.
- :func:`triangular_lr`: the lr rises linearly from 0.2x to 1x over the first 23% of training, then falls to 0.07x.
- :func:`lookahead_decay` and :func:`lookahead_update`: the weights' exponential moving average ("lookahead")
  that the fast weights are reset to every few steps, with a decay that grows as training ends;
  :func:`lookahead_step`: what is done after each optimizer step.
- :func:`whitening_images` (which images the whitening is computed from) and :func:`freeze_whitening_bias` (the
  bias trained for the first epochs only).

The data-dependent and time-dependent steps are Lightning callbacks (``callbacks/whitening.py``,
``callbacks/lookahead.py``) calling these functions, as the benchmark's plain loop does
(``cnn_explorer/benchmark.py``); label smoothing and test-time augmentation are options of
:class:`~cnn_explorer.module.Classifier`. ``conf/model/airbench.yaml`` puts them together.

Submodule names (the views address layers by them; :func:`cnn_explorer.interpret.layers.stages` finds
``features.whiten``, ``features.block1..3``)::

    features.whiten.conv, features.whiten.shift, features.whiten.act
    features.block{1,2,3}.{conv1, pool, norm1, act1, conv2, norm2, act2}
    classifier.pool, classifier.flatten, classifier.fc, classifier.scale
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnn_explorer.safe_config import buildable


def patch_whitening(images: Tensor, kernel_size: int = 2, eps: float = 5e-4, chunk: int = 500) -> Tensor:
    """Conv weights that whiten the ``kernel_size`` x ``kernel_size`` patches of ``images`` (airbench's first layer).

    The patches' second-moment matrix ``S = E[p p^T]`` (uncentered: the images are normalized, their mean is ~0)
    has eigenvectors ``v_i`` and eigenvalues ``l_i``; filter ``i`` is ``v_i / sqrt(l_i + eps)``, so the filters'
    outputs over the patches have second moment ``diag(l_i / (l_i + eps))``, the identity when ``eps = 0``. Each
    filter comes twice, ``+w`` and ``-w``, so that the GELU after it keeps both signs of every component.

    Args:
        images: float ``[N, C, H, W]``, normalized as the net sees them.
        kernel_size: patch height and width.
        eps: added to each eigenvalue: keeps the near-zero-variance directions from being amplified to noise.
        chunk: images per step of the sum (bounds memory: one step holds ``chunk * L * C * k * k`` values).

    Returns:
        ``[2 * C * k * k, C, k, k]`` on ``images``' device: the ``C * k * k`` whitening filters by decreasing
        eigenvalue, then their negatives.

    Raises:
        ValueError: if the images are not ``[N, C, H, W]`` with ``H, W >= kernel_size``.
    """
    if images.ndim != 4 or min(images.shape[2:]) < kernel_size:
        raise ValueError(f"images must be [N, C, H, W] with H, W >= {kernel_size}, got {tuple(images.shape)}")
    c = images.shape[1]
    dim = c * kernel_size * kernel_size
    moment = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
    count = 0
    for part in images.split(chunk):
        # [n, C*k*k, L] -> [n*L, C*k*k]: one row per patch, ordered (channel, row, column) as a conv weight is.
        patches = F.unfold(part.double(), kernel_size).transpose(1, 2).reshape(-1, dim)
        moment += patches.T @ patches
        count += len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(moment / count)  # ascending; columns are eigenvectors
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = (eigenvectors / (eigenvalues + eps).sqrt()).T.reshape(dim, c, kernel_size, kernel_size)
    return torch.cat([filters, -filters]).to(images.dtype)


class Scale(nn.Module):
    """Multiplies by a constant ``factor``: airbench's logits are the head's output times 1/9, which sets the
    softmax's temperature at initialization without a learnable parameter."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


class Shift(nn.Module):
    """Adds a learned constant per channel, ``bias`` of shape ``[C, 1, 1]``: the whitening conv's bias, kept apart
    from the conv (which is frozen) and shaped so that :func:`airbench_sgd` does not take it for a BatchNorm shift
    (airbench94 trains it at the weights' learning rate, not at the shifts' 64 times larger one)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias  # [N, C, H, W] + [C, 1, 1]


class ConvGroup(nn.Sequential):
    """conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU: halves the resolution.

    The convs start as identities on their first ``in_channels`` filters (``nn.init.dirac_``; the rest keep
    PyTorch's init), so the block at first passes its input through; the BatchNorms learn a shift but no scale
    (their weight stays 1), with airbench's small ``eps`` and fast-moving running statistics. Two GELU modules,
    not one called twice: a view's forward hook then sees each activation once.
    """

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv1"] = _identity_init(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False))
        layers["pool"] = nn.MaxPool2d(2)
        layers["norm1"] = _shift_only_norm(out_channels, bn_momentum)
        layers["act1"] = nn.GELU()
        layers["conv2"] = _identity_init(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False))
        layers["norm2"] = _shift_only_norm(out_channels, bn_momentum)
        layers["act2"] = nn.GELU()
        super().__init__(layers)


def _identity_init(conv: nn.Conv2d) -> nn.Conv2d:
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: conv.in_channels])
    return conv


def _shift_only_norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    # eps 1e-12 as airbench (it runs BN in float32); momentum is PyTorch's weight of the new batch statistics.
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    norm.weight.requires_grad_(False)
    return norm


@buildable("net")
class AirbenchNet(nn.Module):
    """airbench94's network (Jordan 2024, arXiv:2404.00498): ~1.97M trainable parameters at widths 64/256/256.

    The first layer, ``features.whiten.conv`` (2x2, no padding, ``2 * 3 * 4 = 24`` filters), is frozen: its
    weights are set from the data by :meth:`whiten_from` (``callbacks/whitening.py`` calls it before training);
    until then they are PyTorch's random init. Its bias, ``features.whiten.shift`` (:attr:`whitening_bias`),
    trains (for the first epochs only, in the recipe).

    Args:
        num_classes: number of output logits.
        widths: output channels of the three blocks.
        in_channels: input image channels.
        bn_momentum: PyTorch's BatchNorm momentum (airbench's 0.6 in its convention, ``1 - 0.6``).
        logit_scale: the constant the head's output is multiplied by.

    Shapes: input ``[N, in_channels, H, W]`` float with ``H, W >= 16`` -> ``[N, num_classes]``; 32 px: whiten 31x31
    -> block1 15x15 -> block2 7x7 -> block3 3x3 -> global max-pool (airbench's ``MaxPool2d(3)``, the same at 32 px).
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (64, 256, 256),
        in_channels: int = 3,
        bn_momentum: float = 0.4,
        logit_scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        if len(widths) != 3 or not all(isinstance(w, int) and w > 0 for w in widths):
            raise ValueError(f"widths must be three positive ints (the blocks' channels), got {list(widths)}")
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")
        whiten_width = 2 * in_channels * 2 * 2
        whiten = nn.Conv2d(in_channels, whiten_width, 2, bias=False)
        whiten.weight.requires_grad_(False)
        self.features = nn.Sequential(
            OrderedDict(
                whiten=nn.Sequential(OrderedDict(conv=whiten, shift=Shift(whiten_width), act=nn.GELU())),
                block1=ConvGroup(whiten_width, widths[0], bn_momentum),
                block2=ConvGroup(widths[0], widths[1], bn_momentum),
                block3=ConvGroup(widths[1], widths[2], bn_momentum),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                pool=nn.AdaptiveMaxPool2d(1),
                flatten=nn.Flatten(),
                fc=nn.Linear(widths[2], num_classes, bias=False),
                scale=Scale(logit_scale),
            )
        )

    @property
    def whitening(self) -> nn.Conv2d:
        """The frozen patch-whitening conv."""
        return self.features.whiten.conv

    @property
    def whitening_bias(self) -> nn.Parameter:
        """The whitening conv's trained bias, ``[2 * C * k * k, 1, 1]``."""
        return self.features.whiten.shift.bias

    @torch.no_grad()
    def whiten_from(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the whitening conv's weights from ``images`` (:func:`patch_whitening`); its bias is left as it is.

        Args:
            images: float ``[N, C, H, W]`` training images, normalized as the net sees them (airbench: 5000).
            eps: see :func:`patch_whitening`.
        """
        weight = self.whitening.weight
        weight.copy_(patch_whitening(images, weight.shape[-1], eps).to(weight.device, weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # [N, widths[2], h, w]
        return self.classifier(x)  # -> [N, num_classes]


def airbench_sgd(
    params: Iterable[nn.Parameter],
    lr: float,
    momentum: float,
    weight_decay: float,
    bias_scaler: float = 64.0,
    nesterov: bool = True,
) -> torch.optim.SGD:
    """Nesterov SGD with two parameter groups: every 1-D parameter (AirbenchNet's BatchNorm shifts) at
    ``lr * bias_scaler`` with ``weight_decay / bias_scaler``, so its decay per step, ``lr * weight_decay``, is the
    weights' (airbench's ``bias_scaler``); the rest at ``lr``: the conv and linear weights and the whitening bias
    (a ``[C, 1, 1]`` :class:`Shift`, in airbench94's ``other_params`` group).

    For a loss averaged over the batch (this framework's), airbench's hyperparameters (lr 11.5 and weight decay
    0.0153 "per 1024 examples", momentum 0.85, summed loss) are ``lr = 11.5 * B / (1024 * (1 + 1 / (1 - 0.85)))``
    = 1.5 at batch ``B = 1024`` and ``weight_decay = 0.0153 / 11.5`` = 1.33e-3 at any batch size.

    Args:
        params: the trainable parameters (the Hydra ``_partial_`` is called with them).
        lr, momentum, weight_decay, nesterov: as ``torch.optim.SGD``'s, for the weights.
        bias_scaler: the 1-D parameters' learning-rate multiplier.

    Raises:
        ValueError: if ``bias_scaler`` is not positive.
    """
    if bias_scaler <= 0:
        raise ValueError(f"bias_scaler must be positive, got {bias_scaler}")
    params = list(params)
    weights = [p for p in params if p.ndim > 1]
    biases = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": weights, "lr": lr, "weight_decay": weight_decay},  # first: optimization/lr is this group's
        {"params": biases, "lr": lr * bias_scaler, "weight_decay": weight_decay / bias_scaler},
    ]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=momentum, nesterov=nesterov)


def triangular_factor(progress: float, warmup: float = 0.23, start: float = 0.2, end: float = 0.07) -> float:
    """airbench's learning-rate multiplier at ``progress`` (0..1 of training): linear from ``start`` to 1 over
    the first ``warmup`` of training, then linear down to ``end`` at 1."""
    if progress < warmup:
        return start + (1.0 - start) * progress / warmup
    return 1.0 + (end - 1.0) * min(1.0, (progress - warmup) / (1.0 - warmup))


def triangular_lr(
    optimizer: torch.optim.Optimizer, total: int, warmup: float = 0.23, start: float = 0.2, end: float = 0.07
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`triangular_factor` as a schedule of ``total`` steps of the scheduler (epochs, as this framework steps
    it). Step ``i`` takes the factor at the middle of its interval, ``(i + 0.5) / total``: the mean of airbench's
    per-batch schedule over that interval where it is linear, so the per-epoch staircase spends about the same
    learning rate as airbench's per-batch ramp.

    Raises:
        ValueError: if ``total`` is not positive or ``warmup`` not in (0, 1).
    """
    if total < 1:
        raise ValueError(f"total must be a positive number of scheduler steps, got {total}")
    if not 0.0 < warmup < 1.0:
        raise ValueError(f"warmup must be a fraction of training in (0, 1), got {warmup}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: triangular_factor(min(1.0, (i + 0.5) / total), warmup, start, end)
    )


def lookahead_decay(step: int, total: int, decay: float = 0.95, every: int = 5, power: float = 3.0) -> float:
    """The slow weights' decay at optimizer step ``step`` of ``total``: ``decay ** every * (step / total) ** power``
    (airbench's schedule: nearly 0, a plain copy of the fast weights, early on; ``0.95 ** 5 = 0.77`` at the end)."""
    return decay**every * min(1.0, step / total) ** power


@torch.no_grad()
def lookahead_update(slow: Mapping[str, Tensor], fast: Mapping[str, Tensor], decay: float) -> None:
    """One lookahead step, in place: ``slow = decay * slow + (1 - decay) * fast``, then ``fast = slow``.

    Args:
        slow: the moving average, ``{name: tensor}`` of the floating-point entries of ``fast``.
        fast: the net's ``state_dict()`` (its tensors share the parameters' and buffers' storage, so the net's
            weights and BatchNorm statistics are reset to the average); entries not in ``slow`` are left alone.
        decay: the weight of the old average, in [0, 1] (1 only resets ``fast`` to ``slow``).
    """
    for name, average in slow.items():
        average.lerp_(fast[name], 1.0 - decay)
        fast[name].copy_(average)


def floating_state(net: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``net``'s floating-point state (parameters, frozen or not, and BatchNorm statistics; not
    the integer batch counters): what :func:`lookahead_update` averages."""
    return {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}


def lookahead_step(
    slow: Mapping[str, Tensor], net: nn.Module, step: int, total: int, every: int, decay: float, power: float
) -> None:
    """The lookahead after optimizer step ``step`` of ``total`` (1-based: the steps done, this one's included), in
    place: every ``every`` steps :func:`lookahead_update` with :func:`lookahead_decay`, and after the last step
    ``fast = slow``, so that training ends on the average (airbench94; the steps since the last update are dropped).

    Args:
        slow: the moving average (:func:`floating_state` of ``net`` as training starts).
        net: the net whose weights are the fast ones (its ``state_dict()`` is read only when something is done).
        step, total: optimizer steps done and in all.
        every, decay, power: see :func:`lookahead_decay`.
    """
    if step % every == 0:
        lookahead_update(slow, net.state_dict(), lookahead_decay(step, total, decay, every, power))
    if step >= total:
        lookahead_update(slow, net.state_dict(), 1.0)


class _SplitBatches(Protocol):
    def eval_batches(self, split: str, limit: int | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]: ...


def whitening_images(datamodule: _SplitBatches, count: int) -> Tensor:
    """The training images :meth:`AirbenchNet.whiten_from` is given: ``count`` of the training split drawn at random
    with a fixed seed (all of it if it is smaller), normalized and not augmented (the DataModule's ``eval_batches``),
    so every run on the same data whitens from the same images.

    Returns:
        float ``[min(count, N_train), C, H, W]``, on the device the DataModule's images are on.
    """
    return torch.cat([inputs for inputs, _, _ in datamodule.eval_batches("train", limit=count)])


def freeze_whitening_bias(net: AirbenchNet, epoch: int, bias_epochs: int) -> None:
    """Before an optimizer step in epoch ``epoch`` (0-based): from epoch ``bias_epochs`` on, drop the whitening
    bias's gradient, so that the optimizer leaves the bias as it is (SGD skips a parameter without a gradient: no
    momentum, no weight decay), as airbench94 trains it for its first ``whiten_bias_epochs`` only."""
    if epoch >= bias_epochs:
        net.whitening_bias.grad = None
