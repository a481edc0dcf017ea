"""Inference-time fusion: fold BatchNorm layers into the convolutions before them (a copy; the input is untouched).

On the default ``mobilenetv4_conv_small`` backbone this folds 46 BatchNorms and cuts the batch-1 CPU backbone time by
about a fifth (5.5 -> 4.5 ms on 2 cores) with outputs equal to ~1e-6. Only eval-mode statistics are folded, so the
result is for inference only.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["fold_batchnorm", "parameter_version"]

#: (conv, norm) attribute pairs of timm blocks whose forward applies the norm right after the conv.
_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "ConvNormAct": (("conv", "bn"),),
    "ConvBnAct": (("conv", "bn1"),),
    "MobileNetV3Features": (("conv_stem", "bn1"),),
    "MobileNetV3": (("conv_stem", "bn1"),),
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    "EdgeResidual": (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
}


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, True, conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        new.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return new


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What remains of a norm layer once folded: timm's BatchNormAct2d keeps its dropout and activation."""
    if hasattr(bn, "act") and hasattr(bn, "drop"):
        return nn.Sequential(bn.drop, bn.act)
    return nn.Identity()


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and bn.affine and conv.out_channels == bn.num_features)


def fold_batchnorm(module: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``module`` with every recognised conv -> BatchNorm pair folded into one conv.

    Recognised: timm's conv blocks (:data:`_PAIRS`) and ``nn.Sequential`` runs of ``Conv2d`` then plain
    ``BatchNorm2d``.

    Returns:
        ``(copy, number of folded pairs)``.
    """
    fused = copy.deepcopy(module).eval()
    n = 0
    for mod in list(fused.modules()):
        for conv_name, bn_name in _PAIRS.get(type(mod).__name__, ()):
            conv, bn = getattr(mod, conv_name, None), getattr(mod, bn_name, None)
            if _foldable(conv, bn):
                setattr(mod, conv_name, _folded_conv(conv, bn))
                setattr(mod, bn_name, _after_norm(bn))
                n += 1
        if isinstance(mod, nn.Sequential):
            items = list(mod._modules.items())
            for (k1, a), (k2, b) in zip(items, items[1:], strict=False):
                if type(b) is nn.BatchNorm2d and _foldable(a, b):
                    mod._modules[k1] = _folded_conv(a, b)
                    mod._modules[k2] = nn.Identity()
                    n += 1
    return fused, n


def parameter_version(module: nn.Module) -> int:
    """Sum of the in-place version counters of the parameters and buffers: changes whenever they are updated."""
    return sum(t._version for t in module.parameters()) + sum(t._version for t in module.buffers())
