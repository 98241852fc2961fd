"""The input's last steps, on the device: uint8 pixels -> the network's normalised input.

The training and evaluation streams hand uint8 images to the step (4x fewer host-to-device
bytes than float32, and no per-pixel float work on the host); inside the jitted step they are
cast, get the lighting noise, are normalised and, for the CIFAR preset, padded, cropped and
flipped, in float32, then cast to the compute dtype. The arithmetic is the float pipeline's:
same formulas, same order (the pipeline's ``normalizer_from_stats`` and ``augment.cifar_apply``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Batch = dict[str, Any]


def normalize(images: jax.Array, stats: dict[str, Any]) -> jax.Array:
    """uint8 pixels (or floats in [0, 1]) [..., h, w, 3] -> float32 normalised with ``stats``
    (``resnet_jax.data.normalization_stats``). A mean image of another size is resized
    (multi-scale views), as the pipeline does."""
    x = jnp.asarray(images)
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    return _normalize_unit(x, stats)


def _normalize_unit(x: jax.Array, stats: dict[str, Any]) -> jax.Array:
    if stats["kind"] == "none":
        return x
    if stats["kind"] == "per_pixel_mean":
        mean_img = jnp.asarray(np.asarray(stats["mean_image"], np.float32))
        hw = x.shape[-3:-1]
        if tuple(hw) != tuple(mean_img.shape[:2]):
            mean_img = jax.image.resize(mean_img, (*hw, 3), "linear", antialias=False)
        return x - mean_img
    mean = jnp.asarray(np.asarray(stats["mean"], np.float32))
    inv_std = jnp.asarray(1.0 / np.asarray(stats["std"], np.float32))
    return (x - mean) * inv_std


def cifar_apply(images: jax.Array, crop_yx: jax.Array, flip: jax.Array, pad: int) -> jax.Array:
    """2015 paper §4.2 on the device: zero-pad ``pad`` pixels (normalised, so the mean colour),
    crop back at ``crop_yx`` [B, 2], flip where ``flip`` [B] (``augment.cifar_apply``'s twin)."""
    h, w = images.shape[1], images.shape[2]
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(img, yx, f):
        out = jax.lax.dynamic_slice(img, (yx[0], yx[1], 0), (h, w, img.shape[-1]))
        return jnp.where(f, out[:, ::-1], out)

    return jax.vmap(one)(padded, crop_yx.astype(jnp.int32), flip)


def finish(batch: Batch, stats: dict[str, Any], *, dtype: Any = jnp.float32,
           cifar_pad: int | None = None) -> Any:
    """The network's input from a uint8 batch (``create_dataset(dtype="uint8")``): the image,
    or a tuple of images (multi-scale), normalised and augmented, in ``dtype``."""

    def one(img: jax.Array) -> jax.Array:
        x = img.astype(jnp.float32) / 255.0 if img.dtype == jnp.uint8 else img
        if "lighting" in batch:  # AlexNet PCA noise, an RGB offset per image (2015 §3.4)
            x = x + batch["lighting"][:, None, None, :]
        x = _normalize_unit(x, stats)
        if cifar_pad is not None:
            x = cifar_apply(x, batch["crop_yx"], batch["flip"], cifar_pad)
        return x.astype(dtype)

    return jax.tree.map(one, batch["image"])
