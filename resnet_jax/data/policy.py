"""The ``auto_augment`` option parsed: timm's RandAugment strings and TrivialAugment.

Kept apart from ``presets`` (which applies it) and ``autoaugment`` (which implements the ops)
so both, and config validation, can read it without importing TensorFlow or each other.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any


@dataclasses.dataclass(frozen=True)
class AutoAugmentPolicy:
    """A parsed ``auto_augment`` option: ``kind`` "rand" (timm's RandAugment; the other fields
    as its config string sets them) or "trivial" (TrivialAugmentWide; the fields unused)."""

    kind: str
    magnitude: float = 10.0  # m: timm's default when the string sets none
    num_layers: int = 2  # n
    magnitude_std: float = 0.0  # mstd (> 100: uniform in [0, m], as timm)
    magnitude_max: float = 10.0  # mmax
    increasing: bool = False  # inc
    prob: float = 0.5  # p: probability of applying each chosen op


AUTO_AUGMENT_HELP = (
    "use '' (off), 'trivial' (TrivialAugmentWide) or a timm RandAugment string "
    "'rand-m9-mstd0.5-inc1' with sections m (magnitude), n (ops per image), mstd (magnitude "
    "std), mmax (magnitude cap), inc (0/1: increasing ops), p (probability of each op)"
)


def parse_auto_augment(spec: str) -> AutoAugmentPolicy | None:
    """``auto_augment`` as a policy (None for ""); a bad string is a ValueError saying why.

    timm's ``rand_augment_transform`` syntax: "rand" and dash-separated sections KEYVALUE.
    """
    if not spec:
        return None
    if not isinstance(spec, str):
        raise ValueError(f"{spec!r} is not a string; {AUTO_AUGMENT_HELP}")
    if spec == "trivial":
        return AutoAugmentPolicy("trivial")
    head, *sections = spec.split("-")
    if head != "rand":
        raise ValueError(f"unknown policy {spec!r}; {AUTO_AUGMENT_HELP}")
    fields: dict[str, Any] = {}
    convert = {"m": ("magnitude", float), "n": ("num_layers", int),
               "mstd": ("magnitude_std", float), "mmax": ("magnitude_max", float),
               "inc": ("increasing", lambda v: bool(int(v))), "p": ("prob", float)}  # fmt: skip
    for section in sections:
        key, value = (re.split(r"(\d.*)", section) + [""])[:2]
        if key not in convert:
            raise ValueError(f"unknown section {section!r} in {spec!r}; {AUTO_AUGMENT_HELP}")
        name, kind = convert[key]
        try:
            fields[name] = kind(value)
        except ValueError:
            raise ValueError(f"section {section!r} of {spec!r} needs a number") from None
    policy = AutoAugmentPolicy("rand", **fields)
    if policy.magnitude_std > 100:
        policy = dataclasses.replace(policy, magnitude_std=math.inf)
    if policy.num_layers < 1 or not 0.0 <= policy.prob <= 1.0 or policy.magnitude < 0:
        raise ValueError(f"{spec!r}: n must be >= 1, p in [0, 1] and m >= 0")
    return policy
