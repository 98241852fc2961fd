"""Converting variables between the unrolled layout and the ``scan_units=True`` layout.

Unrolled: ``layerS/block0``, ``layerS/block1``, ... Scanned: ``layerS/block0`` (the unit that may
change the shape) and ``layerS/blocks/unit`` holding units 1..n-1 stacked on a leading axis.
Both describe the same network, so checkpoints and converted weights move freely between them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

_STAGE = re.compile(r"layer\d+")
_BLOCK = re.compile(r"block(\d+)")


def _map_stages(variables: Mapping[str, Any], fn: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for collection, tree in variables.items():
        out[collection] = {
            name: fn(sub) if _STAGE.fullmatch(name) and isinstance(sub, Mapping) else sub
            for name, sub in tree.items()
        }
    return out


def is_scanned(variables: Mapping[str, Any]) -> bool:
    """Whether ``variables`` are in the ``scan_units=True`` layout."""
    return any("blocks" in sub for tree in variables.values() for name, sub in tree.items()
               if _STAGE.fullmatch(name) and isinstance(sub, Mapping))


def scan_layout(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Unrolled variables -> the layout of the same model built with ``scan_units=True``."""

    def stack(stage: Mapping[str, Any]) -> dict[str, Any]:
        units = sorted((int(_BLOCK.fullmatch(k).group(1)), v) for k, v in stage.items()
                       if _BLOCK.fullmatch(k))
        if len(units) < 2:
            return dict(stage)
        rest = [v for _, v in units[1:]]
        return {"block0": units[0][1],
                "blocks": {"unit": jax.tree.map(lambda *xs: jnp.stack(xs), *rest)}}

    return _map_stages(variables, stack)


def unscan_layout(variables: Mapping[str, Any]) -> dict[str, Any]:
    """``scan_units=True`` variables -> the unrolled layout (``block0``, ``block1``, ...)."""

    def unstack(stage: Mapping[str, Any]) -> dict[str, Any]:
        if "blocks" not in stage:
            return dict(stage)
        stacked = stage["blocks"]["unit"]
        n = jax.tree.leaves(stacked)[0].shape[0]
        out = {"block0": stage["block0"]}
        for i in range(n):
            out[f"block{i + 1}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
        return out

    return _map_stages(variables, unstack)
