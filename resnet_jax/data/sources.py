"""Where examples come from: tfds builders, local image folders and the built-in digits.

Every source ends up in one of two shapes, and the pipeline (pipeline.py) treats them alike:

* ``IndexSource``: random access by example index to *encoded* image bytes (JPEG/PNG/...),
  either held in memory or read from files on demand. Image folders, the digits dataset and
  small tfds splits (read once into memory) are index sources; they get an exact per-epoch
  permutation, and resuming at any step is pure arithmetic.
* ``TfdsStreamSource``: a large tfds split (ImageNet) read sequentially from its record files;
  each process reads its own contiguous slice of the split and shuffles with a buffer.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Magic numbers of the formats tf.io.decode_image understands.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF87a", b"GIF89a")
# Load encoded bytes into memory when the whole split is at most this big ("caching for small
# datasets"): CIFAR-10 is ~20 MB of JPEG, Imagenette-224 ~150 MB, ImageNet ~140 GB (streamed).
DEFAULT_CACHE_MAX_BYTES = 1 << 30
# Names the pipeline routes to the built-in sources instead of tfds.
FOLDER = "folder"
DIGITS = "digits"


class DataError(ValueError):
    """A dataset cannot be used as requested (bad name, split, folder, or files)."""


class CorruptImageError(DataError):
    """One or more image files cannot be decoded; the message names them."""


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
            lambda ex: {
                "encoded": ex[self.image_key],
                "label": tf.cast(ex[self.label_key], tf.int32),
            }
        )


def _looks_like_image(head: bytes) -> bool:
    return any(head.startswith(m) for m in _MAGIC)


def _read_head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def _read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# Files read in one go before choosing how to read the rest (see _read_files).
_PROBE_FILES = 512
_SEQUENTIAL_SECONDS_PER_FILE = 50e-6


def _read_files(paths: Sequence[str], read: Callable[[str], bytes]) -> list[bytes]:
    """``read`` of every path, in order. Files in the page cache read fastest in one thread (a
    thread per file pays more in GIL hand-offs than the read costs: 50k CIFAR files take 0.7 s
    sequentially, 8 s on 16 threads); when the first files show real I/O latency, a few threads
    each read a contiguous chunk (cold CIFAR-10: 9.0 s sequential, 4.5 s on 4 threads)."""
    start = time.perf_counter()
    data = [read(p) for p in paths[:_PROBE_FILES]]
    rest = paths[_PROBE_FILES:]
    per_file = (time.perf_counter() - start) / max(len(data), 1)
    if per_file < _SEQUENTIAL_SECONDS_PER_FILE or len(rest) < _PROBE_FILES:
        return data + [read(p) for p in rest]
    workers = 4
    chunks = [rest[i * len(rest) // workers:(i + 1) * len(rest) // workers] for i in range(workers)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk in pool.map(lambda c: [read(p) for p in c], chunks):
            data.extend(chunk)
    return data


def folder_classes(root: Path) -> list[str]:
    """Class names of an image-folder dataset: sorted union of class folders over all splits.

    Taking the union keeps label ids identical between e.g. ``train`` and ``val``.
    """
    names: set[str] = set()
    for split_dir in root.iterdir():
        if split_dir.is_dir() and not split_dir.name.startswith("."):
            names.update(
                d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
            )
    return sorted(names)


def folder_source(
    root: str | os.PathLike,
    split: str,
    *,
    skip_corrupt: bool = False,
    cache: bool | str = "auto",
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
    class_names: Sequence[str] | None = None,
) -> IndexSource:
    """Scan ``<root>/<split>/<class>/*`` into an index source.

    Files are sorted by (class, file name), so example indices are stable across runs and
    machines. Files whose extension is not an image extension, or whose first bytes are not an
    image header, are reported (``DataError`` naming the file) unless ``skip_corrupt``, in which
    case they are skipped and listed in ``skipped_files``. Hidden files (``.DS_Store``) are
    ignored. An empty class folder is an error: it would silently create a class with no data.
    """
    if root is None:
        raise DataError('name="folder" needs data_dir=<root> holding <root>/<split>/<class>/*')
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder root {str(root)!r} does not exist or is not a directory")
    split_dir = root / split
    if not split_dir.is_dir():
        available = sorted(d.name for d in root.iterdir() if d.is_dir())
        raise DataError(
            f"split {split!r} not found in image folder {str(root)!r}: no directory "
            f"{str(split_dir)!r}; available splits: {available}"
        )
    names = list(class_names) if class_names is not None else folder_classes(root)
    present = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and d.name[:1] != ".")
    unknown = sorted(set(present) - set(names))
    if unknown:
        raise DataError(f"class folders {unknown} in {str(split_dir)!r} are not in class_names")
    if not present:
        raise DataError(f"split folder {str(split_dir)!r} has no class sub-directories")

    paths: list[str] = []
    labels: list[int] = []
    bad: list[str] = []
    for label, name in enumerate(names):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        files = sorted(
            e.path for e in os.scandir(class_dir) if e.is_file() and not e.name.startswith(".")
        )
        images = [p for p in files if p.lower().endswith(IMAGE_EXTENSIONS)]
        bad.extend(p for p in files if not p.lower().endswith(IMAGE_EXTENSIONS))
        if not images:
            raise DataError(f"class folder {str(class_dir)!r} contains no image files")
        paths.extend(images)
        labels.extend([label] * len(images))

    if cache == "auto":
        total = sum(os.path.getsize(p) for p in paths)
        cache = total <= cache_max_bytes
    data = _read_files(paths, _read_all if cache else _read_head)
    keep = []
    for i, (p, blob) in enumerate(zip(paths, data, strict=True)):
        if _looks_like_image(blob[:16]):
            keep.append(i)
        else:
            bad.append(p)
    if bad and not skip_corrupt:
        shown = ", ".join(repr(b) for b in sorted(bad)[:5])
        raise CorruptImageError(
            f"{len(bad)} file(s) in {str(split_dir)!r} are not images (unknown extension or not "
            f"a JPEG/PNG/BMP/GIF header): {shown}{' ...' if len(bad) > 5 else ''}. Remove them "
            "or pass skip_corrupt=True to skip and count them."
        )
    if bad:
        log.warning("skipping %d non-image file(s) in %s", len(bad), split_dir)
    labels_arr = np.asarray(labels, dtype=np.int32)[keep]
    return IndexSource(
        name=f"folder:{split_dir}",
        labels=labels_arr,
        class_names=names,
        encoded=[data[i] for i in keep] if cache else None,
        paths=[paths[i] for i in keep],
        skipped_files=sorted(bad),
    )


def find_undecodable(source: IndexSource) -> list[int]:
    """Indices of examples that fail to decode (one parallel decode pass over the source)."""
    lookup = source.lookup_fn()

    def probe(i):
        img = tf.io.decode_image(lookup(i), channels=3, expand_animations=False)
        return i, tf.shape(img)

    ds = tf.data.Dataset.range(len(source)).map(probe, num_parallel_calls=tf.data.AUTOTUNE)
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
    )


def find_corrupt_images(root: str | os.PathLike, split: str) -> list[str]:
    """Paths of all files under ``<root>/<split>`` that are not decodable images."""
    source = folder_source(root, split, skip_corrupt=True, cache=False)
    return sorted(source.skipped_files + [source.describe(i) for i in find_undecodable(source)])


# Digits: 20% of each class goes to "test", chosen by a fixed-seed permutation. Stratifying keeps
# the 10 classes balanced in both splits (the file is ordered by writer, so a plain head/tail cut
# would not be); doing it in numpy keeps it independent of scikit-learn's splitter internals.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits()`` of the ``train`` or ``test`` split."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise DataError(f"digits has splits 'train' and 'test', not {split!r}")
    target = load_digits().target
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test = []
    for c in range(10):
        members = np.flatnonzero(target == c)
        n_test = int(round(len(members) * DIGITS_TEST_FRACTION))
        test.extend(rng.permutation(members)[:n_test].tolist())
    is_test = np.zeros(len(target), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def digits_source(split: str) -> IndexSource:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) as in-memory PNGs.

    Encoding them as PNG sends them through exactly the decode/resize/augment code that the
    image folders and tfds datasets use; grey levels 0..16 are scaled to 0..255.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    idx = digits_split_indices(split)
    pixels = np.round(digits.images[idx] * (255.0 / 16.0)).astype(np.uint8)[..., None]
    encoded = [tf.io.encode_png(p).numpy() for p in pixels]
    return IndexSource(
        name=f"digits:{split}",
        labels=digits.target[idx].astype(np.int32),
        class_names=[str(c) for c in range(10)],
        encoded=encoded,
    )


IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def tfds_source(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    download: bool = False,
    manual_dir: str | None = None,
    cache: bool | str = "auto",
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
) -> IndexSource | TfdsStreamSource:
    """Open tfds dataset ``name`` (already prepared in ``data_dir``) and split ``split``.

    With ``download=True`` an unprepared dataset is prepared first (for ``imagenet2012`` from
    the manual download directory, as tfds documents). Small splits (``cache``) are read once
    into memory and returned as an ``IndexSource``; large ones stream.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(
            f"unknown dataset {name!r}: not a tfds dataset name and not one of "
            f"{FOLDER!r}, {DIGITS!r}. (tfds says: {str(e).splitlines()[0]})"
        ) from None
    if not builder.info.splits:
        if download:
            _prepare(builder, name, manual_dir)
        else:
            hint = ""
            if name.startswith("imagenet2012"):
                hint = (
                    f" ImageNet needs a manual download: put {' and '.join(IMAGENET_MANUAL_FILES)}"
                    f" in {_manual_dir(builder, manual_dir)} and pass download=True once."
                )
            raise DataError(
                f"tfds dataset {name!r} is not prepared in data_dir {builder.data_dir_root!r}; "
                f"this machine may have no internet, so it is not downloaded implicitly. Pass "
                f"download=True (option; train.py: --config.dataset_options.download=True) to "
                f"prepare it, or point data_dir at a prepared copy."
                + hint
            )
    info = builder.info
    base_split = split.split("[")[0]
    if base_split not in info.splits:
        raise DataError(
            f"tfds dataset {name!r} has no split {split!r}; available: {sorted(info.splits)}"
        )
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
    class_names = list(features[label_key].names)
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


def _manual_dir(builder, manual_dir: str | None) -> str:
    return manual_dir or os.path.join(builder.data_dir_root, "downloads", "manual")


def _prepare(builder, name: str, manual_dir: str | None) -> None:
    import tensorflow_datasets as tfds

    mdir = _manual_dir(builder, manual_dir)
    if name.startswith("imagenet2012"):
        missing = [f for f in IMAGENET_MANUAL_FILES if not os.path.exists(os.path.join(mdir, f))]
        if missing:
            raise DataError(
                f"imagenet2012 manual download missing: {missing} not found in {mdir!r}. "
                "Download them from image-net.org (tfds cannot) and retry, or pass "
                "manual_dir=<folder holding them>."
            )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=mdir))
