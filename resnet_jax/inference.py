"""Reading a trained run back: its :class:`InferenceSpec`, variables, step and training config.

A run's checkpoint metadata holds an :class:`~resnet_jax.inference_spec.InferenceSpec` (what
inference needs besides the weights: model, classes, preprocessing, the normalisation actually
used). ``evaluate``, ``predict`` and ``export`` read it from the workdir alone, so a run copied
to another machine works without its training data.

    run = resnet_jax.inference.load_run("runs/quickstart")      # latest checkpoint
    logits = run.model().apply(run.variables, run.spec.normalize(images_uint8), train=False)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax import fs
from resnet_jax.inference_spec import InferenceSpec  # re-exported: resnet_jax.InferenceSpec

PyTree = Any


class RunError(ValueError):
    """A workdir, checkpoint or its metadata cannot be used as asked."""


@dataclasses.dataclass
class Run:
    """A trained run read back: its spec, variables (numpy), step and training config."""

    spec: InferenceSpec
    variables: PyTree
    step: int
    config: Any  # ml_collections.ConfigDict of the training run
    directory: str  # the checkpoints directory

    def model(self, dtype: Any = jnp.float32, **overrides: Any):
        return self.spec.create_model(dtype, **overrides)


def checkpoint_dir(path: str) -> str:
    """The orbax checkpoints directory of a workdir (``<path>/checkpoints``) or ``path`` itself."""
    path = fs.absolute(path)  # gs://... unchanged; local: ~ expanded, made absolute
    sub = fs.join(path, "checkpoints")
    return sub if fs.isdir(sub) else path


def split_step(path: str) -> tuple[str, str]:
    """``"runs/a@1200"`` -> ``("runs/a", "1200")``; without ``@STEP`` the step is "latest"."""
    m = re.fullmatch(r"(.+)@(latest|best|\d+)", path)
    return (m.group(1), m.group(2)) if m else (path, "latest")


def load_run(path: str, step: str | int = "latest", weights: str | None = None) -> Run:
    """Reads a run's checkpoint: ``path`` is a workdir or its ``checkpoints`` directory (or
    ``PATH@STEP``); ``step`` is "latest", "best" or a number. Raises :class:`RunError` with
    what to do when there is no such checkpoint."""
    # Imported on use (they import orbax and optax; ``import resnet_jax`` stays light).
    from resnet_jax.checkpoint import CheckpointDamagedError, Checkpointer
    from resnet_jax.training.config import config_from_dict

    if isinstance(step, str) and step == "latest":
        path, step = split_step(path)
    directory = checkpoint_dir(path)
    if not fs.isdir(directory):
        raise RunError(f"{path} does not exist; pass a training workdir (it holds checkpoints/)")
    ckpt = Checkpointer(directory, read_only=True, async_save=False)
    steps = ckpt.all_steps()
    if step == "latest":
        chosen = ckpt.latest_step()
    elif step == "best":
        chosen = ckpt.best_step()
    else:
        chosen = int(step) if int(step) in steps else None
    if chosen is None:
        ckpt.close()
        have = f"it has steps {sorted(steps)}" if steps else "it has no checkpoint yet"
        raise RunError(
            f"no {step} checkpoint in {directory} ({have}); train first, or name an existing "
            "step as PATH@STEP"
        )
    try:
        state, meta = ckpt.read_fully(chosen)
    except CheckpointDamagedError as e:
        readable = _readable_steps(ckpt, [s for s in steps if s != chosen])
        raise RunError(
            f"checkpoint {directory} step {chosen} is damaged ({e.reason}); readable steps: "
            f"{readable or 'none'}" + ("; choose one as PATH@STEP" if readable else "")
        ) from None
    finally:
        ckpt.close()
    config = config_from_dict(meta["config"])
    if "inference" in meta:
        spec = InferenceSpec.from_json(meta["inference"])
    else:  # a run from before specs were recorded: derive it from its config and data
        spec = spec_from_training_data(config)
    weights = weights or spec.weights
    variables = _weights(state, weights, f"{directory} step {chosen}")
    spec = dataclasses.replace(spec, weights=weights)
    return Run(spec=spec, variables=variables, step=chosen, config=config, directory=directory)


def _weights(state: dict[str, Any], weights: str, where: str) -> PyTree:
    """The ``{"params", "batch_stats"}`` a checkpoint's state holds for ``weights``."""
    if weights == "raw":
        return {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
    if weights != "ema":
        raise RunError(f"weights must be 'raw' or 'ema', got {weights!r}")
    if not state.get("ema"):
        raise RunError(
            f"{where} has no EMA weights (it trained with ema_decay=0); use --inference_weights raw"
        )
    ema = state["ema"]
    return {"params": ema["params"], "batch_stats": ema.get("batch_stats", {})}


def _readable_steps(ckpt: Any, steps: list[int]) -> list[int]:
    """Those of ``steps`` that read completely (each is read in full, newest first)."""
    from resnet_jax.checkpoint import CheckpointDamagedError

    readable = []
    for step in sorted(steps, reverse=True):
        try:
            ckpt.read_fully(step)
        except CheckpointDamagedError:
            continue
        readable.append(step)
    return sorted(readable)


def spec_from_training_data(config: Any) -> InferenceSpec:
    """The spec of a run whose checkpoints predate recorded specs (reads its training data)."""
    from resnet_jax.training import build

    ds = build.create_eval_dataset(config, config.eval_split, batch_size=jax.device_count())
    return build.inference_spec(config, ds)
