"""Hover-Net training losses (Graham et al. 2019, section 3.3), and target cropping.

NP branch: cross-entropy + soft Dice on the softmax probabilities. As hover_net's code (TF and
PyTorch) and MONAI's ``HoVerNetLoss``, the Dice term is summed over both classes (background and
nucleus) and pooled over the whole batch, with smoothing 1e-3.
HV branch: MSE between predicted and target maps over all pixels, plus MSGE: the squared error of
the horizontal derivative of the horizontal map and of the vertical derivative of the vertical
map, averaged over nucleus pixels only. Derivatives use hover_net's 5x5 "Sobel" kernel,
``k(dx, dy) = dx / (dx^2 + dy^2)`` (0 at the centre), with zero padding; on a ramp of slope ``c``
it returns ``12 c`` (the sum of ``dx^2 / (dx^2 + dy^2)`` over the 24 neighbours).
hover_net's PyTorch port builds that kernel with ``torch.meshgrid`` (default 'ij' indexing), which
differentiates each map along the other axis; we follow the paper and MONAI instead.
TP branch (when present): cross-entropy + Dice summed over the type classes.

Default weights: hover_net's TF release config (``loss_term = {bce: 1, dice: 1, mse: 2, msge: 1}``),
also MONAI's ``HoVerNetLoss`` defaults; hover_net's PyTorch port uses ``mse: 1``.

Targets come from a nuclei structure (spec section 3): ``"np"`` ``(B, H, W)`` in {0, 1},
``"hv"`` ``(B, 2, H, W)`` (horizontal, vertical), optional ``"tp"`` ``(B, H, W)`` type ids. When
the network output is smaller than its input (valid convolutions), targets are centre-cropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

MSGE_KERNEL_SIZE = 5
DICE_SMOOTH = 1.0e-3


def center_crop(x: Tensor, size: Sequence[int]) -> Tensor:
    """Centre-crop the last two dims of ``x`` ``(..., H, W)`` to ``size`` ``(h, w)``.

    An odd margin leaves the extra row/column at the end (hover_net's ``crop_op``).
    """
    h, w = int(size[0]), int(size[1])
    H, W = x.shape[-2:]
    if h > H or w > W or h < 1 or w < 1:
        raise ValueError(f"cannot centre-crop a {H}x{W} map to {h}x{w}")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top : top + h, left : left + w]


def crop_targets(targets: Mapping[str, Tensor], size: Sequence[int]) -> dict[str, Tensor]:
    """Centre-crop every target map (``(B, H, W)`` or ``(B, C, H, W)``) to ``size`` ``(h, w)``."""
    return {name: center_crop(value, size) for name, value in targets.items()}


def structure_to_targets(structure: Tensor) -> dict[str, Tensor]:
    """Targets from a batch of nuclei structures ``(B, 3, H, W)`` (semantic in {0, 1}, horizontal,
    vertical; spec section 3, before any [-1, 1] scaling for diffusion).

    Returns:
        ``{"np": (B, H, W) int64, "hv": (B, 2, H, W) float}``.
    """
    if structure.ndim != 4 or structure.shape[1] != 3:
        raise ValueError(f"structure must be (B, 3, H, W), got {tuple(structure.shape)}")
    semantic = structure[:, 0]
    if not torch.all((semantic == 0) | (semantic == 1)):
        raise ValueError("structure channel 0 (semantic) must hold only 0 and 1; rescale [-1, 1] structures first")
    return {"np": semantic.long(), "hv": structure[:, 1:3].float()}


def sobel_kernels(size: int = MSGE_KERNEL_SIZE) -> tuple[Tensor, Tensor]:
    """hover_net's derivative kernels ``(size, size)``: ``(d/dx, d/dy)``, x along columns."""
    if size < 3 or size % 2 == 0:
        raise ValueError(f"Sobel kernel size must be odd and >= 3, got {size}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    norm = dx * dx + dy * dy
    norm[size // 2, size // 2] = 1.0  # the centre weight is 0 either way
    return (dx / norm).float(), (dy / norm).float()


def hv_gradients(hv: Tensor, size: int = MSGE_KERNEL_SIZE) -> Tensor:
    """``(B, 2, H, W)`` -> ``(B, 2, H, W)``: d/dx of channel 0 (horizontal map), d/dy of channel 1."""
    kx, ky = sobel_kernels(size)
    kernels = torch.stack([kx, ky])[:, None].to(hv)  # (2, 1, k, k), one per channel
    return F.conv2d(hv, kernels, padding=size // 2, groups=2)


def soft_dice_loss(logits: Tensor, target: Tensor, *, smooth: float = DICE_SMOOTH) -> Tensor:
    """Sum over classes of ``1 - (2 |P.T| + s) / (|P| + |T| + s)``, pooled over the batch.

    Args:
        logits: ``(B, C, H, W)``; softmax over C gives P.
        target: ``(B, H, W)`` class ids in ``[0, C)``; one-hot gives T.
    """
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2).to(probs)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)).sum()


def msge_loss(pred: Tensor, target: Tensor, focus: Tensor, *, size: int = MSGE_KERNEL_SIZE) -> Tensor:
    """Mean squared error of the HV-map gradients over ``focus`` pixels (both channels averaged).

    Args:
        pred, target: ``(B, 2, H, W)`` horizontal and vertical maps.
        focus: ``(B, H, W)``, 1 on nucleus pixels; an empty focus gives 0.
    """
    err = (hv_gradients(pred, size) - hv_gradients(target, size)) ** 2
    focus = focus.to(err)[:, None]
    return (err * focus).sum() / (2.0 * focus.sum() + 1.0e-8)


def hovernet_loss(
    outputs: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    *,
    np_ce: float = 1.0,
    np_dice: float = 1.0,
    hv_mse: float = 2.0,
    hv_msge: float = 1.0,
    tp_ce: float = 1.0,
    tp_dice: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the Hover-Net loss terms.

    Args:
        outputs: :class:`HoVerNet` output: ``"np"`` ``(B, 2, h, w)`` logits, ``"hv"`` ``(B, 2, h, w)``,
            optional ``"tp"`` ``(B, T, h, w)`` logits.
        targets: ``"np"`` ``(B, H, W)`` in {0, 1}, ``"hv"`` ``(B, 2, H, W)``, and ``"tp"`` ``(B, H, W)``
            when ``outputs`` has it; centre-cropped here when ``H, W`` exceed ``h, w``.
        np_ce, np_dice, hv_mse, hv_msge, tp_ce, tp_dice: weight of each term.

    Returns:
        ``(total, terms)``: the scalar to minimise, and each unweighted term (detached) by name.
    """
    for name in ("np", "hv"):
        if name not in outputs or name not in targets:
            raise ValueError(f"outputs and targets both need {name!r}; got {sorted(outputs)} and {sorted(targets)}")
    if ("tp" in outputs) != ("tp" in targets):
        raise ValueError("'tp' must be in both outputs and targets or in neither")
    targets = crop_targets(targets, outputs["np"].shape[-2:])  # a no-op when sizes already match
    semantic = targets["np"].long()
    if semantic.min() < 0 or semantic.max() > 1:
        raise ValueError("targets['np'] must hold only 0 and 1")
    hv_target = targets["hv"].to(outputs["hv"])
    terms = {
        "np_ce": F.cross_entropy(outputs["np"], semantic),
        "np_dice": soft_dice_loss(outputs["np"], semantic),
        "hv_mse": F.mse_loss(outputs["hv"], hv_target),
        "hv_msge": msge_loss(outputs["hv"], hv_target, semantic),
    }
    weights = {"np_ce": np_ce, "np_dice": np_dice, "hv_mse": hv_mse, "hv_msge": hv_msge}
    if "tp" in outputs:
        types = targets["tp"].long()
        terms["tp_ce"] = F.cross_entropy(outputs["tp"], types)
        terms["tp_dice"] = soft_dice_loss(outputs["tp"], types)
        weights.update(tp_ce=tp_ce, tp_dice=tp_dice)
    total = sum(weights[name] * value for name, value in terms.items())
    return total, {name: value.detach() for name, value in terms.items()}
