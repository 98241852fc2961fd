"""Input pipelines: tfds datasets, image folders and scikit-learn's digits, with the papers'
augmentations and evaluation views, sharded per JAX process, deterministic and resumable.

    from resnet_jax import data
    ds = data.create_dataset("digits", "train", global_batch_size=128, train=True,
                             image_size=32, augment="cifar")
    for batch in ds:  # {"image": [L, 32, 32, 3], "label": [L], "mask": [L]} numpy arrays
        ...

See docs/input_pipeline.md.
"""

from resnet_jax.data.augment import PRESETS
from resnet_jax.data.eval_views import PAPER_SCALES, VIEWS
from resnet_jax.data.pipeline import (
    Dataset,
    Options,
    create_dataset,
    normalization_stats,
    normalizer,
    normalizer_from_stats,
)
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
