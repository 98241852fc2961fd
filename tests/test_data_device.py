"""uint8 streams normalised on the device equal the host-normalised float streams (real images),
and batches are placed on the devices ahead of the step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import data
from resnet_jax.data import device, testing
from resnet_jax.training.parallel import DataParallel

pytestmark = pytest.mark.skipif(
    not testing.IMAGENETTE_ARCHIVE.is_file(), reason="needs ../shared/datasets archives"
)
TOPOLOGY = dict(device_count=1, process_count=1, process_index=0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dev")
    cifar = testing.extract_subset(testing.CIFAR10_ARCHIVE, tmp / "cifar", per_class=4,
                                   splits=("train",))
    nette = testing.extract_subset(testing.IMAGENETTE_ARCHIVE, tmp / "nette", per_class=2,
                                   splits=("train",))
    return cifar, nette


def _pair(root, **kw):
    """The first batch of the float32 stream and of the uint8 stream, same options."""
    f32 = data.create_dataset("folder", "train", data_dir=str(root), **TOPOLOGY, **kw)
    u8 = data.create_dataset("folder", "train", data_dir=str(root), dtype="uint8", **TOPOLOGY,
                             **kw)
    return next(iter(f32)), next(iter(u8)), u8


@pytest.mark.parametrize("normalization", ["per_pixel_mean", "mean_std"])
def test_cifar_preset_on_the_device_equals_the_host(folders, normalization):
    """Native 32 px: the pixels are exact, so only float rounding may differ."""
    f32, u8, ds = _pair(folders[0], train=True, augment="cifar", image_size=32,
                        global_batch_size=16, normalization=normalization)
    chex.assert_type(u8["image"], np.uint8)
    assert ds.device_steps == {"cifar_pad": 4}
    assert u8["image"].nbytes * 4 == f32["image"].nbytes  # 4x fewer bytes to the device
    out = jax.jit(lambda b: device.finish(b, ds.normalization, cifar_pad=4))(u8)
    chex.assert_trees_all_close(out, f32["image"], rtol=0, atol=2e-6)
    chex.assert_trees_all_equal(u8["label"], f32["label"])
    bf16 = device.finish(u8, ds.normalization, dtype=jnp.bfloat16, cifar_pad=4)
    chex.assert_type(bf16, jnp.bfloat16)


def test_resized_presets_differ_only_by_pixel_rounding(folders):
    """224 px crops are resized on the host, then rounded to uint8: at most half a grey level
    (over the smallest std) from the float stream; the lighting noise moves to the device."""
    f32, u8, ds = _pair(folders[1], train=True, augment="resnet_paper", image_size=64,
                        global_batch_size=8)
    chex.assert_shape(u8["lighting"], (8, 3))
    assert np.abs(u8["lighting"]).max() > 0
    out = np.asarray(device.finish(u8, ds.normalization))
    bound = 0.5 / 255 / min(ds.normalization["std"]) + 1e-5
    assert np.abs(out - f32["image"]).max() <= bound
    assert np.abs(out - f32["image"]).mean() < bound / 2


@pytest.mark.parametrize("view", ["ten_crop", "multi_scale"])
def test_eval_views_on_the_device(folders, view):
    f32, u8, ds = _pair(folders[1], train=False, eval_view=view, image_size=48,
                        global_batch_size=4, normalization="per_pixel_mean")
    out = device.finish(u8, ds.normalization)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(f32["image"]), strict=True):
        chex.assert_equal_shape([a, b])
        # Rounded pixels; a mean image resized by jax.image (multi-scale) vs tf.image.
        assert np.abs(np.asarray(a) - b).max() <= 0.5 / 255 + 1e-5


def test_device_batches_stay_two_ahead_and_equal_the_host_batches():
    dp = DataParallel("shard_map")
    n = jax.device_count()
    host = [{"image": np.full((n, 2, 2, 3), i, np.uint8), "label": np.arange(n) + i}
            for i in range(5)]
    pulled = []

    def source():
        for b in host:
            pulled.append(b)
            yield b

    it = dp.device_batches(source(), size=2)
    first = next(it)
    assert len(pulled) == 3  # the one being used plus two in flight
    got = [first, *it]
    for g, h in zip(got, host, strict=True):
        assert isinstance(g["image"], jax.Array)
        chex.assert_trees_all_equal({k: g[k] for k in h}, h)  # image and label
