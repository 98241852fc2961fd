"""RandAugment / TrivialAugment ops against PIL (what timm and torchvision run), their seeding,
random erasing's box bounds, the option strings, and the pipeline with them on."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from resnet_jax import data
from resnet_jax.data import autoaugment as aa
from resnet_jax.data.policy import AutoAugmentPolicy, parse_auto_augment
from resnet_jax.training.config import ConfigError, default_config, validate

RNG = np.random.RandomState(0)
IMG = RNG.randint(0, 256, (37, 45, 3)).astype(np.uint8)
IMG[:6, :, 0] = 7  # a flat band, so the histogram ops see repeated levels
PIL_IMG = Image.fromarray(IMG)
X = tf.constant(IMG, tf.float32)
FILL = (124, 116, 104)


def _as_int(img):
    return np.asarray(img).astype(np.int64)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (aa.auto_contrast, ImageOps.autocontrast),
        (aa.equalize, ImageOps.equalize),
        (aa.invert, ImageOps.invert),
        (lambda x: aa.posterize(x, tf.constant(3)), lambda p: ImageOps.posterize(p, 3)),
        # 0 bits (timm's PosterizeIncreasing at level 10): black, as older Pillow gave (Pillow
        # 13 refuses bits=0; TensorFlow models' autoaugment posterize also gives 0).
        (lambda x: aa.posterize(x, tf.constant(0)), lambda p: np.zeros_like(IMG)),
        (lambda x: aa.solarize(x, 100), lambda p: ImageOps.solarize(p, 100)),
    ]
    + [
        (lambda x, f=f, op=op: op(x, f), lambda p, f=f, cls=cls: cls(p).enhance(f))
        for f in (0.1, 0.55, 1.0, 1.9)
        for op, cls in (
            (aa.color, ImageEnhance.Color),
            (aa.contrast, ImageEnhance.Contrast),
            (aa.brightness, ImageEnhance.Brightness),
            (aa.sharpness, ImageEnhance.Sharpness),
        )
    ],
)
def test_pixel_ops_equal_pil_exactly(ours, theirs):
    np.testing.assert_array_equal(_as_int(ours(X)), _as_int(theirs(PIL_IMG)))


def test_solarize_add_and_degenerate_images():
    # timm's solarize_add LUT: i < 128 -> min(255, i + add).
    lut = [min(255, i + 60) if i < 128 else i for i in range(256)]
    np.testing.assert_array_equal(_as_int(aa.solarize_add(X, 60)), np.take(lut, IMG))
    flat = tf.fill([5, 6, 3], 77.0)  # a constant image: autocontrast and equalize leave it
    np.testing.assert_array_equal(aa.auto_contrast(flat), flat)
    np.testing.assert_array_equal(aa.equalize(flat), flat)


def _pil_affine(matrix):
    return PIL_IMG.transform(PIL_IMG.size, Image.AFFINE, matrix, resample=Image.NEAREST,
                             fillcolor=FILL)  # fmt: skip


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda x, **k: aa.shear_x(x, 0.17, **k), lambda: _pil_affine((1, 0.17, 0, 0, 1, 0))),
        (lambda x, **k: aa.shear_y(x, -0.23, **k), lambda: _pil_affine((1, 0, 0, -0.23, 1, 0))),
        (lambda x, **k: aa.translate_x(x, 7.3, **k), lambda: _pil_affine((1, 0, 7.3, 0, 1, 0))),
        (lambda x, **k: aa.translate_y(x, -11.6, **k), lambda: _pil_affine((1, 0, 0, 0, 1, -11.6))),
        (lambda x, **k: aa.rotate(x, 13.0, **k),
         lambda: PIL_IMG.rotate(13.0, resample=Image.NEAREST, fillcolor=FILL)),
        (lambda x, **k: aa.rotate(x, -27.0, **k),
         lambda: PIL_IMG.rotate(-27.0, resample=Image.NEAREST, fillcolor=FILL)),
    ],
)
def test_affine_ops_equal_pil_nearest(ours, theirs):
    """PIL's sampling grid and fill; with nearest sampling, only float ties at exactly half a
    pixel may round the other way (PIL computes in double, TensorFlow in float32)."""
    got = _as_int(ours(X, fill=tuple(float(v) for v in FILL), interpolation="NEAREST"))
    want = _as_int(theirs())
    assert np.mean(np.any(got != want, axis=-1)) <= 0.002


def test_bilinear_translate_close_to_pil():
    got = _as_int(aa.translate_x(X, 2.5))  # interior columns: no fill involved
    want = _as_int(PIL_IMG.transform(PIL_IMG.size, Image.AFFINE, (1, 0, 2.5, 0, 1, 0),
                                     resample=Image.BILINEAR))  # fmt: skip
    assert np.abs(got[:, :40] - want[:, :40]).max() <= 1


SEEDS = [tf.constant([5, i], tf.int64) for i in range(24)]


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5-inc1", "rand-m7-n3-mstd101", "trivial"])
def test_policies_reproducible_per_seed_and_keep_shape_dtype(spec):
    policy = parse_auto_augment(spec)
    fn = tf.function(lambda img, seed: aa.apply_policy(img, seed, policy))
    u8 = tf.constant(IMG)
    outs = [fn(u8, s).numpy() for s in SEEDS]
    assert all(o.shape == IMG.shape and o.dtype == np.uint8 for o in outs)
    np.testing.assert_array_equal(fn(u8, SEEDS[3]), outs[3])
    changed = [not np.array_equal(o, IMG) for o in outs]
    assert np.mean(changed) > 0.5
    if spec.startswith("rand-m9"):  # p = 0.5 per op, 2 ops: a quarter left alone
        assert np.mean(changed) < 1.0
    assert len({o.tobytes() for o in outs}) > 12  # different seeds, different augmentations
    # The float32 [0, 1] stream gets the same pixels.
    floats = fn(tf.constant(IMG, tf.float32) / 255.0, SEEDS[3]).numpy()
    assert floats.dtype == np.float32
    np.testing.assert_allclose(floats * 255.0, outs[3], atol=1e-3)


def test_rand_probability_zero_is_identity_and_one_changes():
    ident = parse_auto_augment("rand-m9-n2-p0")
    assert ident.prob == 0.0
    for s in SEEDS[:4]:
        np.testing.assert_array_equal(aa.apply_policy(tf.constant(IMG), s, ident), IMG)
    # n=1, p=1: the op index is uniform over timm's 15 increasing ops; on this image every op
    # at m=9 changes some pixels.
    always = AutoAugmentPolicy("rand", magnitude=9.0, num_layers=1, increasing=True, prob=1.0)
    assert len(aa.rand_ops(True, 45.0, 37.0)) == 15
    fn = tf.function(lambda s: aa.apply_policy(tf.constant(IMG), s, always))
    assert all(not np.array_equal(fn(s).numpy(), IMG) for s in SEEDS[:10])


def test_random_erasing_box_bounds_and_rate():
    seeds = tf.stack([tf.fill([2000], tf.constant(3, tf.int64)), tf.range(2000, dtype=tf.int64)], 1)
    boxes = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda s: aa.erasing_box(tf.constant([40, 60]), s)
    ).batch(2000)
    found, top, left, h, w = (t.numpy() for t in next(iter(boxes)))
    assert found.mean() > 0.99  # 10 attempts at a 40 x 60 image almost always fit
    h, w, top, left = h[found], w[found], top[found], left[found]
    area = h * w / (40 * 60)
    # Rounding h and w moves the area and aspect a little past timm's ranges, never far.
    assert area.min() >= 0.02 * 0.7 and area.max() <= 1 / 3 * 1.3 and area.max() > 0.25
    aspect = h / w
    assert aspect.min() >= 0.3 * 0.6 and aspect.max() <= 1 / 0.3 / 0.6
    assert np.all((top >= 0) & (top + h <= 40) & (left >= 0) & (left + w <= 60))
    assert np.all((h < 40) & (w < 60))
    log_ar = np.log(aspect)  # log-uniform on [log 0.3, -log 0.3]: symmetric about 0
    assert abs(np.median(log_ar)) < 0.1 and abs(np.mean(log_ar > 0) - 0.5) < 0.05


def test_random_erasing_applies_with_probability_and_only_inside_the_box():
    img = tf.constant(IMG)
    fn = tf.function(lambda s: aa.random_erasing(img, s, 0.5))
    erased = 0
    for s in SEEDS:
        out = fn(s).numpy()
        np.testing.assert_array_equal(fn(s).numpy(), out)  # reproducible
        diff = np.any(out != IMG, axis=-1)
        if diff.any():
            erased += 1
            rows, cols = np.nonzero(diff)
            # Everything changed lies in one rectangle of at most a third of the image (plus
            # rounding) and most of that rectangle changed (random pixels rarely equal the old).
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert box <= 37 * 45 / 3 * 1.3 and diff.sum() > 0.9 * box
    assert 4 <= erased <= 20  # about half of 24
    assert aa.random_erasing(tf.constant(IMG, tf.float32) / 255, SEEDS[0], 1.0).dtype == tf.float32


@pytest.mark.parametrize(
    "spec, policy",
    [
        ("", None),
        ("trivial", AutoAugmentPolicy("trivial")),
        ("rand-m9-mstd0.5-inc1", AutoAugmentPolicy("rand", 9.0, 2, 0.5, 10.0, True, 0.5)),
        ("rand-n3-m7-mmax15-p1.0", AutoAugmentPolicy("rand", 7.0, 3, 0.0, 15.0, False, 1.0)),
        ("rand-mstd200", AutoAugmentPolicy("rand", magnitude_std=math.inf)),
    ],
)
def test_parse_auto_augment(spec, policy):
    assert parse_auto_augment(spec) == policy


@pytest.mark.parametrize(
    "options, message",
    [
        ({"auto_augment": "autoaug-v0"}, "dataset_options.auto_augment: unknown policy"),
        ({"auto_augment": "rand-m9-w0"}, "unknown section 'w0'"),
        ({"auto_augment": "rand-mx"}, "unknown section 'mx'"),
        ({"auto_augment": "rand-m9-n0"}, "n must be >= 1"),
        ({"random_erasing": 1.5}, "random_erasing must be a probability"),
        ({"random_erasing": "yes"}, "random_erasing must be a probability"),
    ],
)
def test_bad_host_augment_options_are_config_errors(options, message):
    c = default_config()
    c.dataset_options.update(options)
    with pytest.raises(ConfigError, match=message):
        validate(c)


def _digits(**kw):
    kw.update(global_batch_size=32, with_index=True, normalization="none")
    return data.create_dataset("digits", "train", train=True, image_size=16, augment="inception",
                               **kw)  # fmt: skip


def test_pipeline_with_auto_augment_and_erasing_is_deterministic_and_resumes():
    kw = dict(auto_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25, dtype="uint8")
    a = list(itertools.islice(iter(_digits(**kw)), 3))
    b = list(itertools.islice(iter(_digits(start_step=2, **kw)), 1))
    np.testing.assert_array_equal(a[2]["image"], b[0]["image"])  # resume: the same pixels
    plain = list(itertools.islice(iter(_digits(dtype="uint8")), 1))
    assert a[0]["image"].dtype == np.uint8 and a[0]["image"].shape == (32, 16, 16, 3)
    np.testing.assert_array_equal(a[0]["index"], plain[0]["index"])  # same examples, and
    assert not np.array_equal(a[0]["image"], plain[0]["image"])  # augmented further
    trivial = next(iter(_digits(auto_augment="trivial", dtype="float32")))
    assert trivial["image"].dtype == np.float32
