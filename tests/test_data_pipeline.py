"""Determinism, resuming, per-process sharding, evaluation views and full-split coverage."""

import itertools

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

from resnet_jax import data
from resnet_jax.data import testing


def _take(ds, n):
    return list(itertools.islice(iter(ds), n))


def _digits_train(**kw):
    kw.setdefault("global_batch_size", 64)
    return data.create_dataset(
        "digits", "train", train=True, image_size=16, augment="cifar", with_index=True, **kw
    )


def _assert_batches_equal(a, b):
    """Lists of batches: same length, same keys, equal arrays (chex names e.g. '[2]['image']')."""
    chex.assert_trees_all_equal(a, b)


def test_same_seed_same_batches_other_seed_other_batches():
    first = _take(_digits_train(seed=3), 4)
    _assert_batches_equal(first, _take(_digits_train(seed=3), 4))
    other = _take(_digits_train(seed=4), 1)[0]
    assert not np.array_equal(first[0]["index"], other["index"])


def test_epochs_are_permutations_without_repeats():
    ds = _digits_train()
    spe = ds.steps_per_epoch
    assert spe == ds.num_examples // 64 == 22
    batches = _take(ds, 2 * spe)
    for e in range(2):
        idx = np.concatenate([b["index"] for b in batches[e * spe : (e + 1) * spe]])
        assert len(np.unique(idx)) == len(idx) == spe * 64
    assert not np.array_equal(batches[0]["index"], batches[spe]["index"])


def test_resume_at_step_is_bit_identical():
    ds = _digits_train()
    spe = ds.steps_per_epoch
    stream = _take(ds, spe + 5)
    for k in (1, spe - 1, spe, spe + 2):
        resumed = _take(_digits_train(start_step=k), 3)
        _assert_batches_equal(resumed, stream[k : k + 3])


def test_progressive_resizing_changes_the_size_not_the_batch():
    def schedule(spe):
        return ((0, 8), (3, 12), (spe + 1, 16))

    ds = _digits_train(size_schedule=schedule)
    spe = ds.steps_per_epoch
    assert ds.size_schedule == schedule(spe)
    stream = _take(ds, spe + 4)
    assert [b["image"].shape[1:] for b in stream] == (
        [(8, 8, 3)] * 3 + [(12, 12, 3)] * (spe - 2) + [(16, 16, 3)] * 3)
    plain = _take(_digits_train(), spe + 4)
    for a, b in zip(stream, plain, strict=True):  # same examples, labels and random crops
        chex.assert_trees_all_equal({k: v for k, v in a.items() if k != "image"},
                                    {k: v for k, v in b.items() if k != "image"})
    _assert_batches_equal(stream[spe + 1 :], plain[spe + 1 :])  # at image_size: the same batch
    for k in (2, 3, spe + 2):
        _assert_batches_equal(_take(_digits_train(size_schedule=schedule, start_step=k), 2),
                              stream[k : k + 2])
    parts = [_take(_digits_train(size_schedule=schedule, start_step=2, process_index=p,
                                 process_count=4), 2) for p in range(4)]
    for i in range(2):  # each process's share of every batch, at that batch's size
        for key in ("image", "index"):
            np.testing.assert_array_equal(
                np.concatenate([part[i][key] for part in parts]), stream[2 + i][key])
    # The trainer's uint8 pixels with random-resized crops, sized per batch the same way.
    crops = _take(data.create_dataset("digits", "train", global_batch_size=64, train=True,
                                      image_size=16, augment="inception", dtype="uint8",
                                      size_schedule=schedule, start_step=2), 2)
    assert [b["image"].shape[1:3] for b in crops] == [(8, 8), (12, 12)]
    late = _take(_digits_train(size_schedule=lambda spe: ((2, 8),)), 3)  # image_size before
    assert [b["image"].shape[1:3] for b in late] == [(16, 16), (16, 16), (8, 8)]
    _assert_batches_equal(late[:2], plain[:2])
    with pytest.raises(ValueError, match="size_schedule is for training streams"):
        data.create_dataset("digits", "test", global_batch_size=64, train=False, image_size=16,
                            size_schedule=schedule)
    with pytest.raises(ValueError, match="ascending first batches"):
        _digits_train(size_schedule=lambda spe: ((3, 8), (3, 12)))
    with pytest.raises(ValueError, match="per_pixel_mean"):
        _digits_train(size_schedule=schedule, normalization="per_pixel_mean")


def test_processes_split_each_global_batch_disjointly():
    single = _take(_digits_train(), 3)
    parts = [_take(_digits_train(process_index=p, process_count=4), 3) for p in range(4)]
    for step in range(3):
        locals_ = [parts[p][step] for p in range(4)]
        assert all(b["image"].shape[0] == 16 for b in locals_)
        idx = np.concatenate([b["index"] for b in locals_])
        # Together the four processes read exactly the single-process global batch.
        np.testing.assert_array_equal(idx, single[step]["index"])
        np.testing.assert_array_equal(
            np.concatenate([b["image"] for b in locals_]), single[step]["image"]
        )


@pytest.mark.parametrize("process_count", [1, 3])
def test_eval_covers_split_once_across_processes(process_count):
    per_proc = [
        list(
            data.create_dataset(
                "digits", "test", global_batch_size=48, train=False, image_size=8,
                with_index=True, process_index=p, process_count=process_count,
            )
        )  # fmt: skip
        for p in range(process_count)
    ]
    steps = {len(b) for b in per_proc}
    assert steps == {int(np.ceil(359 / 48))}  # every process runs the same number of steps
    idx = np.concatenate([b["index"][b["mask"]] for bs in per_proc for b in bs])
    assert sorted(idx.tolist()) == list(range(359))
    pad = np.concatenate([b["index"][~b["mask"]] for bs in per_proc for b in bs])
    assert len(pad) == 8 * 48 - 359 and np.all(pad == -1)


