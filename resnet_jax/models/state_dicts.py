"""PyTorch-format state_dict files as numpy: ``.pth`` pickles (torch's safe loader) and
``.safetensors`` (no torch needed), with the usual wrappers removed and Hugging Face's ResNet
names mapped to torchvision's. ``resnet_jax.models.torchvision`` converts the result.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from resnet_jax.errors import PretrainedError

TORCH_SUFFIXES = (".pth", ".pt", ".th")
SAFETENSORS_SUFFIX = ".safetensors"
TORCH_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
HEAD = "fc"  # the classifier's module name (torchvision's)
_MAX_LISTED = 8


def listed(keys) -> str:
    """Up to a few names for an error message, weights before BN statistics."""
    keys = sorted(keys, key=lambda k: (k.startswith("batch_stats/"), k))  # weights first
    more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The torchvision-format state_dict in a PyTorch or ``.safetensors`` file, as numpy."""
    if path.lower().endswith(SAFETENSORS_SUFFIX):
        return read_safetensors(path)
    return read_torch_state_dict(path)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """The state_dict in a ``.safetensors`` file (timm's and the Hub's format), as float32 numpy
    with the same key clean-up as PyTorch files; torch is not needed."""
    if not os.path.isfile(path):
        raise PretrainedError(f"weights file {path!r} does not exist")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise PretrainedError(
            f"cannot read {path!r} as a safetensors file ({first}); it is corrupt or truncated"
        ) from None
    if not tensors:
        raise PretrainedError(f"{path!r} holds no tensors")
    return _cleaned(tensors.items())


# Hugging Face transformers' ResNet (modeling_resnet.py): ResNetConvLayer = convolution +
# normalization, ResNetShortCut = the projection, classifier = Sequential(Flatten, Linear).
_HF_KEY = re.compile(
    r"(?:resnet\.)?(?:embedder\.embedder\.(?P<stem>convolution|normalization)"
    r"|encoder\.stages\.(?P<stage>\d+)\.layers\.(?P<unit>\d+)\.(?:shortcut\.(?P<short>"
    r"convolution|normalization)|layer\.(?P<conv>\d+)\.(?P<part>convolution|normalization))"
    r"|classifier\.1)\.(?P<leaf>\w+)"
)


def is_hugging_face(keys) -> bool:
    return any(k.startswith(("resnet.embedder.", "embedder.embedder.")) for k in keys)


def from_hugging_face(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A Hugging Face ``ResNetForImageClassification``/``ResNetModel`` state_dict with
    torchvision's names (``resnet.encoder.stages.0.layers.1.layer.2.convolution.weight`` ->
    ``layer1.1.conv3.weight``); keys with no torchvision counterpart are a
    :class:`PretrainedError` naming them."""
    out, unmatched = {}, []
    for key, value in state_dict.items():
        m = _HF_KEY.fullmatch(key)
        if m is None:
            unmatched.append(key)
            continue
        g = m.groupdict()
        if g["stem"]:
            name = "conv1" if g["stem"] == "convolution" else "bn1"
        elif g["stage"] is not None:
            unit = f"layer{int(g['stage']) + 1}.{g['unit']}"
            if g["short"]:
                name = f"{unit}.downsample.{0 if g['short'] == 'convolution' else 1}"
            else:
                kind = "conv" if g["part"] == "convolution" else "bn"
                name = f"{unit}.{kind}{int(g['conv']) + 1}"
        else:
            name = HEAD
        out[f"{name}.{g['leaf']}"] = value
    if unmatched:
        raise PretrainedError(
            "Hugging Face state_dict keys with no torchvision counterpart (not a "
            f"ResNetForImageClassification?): {listed(unmatched)}"
        )
    return out


def _cleaned(items) -> dict[str, np.ndarray]:
    """Keys without ``module.``, ``linear`` read as ``fc``, no ``num_batches_tracked``; Hugging
    Face names mapped to torchvision's."""
    out = {}
    for key, value in items:
        if not hasattr(value, "shape"):
            continue
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith("linear."):  # the common CIFAR ResNet code names its classifier so
            key = HEAD + key[len("linear"):]
        if key.endswith("num_batches_tracked"):
            continue
        out[key] = np.asarray(
            value.detach().cpu().float().numpy() if hasattr(value, "detach") else value,
            np.float32,
        )
    return from_hugging_face(out) if is_hugging_face(out) else out


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """The torchvision-format state_dict in a PyTorch file, as numpy, with the usual wrappers
    (``state_dict``/``model``/``model_state_dict``, ``module.``, ``linear`` -> ``fc``) removed."""
    if not os.path.isfile(path):
        raise PretrainedError(f"weights file {path!r} does not exist")
    try:
        import torch
    except ImportError:
        raise PretrainedError(
            f"reading {path!r} needs PyTorch: pip install torch (the CPU build is enough)"
        ) from None
    try:
        # weights_only: never run code from a downloaded pickle (torch's safe loader).
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise PretrainedError(
            f"cannot read {path!r} as a PyTorch file ({first}); it is corrupt, truncated or "
            "holds pickled objects other than tensors: re-save it with "
            "torch.save(model.state_dict(), path)"
        ) from None
    for key in TORCH_WRAPPER_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not any(hasattr(v, "shape") for v in obj.values()):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise PretrainedError(
            f"{path!r} holds no state_dict of tensors (top level: {keys}); expected a "
            f"state_dict or a dict holding one under {', '.join(TORCH_WRAPPER_KEYS)}"
        )
    return _cleaned(obj.items())
