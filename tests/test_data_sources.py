"""Sources: image folders (real CIFAR-10 JPEGs), digits, tfds builders (mock_data), bad input."""

import io
import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from resnet_jax import data
from resnet_jax.data import sources, testing
from resnet_jax.data.sources import folder, tfds_builder

CIFAR_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
needs_shared = pytest.mark.skipif(
    not testing.SHARED_DATASETS.is_dir(),
    reason=f"real-data directory {testing.SHARED_DATASETS} does not exist",
)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    if not testing.SHARED_DATASETS.is_dir():
        pytest.skip(f"real-data directory {testing.SHARED_DATASETS} does not exist")
    return testing.extract_subset(
        testing.CIFAR10_ARCHIVE, tmp_path_factory.mktemp("cifar"), per_class=20
    )


def _eval(name, split, **kw):
    kw.setdefault("global_batch_size", 16)
    kw.setdefault("image_size", 32)
    return data.create_dataset(name, split, train=False, **kw)


def _save(path, img: Image.Image, fmt: str, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)


@needs_shared
def test_folder_real_cifar_classes_labels_and_pixels(cifar_root):
    ds = _eval("folder", "test", data_dir=str(cifar_root), normalization="none", with_index=True)
    assert ds.class_names == CIFAR_CLASSES and ds.num_classes == 10
    assert ds.num_examples == 200
    seen = 0
    for batch in ds:
        for img, label, idx, m in zip(
            batch["image"], batch["label"], batch["index"], batch["mask"], strict=True
        ):
            if not m:
                continue
            seen += 1
            # The label is the index of the parent folder in the sorted class list.
            assert f"/{ds.class_names[label]}/" in ds.source.describe(idx)
            if idx % 37 == 0:  # spot-check decoded pixels against PIL
                assert ds.source.encoded is not None  # small split: held in memory
                encoded = ds.source.encoded[idx]
                ref = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), np.float32)
                assert img.shape == (32, 32, 3)
                assert np.abs(img * 255 - ref).mean() < 3.0  # JPEG decoders differ by ~1 level
    assert seen == 200
    labels = np.concatenate([b["label"][b["mask"]] for b in ds])
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [20] * 10)


@needs_shared
def test_folder_uncached_reads_files_and_keeps_paths(cifar_root):
    ds = _eval("folder", "train", data_dir=str(cifar_root), cache=False, with_index=True)
    assert ds.source.encoded is None and len(ds.source.paths) == 200
    batch = next(iter(ds))
    for label, idx in zip(batch["label"], batch["index"], strict=True):
        assert f"/{ds.class_names[label]}/" in ds.source.paths[idx]


def test_digits_split_is_deterministic_stratified_and_complete():
    train, test = data.digits_split_indices("train"), data.digits_split_indices("test")
    assert len(train) + len(test) == 1797 and not set(train) & set(test)
    np.testing.assert_array_equal(train, data.digits_split_indices("train"))
    from sklearn.datasets import load_digits

    y = load_digits().target
    frac = np.bincount(y[test], minlength=10) / np.bincount(y, minlength=10)
    assert np.all(np.abs(frac - 0.2) < 0.01)
    with pytest.raises(data.DataError, match="digits"):
        data.digits_split_indices("validation")


def test_digits_three_channels_upscaled_through_pipeline():
    from sklearn.datasets import load_digits

    ds = _eval("digits", "test", normalization="none", with_index=True, image_size=32)
    assert ds.num_examples == 359 and ds.class_names == [str(i) for i in range(10)]
    batch = next(iter(ds))
    img = batch["image"]
    assert img.shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(img[..., 0], img[..., 2])  # grey -> RGB
    original = load_digits().images[data.digits_split_indices("test")[batch["index"][0]]] / 16
    down = img[0, ..., 0].reshape(8, 4, 8, 4).mean(axis=(1, 3))  # undo the 4x upscale
    assert np.corrcoef(down.ravel(), original.ravel())[0, 1] > 0.95
    np.testing.assert_array_equal(
        batch["label"], load_digits().target[data.digits_split_indices("test")[batch["index"]]]
    )


