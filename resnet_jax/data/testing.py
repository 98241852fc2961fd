"""Helpers for tests and benchmarks: real-data subsets and tfds mock metadata (offline)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

# <repo>/../shared/datasets, where CI and this machine keep the real image archives.
SHARED_DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
CIFAR10_ARCHIVE = SHARED_DATASETS / "cifar10-jpg.tar.gz"
IMAGENETTE_ARCHIVE = SHARED_DATASETS / "imagenette2-224.tar.gz"


def extract_subset(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    per_class: int | None,
    splits: Sequence[str] = ("train", "test"),
) -> Path:
    """Extract the first ``per_class`` files (in archive order) of every ``<split>/<class>/``
    of a ``split/class/file`` archive into ``dest``; ``per_class=None`` extracts all of them.

    Returns ``dest``, the root of an image folder dataset.
    """
    dest = Path(dest)
    archive = Path(archive).resolve()
    with gzip.open(archive, "rb") as f:
        tar = f.read()  # one decompression: the member index (once) and the files are slices
    key = (archive, archive.stat().st_mtime_ns)  # a replaced archive is indexed again
    if key not in _MEMBERS:
        _MEMBERS[key] = _member_index(tar)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for (split, cls, fname), offset, size in _MEMBERS[key]:
        if split not in splits or (per_class is not None and counts[split, cls] >= per_class):
            continue
        counts[split, cls] += 1
        out = dest / split / cls / fname
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(tar[offset : offset + size])
    return dest


# Per process: tarfile's walk over CIFAR-10's 60,000 members takes seconds, which every subset
# of the same archive would pay again.
_MEMBERS: dict[tuple[Path, int], list[tuple[tuple[str, ...], int, int]]] = {}


def _member_index(tar: bytes) -> list[tuple[tuple[str, ...], int, int]]:
    """((split, class, file), offset, size) of every split/class/file member of an uncompressed
    tar, in archive order."""
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
        members = [(m.name.split("/")[-3:], m.offset_data, m.size) for m in archive if m.isfile()]
    return [(tuple(parts), offset, size) for parts, offset, size in members if len(parts) == 3]


def write_tfds_metadata(data_dir: str | os.PathLike, name: str, splits: dict[str, int]) -> None:
    """Write dataset_info.json for tfds builder ``name`` with the given split sizes, so that
    ``tfds.testing.mock_data(policy=USE_FILES, data_dir=data_dir)`` knows its splits."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(data_dir))
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir,
        template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=builder.name,
        split="train",
        filetype_suffix="tfrecord",
    )
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(
                    name=split,
                    shard_lengths=[n],
                    num_bytes=1000 * n,
                    filename_template=template.replace(split=split),
                )
                for split, n in splits.items()
            ]
        )
    )
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


def sliceable_fake_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    """``as_dataset_fn`` for ``tfds.testing.mock_data`` that honours ``split[a:b]`` slices.

    Example ``i`` of every split is a 32x32 PNG filled with the value ``i % 256`` and label
    ``i % num_classes``, so tests can tell which examples a pipeline read.
    """
    import re

    from resnet_jax.data.host_tf import tf

    del decoders, read_config, kwargs
    m = re.fullmatch(r"(\w+)\[(\d+):(\d+)\]", str(split))
    if m:
        start, end = int(m[2]), int(m[3])
    else:
        start, end = 0, self.info.splits[str(split)].num_examples
    num_classes = self.info.features["label"].num_classes

    def make(i):
        pixels = tf.fill([32, 32, 3], tf.cast(i % 256, tf.uint8))
        return {"image": tf.io.encode_png(pixels), "label": i % num_classes}

    return tf.data.Dataset.range(start, end).map(make)
