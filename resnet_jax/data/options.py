"""``Options``: the further keyword options of ``create_dataset``, with their defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from resnet_jax.data.host_tf import tf


@dataclasses.dataclass(frozen=True)
class Options:
    """Further options of ``create_dataset`` (passed as keyword arguments).

    Normalisation: ``normalization`` is ``"mean_std"`` (per channel; ``mean``/``std`` override
    the defaults: known constants for cifar10/cifar100, ImageNet's for imagenet-like and other
    large tfds data, estimated from the training split for folders and digits),
    ``"per_pixel_mean"`` (subtract the training set's mean image, 2015 paper §4.2), ``"imagenet"``
    (ImageNet's mean/std, what torchvision's weights expect) or ``"none"`` ([0, 1] pixels).
    ``stats_split`` (default ``"train"``) and ``stats_max_examples`` (default 2,000 evenly
    spaced images for mean/std, 50,000 for the mean image) choose the images the estimates come
    from. ``normalization_stats``: resolved statistics to use as they are (runs record them, see
    ``normalization_stats()``), so nothing is estimated.

    Augmentation: ``flip``; ``cifar_pad`` (4); ``scale_range`` ((256, 480) for a 224 output,
    scaled with image_size); ``lighting_std`` (0.1; 0 disables); ``area_range`` ((0.08, 1)) and
    ``aspect_range`` ((3/4, 4/3)); ``color_jitter`` (0: off; else brightness/contrast/saturation
    strength); ``resize_method`` (tf.image.resize method, "bilinear"). On top of any train
    preset: ``auto_augment`` ("": off; "trivial": TrivialAugmentWide; a timm RandAugment string
    such as "rand-m9-mstd0.5-inc1") and ``random_erasing`` (probability, 0: off; timm's
    RandomErasing with per-pixel random values), see ``data.autoaugment``.

    Evaluation: ``crop_fraction`` of the shorter side for the centre view (default 1.0 for
    image_size <= 64, else 224/256); ``ten_crop_resize`` (shorter side before 10-crop, default
    image_size * 256/224); ``multi_scale_sizes`` (default (224, 256, 384, 480, 640) scaled by
    image_size / 224).

    Input: ``cache`` ("auto": hold encoded bytes in memory when the split is <= 1 GiB;
    True/False); ``skip_corrupt`` (skip and count undecodable folder files instead of raising);
    ``shuffle_buffer`` (streamed tfds splits only); ``download`` (default True: an
    unprepared tfds dataset is downloaded and prepared first, as ``tfds.load`` does) and
    ``manual_dir`` (tfds preparation); ``class_names`` (folder: fix the class list and order).

    Distribution: ``process_index``/``process_count`` (default: jax's), ``device_count`` (default
    jax.device_count()). Misc: ``with_index`` adds "index" (position in the split, -1 for
    padding) to each batch; ``num_parallel_calls``; ``threads`` (private tf.data thread pool
    size, 0 = TensorFlow's default of one per core).
    """

    normalization: str = "mean_std"
    normalization_stats: dict[str, Any] | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    stats_split: str | None = None
    stats_max_examples: int | None = None
    flip: bool = True
    cifar_pad: int = 4
    scale_range: tuple[float, float] = (256.0, 480.0)
    lighting_std: float = 0.1
    area_range: tuple[float, float] = (0.08, 1.0)
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: float = 0.0
    resize_method: str = "bilinear"
    auto_augment: str = ""
    random_erasing: float = 0.0
    crop_fraction: float | None = None
    ten_crop_resize: int | None = None
    multi_scale_sizes: Sequence[int] | None = None
    cache: bool | str = "auto"
    skip_corrupt: bool = False
    shuffle_buffer: int = 16_384
    download: bool = True  # as tfds.load: prepare an unprepared dataset (offline: DataError)
    manual_dir: str | None = None
    class_names: Sequence[str] | None = None
    process_index: int | None = None
    process_count: int | None = None
    device_count: int | None = None
    with_index: bool = False
    num_parallel_calls: int = tf.data.AUTOTUNE
    threads: int = 0