@pytest.mark.parametrize(
    "name,num_classes", [("cifar10", 10), ("cifar100", 100), ("imagenet2012", 1000),
                         ("imagenette", 10)]
)  # fmt: skip
@pytest.mark.parametrize("cache", [True, False])
def test_tfds_names_with_mock_data(tmp_path, name, num_classes, cache):
    splits = {"train": 24, "validation" if name.startswith("imagen") else "test": 16}
    testing.write_tfds_metadata(tmp_path, name, splits)
    eval_split = list(splits)[1]
    with tfds.testing.mock_data(
        policy=tfds.testing.MockPolicy.USE_FILES,
        data_dir=str(tmp_path),
        as_dataset_fn=testing.sliceable_fake_as_dataset,
    ):
        train = data.create_dataset(
            name, "train", global_batch_size=8, train=True, image_size=32,
            augment="inception", cache=cache,
        )  # fmt: skip
        assert (train.num_classes, train.num_examples, train.steps_per_epoch) == (
            num_classes, 24, 3,
        )  # fmt: skip
        batch = next(iter(train))
        assert batch["image"].shape == (8, 32, 32, 3) and np.isfinite(batch["image"]).all()
        assert batch["label"].dtype == np.int32 and batch["mask"].all()
        evald = data.create_dataset(
            name, eval_split, global_batch_size=8, train=False, image_size=32, cache=cache
        )
        masks = [b["mask"] for b in evald]
        assert len(masks) == evald.steps_per_epoch == 2 and sum(m.sum() for m in masks) == 16


def test_unknown_dataset_name():
    with pytest.raises(data.DataError, match="unknown dataset 'no_such_dataset'"):
        _eval("no_such_dataset", "train")


def test_missing_tfds_split(tmp_path):
    testing.write_tfds_metadata(tmp_path, "cifar10", {"train": 8, "test": 8})
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path)):
        with pytest.raises(data.DataError, match=r"no split 'validation'.*\['test', 'train'\]"):
            _eval("cifar10", "validation")


def test_unprepared_tfds_dataset_and_missing_imagenet_manual_download(tmp_path):
    with pytest.raises(data.DataError, match="manual download.*ILSVRC2012_img_train.tar"):
        _eval("imagenet2012", "train", data_dir=str(tmp_path), download=False)
    with pytest.raises(data.DataError, match="manual download missing.*ILSVRC2012_img_val.tar"):
        _eval("imagenet2012", "train", data_dir=str(tmp_path), download=True)
    with pytest.raises(data.DataError, match="not prepared"):
        _eval("cifar10", "train", data_dir=str(tmp_path), download=False)  # never downloads


def _tiny_folder(root, n=3, size=(12, 10)):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(n):
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            _save(root / "train" / cls / f"{i}.jpg", Image.fromarray(pixels), "JPEG")
    return root


