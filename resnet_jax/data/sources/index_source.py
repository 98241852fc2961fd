"""``IndexSource``: random access by example index to encoded images, held in memory or read
from files on demand (image folders, the digits, small tfds splits), and the checks that find
and drop the examples that do not decode."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from resnet_jax.data.host_tf import no_autograph, tf
from resnet_jax.data.sources.base import MAX_EPOCHS, Shard, epoch_seed


@dataclasses.dataclass
class IndexSource:
    """Random-access source of encoded images.

    Images come from ``encoded`` (bytes held in memory) when it is set, else from the files
    ``paths`` (read on demand); ``paths`` also names examples in error messages.
    ``labels[i]`` is the class id of example ``i``; ``class_names[label]`` its name.
    """

    name: str
    labels: np.ndarray
    class_names: list[str]
    encoded: list[bytes] | None = None
    paths: list[str] | None = None
    skipped_files: list[str] = dataclasses.field(default_factory=list)
    # The source this one was cut from (a folder slice), kept alive so its memoised scan is.
    parent: IndexSource | None = dataclasses.field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, index: int) -> str:
        """Human-readable name of example ``index`` (a file path where there is one)."""
        if self.paths is not None:
            return self.paths[index]
        return f"{self.name} example #{index}"

    def lookup_fn(self):
        """A TF function mapping an int64 index to the example's encoded bytes (a string)."""
        if self.encoded is not None:
            table = tf.constant(self.encoded, dtype=tf.string)
            return lambda i: tf.gather(table, i)
        paths = tf.constant(self.paths, dtype=tf.string)
        return lambda i: tf.io.read_file(tf.gather(paths, i))

    # ---- the source interface (sources.base.Source, shared with TfdsStreamSource) -----------
    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def train_examples(
        self, shard: Shard, steps: int, first_epoch: int, shuffle_buffer: int
    ) -> tf.data.Dataset:
        """Records {index, position, epoch} of this process from ``first_epoch`` on, forever.

        Epoch e is a permutation of the whole split seeded by (seed, e); global batch b is
        positions [b*G, (b+1)*G) of it and this process takes its slice [p*L, (p+1)*L).
        """
        del shuffle_buffer  # a full permutation: random access needs no buffer
        n, pcount, local = self.num_examples, shard.process_count, shard.local_batch
        positions = np.arange(steps * pcount * local).reshape(steps, pcount, local)
        mine = tf.constant(positions[:, shard.process_index, :].reshape(-1), tf.int64)

        def epoch_examples(epoch):
            keys = tf.random.stateless_uniform([n], epoch_seed(shard.seed, epoch))
            perm = tf.argsort(keys, stable=True)
            return tf.data.Dataset.from_tensor_slices(
                {
                    "index": tf.cast(tf.gather(perm, mine), tf.int64),
                    "position": mine,
                    "epoch": tf.fill(tf.shape(mine), epoch),
                }
            )

        return tf.data.Dataset.range(first_epoch, MAX_EPOCHS).flat_map(no_autograph(epoch_examples))

    def eval_examples(self, shard: Shard) -> tuple[tf.data.Dataset, int, int]:
        """(records {index} of this process, padding to add, batches): one pass in order."""
        n, pcount, local = self.num_examples, shard.process_count, shard.local_batch
        steps = math.ceil(n / (pcount * local))
        positions = np.arange(steps * pcount * local).reshape(steps, pcount, local)
        mine = positions[:, shard.process_index, :].reshape(-1)
        # Only the last global batch runs past the split; its padding ends this process's
        # slice, so real examples come first and padding last.
        real = mine[mine < n]
        records = tf.data.Dataset.from_tensor_slices({"index": tf.constant(real, tf.int64)})
        return records, len(mine) - len(real), steps

    def load_fn(self) -> Callable[[dict], dict]:
        """record -> record with its ``encoded`` bytes and ``label`` (runs in the parallel map,
        after any skipping, so skipped records are never read)."""
        lookup = self.lookup_fn()
        labels = tf.constant(self.labels, tf.int32)

        def load(ex: dict) -> dict:
            return dict(ex, encoded=lookup(ex["index"]), label=tf.gather(labels, ex["index"]))

        return load


def find_undecodable(source: IndexSource) -> list[int]:
    """Indices of examples that fail to decode (one parallel decode pass over the source)."""
    lookup = source.lookup_fn()

    def probe(i):
        img = tf.io.decode_image(lookup(i), channels=3, expand_animations=False)
        return i, tf.shape(img)

    ds = tf.data.Dataset.range(len(source)).map(
        no_autograph(probe), num_parallel_calls=tf.data.AUTOTUNE
    )
    ds = ds.ignore_errors()
    ok = np.zeros(len(source), dtype=bool)
    for i, _ in ds.as_numpy_iterator():
        ok[i] = True
    return np.flatnonzero(~ok).tolist()


def drop_examples(source: IndexSource, bad: Sequence[int]) -> IndexSource:
    """A copy of ``source`` without examples ``bad`` (which are recorded as skipped)."""
    keep = np.setdiff1d(np.arange(len(source)), np.asarray(bad, dtype=np.int64))
    return IndexSource(
        name=source.name,
        labels=source.labels[keep],
        class_names=source.class_names,
        encoded=None if source.encoded is None else [source.encoded[i] for i in keep],
        paths=None if source.paths is None else [source.paths[i] for i in keep],
        skipped_files=sorted(source.skipped_files + [source.describe(i) for i in bad]),
        parent=source.parent,
    )
