"""What a trained run needs for inference besides its weights, recorded with every checkpoint.

:class:`InferenceSpec` holds the model and its options, the class names, the input size, the
evaluation preprocessing and the normalisation *actually used* in training (numbers, not a recipe
to recompute them). ``training.build`` makes it from a config and a dataset, the checkpoint
metadata stores it, and ``resnet_jax.inference.load_run`` reads it back.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models.registry import create_model

SPEC_VERSION = 1


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
    ``weights``: which of the run's weights inference uses, "raw" or "ema" (its EMA,
    ``config.inference_weights``); runs recorded before the field existed read as "raw".
    """

    model: str
    model_kwargs: dict[str, Any]
    class_names: tuple[str, ...]
    image_size: int
    resize_method: str
    crop_fraction: float
    eval_view: str
    normalization: dict[str, Any]
    weights: str = "raw"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def create_model(self, dtype: Any = jnp.float32, **overrides: Any):
        """The network, as trained (``overrides`` e.g. ``axis_name``)."""
        kwargs = {**self.model_kwargs, **overrides}
        return create_model(
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
