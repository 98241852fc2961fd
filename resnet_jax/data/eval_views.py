"""Evaluation views: centre crop, 10-crop (2015 paper Table 3), multi-scale (Table 4).

Each view function maps encoded bytes to float32 images in [0, 1] (normalisation is applied
afterwards by the pipeline); averaging predictions over views is the training code's job.
The registry of views by name (``EVAL_VIEWS``, whose names are ``VIEWS``) is in ``presets``.
"""

from __future__ import annotations

from collections.abc import Sequence

from resnet_jax.data import augment
from resnet_jax.data.host_tf import tf

# Shorter sides of the fully-convolutional multi-scale test, 2015 paper §3.4 / Table 4.
PAPER_SCALES = (224, 256, 384, 480, 640)
# Standard evaluation: shorter side 256, centre 224 crop (2015 paper §3.4, Table 3).
STANDARD_CROP_FRACTION = 224 / 256


def default_crop_fraction(image_size: int) -> float:
    """Low-resolution data (CIFAR, digits) is evaluated on the whole image, as in 2015 paper §4.2
    ("we only evaluate the single view of the original 32x32 image"); ImageNet-size data on the
    centre 224/256 of the shorter side (§3.4)."""
    return 1.0 if image_size <= 64 else STANDARD_CROP_FRACTION


def scaled_sizes(image_size: int, scales: Sequence[int] = PAPER_SCALES) -> tuple[int, ...]:
    """The paper's scales for a 224 network, scaled proportionally to ``image_size``."""
    return tuple(int(round(s * image_size / 224)) for s in scales)


def center(
    encoded: tf.Tensor, image_size: int, crop_fraction: float, method: str, uint8: bool = False
) -> tf.Tensor:
    """[image_size, image_size, 3]: centre crop of ``crop_fraction`` of the shorter side
    (float32 in [0, 1], or uint8 pixels with ``uint8``)."""
    if crop_fraction == 1.0:  # whole shorter side: a plain decode is cheaper than a window
        img = augment.decode(encoded)
        shape = tf.shape(img)

        def crop_resize():
            y, x, h, w = augment.center_window(shape[:2], 1.0)
            return augment.resize(img[y : y + h, x : x + w], image_size, method, uint8)

        # Already the output size (CIFAR at 32): skip ~15 small ops per image.
        same = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))
        out = tf.cond(same, lambda: augment.to_unit_float(img, uint8), crop_resize)
        out.set_shape([image_size, image_size, 3])
        return out
    else:
        img = augment.decode_window(encoded, lambda hw: augment.center_window(hw, crop_fraction))
    return augment.resize(img, image_size, method, uint8)


def resize_shorter(img: tf.Tensor, shorter: int, method: str, uint8: bool = False) -> tf.Tensor:
    """Resize (uint8 or float) so the shorter side is ``shorter``; float32 in [0, 1] out (uint8
    pixels with ``uint8``)."""
    hw = tf.cast(tf.shape(img)[:2], tf.float32)
    scale = shorter / tf.reduce_min(hw)
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), shorter)
    return augment.resize(img, new_hw, method, uint8)


def ten_crop(
    encoded: tf.Tensor, image_size: int, resize_to: int, method: str, uint8: bool = False
) -> tf.Tensor:
    """[10, image_size, image_size, 3]: shorter side -> ``resize_to``; crops at the top-left,
    top-right, bottom-left, bottom-right corners and the centre, then the same five flipped
    (the "10-crop testing" of 2015 paper Table 3, after Krizhevsky et al. 2012)."""
    img = resize_shorter(augment.decode(encoded), resize_to, method, uint8)
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    s = image_size
    corners = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), ((h - s) // 2, (w - s) // 2)]
    crops = [img[y : y + s, x : x + s] for y, x in corners]
    crops += [tf.reverse(c, axis=[1]) for c in crops]
    out = tf.stack(crops)
    out.set_shape([10, s, s, 3])
    return out


def multi_scale(
    encoded: tf.Tensor, sizes: Sequence[int], method: str, uint8: bool = False
) -> tuple[tf.Tensor, ...]:
    """One [s, s, 3] image per size s: shorter side resized to s, centre s x s square.

    The paper feeds the whole rectangular image fully-convolutionally (§3.4); a batch needs one
    shape per scale, so the centre square of the shorter side is kept (the whole image when it
    is square, e.g. Imagenette-224 and CIFAR).
    """
    img = augment.decode_window(encoded, lambda hw: augment.center_window(hw, 1.0))
    return tuple(augment.resize(img, s, method, uint8) for s in sizes)