def test_folder_missing_root_split_and_empty_class(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        _eval("folder", "train", data_dir=str(tmp_path / "nope"))
    with pytest.raises(data.DataError, match="data_dir"):
        _eval("folder", "train")
    root = _tiny_folder(tmp_path)
    with pytest.raises(data.DataError, match=r"split 'val' not found.*\['train'\]"):
        _eval("folder", "val", data_dir=str(root))
    (root / "train" / "empty").mkdir()
    with pytest.raises(data.DataError, match="empty.*contains no image files"):
        _eval("folder", "train", data_dir=str(root))


def test_folder_percent_slices_carve_a_held_out_set_per_class(tmp_path, scans):
    """``train[:70%]`` and ``train[70%:]`` partition every class 7/3, by a hash of the file names
    (not their order), and share one scan; a slice that is not one is an error naming the form."""
    root = _tiny_folder(tmp_path, n=10, size=(8, 8))
    _age(root)
    fit, held = (sources.folder_source(root, f"train[{s}]") for s in (":70%", "70%:"))
    whole = sources.folder_source(root, "train")
    assert len(scans) == 1  # a slice keeps the scan it was cut from alive, for the next slice
    assert fit.name.endswith("[0%:70%]") and held.name.endswith("[70%:100%]")
    assert np.bincount(fit.labels).tolist() == [7, 7]
    assert np.bincount(held.labels).tolist() == [3, 3]
    assert sorted(fit.paths + held.paths) == sorted(whole.paths)
    for part in (fit, held):  # labels still name each file's class folder; bytes go with paths
        for path, label, blob in zip(part.paths, part.labels, part.encoded, strict=True):
            assert f"/{part.class_names[label]}/" in path
            assert blob == whole.encoded[whole.paths.index(path)]
    held_names = sorted(p.rsplit("/", 1)[1] for p in held.paths)
    assert held_names != ["7.jpg", "7.jpg", "8.jpg", "8.jpg", "9.jpg", "9.jpg"]  # not the tails
    middle = sources.folder_source(root, "train[10%:40%]")
    assert np.bincount(middle.labels).tolist() == [3, 3] and not set(middle.paths) & set(held.paths)
    ds = _eval("folder", "train[70%:]", data_dir=str(root), image_size=8)
    assert ds.num_examples == 6 and sum(b["mask"].sum() for b in ds) == 6
    for bad in ("train[:70]", "train[70%:30%]", "train[:101%]", "train[a:b]", "train]"):
        with pytest.raises(data.DataError, match=r"not a percent slice.*train\[:90%\]"):
            sources.folder_source(root, bad)


def test_non_image_file_error_names_it_or_is_skipped_and_counted(tmp_path):
    root = _tiny_folder(tmp_path)
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "train" / "b" / "fake.jpg").write_bytes(b"<html>404</html>")
    (root / "train" / "b" / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored silently
    with pytest.raises(data.CorruptImageError, match=r"2 file\(s\).*notes.txt.*fake.jpg"):
        _eval("folder", "train", data_dir=str(root))
    ds = _eval("folder", "train", data_dir=str(root), skip_corrupt=True)
    assert ds.num_examples == 6
    assert [p.rsplit("/", 1)[1] for p in ds.skipped_files] == ["notes.txt", "fake.jpg"]
    assert sum(b["mask"].sum() for b in ds) == 6


def test_truncated_jpeg_error_names_file_or_is_skipped(tmp_path):
    root = _tiny_folder(tmp_path, size=(40, 40))
    good = (root / "train" / "a" / "0.jpg").read_bytes()
    (root / "train" / "a" / "zz_truncated.jpg").write_bytes(good[: len(good) // 2])
    ds = _eval("folder", "train", data_dir=str(root))
    with pytest.raises(data.CorruptImageError, match="zz_truncated.jpg"):
        list(ds)
    ds = _eval("folder", "train", data_dir=str(root), skip_corrupt=True)
    assert ds.num_examples == 6 and ds.skipped_files[0].endswith("zz_truncated.jpg")
    assert data.find_corrupt_images(root, "train")[0].endswith("zz_truncated.jpg")


def test_normalisation_statistics_skip_undecodable_files(tmp_path):
    """The per-pixel mean is estimated in one decode pass that drops what does not decode."""
    from resnet_jax.data import pipeline

    def mean_image(root):
        opts = pipeline.Options(normalization="per_pixel_mean")
        subtract = pipeline.normalizer("folder", str(root), 8, "train", opts)
        return -np.asarray(subtract(np.zeros((8, 8, 3), np.float32)))

    clean = _tiny_folder(tmp_path / "clean", size=(40, 40))
    dirty = _tiny_folder(tmp_path / "dirty", size=(40, 40))
    good = (dirty / "train" / "a" / "0.jpg").read_bytes()
    (dirty / "train" / "a" / "zz_truncated.jpg").write_bytes(good[: len(good) // 2])
    (dirty / "train" / "b" / "notes.txt").write_text("not an image")
    np.testing.assert_allclose(mean_image(dirty), mean_image(clean), rtol=1e-6)
    assert mean_image(clean).std() > 0.01  # random pixels: a real image, not a constant


def test_grayscale_cmyk_alpha_and_small_images(tmp_path):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    smooth = Image.fromarray(
        np.broadcast_to(np.linspace(0, 255, 64, dtype=np.uint8), (48, 64))[..., None]
        .repeat(3, -1) // np.array([1, 2, 3], np.uint8)
    )
    rgba = np.concatenate([np.asarray(rgb), np.full((48, 64, 1), 7, np.uint8)], -1)
    d = tmp_path / "train"
    _save(d / "gray" / "g.jpg", rgb.convert("L"), "JPEG")
    _save(d / "cmyk" / "c.jpg", smooth.convert("CMYK"), "JPEG", quality=95)
    _save(d / "alpha" / "a.png", Image.fromarray(rgba, "RGBA"), "PNG")
    _save(d / "small" / "s.png", rgb.resize((5, 7)), "PNG")  # smaller than every crop
    kw = dict(data_dir=str(tmp_path), normalization="none", with_index=True)
    ds = _eval("folder", "train", global_batch_size=8, image_size=48, crop_fraction=1.0, **kw)
    batch = next(iter(ds))
    by_class = {ds.class_names[lab]: img for lab, img, m in
                zip(batch["label"], batch["image"], batch["mask"], strict=True) if m}  # fmt: skip
    assert set(by_class) == {"gray", "cmyk", "alpha", "small"}
    g = by_class["gray"]
    np.testing.assert_allclose(g[..., 0], g[..., 1], atol=1e-6)
    # CMYK is converted to RGB: the smooth colour ramp survives within JPEG error.
    ref = np.asarray(smooth.crop((8, 0, 56, 48)), np.float32) / 255
    assert np.abs(by_class["cmyk"] - ref).mean() < 0.03
    # PNG alpha is dropped, RGB kept exactly (48x64 -> centre 48x48, no resampling).
    np.testing.assert_allclose(by_class["alpha"] * 255, np.asarray(rgb)[:, 8:56], atol=1e-3)
    for augment in ("cifar", "resnet_paper", "inception"):
        train = data.create_dataset(
            "folder", "train", global_batch_size=4, train=True, image_size=48,
            augment=augment, data_dir=str(tmp_path), device_count=4,
        )  # fmt: skip
        ds_batch = next(iter(train))
        assert ds_batch["image"].shape == (4, 48, 48, 3) and np.isfinite(ds_batch["image"]).all()
    for view in ("ten_crop", "multi_scale"):
        out = next(iter(_eval("folder", "train", image_size=48, eval_view=view, **kw)))["image"]
        assert all(np.isfinite(x).all() for x in (out if view == "multi_scale" else [out]))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        _eval("digits", "test", global_batch_size=12)  # 8 devices in tests
    with pytest.raises(TypeError, match="unknown option.*'colour_jiter'"):
        _eval("digits", "test", colour_jiter=0.4)
    with pytest.raises(ValueError, match="augment must be one of"):
        data.create_dataset("digits", "train", global_batch_size=8, train=True, image_size=8,
                            augment="autoaugment")  # fmt: skip
    with pytest.raises(ValueError, match="eval_view"):
        _eval("digits", "test", eval_view="five_crop")
    with pytest.raises(ValueError, match="dtype"):
        _eval("digits", "test", dtype="float16")
    with pytest.raises(ValueError, match="fewer than global_batch_size"):
        data.create_dataset("digits", "test", global_batch_size=512, train=True, image_size=8)
    assert sources.DIGITS == "digits"


# --- tfds downloads (issue 14 §3): the default downloads; failures are one clear line ---------


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def offline():
    """Skips unless this machine cannot reach CIFAR-10's download server (the real path)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        reason = tfds_builder._unreachable(tfds.builder("cifar10", data_dir=d))
    if reason is None:
        pytest.skip("this machine reaches the internet: the offline error cannot be tested")
    return reason


def test_tfds_offline_download_fails_fast_with_one_line_naming_the_fixes(tmp_path, offline):
    start = time.perf_counter()
    with pytest.raises(data.DataError) as err:
        sources.tfds_source("cifar10", "train", data_dir=str(tmp_path))  # download=True default
    assert time.perf_counter() - start < 20  # tfds alone retries for ~200 s offline
    msg = _one_line(err)
    assert "'cifar10' is not prepared" in msg and "could not be downloaded" in msg
    assert "offline" in msg and "--config.data_dir" in msg and "--config.dataset=folder" in msg
    # Nothing was prepared, so the next attempt fails the same way (it would download again).
    assert tfds.builder("cifar10", data_dir=str(tmp_path)).info.splits == {}
    with pytest.raises(data.DataError, match="could not be downloaded"):
        _eval("cifar10", "train", data_dir=str(tmp_path), download=True)


def test_tfds_real_download_failure_is_one_line(tmp_path, offline, monkeypatch):
    """Past the reachability check, tfds' own download fails (no retries: fast) and still
    becomes one line."""
    from tensorflow_datasets.core.download import downloader

    monkeypatch.setattr(tfds_builder, "_unreachable", lambda builder: None)
    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)
    with pytest.raises(data.DataError) as err:
        sources.tfds_source("cifar10", "train", data_dir=str(tmp_path))
    msg = _one_line(err)
    assert "could not be downloaded and prepared" in msg and "offline" in msg
    assert not list(tmp_path.glob("cifar10/*/dataset_info.json"))


class _FakeBuilder:
    """A tfds builder stand-in: unprepared until ``download_and_prepare``, then backed by mock
    metadata (``real``: a builder whose dataset_info.json has the splits)."""

    url_infos = None  # nothing to check for reachability

    def __init__(self, real, fail_first: bool = False):
        self.real, self.fail_first, self.prepared, self.configs = real, fail_first, False, []
        self.data_dir_root = real.data_dir_root

    @property
    def info(self):
        if self.prepared:
            return self.real.info
        return type("Info", (), {"splits": {}})()

    def download_and_prepare(self, download_config=None, **kwargs):
        self.configs.append(download_config)
        if self.fail_first and len(self.configs) == 1:
            # Half way: tfds has written part of a temporary directory when the error comes.
            partial = os.path.join(self.data_dir_root, "fake", "incomplete.ABC123_1.0.0")
            os.makedirs(partial)
            open(os.path.join(partial, "fake-train.tfrecord-00000-of-00002"), "wb").close()
            raise OSError("No space left on device")
        self.prepared = True

    def as_dataset(self, split, **kwargs):
        return testing.sliceable_fake_as_dataset(self.real, split, **kwargs)


@pytest.mark.parametrize("manual_dir", [None, "my_manual"])
def test_tfds_download_is_called_with_the_manual_dir_then_the_source_opens(
    tmp_path, monkeypatch, manual_dir
):
    testing.write_tfds_metadata(tmp_path, "cifar10", {"train": 12, "test": 4})
    fake = _FakeBuilder(tfds.builder("cifar10", data_dir=str(tmp_path)))
    asked = []
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: asked.append(name) or fake)
    with pytest.raises(data.DataError, match="not prepared.*download=False"):
        sources.tfds_source("cifar10", "train", data_dir=str(tmp_path), download=False)
    assert fake.configs == []
    mdir = None if manual_dir is None else str(tmp_path / manual_dir)
    src = sources.tfds_source("cifar10", "train", data_dir=str(tmp_path), manual_dir=mdir)
    assert len(fake.configs) == 1
    expected = mdir or os.path.join(fake.data_dir_root, "downloads", "manual")
    assert os.fspath(fake.configs[0].manual_dir) == expected
    assert isinstance(src, sources.IndexSource) and len(src) == 12
    np.testing.assert_array_equal(src.labels, np.arange(12) % 10)
    assert asked == ["cifar10", "cifar10"]


def test_tfds_half_failed_download_is_retried_and_nothing_half_prepared_is_used(
    tmp_path, monkeypatch
):
    testing.write_tfds_metadata(tmp_path, "cifar10", {"train": 12, "test": 4})
    fake = _FakeBuilder(tfds.builder("cifar10", data_dir=str(tmp_path)), fail_first=True)
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: fake)
    with pytest.raises(data.DataError) as err:
        sources.tfds_source("cifar10", "train", data_dir=str(tmp_path))
    msg = _one_line(err)
    assert "could not be downloaded and prepared (OSError: No space left on device)" in msg
    assert "nothing half-prepared is kept" in msg and "offline" not in msg
    assert not fake.prepared
    src = sources.tfds_source("cifar10", "train", data_dir=str(tmp_path))
    assert len(fake.configs) == 2 and len(src) == 12  # downloaded again, complete this time


class ResnetJaxTinyImages(tfds.core.GeneratorBasedBuilder):
    """A real tfds builder (no network) whose generation can fail half way."""

    VERSION = tfds.core.Version("1.0.0")
    fail_at: int | None = None
    generated = 0

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(names=["even", "odd"]),
            }),
            supervised_keys=("image", "label"),
        )  # fmt: skip

    def _split_generators(self, dl_manager):
        type(self).generated += 1
        return {"train": self._generate_examples(20)}

    def _generate_examples(self, n):
        for i in range(n):
            if i == self.fail_at:
                raise ConnectionError("connection reset by peer")
            yield i, {"image": np.full((8, 8, 3), i, np.uint8), "label": i % 2}


def test_real_tfds_preparation_failing_half_way_leaves_nothing_used_later(tmp_path, monkeypatch):
    """tfds writes into <name>/incomplete.XXXXXX_<version>/ and renames it only when complete:
    a failure (or a killed process) leaves no dataset_info.json where builders look."""
    name = "resnet_jax_tiny_images"
    monkeypatch.setattr(ResnetJaxTinyImages, "fail_at", 10)
    monkeypatch.setattr(ResnetJaxTinyImages, "generated", 0)
    with pytest.raises(data.DataError) as err:
        sources.tfds_source(name, "train", data_dir=str(tmp_path))
    assert "connection reset by peer" in _one_line(err) and "offline" in str(err.value)
    assert ResnetJaxTinyImages.generated == 1
    assert not list(tmp_path.glob(f"{name}/*/dataset_info.json"))
    # What a process killed half way leaves behind is not taken for a prepared dataset either.
    killed = tmp_path / name / "incomplete.ZZZ999_1.0.0"
    killed.mkdir(parents=True)
    (killed / "dataset_info.json").write_text("{}")
    assert tfds.builder(name, data_dir=str(tmp_path)).info.splits == {}
    monkeypatch.setattr(ResnetJaxTinyImages, "fail_at", None)
    src = sources.tfds_source(name, "train", data_dir=str(tmp_path))
    assert ResnetJaxTinyImages.generated == 2  # prepared again from the start
    assert len(src) == 20 and src.class_names == ["even", "odd"]
    ds = _eval(name, "train", data_dir=str(tmp_path), normalization="none", with_index=True)
    seen = []
    for batch in ds:  # example i is filled with the value i and labelled i % 2
        for img, label in zip(batch["image"][batch["mask"]], batch["label"][batch["mask"]],
                              strict=True):  # fmt: skip
            value = int(round(float(img.mean()) * 255))
            assert np.allclose(img * 255, value, atol=0.5) and label == value % 2
            seen.append(value)
    assert sorted(seen) == list(range(20))  # every example once, none from the failed attempt


def test_unknown_or_malformed_tfds_name_suggests_close_names():
    for name in ("cifar-10", "cifar10x"):
        with pytest.raises(data.DataError) as err:
            sources.tfds_source(name, "train")
        msg = _one_line(err)
        assert f"unknown dataset {name!r}" in msg and "did you mean 'cifar10'" in msg


# --- image folders at scale: one scan per process, same results -------------------------------


def _age(root, seconds: float = 60.0) -> None:
    """Backdate every directory's mtime (a folder written just now is not memoised)."""
    then = time.time() - seconds
    for d in [root, *root.rglob("*")]:
        if d.is_dir():
            os.utime(d, (then, then))


@pytest.fixture
def scans(monkeypatch):
    calls = []
    scan = folder._scan_folder
    monkeypatch.setattr(
        folder, "_scan_folder", lambda *a, **k: calls.append(a[0]) or scan(*a, **k)
    )
    sources.clear_folder_cache()
    return calls


def test_folder_is_scanned_once_for_source_and_statistics(tmp_path, scans):
    root = _tiny_folder(tmp_path, n=4, size=(16, 16))
    _age(root)
    ds = data.create_dataset(
        "folder", "train", global_batch_size=8, train=True, image_size=8, data_dir=str(root),
        normalization="per_pixel_mean", device_count=1, process_count=1, process_index=0,
    )  # fmt: skip
    next(iter(ds))
    assert len(scans) == 1  # open_source and the statistics pass share the scan
    again = sources.folder_source(root, "train", skip_corrupt=True)
    assert again is ds.source and len(scans) == 1
    sources.clear_folder_cache()
    fresh = sources.folder_source(root, "train")
    assert fresh is not ds.source and len(scans) == 2
    assert fresh.paths == ds.source.paths and fresh.encoded == ds.source.encoded
    np.testing.assert_array_equal(fresh.labels, ds.source.labels)


def test_folder_scan_is_redone_after_changes_or_once_unused(tmp_path, scans):
    import gc

    root = _tiny_folder(tmp_path)
    _age(root)
    first = sources.folder_source(root, "train")
    assert sources.folder_source(root, "train") is first and len(scans) == 1
    # Another cache setting is another scan (it holds other data).
    assert sources.folder_source(root, "train", cache=False).encoded is None and len(scans) == 2
    # A new file changes its class folder's mtime: rescanned, and the file is in.
    (root / "train" / "b" / "9.jpg").write_bytes((root / "train" / "b" / "0.jpg").read_bytes())
    second = sources.folder_source(root, "train")
    assert len(scans) == 3 and len(second) == len(first) + 1
    # Just written, so not memoised yet (its mtime could still hide a change).
    assert sources.folder_source(root, "train") is not second and len(scans) == 4
    _age(root)
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    _age(root)
    with pytest.raises(data.CorruptImageError, match="notes.txt"):
        sources.folder_source(root, "train")
    kept = sources.folder_source(root, "train", skip_corrupt=True)
    # The scan that raised was dropped with its source, but this one is memoised.
    assert sources.folder_source(root, "train", skip_corrupt=True) is kept
    assert kept.skipped_files[0].endswith("notes.txt") and len(kept) == len(second)
    count = len(scans)
    del first, second, kept
    gc.collect()
    sources.folder_source(root, "train", skip_corrupt=True)  # nothing alive held the scan
    assert len(scans) == count + 1


def test_read_all_and_head_match_python_file_reads(tmp_path):
    rng = np.random.default_rng(0)
    for size in (0, 15, 4096, (1 << 20) + 3):
        path = tmp_path / f"f{size}"
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        assert folder._read_all(str(path)) == path.read_bytes()
        assert folder._read_head(str(path)) == path.read_bytes()[:16]
