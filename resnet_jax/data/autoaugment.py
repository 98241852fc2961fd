"""RandAugment, TrivialAugment(Wide) and random erasing as stateless TensorFlow ops.

RandAugment (Cubuk et al. 2020) with timm's op set and magnitudes (``timm/data/auto_augment.py``:
``rand-m9-mstd0.5-inc1`` strings, ``_RAND_TRANSFORMS`` / ``_RAND_INCREASING_TRANSFORMS``, each
chosen op applied with probability 0.5, magnitude ~ N(m, mstd) clipped to [0, mmax]) and
TrivialAugmentWide (Müller & Hutter 2021) with torchvision's ranges (one op, a uniform magnitude
bin of 31). The ops follow PIL's definitions (what timm and torchvision run on PIL images):
``ImageOps.autocontrast/equalize/solarize/posterize/invert``, ``ImageEnhance.Color/Contrast/
Brightness/Sharpness`` (blend with a degenerate image, truncated to uint8), and affine maps in
PIL's pixel-centre convention, run by ``ImageProjectiveTransformV3``.

Random erasing (Zhong et al. 2020; timm's ``RandomErasing``: area 2%-1/3 of the image, log-uniform
aspect ratio in [0.3, 1/0.3], 10 attempts) runs here, on the host, on the augmented pixels: the
box gets per-pixel uniform random values in [0, 255] (timm fills N(0, 1) noise after
normalisation on the device; the pipeline ships uint8 pixels, so the noise is drawn as pixels).

Every draw comes from the example's stateless seed, so an example is augmented identically in
any run, process layout and after a resume. Images are handled as float32 holding the uint8
values; ``apply_policy`` takes and returns the preset's image (uint8, or float in [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from resnet_jax.data.augment import split_seed
from resnet_jax.data.host_tf import tf
from resnet_jax.data.policy import AutoAugmentPolicy

LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitude m maps to the fraction m / 10 of each range
TRIVIAL_BINS = 31  # torchvision TrivialAugmentWide's num_magnitude_bins
FILL_MEAN = (124.0, 116.0, 104.0)  # timm's img_mean fill: round(255 * ImageNet mean)
AUTO_AUGMENT_SALT = 0x41415547  # folded into the example seed: existing presets' draws unchanged
ERASING_SALT = 0x52455241


# ---- the ops, on float32 [h, w, 3] holding uint8 values -------------------------------------


def _channel_lut(img: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
    """Per-channel look-up: ``lut`` [3, 256] (PIL's ``Image.point`` with a 768-entry table)."""
    idx = tf.cast(img, tf.int32) + tf.constant([0, 256, 512])
    return tf.gather(tf.reshape(lut, [-1]), idx)


def _histograms(img: tf.Tensor) -> tf.Tensor:
    """[3, 256] int32 per-channel histograms (``histogram_fixed_width``: the fastest TF op)."""
    return tf.stack([tf.histogram_fixed_width(img[..., c], [0.0, 256.0], 256) for c in range(3)])


def auto_contrast(img: tf.Tensor) -> tf.Tensor:
    """``ImageOps.autocontrast`` (cutoff 0): each channel stretched from [lo, hi] to [0, 255],
    int(x * scale + offset) in double precision as PIL computes its table."""
    lo = tf.cast(tf.reduce_min(img, axis=[0, 1]), tf.float64)
    hi = tf.cast(tf.reduce_max(img, axis=[0, 1]), tf.float64)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    x = tf.cast(img, tf.float64)
    stretched = tf.clip_by_value(tf.floor(x * scale + -lo * scale), 0.0, 255.0)
    return tf.cast(tf.where(hi > lo, stretched, x), tf.float32)


def equalize(img: tf.Tensor) -> tf.Tensor:
    """``ImageOps.equalize``: per channel, the LUT (step // 2 + cumulative count) // step with
    step = (pixels - count of the highest present level) // 255; identity when step is 0."""
    hist = _histograms(img)
    last = tf.gather(hist, 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), [1]), 1,
                                            output_type=tf.int32), batch_dims=1)
    step = (tf.reduce_sum(hist, 1) - last) // 255
    safe = tf.maximum(step, 1)[:, None]
    before = tf.cumsum(hist, axis=1, exclusive=True)
    lut = tf.minimum((step[:, None] // 2 + before) // safe, 255)
    lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None])
    return _channel_lut(img, tf.cast(lut, tf.float32))


