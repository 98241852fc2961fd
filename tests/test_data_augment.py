"""Statistics of the train-time augmentations (crop sizes/positions, flips, lighting noise)."""

import numpy as np
import pytest
import tensorflow as tf

from resnet_jax import data
from resnet_jax.data import augment as aug
from resnet_jax.data import testing

N = 2000


def _seeds(n=N):
    return tf.stack([tf.fill([n], tf.constant(7, tf.int64)), tf.range(n, dtype=tf.int64)], 1)


def _map(fn, n=N):
    """Apply ``fn(seed)`` to n distinct seeds in one tf.data pass; numpy results."""
    ds = tf.data.Dataset.from_tensor_slices(_seeds(n)).map(fn).batch(n)
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(ds)))


def _assert_uniform_ints(values, k):
    counts = np.bincount(values, minlength=k)
    assert len(counts) == k
    expected = len(values) / k
    assert np.all(np.abs(counts - expected) < 4.5 * np.sqrt(expected)), counts


def test_cifar_crop_positions_uniform_and_flip_rate_half():
    # Pixel (y, x) holds 1 + y*32 + x, so the output shows where the crop came from.
    coords = tf.reshape(tf.range(1, 32 * 32 + 1, dtype=tf.float32), [32, 32, 1])
    img = tf.tile(coords, [1, 1, 3])
    out = _map(lambda s: aug.cifar_augment(img, s, pad=4))
    assert out.shape == (N, 32, 32, 3)
    v = out[:, 12, :, 0]  # row 12 of the output: original row 12 - 4 + oy, never padding
    flipped = v[:, 10] > v[:, 20]
    assert abs(flipped.mean() - 0.5) < 0.05
    oy = ((v[:, 16] - 1) // 32 - 8).astype(int)  # original row = 12 - 4 + oy
    col16 = ((v[:, 16] - 1) % 32).astype(int)  # original column under output column 16
    ox = np.where(flipped, col16 - (31 - 16) + 4, col16 - 16 + 4)
    _assert_uniform_ints(oy, 9)
    _assert_uniform_ints(ox, 9)
    # Zero padding: a crop at offset 0 shows 4 zero rows on top.
    top = out[oy == 0]
    assert np.all(top[:, :4] == 0) and np.all(top[:, 4:, 4:28] != 0)


def test_resnet_paper_scale_and_position():
    hw = tf.constant([300, 400])
    y, x, h, w = _map(lambda s: aug.resnet_paper_window(hw, s, 224))
    assert np.all(h == w) and np.all(y >= 0) and np.all(x >= 0)
    assert np.all(y + h <= 300) and np.all(x + w <= 400)
    implied_shorter = 224 * 300 / h  # shorter side the 224 crop corresponds to
    assert implied_shorter.min() >= 255 and implied_shorter.max() <= 481
    assert abs(implied_shorter.mean() - 368) < 5  # U[256, 480]
    assert implied_shorter.min() < 262 and implied_shorter.max() > 474
    rel_y, rel_x = y / (300 - h), x / (400 - w)
    assert abs(rel_y.mean() - 0.5) < 0.03 and abs(rel_x.mean() - 0.5) < 0.03


def test_inception_area_and_aspect_ranges():
    hw = tf.constant([300, 400])
    y, x, h, w = _map(lambda s: aug.inception_window(hw, s))
    assert np.all(y + h <= 300) and np.all(x + w <= 400)
    area = h * w / (300 * 400)
    ratio = w / h
    whole = (h == 300) & (w == 400)  # fallback after 10 failed draws
    assert whole.mean() < 0.1
    a, r = area[~whole], ratio[~whole]
    assert a.min() >= 0.075 and a.max() <= 1.0 and a.min() < 0.1 and a.max() > 0.9
    assert r.min() >= 0.74 and r.max() <= 1.35 and r.min() < 0.78 and r.max() > 1.28


def test_lighting_noise_zero_mean_with_pca_covariance():
    img = tf.fill([4, 4, 3], 0.5)
    delta = _map(lambda s: aug.lighting(img, s, 0.1) - img, n=4000)[:, 0, 0, :]
    assert np.all(np.abs(delta - delta[:, None, None, None].squeeze()) < 1)  # per-image shift
    vec, val = np.array(aug.IMAGENET_EIGVEC), np.array(aug.IMAGENET_EIGVAL)
    expected_cov = (vec * (0.1 * val) ** 2) @ vec.T
    std = np.sqrt(np.diag(expected_cov))
    assert np.all(np.abs(delta.mean(0)) < 4 * std / np.sqrt(len(delta)))
    np.testing.assert_allclose(np.cov(delta.T), expected_cov, rtol=0.15, atol=2e-5)


def test_color_jitter_changes_image_within_range():
    img = tf.random.stateless_uniform([8, 8, 3], [1, 2])
    out = _map(lambda s: aug.color_jitter(img, s, 0.4), n=64)
    assert out.min() >= 0 and out.max() <= 1
    assert np.abs(out - img.numpy()).mean() > 0.02


@pytest.fixture(scope="module")
def imagenette_root(tmp_path_factory):
    if not testing.SHARED_DATASETS.is_dir():
        pytest.skip(f"real-data directory {testing.SHARED_DATASETS} does not exist")
    return testing.extract_subset(
        testing.IMAGENETTE_ARCHIVE, tmp_path_factory.mktemp("nette"), per_class=4,
        splits=("train",),
    )  # fmt: skip


def test_inception_fused_crop_on_real_jpegs_matches_full_decode_and_flips_half(imagenette_root):
    """With area and aspect fixed to 1 the crop is the whole image, so each output must equal
    the full-decode centre view or its mirror; the mirror rate must be near 1/2."""
    common = dict(data_dir=str(imagenette_root), image_size=64, normalization="none",
                  with_index=True)  # fmt: skip
    ref = data.create_dataset("folder", "train", global_batch_size=40, train=False, **common)
    reference = {int(i): im for b in ref for i, im in zip(b["index"], b["image"], strict=True)}
    train = data.create_dataset(
        "folder", "train", global_batch_size=40, train=True, augment="inception",
        area_range=(1.0, 1.0), aspect_range=(1.0, 1.0), crop_fraction=1.0, **common,
    )  # fmt: skip
    it = iter(train)
    flips = []
    for _ in range(5):
        batch = next(it)
        for i, im in zip(batch["index"], batch["image"], strict=True):
            r = reference[int(i)]
            d_same, d_flip = np.abs(im - r).mean(), np.abs(im - r[:, ::-1]).mean()
            assert min(d_same, d_flip) < 0.02  # only JPEG-window decoding differences
            flips.append(d_flip < d_same)
    assert 0.3 < np.mean(flips) < 0.7  # 200 draws: 1/2 +- 0.11 is ~3 sigma


def test_resnet_paper_preset_on_real_jpegs(imagenette_root):
    train = data.create_dataset(
        "folder", "train", global_batch_size=40, train=True, augment="resnet_paper",
        image_size=224, data_dir=str(imagenette_root), dtype="bfloat16",
    )  # fmt: skip
    batch = next(iter(train))
    img = batch["image"].astype(np.float32)
    assert batch["image"].dtype.name == "bfloat16" and img.shape == (40, 224, 224, 3)
    # Normalised with the folder's own statistics: roughly zero mean, unit variance.
    assert abs(img.mean()) < 0.3 and 0.6 < img.std() < 1.4
