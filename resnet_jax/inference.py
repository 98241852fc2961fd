"""What a trained run needs for inference, recorded with every checkpoint, and reading it back.

A run's checkpoint metadata holds an :class:`InferenceSpec`: the model and its options, the class
names, the input size, the evaluation preprocessing and the normalisation *actually used* in
training (numbers, not a recipe to recompute them). ``evaluate``, ``predict`` and ``export`` read
it from the workdir alone, so a run copied to another machine works without its training data.

    run = resnet_jax.inference.load_run("runs/quickstart")      # latest checkpoint
    logits = run.model().apply(run.variables, run.spec.normalize(images_uint8), train=False)
"""

from __future__ import annotations

import base64
import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import fs

PyTree = Any
SPEC_VERSION = 1


class RunError(ValueError):
    """A workdir, checkpoint or its metadata cannot be used as asked."""


def _encode_array(x: np.ndarray) -> dict[str, Any]:
    """float32 array -> JSON (exact: raw bytes, base64)."""
    x = np.ascontiguousarray(x, np.float32)
    return {"shape": list(x.shape), "float32_base64": base64.b64encode(x.tobytes()).decode()}


def _decode_array(d: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(d["float32_base64"])
    return np.frombuffer(raw, np.float32).reshape(d["shape"]).copy()


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """Everything inference needs besides the weights.

    ``normalization`` is the resolved statistics of ``resnet_jax.data.normalization_stats``:
    ``{"kind": "none"}``, ``{"kind": "mean_std", "mean": [3], "std": [3]}`` or
    ``{"kind": "per_pixel_mean", "mean_image": float32 [H, W, 3]}``, all on [0, 1] pixels.
    """

    model: str
    model_kwargs: dict[str, Any]
    class_names: tuple[str, ...]
    image_size: int
    resize_method: str
    crop_fraction: float
    eval_view: str
    normalization: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def create_model(self, dtype: Any = jnp.float32, **overrides: Any):
        """The network, as trained (``overrides`` e.g. ``axis_name``)."""
        import resnet_jax

        kwargs = {**self.model_kwargs, **overrides}
        return resnet_jax.create_model(
            self.model, num_classes=self.num_classes, dtype=dtype, **kwargs
        )

    def data_options(self) -> dict[str, Any]:
        """``create_dataset`` options that reproduce this run's evaluation input exactly."""
        return {
            "normalization_stats": self.normalization,
            "resize_method": self.resize_method,
            "crop_fraction": self.crop_fraction,
        }

    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8 images [..., h, w, 3] (or float ones in [0, 1]) -> the network's float32 input.

        Runs in JAX (inside a jitted or exported function); the same arithmetic as the input
        pipeline's normalisation.
        """
        from resnet_jax.data import device

        return device.normalize(images, self.normalization)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        norm = dict(self.normalization)
        if "mean_image" in norm:
            norm["mean_image"] = _encode_array(norm["mean_image"])
        d["normalization"] = norm
        d["version"] = SPEC_VERSION
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InferenceSpec:
        d = dict(d)
        d.pop("version", None)
        norm = dict(d["normalization"])
        if "mean_image" in norm:
            norm["mean_image"] = _decode_array(norm["mean_image"])
        d["normalization"] = norm
        d["class_names"] = tuple(d["class_names"])
        return cls(**d)


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


def load_run(path: str, step: str | int = "latest") -> Run:
    """Reads a run's checkpoint: ``path`` is a workdir or its ``checkpoints`` directory (or
    ``PATH@STEP``); ``step`` is "latest", "best" or a number. Raises :class:`RunError` with
    what to do when there is no such checkpoint."""
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
    variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
    return Run(spec=spec, variables=variables, step=chosen, config=config, directory=directory)


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
