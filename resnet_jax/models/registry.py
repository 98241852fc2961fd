"""Every named network of both papers (and the common descendants), one line each.

``create_model(name, **options)`` builds one; ``list_models()`` names them all. Each name is also
importable as a partial of :class:`ResNet` (``resnet_jax.ResNet50(num_classes=10)``).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
from typing import Any

from resnet_jax.models.resnet import ResNet

_REGISTRY: dict[str, dict[str, Any]] = {}


def register(name: str, **options: Any) -> functools.partial:
    """Registers ``name`` as ``ResNet(**options)`` and returns the partial."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = options
    return functools.partial(ResNet, **options)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"preact_*"``), grouped
    by family in registration order (ImageNet networks first, then CIFAR ones)."""
    return [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)]


def model_options(name: str) -> dict[str, Any]:
    """The options a registered name binds (a copy)."""
    _check_name(name)
    return dict(_REGISTRY[name])


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} resnet_jax.list_models() lists all "
            f"{len(_REGISTRY)} names."
        )


def create_model(name: str, **options: Any) -> ResNet:
    """Builds the registered network ``name``; ``options`` override any ResNet attribute.

    Example: ``create_model("resnet50", num_classes=10, dtype=jnp.bfloat16, axis_name="batch")``.
    """
    _check_name(name)
    fields = {f.name for f in dataclasses.fields(ResNet)} - {"parent", "name"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for model {name!r}; valid options: {sorted(fields)}"
        )
    return ResNet(**{**_REGISTRY[name], **options})


# ImageNet networks: 2015 paper Table 1. Default stride placement is v1.5 (torchvision).
_IMAGENET = dict(stem="imagenet", stage_widths=(64, 128, 256, 512), shortcut="B")
_BASIC = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
_BOTTLENECK = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}

ResNet18 = register("resnet18", **_IMAGENET, stage_sizes=_BASIC[18])
ResNet34 = register("resnet34", **_IMAGENET, stage_sizes=_BASIC[34])
ResNet50 = register("resnet50", **_IMAGENET, stage_sizes=_BOTTLENECK[50], bottleneck=True)
ResNet101 = register("resnet101", **_IMAGENET, stage_sizes=_BOTTLENECK[101], bottleneck=True)
ResNet152 = register("resnet152", **_IMAGENET, stage_sizes=_BOTTLENECK[152], bottleneck=True)
ResNet200 = register("resnet200", **_IMAGENET, stage_sizes=_BOTTLENECK[200], bottleneck=True)

# The 2015 paper's own bottleneck: stride 2 on the first 1x1 (v1).
_V1 = dict(_IMAGENET, bottleneck=True, stride_in_1x1=True)
ResNet50V1 = register("resnet50_v1", **_V1, stage_sizes=_BOTTLENECK[50])
ResNet101V1 = register("resnet101_v1", **_V1, stage_sizes=_BOTTLENECK[101])
ResNet152V1 = register("resnet152_v1", **_V1, stage_sizes=_BOTTLENECK[152])
ResNet200V1 = register("resnet200_v1", **_V1, stage_sizes=_BOTTLENECK[200])

# Identity Mappings (2016): full pre-activation, stride on the 3x3 as in fb.resnet.torch.
_PREACT = dict(_IMAGENET, order="full_preact")
PreActResNet18 = register("preact_resnet18", **_PREACT, stage_sizes=_BASIC[18])
PreActResNet34 = register("preact_resnet34", **_PREACT, stage_sizes=_BASIC[34])
PreActResNet50 = register(
    "preact_resnet50", **_PREACT, stage_sizes=_BOTTLENECK[50], bottleneck=True)
PreActResNet101 = register(
    "preact_resnet101", **_PREACT, stage_sizes=_BOTTLENECK[101], bottleneck=True)
PreActResNet152 = register(
    "preact_resnet152", **_PREACT, stage_sizes=_BOTTLENECK[152], bottleneck=True)
PreActResNet200 = register(
    "preact_resnet200", **_PREACT, stage_sizes=_BOTTLENECK[200], bottleneck=True)

# Plain twins of Fig. 3 (middle) / Table 2: the same layers without shortcuts.
Plain18 = register("plain18", **dict(_IMAGENET, shortcut="none"), stage_sizes=_BASIC[18])
Plain34 = register("plain34", **dict(_IMAGENET, shortcut="none"), stage_sizes=_BASIC[34])

# ResNeXt (Xie et al. 2017) and Wide ResNet-50/101 (torchvision's definitions).
_WIDE = dict(_IMAGENET, bottleneck=True)
ResNeXt50_32x4d = register(
    "resnext50_32x4d", **_WIDE, stage_sizes=_BOTTLENECK[50], groups=32, base_width=4)
ResNeXt101_32x8d = register(
    "resnext101_32x8d", **_WIDE, stage_sizes=_BOTTLENECK[101], groups=32, base_width=8)
WideResNet50_2 = register("wide_resnet50_2", **_WIDE, stage_sizes=_BOTTLENECK[50], base_width=128)
WideResNet101_2 = register(
    "wide_resnet101_2", **_WIDE, stage_sizes=_BOTTLENECK[101], base_width=128)

# ResNet-D (He et al. 2019, "Bag of Tricks" §4.2): deep stem and average-pool downsampling.
ResNet50D = register(
    "resnet50d", **dict(_IMAGENET, stem="deep"), stage_sizes=_BOTTLENECK[50], bottleneck=True,
    avg_down=True)

# Squeeze-and-excitation (Hu et al. 2018, Table 2): SE (r = 16) in every unit of ResNet-50 (v1.5, as
# timm's seresnet50) and ResNeXt-50 32x4d; and with ResNet-D's stem and shortcuts: fastai's
# xse_resnext50 (Imagenette leaderboard) with activation="mish".
_SE = dict(_WIDE, stage_sizes=_BOTTLENECK[50], se_reduction=16)
SEResNet50 = register("seresnet50", **_SE)
SEResNeXt50_32x4d = register("seresnext50_32x4d", **_SE, groups=32, base_width=4)
SEResNeXt50D_32x4d = register(
    "seresnext50d_32x4d", **dict(_SE, stem="deep"), avg_down=True, groups=32, base_width=4)

# CIFAR networks, 2015 paper §4.2: 6n+2 layers, widths 16-32-64, option A shortcuts.
_CIFAR = dict(stem="cifar", stem_width=16, stage_widths=(16, 32, 64), num_classes=10, shortcut="A")


def _cifar_depth(depth: int, per_unit: int) -> tuple[int, int, int]:
    n, rest = divmod(depth - 2, per_unit * 3)
    assert rest == 0, depth
    return (n, n, n)


ResNet20 = register("resnet20", **_CIFAR, stage_sizes=_cifar_depth(20, 2))
ResNet32 = register("resnet32", **_CIFAR, stage_sizes=_cifar_depth(32, 2))
ResNet44 = register("resnet44", **_CIFAR, stage_sizes=_cifar_depth(44, 2))
ResNet56 = register("resnet56", **_CIFAR, stage_sizes=_cifar_depth(56, 2))
ResNet110 = register("resnet110", **_CIFAR, stage_sizes=_cifar_depth(110, 2))
ResNet1202 = register("resnet1202", **_CIFAR, stage_sizes=_cifar_depth(1202, 2))

_PLAIN_CIFAR = dict(_CIFAR, shortcut="none")
Plain20 = register("plain20", **_PLAIN_CIFAR, stage_sizes=_cifar_depth(20, 2))
Plain32 = register("plain32", **_PLAIN_CIFAR, stage_sizes=_cifar_depth(32, 2))
Plain44 = register("plain44", **_PLAIN_CIFAR, stage_sizes=_cifar_depth(44, 2))
Plain56 = register("plain56", **_PLAIN_CIFAR, stage_sizes=_cifar_depth(56, 2))
Plain110 = register("plain110", **_PLAIN_CIFAR, stage_sizes=_cifar_depth(110, 2))

# Identity Mappings on CIFAR. ResNet-110 keeps option A, so it differs from resnet110 only in the
# activation order (what Table 2 compares); the bottleneck 164/1001 (9n+2) use projection
# shortcuts as in the paper's released code.
PreActResNet110 = register(
    "preact_resnet110", **dict(_CIFAR, order="full_preact"), stage_sizes=_cifar_depth(110, 2))
_PREACT_BOTTLENECK_CIFAR = dict(_CIFAR, order="full_preact", bottleneck=True, shortcut="B")
PreActResNet164 = register(
    "preact_resnet164", **_PREACT_BOTTLENECK_CIFAR, stage_sizes=_cifar_depth(164, 3))
PreActResNet1001 = register(
    "preact_resnet1001", **_PREACT_BOTTLENECK_CIFAR, stage_sizes=_cifar_depth(1001, 3))

# Wide ResNet-28-10 (Zagoruyko & Komodakis 2016): depth 6n+4 with n=4, pre-activation basic
# units widened k=10, 1x1 projections.
WRN28_10 = register(
    "wrn28_10", **dict(_CIFAR, order="full_preact", shortcut="B"), stage_sizes=(4, 4, 4),
    width_multiplier=10)

# ResNeXt-29 8x64d for CIFAR (Xie et al. 2017 §5.3): 64-wide stem, 3 stages of 3 bottlenecks.
ResNeXt29_8x64d = register(
    "resnext29_8x64d",
    **dict(_CIFAR, stem_width=64, stage_widths=(64, 128, 256), shortcut="B"),
    stage_sizes=(3, 3, 3), bottleneck=True, groups=8, base_width=64)

__all__ = [
    "create_model", "list_models", "model_options", "register",
    *(n for n, v in dict(globals()).items() if isinstance(v, functools.partial) and n[0].isupper()),
]
