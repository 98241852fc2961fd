"""A split of a tfds image-classification dataset as a source: read once into memory when
small (an ``IndexSource``), else streamed from its record files (``TfdsStreamSource``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from resnet_jax.data.host_tf import no_autograph, tf
from resnet_jax.data.sources.base import (
    DEFAULT_CACHE_MAX_BYTES,
    MAX_EPOCHS,
    DataError,
    Shard,
    epoch_seed,
)
from resnet_jax.data.sources.index_source import IndexSource
from resnet_jax.data.sources.tfds_builder import prepared_builder


@dataclasses.dataclass
class TfdsStreamSource:
    """A tfds split too large to hold in memory, read sequentially from record files."""

    name: str
    builder: object  # tfds.core.DatasetBuilder
    split: str
    num_examples: int
    class_names: list[str]
    image_key: str
    label_key: str

    def train_examples(
        self, shard: Shard, steps: int, first_epoch: int, shuffle_buffer: int
    ) -> tf.data.Dataset:
        """Records {encoded, label, index, position, epoch} of this process, forever: its
        contiguous slice of the split, each epoch shuffled through a buffer seeded by
        (seed, epoch) and cut to ``steps`` local batches."""
        start, end = self.shard_bounds(shard.process_index, shard.process_count)
        per_epoch = steps * shard.local_batch  # <= end - start since n // P >= steps * L
        stored = self._indexed(start, end)
        buffer = max(1, min(shuffle_buffer, end - start))
        offset = shard.process_index * per_epoch

        def epoch_examples(epoch):
            shuffle_seed = epoch_seed(shard.seed, epoch)[0]
            ds = stored.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
            return (
                ds.take(per_epoch)
                .enumerate()
                .map(no_autograph(lambda i, ex: dict(ex, position=offset + i, epoch=epoch)))
            )

        return tf.data.Dataset.range(first_epoch, MAX_EPOCHS).flat_map(no_autograph(epoch_examples))

    def eval_examples(self, shard: Shard) -> tuple[tf.data.Dataset, int, int]:
        """(records of this process's contiguous slice, padding to add, batches)."""
        start, end = self.shard_bounds(shard.process_index, shard.process_count)
        pcount, local = shard.process_count, shard.local_batch
        steps = math.ceil(math.ceil(self.num_examples / pcount) / local)
        return self._indexed(start, end), steps * local - (end - start), steps

    def load_fn(self) -> Callable[[dict], dict]:
        """Records already hold their bytes and label (read from the record files)."""
        return lambda ex: ex

    def _indexed(self, start: int, end: int) -> tf.data.Dataset:
        return tf.data.Dataset.zip(tf.data.Dataset.range(start, end), self.read(start, end)).map(
            no_autograph(lambda i, ex: dict(ex, index=i))
        )

    def shard_bounds(self, process_index: int, process_count: int) -> tuple[int, int]:
        """[start, end) of this process's contiguous slice of the split (like tfds.even_splits)."""
        n = self.num_examples
        return (n * process_index) // process_count, (n * (process_index + 1)) // process_count

    def read(self, start: int, end: int) -> tf.data.Dataset:
        """Examples [start, end) of the split in their stored order, as {"encoded", "label"}."""
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(
            shuffle_seed=None, interleave_cycle_length=16, try_autocache=False
        )
        ds = self.builder.as_dataset(
            split=f"{self.split}[{start}:{end}]",
            shuffle_files=False,  # fixed order: the shuffle is ours, seeded per epoch
            decoders={self.image_key: tfds.decode.SkipDecoding()},
            read_config=read_config,
        )
        return ds.map(
            no_autograph(lambda ex: {
                "encoded": ex[self.image_key],
                "label": tf.cast(ex[self.label_key], tf.int32),
            })
        )


def tfds_source(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    download: bool = True,
    manual_dir: str | None = None,
    cache: bool | str = "auto",
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
) -> IndexSource | TfdsStreamSource:
    """Open tfds dataset ``name`` in ``data_dir`` (tfds' default: ~/tensorflow_datasets) and
    split ``split``.

    As ``tfds.load`` does, an unprepared dataset is downloaded and prepared first unless
    ``download=False`` (``imagenet2012`` from the manual download directory, as tfds
    documents). A failed download is one ``DataError`` line naming the fixes; tfds prepares in
    a temporary directory that it renames only when complete, so a half-finished download is
    never read later, and the next call downloads again. Small splits (``cache``) are read once
    into memory and returned as an ``IndexSource``; large ones stream.
    """
    builder = prepared_builder(name, data_dir, download, manual_dir)
    info = builder.info
    base_split = split.split("[")[0]
    if base_split not in info.splits:
        raise DataError(
            f"tfds dataset {name!r} has no split {split!r}; available: {sorted(info.splits)}"
        )
    image_key, label_key = _image_and_label_keys(name, info)
    class_names = list(info.features[label_key].names)
    split_info = info.splits[split]
    n = split_info.num_examples
    if cache == "auto":
        size = split_info.num_bytes
        cache = size <= cache_max_bytes if size else n <= 100_000
    stream = TfdsStreamSource(
        name=name,
        builder=builder,
        split=split,
        num_examples=n,
        class_names=class_names,
        image_key=image_key,
        label_key=label_key,
    )
    if not cache:
        return stream
    encoded, labels = [], []
    for ex in stream.read(0, n).as_numpy_iterator():
        encoded.append(ex["encoded"])
        labels.append(ex["label"])
    return IndexSource(
        name=f"{name}:{split}",
        labels=np.asarray(labels, dtype=np.int32),
        class_names=class_names,
        encoded=encoded,
    )


def _image_and_label_keys(name: str, info) -> tuple[str, str]:
    """The (image, label) feature names of an image-classification dataset's ``info``; any
    other dataset is a ``DataError``."""
    import tensorflow_datasets as tfds

    image_key, label_key = info.supervised_keys or ("image", "label")
    features = info.features
    if (
        image_key not in features
        or not isinstance(features[image_key], tfds.features.Image)
        or label_key not in features
        or not isinstance(features[label_key], tfds.features.ClassLabel)
    ):
        raise DataError(
            f"tfds dataset {name!r} is not an image-classification dataset "
            f"(needs an Image feature and a ClassLabel feature, has {list(features)})"
        )
    return image_key, label_key
