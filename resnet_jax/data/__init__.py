"""Input pipelines: tfds datasets, image folders and scikit-learn's digits, with the papers'
augmentations and evaluation views, sharded per JAX process, deterministic and resumable.

    from resnet_jax import data
    ds = data.create_dataset("digits", "train", global_batch_size=128, train=True,
                             image_size=32, augment="cifar")
    for batch in ds:  # {"image": [L, 32, 32, 3], "label": [L], "mask": [L]} numpy arrays
        ...

See docs/input_pipeline.md. Modules: ``pipeline`` (``create_dataset``), ``options``,
``dataset`` (what it returns), ``sources`` (tfds, folders, digits), ``presets`` (the registries
of augmentation presets and evaluation views), ``augment`` and ``eval_views`` (the image code),
``normalization``, ``device`` (the input's last steps on the device), ``testing``.

The names below are imported on first use, so importing a TensorFlow-free module of this
package (``presets``: ``from resnet_jax.data.presets import PRESETS``) does not import
TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the module of this package that defines it.
_EXPORTS = {
    "PAPER_SCALES": "eval_views",
    "PRESETS": "presets",
    "VIEWS": "presets",
    "CorruptImageError": "sources",
    "DataError": "sources",
    "Dataset": "dataset",
    "Options": "options",
    "create_dataset": "pipeline",
    "digits_split_indices": "sources",
    "find_corrupt_images": "sources",
    "normalization_stats": "normalization",
    "normalizer": "normalization",
    "normalizer_from_stats": "normalization",
}
_MODULES = (
    "augment", "dataset", "device", "eval_views", "host_tf", "normalization", "options",
    "pipeline", "presets", "sources", "testing",
)  # fmt: skip


def __getattr__(name: str) -> Any:
    """A public name or a module of this package, imported on first use (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_MODULES})


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from resnet_jax.data.dataset import Dataset
    from resnet_jax.data.eval_views import PAPER_SCALES
    from resnet_jax.data.normalization import (
        normalization_stats,
        normalizer,
        normalizer_from_stats,
    )
    from resnet_jax.data.options import Options
    from resnet_jax.data.pipeline import create_dataset
    from resnet_jax.data.presets import PRESETS, VIEWS
    from resnet_jax.data.sources import (
        CorruptImageError,
        DataError,
        digits_split_indices,
        find_corrupt_images,
    )

__all__ = [
    "PAPER_SCALES",
    "PRESETS",
    "VIEWS",
    "CorruptImageError",
    "DataError",
    "Dataset",
    "Options",
    "create_dataset",
    "digits_split_indices",
    "find_corrupt_images",
    "normalization_stats",
    "normalizer",
    "normalizer_from_stats",
]
