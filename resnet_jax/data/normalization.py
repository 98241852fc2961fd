"""Normalisation: the statistics a dataset stands for, resolved to numbers, and the host-side
function that applies them (the device-side twin is ``resnet_jax.data.device.normalize``).

Runs record the resolved statistics (``resnet_jax.inference_spec.InferenceSpec``), so evaluation,
prediction, export and resumption never re-read the training data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resnet_jax import fs
from resnet_jax.data import eval_views, sources
from resnet_jax.data.host_tf import no_autograph, tf
from resnet_jax.data.sources import DataError, IndexSource, open_source

NORMALIZATIONS = ("mean_std", "per_pixel_mean", "imagenet", "none")
# Per-channel statistics on [0, 1] pixels of the training sets.
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
KNOWN_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_STATS_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _estimate_stats(
    name: str, data_dir: str | None, image_size: int, opts: Any, split: str, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean image [H, W, 3], channel mean [3], channel std [3]) over up to
    ``stats_max_examples`` evenly spaced training images at the output size."""
    stats_split = opts.stats_split or "train"
    if name == sources.FOLDER and opts.stats_split is None and data_dir is not None:
        # A folder without a "train" split is normalised with its own statistics.
        stats_split = "train" if fs.isdir(fs.join(str(data_dir), "train")) else split
    limit = opts.stats_max_examples or limit
    key = (name, str(data_dir), stats_split, image_size, limit, opts.resize_method)
    if key in _STATS_CACHE:
        return _STATS_CACHE[key]
    if name == sources.FOLDER:
        # Non-image files are skipped here and undecodable ones by the decode pass below, so the
        # statistics take one decode of the split (a separate probe pass would double it).
        src = sources.folder_source(data_dir, stats_split, skip_corrupt=True, cache=opts.cache,
                                    class_names=opts.class_names)
    else:
        src = open_source(name, stats_split, data_dir, opts)
    if not isinstance(src, IndexSource):
        raise DataError(
            f"cannot estimate normalisation statistics of the streamed dataset {name!r}; "
            "pass mean=..., std=... or normalization='mean_std' with known constants"
        )
    n = len(src)
    idx = np.linspace(0, n - 1, num=min(n, limit)).round().astype(np.int64)
    lookup = src.lookup_fn()
    ds = tf.data.Dataset.from_tensor_slices(np.unique(idx))
    ds = ds.map(
        no_autograph(lambda i: eval_views.center(lookup(i), image_size, 1.0, opts.resize_method)),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).ignore_errors().batch(256)
    total = np.zeros((image_size, image_size, 3))
    total_sq = np.zeros(3)
    count = 0
    for batch in ds.as_numpy_iterator():
        b = batch.astype(np.float64)
        total += b.sum(axis=0)
        total_sq += (b**2).sum(axis=(0, 1, 2))
        count += len(b)
    if count == 0:
        raise DataError(f"{src.name}: no decodable images to estimate normalisation statistics")
    mean_img = total / count
    mean = mean_img.mean(axis=(0, 1))
    std = np.sqrt(np.maximum(total_sq / (count * image_size**2) - mean**2, 1e-12))
    _STATS_CACHE[key] = (mean_img.astype(np.float32), mean, std)
    return _STATS_CACHE[key]


def normalization_stats(
    name: str, data_dir: str | None, image_size: int, split: str, opts: Any
) -> dict[str, Any]:
    """The normalisation this dataset and options stand for, resolved to numbers: one of
    ``{"kind": "none"}``, ``{"kind": "mean_std", "mean": [3], "std": [3]}`` (per channel, on
    [0, 1] pixels) or ``{"kind": "per_pixel_mean", "mean_image": float32 [H, W, 3]}``.

    ``opts.normalization_stats`` (a dict of this form, e.g. recorded with a run) is used as it
    is; otherwise statistics are estimated from the training split where needed (folders,
    digits). Runs record the result so inference never re-reads the training data.
    """
    if opts.normalization_stats is not None:
        return check_normalization_stats(opts.normalization_stats)
    if opts.normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, not {opts.normalization}")
    if opts.normalization == "none":
        return {"kind": "none"}
    if opts.normalization == "per_pixel_mean":
        # 2015 paper §4.2 (CIFAR) and §3.4 (ImageNet): "the per-pixel mean subtracted".
        mean_img = _estimate_stats(name, data_dir, image_size, opts, split, 50_000)[0]
        return {"kind": "per_pixel_mean", "mean_image": mean_img}
    if opts.normalization == "imagenet":
        # What torchvision's (and timm's) ImageNet weights expect, on [0, 1] pixels.
        mean, std = IMAGENET_MEAN_STD
    elif opts.mean is not None or opts.std is not None:
        if opts.mean is None or opts.std is None:
            raise ValueError("pass both mean and std (per channel, for [0, 1] pixels)")
        mean, std = opts.mean, opts.std
    elif name in KNOWN_MEAN_STD:
        mean, std = KNOWN_MEAN_STD[name]
    elif name in (sources.FOLDER, sources.DIGITS):
        _, mean, std = _estimate_stats(name, data_dir, image_size, opts, split, 2_000)
    else:
        mean, std = IMAGENET_MEAN_STD
    return {"kind": "mean_std", "mean": [float(m) for m in np.reshape(mean, 3)],
            "std": [float(s) for s in np.reshape(std, 3)]}


def check_normalization_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` if it is a well-formed normalisation (see ``normalization_stats``), else a
    ``ValueError`` naming what is wrong."""
    kind = stats.get("kind") if isinstance(stats, dict) else None
    if kind == "none":
        return stats
    if kind == "mean_std" and np.shape(stats.get("mean")) == (3,) and np.shape(
        stats.get("std")
    ) == (3,):
        return stats
    if kind == "per_pixel_mean" and np.ndim(stats.get("mean_image")) == 3:
        return stats
    raise ValueError(
        f"malformed normalisation statistics {str(stats)[:200]}: expected kind 'none', "
        "'mean_std' with 3 means and stds, or 'per_pixel_mean' with an [H, W, 3] mean image"
    )


def normalizer_from_stats(stats: dict[str, Any]):
    """A function from a float image [..., h, w, 3] in [0, 1] to the normalised image."""
    stats = check_normalization_stats(stats)
    if stats["kind"] == "none":
        return lambda img: img
    if stats["kind"] == "per_pixel_mean":
        mean_img = np.asarray(stats["mean_image"], np.float32)

        def sub_mean(img):
            hw = tuple(img.shape[-3:-1])
            m = mean_img if hw == mean_img.shape[:2] else tf.image.resize(mean_img, hw)
            return img - tf.convert_to_tensor(m, tf.float32)  # resized: already a tensor

        return sub_mean
    mean_t = tf.constant(np.asarray(stats["mean"], np.float32).reshape(3))
    inv_std = tf.constant(1.0 / np.asarray(stats["std"], np.float32).reshape(3))
    return lambda img: (img - mean_t) * inv_std


def normalizer(name: str, data_dir: str | None, image_size: int, split: str, opts: Any):
    """The normalisation the pipeline applies for this dataset and options: a function from a
    float image [..., h, w, 3] in [0, 1] to the normalised image (statistics of ``split`` where
    they are estimated)."""
    return normalizer_from_stats(normalization_stats(name, data_dir, image_size, split, opts))
