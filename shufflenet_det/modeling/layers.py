"""Building blocks shared by the model families: conv-norm-act, normalization choice, freezing."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d

NORMS = {"BN": nn.BatchNorm2d, "FrozenBN": FrozenBatchNorm2d, "SyncBN": nn.SyncBatchNorm}  # detectron2's names


def get_norm(norm: str, channels: int) -> nn.Module:
    if norm not in NORMS:
        raise ValueError(f"unknown norm '{norm}': expected one of {', '.join(NORMS)}")
    return NORMS[norm](channels)


class ConvNormAct(nn.Sequential):
    """Bias-free conv, norm and optional ReLU (children ``conv``, ``norm``, ``act``); ``speed.apply_conv_form``
    replaces it by faster forms of the same function."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 norm: str = "BN", relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.norm = get_norm(norm, out_channels)
        if relu:
            self.act = nn.ReLU(inplace=True)


def channel_shuffle(x: torch.Tensor, groups: int, inverse: bool = False) -> torch.Tensor:
    """The paper's shuffle: view channels as (groups, n), transpose, flatten. ``inverse=True`` applies the
    inverse permutation (view as (n, groups)), the official release's: some of its checkpoints need it.
    torch's operator, unlike those reshapes, keeps a channels_last input channels_last (faster convs after it)."""
    return F.channel_shuffle(x, x.shape[1] // groups if inverse else groups)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int, inverse: bool = False) -> None:
        super().__init__()
        self.groups = groups
        self.inverse = inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups, self.inverse)

    def permutation(self, channels: int, device: Optional[torch.device] = None) -> torch.Tensor:
        """Indices ``p`` with ``self(x) == x[:, p]``."""
        index = torch.arange(channels, dtype=torch.float32, device=device).reshape(1, channels, 1, 1)
        return channel_shuffle(index, self.groups, self.inverse).flatten().long()

    def extra_repr(self) -> str:
        return f"groups={self.groups}, inverse={self.inverse}"


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every (Sync)BatchNorm in ``module`` by a FrozenBatchNorm2d with its statistics; returns the
    converted module (a new object for a BatchNorm passed directly)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.running_mean is not None:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        converted = convert_frozen_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def init_weights(model: nn.Module) -> None:
    """torchvision's classifier initialization: He-normal convs, unit BatchNorm, small normal classifier."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
