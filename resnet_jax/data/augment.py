"""Decoding and train-time augmentation presets, all seeded statelessly.

Every random choice takes an explicit ``seed`` (an int64 tensor of shape [2]) derived from
(run seed, epoch, position in the epoch), so the same example at the same step is augmented
identically in any run, any process layout, and after a resume.

Crops are applied *before* decoding where the geometry allows it (``tf.io.decode_and_crop_jpeg``
decodes only the window's MCU rows), then resized to the output size: a random crop of side
``c`` from the original resized to ``image_size`` is the same image as resizing first and
cropping ``image_size`` afterwards, at a fraction of the decode and resize work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from resnet_jax.data.host_tf import tf

# AlexNet PCA lighting noise (Krizhevsky et al. 2012 §4.1), eigen-decomposition of ImageNet RGB
# covariance on [0, 1] pixels; values as in fb.resnet.torch, used by He et al. 2015 §3.4.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

Window = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]  # (y, x, h, w) in original pixels


def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
    """``num`` independent stateless seeds derived from ``seed``."""
    seeds = tf.random.experimental.stateless_split(seed, num=num)
    return [seeds[i] for i in range(num)]


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """Decode any JPEG/PNG/BMP/GIF to uint8 RGB [h, w, 3].

    Grayscale and CMYK JPEGs are converted to RGB by the decoder; a PNG alpha channel is dropped
    (as PIL's ``convert("RGB")`` in torchvision's ImageFolder does), not composited.
    """
    img = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    img.set_shape([None, None, 3])
    return img


def decode_window(encoded: tf.Tensor, window_fn: Callable[[tf.Tensor], Window]) -> tf.Tensor:
    """Decode only the window ``window_fn(hw)`` of the image (fused for JPEG), uint8 RGB."""

    def jpeg():
        hw = tf.image.extract_jpeg_shape(encoded)[:2]  # CMYK reports 4 channels: keep h, w
        y, x, h, w = window_fn(hw)
        return tf.io.decode_and_crop_jpeg(encoded, tf.stack([y, x, h, w]), channels=3)

    def other():
        img = decode(encoded)
        y, x, h, w = window_fn(tf.shape(img)[:2])
        return img[y : y + h, x : x + w]

    img = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    img.set_shape([None, None, 3])
    return img


def resize(
    img: tf.Tensor,
    size: int | Sequence[int] | tf.Tensor,
    method: str = "bilinear",
    uint8: bool = False,
) -> tf.Tensor:
    """Resize to ``size`` (int: square) returning float32 in [0, 1], or with ``uint8`` the
    resized pixels rounded to uint8 (what goes to the device; 4x fewer bytes than float32)."""
    hw = [size, size] if isinstance(size, int) else size
    out = tf.image.resize(img, hw, method=method, antialias=False)
    if uint8:
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
    return out / 255.0


def to_unit_float(img: tf.Tensor, uint8: bool = False) -> tf.Tensor:
    """Decoded uint8 pixels as float32 in [0, 1] (as they are with ``uint8``)."""
    return img if uint8 else tf.cast(img, tf.float32) / 255.0


def center_window(hw: tf.Tensor, crop_fraction: float) -> Window:
    """Centred square window of side ``crop_fraction`` x the shorter side.

    Cropping a fraction f of the shorter side and resizing to S equals resizing the shorter side
    to S / f and taking the centre S x S crop (256 -> 224 when f = 0.875, 2015 paper §3.4).
    """
    h, w = hw[0], hw[1]
    side = tf.cast(tf.round(tf.cast(tf.minimum(h, w), tf.float32) * crop_fraction), tf.int32)
    side = tf.maximum(side, 1)
    return (h - side) // 2, (w - side) // 2, side, side


def random_flip(img: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip with probability 1/2 (2015 paper §3.4 and §4.2)."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: tf.reverse(img, axis=[1]), lambda: img)


def cifar_params(seed: tf.Tensor, pad: int = 4, flip: bool = True) -> dict[str, tf.Tensor]:
    """Per-example random choices of the CIFAR preset: crop corner, uniform in [0, 2*pad]^2,
    and a flip with probability 1/2 (one RNG call: this runs for every 32x32 image)."""
    u = tf.random.stateless_uniform([3], seed)
    yx = tf.minimum(tf.cast(u[:2] * (2 * pad + 1), tf.int32), 2 * pad)
    return {"crop_yx": yx, "flip": u[2] < 0.5 if flip else tf.constant(False)}


def cifar_apply(images: tf.Tensor, crop_yx: tf.Tensor, flip: tf.Tensor, pad: int = 4):
    """2015 paper §4.2: pad 4 pixels with zeros on each side, crop back at ``crop_yx``, flip.

    Batched ([B, H, W, C], [B, 2], [B]): two gathers per batch instead of per-image ops, which
    is what makes 32x32 images cheap. ``images`` are already normalised, so a zero pad is the
    mean colour.
    """
    # Static where known; a progressively resized stream's batches have it only at run time.
    h, w = (images.shape[i] if images.shape[i] is not None else tf.shape(images)[i] for i in (1, 2))
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = crop_yx[:, 0:1] + tf.range(h)[None]
    cols = crop_yx[:, 1:2] + tf.range(w)[None]
    cols = tf.where(flip[:, None], tf.reverse(cols, axis=[1]), cols)
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


def cifar_augment(img: tf.Tensor, seed: tf.Tensor, *, pad: int = 4, flip: bool = True):
    """One image through the CIFAR preset (the pipeline runs ``cifar_apply`` per batch)."""
    p = cifar_params(seed, pad, flip)
    return cifar_apply(img[None], p["crop_yx"][None], p["flip"][None], pad)[0]


def resnet_paper_window(
    hw: tf.Tensor,
    seed: tf.Tensor,
    image_size: int,
    scale_range: tuple[float, float] = (256.0, 480.0),
) -> Window:
    """2015 paper §3.4: shorter side resized to S ~ U[256, 480], random 224 x 224 crop.

    Expressed in original pixels: a square of side image_size * shorter / S at a uniformly
    random position. ``scale_range`` is given for image_size 224 and scaled with image_size.
    """
    s_scale, s_pos = split_seed(seed, 2)
    h, w = hw[0], hw[1]
    lo, hi = (v * image_size / 224.0 for v in scale_range)
    target = tf.random.stateless_uniform([], s_scale, minval=lo, maxval=hi)
    shorter = tf.cast(tf.minimum(h, w), tf.float32)
    side = tf.cast(tf.round(image_size * shorter / target), tf.int32)
    side = tf.clip_by_value(side, 1, tf.minimum(h, w))
    u = tf.random.stateless_uniform([2], s_pos)
    y = tf.cast(u[0] * tf.cast(h - side + 1, tf.float32), tf.int32)
    x = tf.cast(u[1] * tf.cast(w - side + 1, tf.float32), tf.int32)
    return tf.minimum(y, h - side), tf.minimum(x, w - side), side, side


def inception_window(
    hw: tf.Tensor,
    seed: tf.Tensor,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 10,
) -> Window:
    """Random-resized crop (Szegedy et al. 2015; as in torchvision, timm and the Flax example).

    Area fraction in ``area_range`` and aspect ratio in ``aspect_range``; after ``max_attempts``
    failed draws the whole image is used.
    """
    shape = tf.concat([hw, [3]], axis=0)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_range,
        area_range=area_range,
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    return begin[0], begin[1], size[0], size[1]


def lighting_offset(seed: tf.Tensor, alpha_std: float = 0.1) -> tf.Tensor:
    """AlexNet-style PCA colour noise, used by the 2015 paper §3.4 ("standard color augmentation
    in [21]"): the per-image RGB offset eigvec @ (alpha * eigval), alpha ~ N(0, alpha_std^2)."""
    alpha = tf.random.stateless_normal([3], seed, stddev=alpha_std)
    eigvec = tf.constant(IMAGENET_EIGVEC, tf.float32)
    return tf.linalg.matvec(eigvec, alpha * tf.constant(IMAGENET_EIGVAL, tf.float32))


def lighting(img: tf.Tensor, seed: tf.Tensor, alpha_std: float = 0.1) -> tf.Tensor:
    """``img`` (float, [0, 1]) plus its ``lighting_offset``."""
    return img + lighting_offset(seed, alpha_std)


def color_jitter(img: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
    """Brightness, contrast and saturation jitter of relative ``strength`` (fixed order)."""
    s_b, s_c, s_s = split_seed(seed, 3)
    img = tf.image.stateless_random_brightness(img, strength, s_b)
    img = tf.image.stateless_random_contrast(img, 1 - strength, 1 + strength, s_c)
    img = tf.image.stateless_random_saturation(img, max(0.0, 1 - strength), 1 + strength, s_s)
    return tf.clip_by_value(img, 0.0, 1.0)
