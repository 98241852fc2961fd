"""PyTorch twins of the benchmarked networks, for the side-by-side train-step comparison.

CIFAR ResNet-20/32/44/56/110/1202 (He et al. 2015, Sec. 4.2: 3x3 stem of 16 channels, stages of
16/32/64, option A shortcuts: stride-2 subsampling and zero-padded channels, half on each side,
as resnet_jax's ``shortcut="A"``), torchvision's ImageNet ResNets from tests/torch_reference, and
ResNet-D (Bag of Tricks §4.2, timm's ``resnet50d``: deep 3x3 stem of 32/32/64 channels, 2x2
average pool before the stride-1 projection shortcut), and SE networks (Hu et al. 2018: timm's
``SEModule`` after each bottleneck's last BN), e.g. ``seresnext50d_32x4d``; and fastai's
``SimpleSelfAttention`` (``with_self_attention``: xresnet's ``sa=True``); ``with_activation``
swaps every ReLU for Mish or SiLU.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import torch_reference  # noqa: E402

CIFAR_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18,
                "resnet1202": 200}


class ShortcutA(nn.Module):
    """Option A: parameter-free; subsample, then zero-pad the new channels on both sides."""

    def __init__(self, stride: int, extra: int):
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class CifarBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        reshape = stride != 1 or inplanes != planes
        self.shortcut = ShortcutA(stride, planes - inplanes) if reshape else nn.Identity()
        self.relu = nn.ReLU()  # modules, not F.relu: with_activation swaps them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, inplanes = [], 16
        for s, planes in enumerate((16, 32, 64)):
            for i in range(n):
                layers.append(CifarBasicBlock(inplanes, planes, 2 if s > 0 and i == 0 else 1))
                inplanes = planes
        self.layers = nn.Sequential(*layers)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


def resnet_d(name: str, num_classes: int, down_pool: str = "avg") -> torch_reference.ResNet:
    """torchvision's ResNet ``name`` turned into ResNet-D, as resnet_jax's ``stem="deep",
    avg_down=True`` (and ``down_pool``)."""
    net = torch_reference.build(name, num_classes)
    net.conv1 = nn.Sequential(*_conv_bn_relu(3, 32, 2), *_conv_bn_relu(32, 32, 1),
                              nn.Conv2d(32, 64, 3, 1, 1, bias=False))
    for stage in (net.layer2, net.layer3, net.layer4):
        conv = stage[0].downsample[0]
        stage[0].downsample = nn.Sequential(
            nn.MaxPool2d(2, 2, ceil_mode=True) if down_pool == "max"
            else nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
            nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=False),
            stage[0].downsample[1])
    return net


class SEModule(nn.Module):
    """timm's SEModule: pool, 1x1 conv to C/16 with bias, ReLU, 1x1 conv back, sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()


def with_se(net: torch_reference.ResNet) -> torch_reference.ResNet:
    """Every bottleneck's ``bn3`` followed by an SE gate: state_dict keys ``bn3.0.*`` (the BN)
    and ``bn3.1.fc1/fc2.*`` (timm's ``bn3.*`` and ``se.fc1/fc2.*``)."""
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            block.bn3 = nn.Sequential(block.bn3, SEModule(block.bn3.num_features))
    return net


class SimpleSelfAttention(nn.Module):
    """fastai.layers.SimpleSelfAttention (ks=1, sym=False): a spectral-normalised 1x1 Conv1d
    (kaiming-normal), the channels' Gram matrix, ``gamma * (x x^T) conv(x) + x``, gamma 0."""

    def __init__(self, n_in: int):
        super().__init__()
        conv = nn.Conv1d(n_in, n_in, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight)
        self.conv = nn.utils.spectral_norm(conv)
        self.gamma = nn.Parameter(torch.tensor([0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.size()
        x = x.view(*size[:2], -1)
        convx = self.conv(x)
        xxt = torch.bmm(x, x.permute(0, 2, 1).contiguous())
        return (self.gamma * torch.bmm(xxt, convx) + x).view(*size).contiguous()


def with_self_attention(net: torch_reference.ResNet) -> torch_reference.ResNet:
    """fastai's placement: the first stage's last unit ends its branch (after SE) with
    ``SimpleSelfAttention``; keys ``layer1.<last>.bn3.<i>.conv.weight_orig``, ``gamma``, ..."""
    block = net.layer1[-1]
    parts = list(block.bn3) if isinstance(block.bn3, nn.Sequential) else [block.bn3]
    block.bn3 = nn.Sequential(*parts, SimpleSelfAttention(parts[0].num_features))
    return net


# The PyTorch modules of resnet_jax.models.blocks.NONLINEARITIES.
ACTIVATIONS = {"relu": nn.ReLU, "mish": nn.Mish, "silu": nn.SiLU}


def with_activation(net: nn.Module, activation: str) -> nn.Module:
    """Every ``nn.ReLU`` (stem, units, SE gates) replaced by ``activation``, as the JAX model's
    ``activation`` option does."""
    for module in list(net.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, ACTIVATIONS[activation]())
    return net


def build(name: str, num_classes: int, activation: str = "relu",
          self_attention: bool = False, down_pool: str = "avg") -> nn.Module:
    """The PyTorch network with resnet_jax's architecture for ``name`` and its
    ``activation`` / ``self_attention`` / ``down_pool`` model options."""
    if name in CIFAR_DEPTHS:
        if self_attention:
            raise ValueError(f"no PyTorch twin for {name!r} with self-attention (bottleneck "
                             "networks only)")
        return with_activation(CifarResNet(CIFAR_DEPTHS[name], num_classes), activation)
    plain = name.removeprefix("se")
    base = re.sub(r"^(\D+\d+)d", r"\1", plain)  # resnext50d_32x4d -> resnext50_32x4d
    if base not in torch_reference.TORCHVISION:
        raise ValueError(f"no PyTorch twin for {name!r}; have {sorted(CIFAR_DEPTHS)}, "
                         f"{sorted(torch_reference.TORCHVISION)}, their ResNet-D ('d') and SE "
                         "('se') forms")
    if base == plain and down_pool != "avg":
        raise ValueError(f"down_pool applies to ResNet-D ('d') twins, not {name!r}")
    net = (resnet_d(base, num_classes, down_pool) if base != plain
           else torch_reference.build(base, num_classes))
    net = with_se(net) if name != plain else net
    if self_attention:
        net = with_self_attention(net)
    return with_activation(net, activation)
