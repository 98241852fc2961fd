"""``config.init_from``: start a run from pretrained weights (ours or a PyTorch file).

Sources, as people have them:
- one of our workdirs or checkpoint directories, latest step or ``PATH@STEP``; the run's recorded
  normalisation comes along;
- a PyTorch file (``.pth``, ``.pt``, ``.th``): a bare torchvision-format state_dict, or a
  training checkpoint holding it under ``state_dict``, ``model`` or ``model_state_dict``;
  ``module.`` prefixes (DataParallel/DDP) are dropped and a classifier named ``linear`` (the
  common CIFAR ResNet code) is read as ``fc``;
- a ``.safetensors`` file with the same names (timm's and the Hugging Face Hub's format; read
  with the ``safetensors`` package, no torch needed);
- a Hugging Face ``ResNetForImageClassification`` state_dict (``resnet.embedder...``,
  ``resnet.encoder.stages.S.layers.L...``, ``classifier.1``), in either format: its names are
  mapped to torchvision's, and a key with no counterpart is named;
- named weights, ``SOURCE:MODEL[.TAG]`` (``torchvision:resnet50``, ``timm:resnet50.a1_in1k``;
  ``resnet_jax.weights``), downloaded once into the cache and verified; their normalisation
  (ImageNet mean/std) comes along, as a run's does.

Only weights are taken (params and BN statistics), never the optimizer, step or data position.
A classifier that cannot mean the new run's classes keeps its fresh initialisation: another
number of outputs, or (our runs record their class names) another class list. Any other
missing, unexpected or mis-shaped array is a :class:`PretrainedError` naming them, and nothing
is loaded half.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from resnet_jax.errors import PretrainedError
from resnet_jax.models.layout import is_scanned, scan_layout, unscan_layout
from resnet_jax.models.state_dicts import (
    HEAD,
    SAFETENSORS_SUFFIX,
    TORCH_SUFFIXES,
    listed,
    read_state_dict,
)

PyTree = Any


@dataclasses.dataclass
class Source:
    """Pretrained weights in our variable layout, keyed by '/'-joined paths."""

    description: str
    arrays: dict[str, np.ndarray]  # "params/layer1/block0/conv1/kernel" -> array
    normalization: dict[str, Any] | None = None  # our runs' recorded statistics
    normalization_of: str = "the pretrained run's"  # whose statistics, for the run's log
    class_names: tuple[str, ...] | None = None


def _flat(tree: PyTree) -> dict[str, np.ndarray]:
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(x) for p, x in leaves}


def _unflat(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def open_source(init_from: str, *, model_name: str, model_kwargs: dict[str, Any]) -> Source:
    """Reads the weights ``init_from`` names (see the module docstring)."""
    from resnet_jax import weights
    from resnet_jax.inference import split_step

    if weights.is_weights_name(init_from):
        return _named_source(init_from, model_name, model_kwargs)
    path, step = split_step(init_from)
    path = os.path.expanduser(path)
    if path.lower().endswith((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)):
        return _torch_source(path, model_name, model_kwargs)
    if not os.path.exists(path):
        raise PretrainedError(
            f"init_from path {path!r} does not exist; give one of our workdirs (or PATH@STEP), "
            f"a state_dict file ({', '.join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))}) or named "
            f"weights ({', '.join(weights.SOURCES)}:MODEL, e.g. torchvision:resnet50)"
        )
    if not os.path.isdir(path):
        raise PretrainedError(
            f"init_from {path!r} is neither a workdir/checkpoint directory nor a PyTorch file "
            f"({', '.join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))}); rename it or point at the "
            "run's workdir"
        )
    return _run_source(path, step)


def _run_source(path: str, step: str) -> Source:
    from resnet_jax.inference import RunError, load_run

    try:
        run = load_run(path, step)
    except RunError as e:
        raise PretrainedError(f"init_from: {e}") from None
    except Exception as e:  # orbax/tensorstore errors of an unreadable or corrupt checkpoint
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise PretrainedError(
            f"init_from: cannot read a checkpoint from {path!r} ({first}); is it a complete "
            "workdir of this library? Resume-safe checkpoints are under <workdir>/checkpoints"
        ) from None
    variables = run.variables
    if is_scanned(variables):  # compare in the unrolled layout; converted back if needed
        variables = unscan_layout(variables)
    return Source(
        description=f"{run.directory} step {run.step} ({run.spec.model})",
        arrays=_flat(variables),
        normalization=run.spec.normalization,
        class_names=run.spec.class_names,
    )


def _named_source(name: str, model_name: str, model_kwargs: dict[str, Any]) -> Source:
    """Named weights (``torchvision:resnet50``): fetched into the cache, then read as a file."""
    from resnet_jax import weights

    try:
        entry = weights.find(name)
        if entry.model != model_name:
            raise weights.WeightsError(
                f"init_from {entry.name} holds {entry.model} weights, but config.model is "
                f"{model_name!r}; set --config.model={entry.model}"
            )
        path = weights.download(entry)
    except weights.WeightsError as e:
        raise PretrainedError(str(e)) from None
    source = _torch_source(str(path), model_name, model_kwargs)
    return dataclasses.replace(
        source, description=f"{entry.name} ({path})", normalization=entry.normalization,
        normalization_of=f"{entry.source}'s ImageNet mean/std",
    )


def _torch_source(path: str, model_name: str, model_kwargs: dict[str, Any]) -> Source:
    from resnet_jax.models import torchvision as tv

    state_dict = read_state_dict(path)
    options = {k: v for k, v in model_kwargs.items() if k != "scan_units"}
    if f"{HEAD}.weight" in state_dict:
        options["num_classes"] = int(state_dict[f"{HEAD}.weight"].shape[0])
    expected = tv._expected(model_name, options)  # torch key -> (flax path, abstract leaf)
    arrays = {}
    for key, value in state_dict.items():
        if key in expected:
            arrays["/".join(expected[key][0])] = tv._from_torch_layout(value)
        else:
            arrays[f"torch:{key}"] = value  # reported as unexpected by merge()
    kind = "safetensors" if path.lower().endswith(SAFETENSORS_SUFFIX) else "PyTorch"
    return Source(description=f"{kind} file {path}", arrays=arrays)


@dataclasses.dataclass
class Loaded:
    variables: dict[str, Any]  # {"params", "batch_stats"} numpy, in the target's layout
    summary: str  # the one line the run prints


def merge(
    source: Source,
    target: Mapping[str, Any],
    *,
    target_name: str,
    class_names: tuple[str, ...] | None = None,
) -> Loaded:
    """``target`` (freshly initialised variables) with every array replaced by the source's.

    The head keeps the target's initialisation when it cannot mean the same classes: its shape
    differs, or the source recorded class names (our runs) other than ``class_names``. Anything
    else that differs is a :class:`PretrainedError` listing the arrays.
    """
    scanned = is_scanned(target)
    flat_target = _flat(unscan_layout(target) if scanned else target)
    given = source.arrays
    missing = sorted(set(flat_target) - set(given))
    unexpected = sorted(set(given) - set(flat_target))
    head = [k for k in flat_target if k.split("/")[1:2] == [HEAD]]
    reinit, wrong = [], []
    for key in sorted(set(flat_target) & set(given)):
        if given[key].shape != flat_target[key].shape:
            (reinit if key in head else wrong).append(
                f"{key} {given[key].shape} vs model {flat_target[key].shape}"
            )
    other_classes = (
        class_names is not None
        and source.class_names is not None
        and tuple(source.class_names) != tuple(class_names)
    )
    if other_classes:  # same number of outputs, other classes: a new task, a new head
        reinit = sorted(set(reinit) | {f"{k} (other classes)" for k in head if k in given})
    problems = []
    if missing:
        problems.append(f"missing {listed(k.removeprefix('torch:') for k in missing)}")
    if unexpected:
        problems.append(f"unexpected {listed(k.removeprefix('torch:') for k in unexpected)}")
    if wrong:
        problems.append(f"mis-shaped {listed(wrong)}")
    if problems:
        raise PretrainedError(
            f"init_from {source.description} does not fit model {target_name!r}: "
            + "; ".join(problems)
            + ". Use the model these weights were trained as (config.model and model_kwargs)."
        )
    reinit_keys = {r.split(" ")[0] for r in reinit}
    merged = {
        k: (flat_target[k] if k in reinit_keys else given[k].astype(flat_target[k].dtype))
        for k in flat_target
    }
    variables = _unflat(merged)
    if scanned:
        variables = scan_layout(variables)
    loaded = sum(
        v.size for k, v in merged.items() if k not in reinit_keys and k.startswith("params/")
    )
    summary = (
        f"init_from: loaded {len(merged) - len(reinit_keys)} arrays ({loaded:,} parameters) from "
        f"{source.description}"
    )
    if reinit:
        kernel = f"params/{HEAD}/kernel"
        shapes = (f" ({given[kernel].shape[-1]} -> {flat_target[kernel].shape[-1]} outputs"
                  f"{', other classes' if other_classes else ''})" if kernel in reinit_keys else "")
        names = ", ".join(sorted(k.removeprefix("params/") for k in reinit_keys))
        summary += f"; re-initialised {names}{shapes}"
    else:
        summary += "; nothing re-initialised"
    return Loaded(variables=variables, summary=summary)
