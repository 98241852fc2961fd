"""scikit-learn's handwritten digits as a source: a fixed stratified train/test split, encoded as
in-memory PNGs so they go through the same decode/resize/augment code as every other source."""

from __future__ import annotations

import numpy as np

from resnet_jax.data.host_tf import tf
from resnet_jax.data.sources.base import DataError
from resnet_jax.data.sources.index_source import IndexSource

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