def invert(img: tf.Tensor) -> tf.Tensor:
    return 255.0 - img


def posterize(img: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """``ImageOps.posterize``: keep the ``bits`` high bits (0 bits: black; >= 8: unchanged)."""
    div = tf.pow(2.0, 8.0 - tf.cast(tf.clip_by_value(bits, 0, 8), tf.float32))
    return tf.floor(img / div) * div


def solarize(img: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """``ImageOps.solarize``: invert the pixels >= ``threshold``."""
    return tf.where(img >= tf.cast(threshold, tf.float32), 255.0 - img, img)


def solarize_add(img: tf.Tensor, add: tf.Tensor, threshold: float = 128.0) -> tf.Tensor:
    """timm's ``solarize_add``: add ``add`` (capped at 255) to the pixels < ``threshold``."""
    return tf.where(img < threshold, tf.minimum(img + tf.cast(add, tf.float32), 255.0), img)


def _blend(degenerate: tf.Tensor, img: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``Image.blend(degenerate, img, factor)``, truncated and clipped to uint8 as PIL does."""
    return tf.clip_by_value(tf.floor(degenerate + factor * (img - degenerate)), 0.0, 255.0)


def _grayscale(img: tf.Tensor) -> tf.Tensor:
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16 (exact in float32)."""
    weighted = tf.tensordot(img, tf.constant([19595.0, 38470.0, 7471.0]), 1) + 32768.0
    return tf.floor(weighted / 65536.0)[..., None]


def color(img: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``ImageEnhance.Color``: blend with the grayscale image (saturation)."""
    return _blend(tf.broadcast_to(_grayscale(img), tf.shape(img)), img, factor)


def contrast(img: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``ImageEnhance.Contrast``: blend with the mean grey level, int(mean + 0.5)."""
    mean = tf.floor(tf.reduce_mean(tf.cast(_grayscale(img), tf.float64)) + 0.5)
    return _blend(tf.cast(mean, tf.float32), img, factor)


def brightness(img: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return _blend(tf.zeros_like(img), img, factor)


def sharpness(img: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``ImageEnhance.Sharpness``: blend with ``ImageFilter.SMOOTH`` (3x3 kernel [1 1 1; 1 5 1;
    1 1 1] / 13, rounded; the border pixels kept)."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(img[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.clip_by_value(tf.floor(smooth + 0.5), 0.0, 255.0)
    degenerate = tf.pad(smooth - img[1:-1, 1:-1], [[1, 1], [1, 1], [0, 0]]) + img
    return _blend(degenerate, img, factor)


def affine(
    img: tf.Tensor,
    matrix: tuple[tf.Tensor, ...],
    fill: tuple[float, float, float] = FILL_MEAN,
    interpolation: str = "BILINEAR",
) -> tf.Tensor:
    """PIL's ``Image.transform(size, AFFINE, (a, b, c, d, e, f))``: the output pixel at (x, y)
    samples the input at (a x + b y + c, d x + e y + f), pixel centres at +0.5; outside the
    image the ``fill`` colour (bilinear blends towards it at the border)."""
    a, b, c, d, e, f = (tf.cast(v, tf.float32) for v in matrix)
    # PIL's centre convention in index coordinates: in = M (out + 0.5) - 0.5.
    transform = tf.stack([a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5, 0.0, 0.0])
    # The map is linear with 0 outside, so warping (img - fill) and adding fill back puts the fill
    # colour outside (and blends towards it at the border) in one 3-channel pass.
    fill = tf.constant(fill, tf.float32)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=(img - fill)[None], transforms=transform[None], output_shape=tf.shape(img)[:2],
        fill_value=0.0, interpolation=interpolation, fill_mode="CONSTANT",
    )[0]  # fmt: skip
    return tf.clip_by_value(tf.round(out + fill), 0.0, 255.0)


def rotate(img: tf.Tensor, degrees: tf.Tensor, **kw) -> tf.Tensor:
    """PIL's ``Image.rotate(degrees)``: counter-clockwise about the centre (w/2, h/2)."""
    h, w = (tf.cast(s, tf.float32) for s in (tf.shape(img)[0], tf.shape(img)[1]))
    angle = -tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    a, b, d, e = tf.cos(angle), tf.sin(angle), -tf.sin(angle), tf.cos(angle)
    cx, cy = w / 2.0, h / 2.0
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return affine(img, (a, b, c, d, e, f), **kw)


def shear_x(img: tf.Tensor, factor: tf.Tensor, **kw) -> tf.Tensor:
    return affine(img, (1.0, factor, 0.0, 0.0, 1.0, 0.0), **kw)


def shear_y(img: tf.Tensor, factor: tf.Tensor, **kw) -> tf.Tensor:
    return affine(img, (1.0, 0.0, 0.0, factor, 1.0, 0.0), **kw)


def translate_x(img: tf.Tensor, pixels: tf.Tensor, **kw) -> tf.Tensor:
    return affine(img, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), **kw)


def translate_y(img: tf.Tensor, pixels: tf.Tensor, **kw) -> tf.Tensor:
    return affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), **kw)


# ---- RandAugment: timm's level -> argument maps ----------------------------------------------
# Each entry: (img, level in [0, mmax], sign +-1) -> img. Signed ops are negated at random.
Op = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


def _frac(level: tf.Tensor) -> tf.Tensor:
    return level / LEVEL_DENOM


def _int(v: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.floor(v), tf.int32)  # Python's int() on the non-negative levels


def _enhance(fn: Callable, increasing: bool) -> Op:
    if increasing:  # [0.1, 1.9], no change at level 0
        return lambda x, lvl, s: fn(x, tf.maximum(0.1, 1.0 + s * _frac(lvl) * 0.9))
    return lambda x, lvl, s: fn(x, _frac(lvl) * 1.8 + 0.1)


def _geometry(w: tf.Tensor, h: tf.Tensor) -> dict[str, Op]:
    kw = {"fill": FILL_MEAN, "interpolation": "BILINEAR"}
    return {
        "Rotate": lambda x, lvl, s: rotate(x, s * _frac(lvl) * 30.0, **kw),
        "ShearX": lambda x, lvl, s: shear_x(x, s * _frac(lvl) * 0.3, **kw),
        "ShearY": lambda x, lvl, s: shear_y(x, s * _frac(lvl) * 0.3, **kw),
        "TranslateXRel": lambda x, lvl, s: translate_x(x, s * _frac(lvl) * 0.45 * w, **kw),
        "TranslateYRel": lambda x, lvl, s: translate_y(x, s * _frac(lvl) * 0.45 * h, **kw),
    }


def rand_ops(increasing: bool, w: tf.Tensor, h: tf.Tensor) -> dict[str, Op]:
    """timm's ``_RAND_INCREASING_TRANSFORMS`` (``inc1``) or ``_RAND_TRANSFORMS``, in its order."""
    geo = _geometry(w, h)
    ops = {
        "AutoContrast": lambda x, lvl, s: auto_contrast(x),
        "Equalize": lambda x, lvl, s: equalize(x),
        "Invert": lambda x, lvl, s: invert(x),
        "Rotate": geo["Rotate"],
    }
    if increasing:
        ops["PosterizeIncreasing"] = lambda x, lvl, s: posterize(x, 4 - _int(_frac(lvl) * 4))
        ops["SolarizeIncreasing"] = lambda x, lvl, s: solarize(x, 256 - _int(_frac(lvl) * 256))
    else:
        ops["Posterize"] = lambda x, lvl, s: posterize(x, _int(_frac(lvl) * 4))
        ops["Solarize"] = lambda x, lvl, s: solarize(x, _int(_frac(lvl) * 256))
    ops["SolarizeAdd"] = lambda x, lvl, s: solarize_add(x, _int(_frac(lvl) * 110))
    suffix = "Increasing" if increasing else ""
    for name, fn in (("Color", color), ("Contrast", contrast), ("Brightness", brightness),
                     ("Sharpness", sharpness)):  # fmt: skip
        ops[name + suffix] = _enhance(fn, increasing)
    for name in ("ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        ops[name] = geo[name]
    return ops


def rand_augment(img: tf.Tensor, seed: tf.Tensor, policy: AutoAugmentPolicy) -> tf.Tensor:
    """timm's ``RandAugment``: ``num_layers`` ops drawn with replacement, each applied with
    probability ``prob`` at magnitude N(m, mstd) (uniform in [0, m] for mstd = inf) clipped to
    [0, mmax]."""
    h, w = (tf.cast(tf.shape(img)[i], tf.float32) for i in (0, 1))
    ops = list(rand_ops(policy.increasing, w, h).values())
    for layer_seed in split_seed(seed, policy.num_layers):
        s_op, s_apply, s_mag, s_sign = split_seed(layer_seed, 4)
        index = tf.random.stateless_uniform([], s_op, 0, len(ops), tf.int32)
        apply = tf.random.stateless_uniform([], s_apply) < policy.prob
        if math.isinf(policy.magnitude_std):
            level = tf.random.stateless_uniform([], s_mag, 0.0, policy.magnitude)
        else:
            level = policy.magnitude + policy.magnitude_std * tf.random.stateless_normal([], s_mag)
        level = tf.clip_by_value(level, 0.0, policy.magnitude_max)
        sign = tf.where(tf.random.stateless_uniform([], s_sign) < 0.5, 1.0, -1.0)
        img = _switch(img, index, ops, level, sign, apply)
    return img


def _switch(img, index, ops, level, sign, apply) -> tf.Tensor:
    branches = [lambda op=op: op(img, level, sign) for op in ops]
    out = tf.cond(apply, lambda: tf.switch_case(index, branches), lambda: img)
    out.set_shape(img.shape)
    return out


# ---- TrivialAugmentWide: torchvision's ranges --------------------------------------------------


def trivial_ops() -> list[tuple[Op, tuple[float, float] | None]]:
    """torchvision ``TrivialAugmentWide._augmentation_space`` in its order: (op(img, magnitude,
    sign), (first, last) of the 31 linearly spaced magnitudes, or None: no magnitude).
    Geometry: nearest interpolation and black fill (torchvision's defaults)."""
    kw = {"fill": (0.0, 0.0, 0.0), "interpolation": "NEAREST"}
    signed = lambda fn: lambda x, m, s: fn(x, s * m)  # noqa: E731
    enhance = lambda fn: lambda x, m, s: fn(x, 1.0 + s * m)  # noqa: E731
    return [
        (lambda x, m, s: x, None),  # Identity
        (signed(lambda x, v: shear_x(x, v, **kw)), (0.0, 0.99)),
        (signed(lambda x, v: shear_y(x, v, **kw)), (0.0, 0.99)),
        (lambda x, m, s: translate_x(x, s * tf.floor(m), **kw), (0.0, 32.0)),  # int(magnitude)
        (lambda x, m, s: translate_y(x, s * tf.floor(m), **kw), (0.0, 32.0)),
        (signed(lambda x, v: rotate(x, v, **kw)), (0.0, 135.0)),
        (enhance(brightness), (0.0, 0.99)),
        (enhance(color), (0.0, 0.99)),
        (enhance(contrast), (0.0, 0.99)),
        (enhance(sharpness), (0.0, 0.99)),
        # Posterize: 8 - round(bin / 5), i.e. 8 down to 2 bits; Solarize: 255 down to 0.
        (lambda x, m, s: posterize(x, 8 - _round_half_even(m / 5.0)), (0.0, 30.0)),
        (lambda x, m, s: solarize(x, 255.0 - m * 255.0 / 30.0), (0.0, 30.0)),
        (lambda x, m, s: auto_contrast(x), None),
        (lambda x, m, s: equalize(x), None),
    ]


def _round_half_even(v: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.round(v), tf.int32)  # tf.round is half to even, as torch.round


def trivial_augment(img: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """torchvision's ``TrivialAugmentWide``: one op uniformly, a magnitude bin uniformly in
    [0, 30], negated with probability 1/2 for the signed ops."""
    s_op, s_bin, s_sign = split_seed(seed, 3)
    ops = trivial_ops()
    index = tf.random.stateless_uniform([], s_op, 0, len(ops), tf.int32)
    bin_ = tf.cast(tf.random.stateless_uniform([], s_bin, 0, TRIVIAL_BINS, tf.int32), tf.float32)
    sign = tf.where(tf.random.stateless_uniform([], s_sign) < 0.5, 1.0, -1.0)

    def branch(op, span):
        if span is None:
            return lambda: op(img, 0.0, sign)
        if span == (0.0, 30.0):  # posterize/solarize take the bin index itself
            return lambda: op(img, bin_, sign)
        return lambda: op(img, span[0] + (span[1] - span[0]) * bin_ / (TRIVIAL_BINS - 1), sign)

    out = tf.switch_case(index, [branch(op, span) for op, span in ops])
    out.set_shape(img.shape)
    return out


# ---- the pipeline's entry points --------------------------------------------------------------


def apply_policy(img: tf.Tensor, seed: tf.Tensor, policy: AutoAugmentPolicy) -> tf.Tensor:
    """``img`` (uint8, or float32 in [0, 1]) through ``policy``, returned in the same form."""
    uint8 = img.dtype == tf.uint8
    x = tf.cast(img, tf.float32) if uint8 else tf.round(img * 255.0)
    seed = tf.random.experimental.stateless_fold_in(seed, AUTO_AUGMENT_SALT)
    if policy.kind == "trivial":
        x = trivial_augment(x, seed)
    else:
        x = rand_augment(x, seed, policy)
    return tf.cast(x, tf.uint8) if uint8 else x / 255.0


def erasing_box(
    hw: tf.Tensor,
    seed: tf.Tensor,
    area_range: tuple[float, float] = (0.02, 1 / 3),
    aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
    attempts: int = 10,
) -> tuple[tf.Tensor, ...]:
    """timm ``RandomErasing._erase``'s box: up to ``attempts`` draws of area fraction and
    log-uniform aspect ratio; the first with h < H and w < W is placed uniformly. Returns
    (found, top, left, h, w)."""
    s_area, s_aspect, s_y, s_x = split_seed(seed, 4)
    H, W = tf.cast(hw[0], tf.float32), tf.cast(hw[1], tf.float32)  # noqa: N806
    target = tf.random.stateless_uniform([attempts], s_area, *area_range) * H * W
    log_ar = tf.random.stateless_uniform(
        [attempts], s_aspect, math.log(aspect_range[0]), math.log(aspect_range[1])
    )
    ar = tf.exp(log_ar)
    eh = tf.round(tf.sqrt(target * ar))  # Python's round: half to even, as tf.round
    ew = tf.round(tf.sqrt(target / ar))
    ok = (eh < H) & (ew < W)
    first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
    eh, ew = eh[first], ew[first]
    top = tf.floor(tf.random.stateless_uniform([], s_y) * (H - eh + 1))  # randint(0, H - h)
    left = tf.floor(tf.random.stateless_uniform([], s_x) * (W - ew + 1))
    as_int = lambda v: tf.cast(v, tf.int32)  # noqa: E731
    return tf.reduce_any(ok), as_int(top), as_int(left), as_int(eh), as_int(ew)


def random_erasing(img: tf.Tensor, seed: tf.Tensor, prob: float) -> tf.Tensor:
    """With probability ``prob``, one ``erasing_box`` of ``img`` (uint8, or float in [0, 1])
    filled with per-pixel uniform random values."""
    seed = tf.random.experimental.stateless_fold_in(seed, ERASING_SALT)
    s_apply, s_box, s_fill = split_seed(seed, 3)
    shape = tf.shape(img)
    found, top, left, h, w = erasing_box(shape[:2], s_box)
    apply = (tf.random.stateless_uniform([], s_apply) < prob) & found

    def erase():
        rows = tf.range(shape[0])[:, None]
        cols = tf.range(shape[1])[None, :]
        inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        box = tf.stack([h, w, shape[2]])  # noise for the box only, padded into place
        if img.dtype == tf.uint8:
            noise = tf.cast(tf.random.stateless_uniform(box, s_fill, 0, 256, tf.int32), tf.uint8)
        else:
            noise = tf.random.stateless_uniform(box, s_fill, dtype=img.dtype)
        pads = [[top, shape[0] - top - h], [left, shape[1] - left - w], [0, 0]]
        return tf.where(inside[..., None], tf.pad(noise, pads), img)

    out = tf.cond(apply, erase, lambda: img)
    out.set_shape(img.shape)
    return out
