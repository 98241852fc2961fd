"""What every source shares: the errors, the seeds of the stream, ``Shard`` (this process's
share of it) and ``Source``, the interface the pipeline reads every source through."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from resnet_jax.data.host_tf import tf

# Load encoded bytes into memory when the whole split is at most this big ("caching for small
# datasets"): CIFAR-10 is ~20 MB of JPEG, Imagenette-224 ~150 MB, ImageNet ~140 GB (streamed).
DEFAULT_CACHE_MAX_BYTES = 1 << 30
# Names the pipeline routes to the built-in sources instead of tfds.
FOLDER = "folder"
DIGITS = "digits"


# Seeds of the stream: runs with equal seeds read identical batches, and a resumed stream equals
# the uninterrupted one (every choice is a pure function of (seed, epoch, position)).
SEED_SALT = 0x5EED_DA7A
MAX_EPOCHS = 1 << 40


def epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """Stateless seed of epoch ``epoch``'s shuffle."""
    return tf.random.experimental.stateless_fold_in(
        tf.constant([seed, SEED_SALT + 1], tf.int64), tf.cast(epoch, tf.int64)
    )


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's share of a stream of global batches: ``process_count`` processes each
    take ``local_batch`` examples of every global batch."""

    seed: int
    process_index: int
    process_count: int
    local_batch: int


class DataError(ValueError):
    """A dataset cannot be used as requested (bad name, split, folder, or files)."""


class CorruptImageError(DataError):
    """One or more image files cannot be decoded; the message names them."""


class Source(Protocol):
    """What ``create_dataset`` asks of a source (``IndexSource``, ``TfdsStreamSource``)."""

    name: str
    class_names: list[str]

    @property
    def num_examples(self) -> int:
        """Examples in the whole split (all processes)."""
        ...

    def train_examples(
        self, shard: Shard, steps: int, first_epoch: int, shuffle_buffer: int
    ) -> tf.data.Dataset:
        """This process's records {index, position, epoch, ...} of every epoch from
        ``first_epoch`` on, ``steps`` local batches per epoch, forever."""
        ...

    def eval_examples(self, shard: Shard) -> tuple[tf.data.Dataset, int, int]:
        """(this process's records of one pass over the split, padding to add, batches)."""
        ...

    def load_fn(self) -> Callable[[dict], dict]:
        """record -> record with its ``encoded`` bytes and ``label``."""
        ...
