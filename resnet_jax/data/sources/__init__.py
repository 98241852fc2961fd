"""Where examples come from: tfds builders, local image folders and the built-in digits.

Every source answers one interface (``Source``, in ``base``) in one of two shapes, and the
pipeline (``pipeline.py``) treats them alike:

* ``IndexSource`` (``index_source``): random access by example index to *encoded* image bytes
  (JPEG/PNG/...), either held in memory or read from files on demand. Image folders
  (``folder``), the digits dataset (``digits``) and small tfds splits (read once into memory)
  are index sources; they get an exact per-epoch permutation, and resuming at any step is pure
  arithmetic.
* ``TfdsStreamSource`` (``tfds_split``): a large tfds split (ImageNet) read sequentially from its
  record files; each process reads its own contiguous slice of the split and shuffles with a
  buffer. ``tfds_builder`` finds the builder and downloads and prepares its data.

``open_source`` picks the source for a dataset name; the public names of every part are here.
"""

from __future__ import annotations

import logging
from typing import Any

from resnet_jax.data.sources.base import (
    DEFAULT_CACHE_MAX_BYTES,
    DIGITS,
    FOLDER,
    MAX_EPOCHS,
    SEED_SALT,
    CorruptImageError,
    DataError,
    Shard,
    Source,
    epoch_seed,
)
from resnet_jax.data.sources.digits import (
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    digits_source,
    digits_split_indices,
)
from resnet_jax.data.sources.folder import (
    IMAGE_EXTENSIONS,
    clear_folder_cache,
    find_corrupt_images,
    folder_classes,
    folder_source,
)
from resnet_jax.data.sources.index_source import IndexSource, drop_examples, find_undecodable
from resnet_jax.data.sources.tfds_builder import IMAGENET_MANUAL_FILES, prepared_builder
from resnet_jax.data.sources.tfds_split import TfdsStreamSource, tfds_source

log = logging.getLogger(__name__)


def open_source(name: str, split: str, data_dir: str | None, opts: Any) -> Source:
    """The source for ``name``/``split`` with ``opts`` (``data.Options``): an image folder,
    the digits, or a tfds dataset (held in memory when small, streamed when large)."""
    if name == FOLDER:
        src = folder_source(
            data_dir,
            split,
            skip_corrupt=opts.skip_corrupt,
            cache=opts.cache,
            class_names=opts.class_names,
        )
        if opts.skip_corrupt:
            bad = find_undecodable(src)
            if bad:
                src = drop_examples(src, bad)
        if src.skipped_files:
            log.warning("%s: skipped %d corrupt file(s)", src.name, len(src.skipped_files))
        if len(src) == 0:
            raise DataError(f"{src.name}: no readable images")
        return src
    if name == DIGITS:
        return digits_source(split)
    return tfds_source(
        name,
        split,
        data_dir=data_dir,
        download=opts.download,
        manual_dir=opts.manual_dir,
        cache=opts.cache,
    )


__all__ = [
    "DEFAULT_CACHE_MAX_BYTES",
    "DIGITS",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
    "FOLDER",
    "IMAGENET_MANUAL_FILES",
    "IMAGE_EXTENSIONS",
    "MAX_EPOCHS",
    "SEED_SALT",
    "CorruptImageError",
    "DataError",
    "IndexSource",
    "Shard",
    "Source",
    "TfdsStreamSource",
    "clear_folder_cache",
    "digits_source",
    "digits_split_indices",
    "drop_examples",
    "epoch_seed",
    "find_corrupt_images",
    "find_undecodable",
    "folder_classes",
    "folder_source",
    "open_source",
    "prepared_builder",
    "tfds_source",
]
