"""Converting weights between torchvision-format ``state_dict``s and Flax variables.

The Flax modules are named after torchvision's (``conv1``, ``bn1``, ``layer1``/``block0``,
``downsample_conv``/``downsample_bn``, ``fc``), so one naming rule maps every leaf:
``params/layer1/block0/conv1/kernel`` <-> ``layer1.0.conv1.weight``. Conv kernels go from
PyTorch's OIHW to Flax's HWIO, dense kernels are transposed, BN ``scale``/``bias``/``mean``/``var``
become ``weight``/``bias``/``running_mean``/``running_var``.

Typical use, with ImageNet weights downloaded by the user::

    import torch, resnet_jax
    state_dict = torch.load("resnet50-11ad3fa6.pth")          # torchvision's IMAGENET1K_V2 file
    variables = resnet_jax.from_torchvision("resnet50", state_dict)
    logits = resnet_jax.create_model("resnet50").apply(variables, images, train=False)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models.analysis import abstract_variables
from resnet_jax.models.layout import is_scanned, scan_layout, unscan_layout
from resnet_jax.models.registry import create_model

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias",
               "mean": "running_mean", "var": "running_var"}
_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_BLOCK = re.compile(r"block(\d+)")
_MAX_LISTED = 12


# fastai's SimpleSelfAttention: a spectral-normalised Conv1d (PyTorch's weight_orig, u, v).
_ATTENTION_NAMES = {"kernel": "conv.weight_orig", "gamma": "gamma", "u": "conv.weight_u",
                    "v": "conv.weight_v"}


def _torch_key(path: tuple[str, ...]) -> str:
    *modules, leaf = path[1:]  # drop the collection ("params" / "batch_stats")
    parts = []
    for name in modules:
        block = _BLOCK.fullmatch(name)
        parts.append(block.group(1) if block else _MODULE_NAMES.get(name, name))
    names = _ATTENTION_NAMES if modules and modules[-1] == "sa" else _LEAF_NAMES
    return ".".join(parts + [names[leaf]])


def _to_torch_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # HWIO -> OIHW
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 3:  # 1D conv: WIO -> OIW
        return value.transpose(2, 1, 0)
    if value.ndim == 2:  # (in, out) -> (out, in)
        return value.T
    return value


def _from_torch_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 3:  # OIW -> WIO
        return value.transpose(2, 1, 0)
    if value.ndim == 2:
        return value.T
    return value


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu().float().numpy()
    return np.asarray(value)


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): leaf for path, leaf in leaves}


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def _listed(keys: set[str] | list[str]) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _expected(name: str, options: dict[str, Any]) -> dict[str, tuple[tuple[str, ...], Any]]:
    """torch key -> (Flax path, abstract Flax leaf) for model ``name`` built with ``options``."""
    model = create_model(name, **options)
    size = 32 if model.stem == "cifar" else 224
    shapes = abstract_variables(model, (1, size, size, model.in_channels))
    return {_torch_key(path): (path, leaf) for path, leaf in _flat(shapes).items()}


def from_torchvision(name: str, state_dict: Mapping[str, Any], **options: Any) -> dict[str, Any]:
    """Flax variables (``{"params", "batch_stats"}``) for model ``name`` from a torchvision-format
    ``state_dict`` of torch tensors or numpy arrays.

    ``num_classes`` is taken from ``fc.weight`` unless given; other ``options`` are passed to
    ``create_model``. Every key must match in name and shape (``num_batches_tracked`` is ignored):
    a missing, unexpected or mis-shaped key raises a ``ValueError`` naming it, and nothing
    half-converted is returned. With ``scan_units=True`` the result has the scanned layout.
    """
    scanned = options.pop("scan_units", False)
    if "num_classes" not in options and "fc.weight" in state_dict:
        options["num_classes"] = int(np.shape(state_dict["fc.weight"])[0])
    expected = _expected(name, options)
    given = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    missing, unexpected = set(expected) - given, given - set(expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    flat = {}
    wrong_shape = []
    for key in sorted(given & set(expected)):
        path, leaf = expected[key]
        value = _from_torch_layout(_as_numpy(state_dict[key]))
        if value.shape != leaf.shape:
            torch_shape = _to_torch_layout(np.empty(leaf.shape, np.uint8)).shape
            wrong_shape.append(f"{key} {tuple(np.shape(state_dict[key]))} (expected {torch_shape})")
            continue
        flat[path] = jnp.asarray(value, leaf.dtype)
    if wrong_shape:
        problems.append(f"mis-shaped keys: {_listed(wrong_shape)}")
    if problems:
        raise ValueError(
            f"state_dict does not match model {name!r} with options {options}: "
            + "; ".join(problems)
        )
    variables = _unflatten(flat)
    return scan_layout(variables) if scanned else variables


def to_torchvision(
    name: str, variables: Mapping[str, Any], **options: Any
) -> dict[str, np.ndarray]:
    """A torchvision-format ``state_dict`` (numpy arrays) from Flax ``variables`` of model ``name``.

    Load it into PyTorch with
    ``net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})``.
    Variables in the ``scan_units=True`` layout are accepted as they are.
    """
    options.pop("scan_units", None)
    if is_scanned(variables):
        variables = unscan_layout(variables)
    params = variables["params"]
    if "num_classes" not in options and "fc" in params:
        options["num_classes"] = int(np.shape(params["fc"]["bias"])[0])
    expected = _expected(name, options)
    flat = _flat({c: variables[c] for c in ("params", "batch_stats") if c in variables})
    by_key = {_torch_key(path): (path, value) for path, value in flat.items()}
    missing, unexpected = set(expected) - set(by_key), set(by_key) - set(expected)
    wrong = [
        f"{'/'.join(by_key[k][0])} {np.shape(by_key[k][1])}"
        for k in set(by_key) & set(expected) if np.shape(by_key[k][1]) != expected[k][1].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"variables do not match model {name!r} with options {options}: "
            f"missing {_listed({'/'.join(expected[k][0]) for k in missing}) or 'none'}; "
            f"unexpected {_listed({'/'.join(by_key[k][0]) for k in unexpected}) or 'none'}; "
            f"mis-shaped {_listed(wrong) or 'none'}"
        )
    state_dict = {k: _to_torch_layout(np.asarray(v, np.float32)) for k, (_, v) in by_key.items()}
    for key in list(state_dict):
        if key.endswith(".running_mean"):  # torch BN buffers; 0 as for a freshly converted net
            state_dict[key[: -len("running_mean")] + "num_batches_tracked"] = np.array(0, np.int64)
    return state_dict