def _mock_tfds(tmp_path, n_train=50, n_test=23):
    testing.write_tfds_metadata(tmp_path, "cifar10", {"train": n_train, "test": n_test})
    return tfds.testing.mock_data(
        policy=tfds.testing.MockPolicy.USE_FILES,
        data_dir=str(tmp_path),
        as_dataset_fn=testing.sliceable_fake_as_dataset,
    )


def test_streamed_tfds_shards_disjoint_cover_and_resume(tmp_path):
    common = dict(image_size=8, cache=False, with_index=True, normalization="none",
                  shuffle_buffer=16)  # fmt: skip
    with _mock_tfds(tmp_path):
        evals = [
            list(data.create_dataset("cifar10", "test", global_batch_size=8, train=False,
                                     process_index=p, process_count=2, **common))
            for p in range(2)
        ]  # fmt: skip
        assert len(evals[0]) == len(evals[1]) == 3  # ceil(ceil(23 / 2) / 4)
        idx = [np.concatenate([b["index"][b["mask"]] for b in bs]) for bs in evals]
        assert not set(idx[0]) & set(idx[1]) and sorted(np.concatenate(idx)) == list(range(23))
        # Pixel values identify the example: the pipeline decoded the right record.
        b = evals[1][0]
        np.testing.assert_allclose(b["image"][:, 0, 0, 0] * 255, b["index"] % 256, atol=1e-3)

        def train(p, start_step=0):
            return data.create_dataset("cifar10", "train", global_batch_size=8, train=True,
                                       process_index=p, process_count=2, augment="cifar",
                                       start_step=start_step, **common)  # fmt: skip

        spe = train(0).steps_per_epoch
        assert spe == 6
        streams = [_take(train(p), spe + 4) for p in range(2)]
        for p in range(2):
            epoch0 = np.concatenate([b["index"] for b in streams[p][:spe]])
            assert len(set(epoch0)) == len(epoch0)
            lo, hi = (0, 25) if p == 0 else (25, 50)  # process p reads its slice only
            assert epoch0.min() >= lo and epoch0.max() < hi
        _assert_batches_equal(_take(train(1, start_step=spe + 1), 3), streams[1][spe + 1 :])


@pytest.fixture(scope="module")
def nette_val(tmp_path_factory):
    if not testing.SHARED_DATASETS.is_dir():
        pytest.skip(f"real-data directory {testing.SHARED_DATASETS} does not exist")
    return testing.extract_subset(
        testing.IMAGENETTE_ARCHIVE, tmp_path_factory.mktemp("nette"), per_class=2,
        splits=("val",),
    )  # fmt: skip


def test_ten_crop_and_multi_scale_views_on_real_images(nette_val):
    common = dict(data_dir=str(nette_val), global_batch_size=8, train=False,
                  normalization="none", with_index=True)  # fmt: skip
    ten = next(iter(data.create_dataset("folder", "val", image_size=112, eval_view="ten_crop",
                                        **common)))["image"]  # fmt: skip
    assert ten.shape == (8, 10, 112, 112, 3)
    np.testing.assert_array_equal(ten[:, 5:], ten[:, :5, :, ::-1])  # mirrored five
    assert np.abs(ten[:, 0] - ten[:, 3]).mean() > 0.05  # corners differ
    # 224 px images resized to shorter side 128: the centre crop equals the centre view.
    center = next(iter(data.create_dataset("folder", "val", image_size=112, **common)))["image"]
    assert np.abs(ten[:, 4] - center).mean() < 0.01
    multi = data.create_dataset("folder", "val", image_size=224, eval_view="multi_scale",
                                **common)  # fmt: skip
    assert multi.view_sizes == data.PAPER_SCALES
    batch = next(iter(multi))
    assert [x.shape for x in batch["image"]] == [(8, s, s, 3) for s in data.PAPER_SCALES]
    whole = next(iter(data.create_dataset("folder", "val", image_size=224, crop_fraction=1.0,
                                          **common)))["image"]  # fmt: skip
    np.testing.assert_allclose(batch["image"][0], whole, atol=1e-6)  # 224 -> 224: identity


@pytest.mark.skipif(not testing.SHARED_DATASETS.is_dir(), reason="no ../shared/datasets")
def test_full_cifar10_test_split_exactly_10000(tmp_path):
    root = testing.extract_subset(testing.CIFAR10_ARCHIVE, tmp_path, per_class=None,
                                  splits=("test",))  # fmt: skip
    for process_count, batch in ((1, 384), (3, 312)):  # neither divides 10,000
        idx, labels, steps = [], [], set()
        for p in range(process_count):
            ds = data.create_dataset(
                "folder", "test", data_dir=str(root), global_batch_size=batch, train=False,
                image_size=32, normalization="none", with_index=True, process_index=p,
                process_count=process_count,
            )  # fmt: skip
            assert ds.num_examples == 10_000
            batches = list(ds)
            steps.add((len(batches), ds.steps_per_epoch))
            idx += [b["index"][b["mask"]] for b in batches]
            labels += [b["label"][b["mask"]] for b in batches]
        assert steps == {(int(np.ceil(10_000 / batch)),) * 2}
        idx = np.concatenate(idx)
        assert len(idx) == 10_000 and len(np.unique(idx)) == 10_000
        np.testing.assert_array_equal(np.bincount(np.concatenate(labels)), [1000] * 10)
