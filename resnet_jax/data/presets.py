"""The named per-example transforms ``create_dataset`` chooses from, and their registries.

``TRAIN_PRESETS`` maps each ``augment=`` name to the builder of its ``Preset`` (per-example
augmentation in tf.data, plus a per-batch part); ``EVAL_VIEWS`` maps each ``eval_view=`` name to
the builder of its transform. ``PRESETS`` and ``VIEWS``, the names that configs and command lines
offer, are these tables' keys.

Importing this module does not import TensorFlow (each builder imports the image code it
runs), so a config module can take its choices from here cheaply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from resnet_jax.data.policy import parse_auto_augment

if TYPE_CHECKING:
    import tensorflow as tf

    from resnet_jax.data.options import Options

# An evaluation view: (encoded -> the view(s), float32 in [0, 1] or uint8 pixels; view sizes).
View = tuple[Callable[["tf.Tensor"], Any], tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class Preset:
    """All of one train augmentation preset. ``per_example(encoded, seed)`` runs in tf.data:
    {"image": float32 in [0, 1] (or uint8 pixels), ...its random parameters}; ``per_batch(images,
    batch)`` runs on the normalised batch: on the host for float output, while for uint8 output
    the device runs its twin, named in ``device_steps`` (``data.device.finish``)."""

    per_example: Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]
    per_batch: Callable[[tf.Tensor, dict[str, tf.Tensor]], tf.Tensor] | None = None
    device_steps: dict[str, Any] = dataclasses.field(default_factory=dict)


# ---- train presets: (image_size, opts, uint8) -> Preset ----------------------------------------
# With ``uint8`` the image stays uint8 pixels (resized ones rounded) and what needs floats is left
# to the device as per-example parameters: the CIFAR crop and flip (``crop_yx``, ``flip``) and the
# lighting noise (``lighting``, an RGB offset on [0, 1] pixels); see ``data.device``.


def _none_preset(image_size: int, opts: Options, uint8: bool) -> Preset:
    """No augmentation: the evaluation centre view."""
    center, _ = _center_view(image_size, opts, uint8)
    return Preset(lambda encoded, seed: {"image": center(encoded)})


def _cifar_preset(image_size: int, opts: Options, uint8: bool) -> Preset:
    """2015 paper §4.2: the whole 32x32 image, padded by 4 and randomly cropped, per batch."""
    from resnet_jax.data import augment as aug
    from resnet_jax.data import eval_views

    def cifar(encoded, seed):
        img = eval_views.center(encoded, image_size, 1.0, opts.resize_method, uint8)
        return {"image": img, **aug.cifar_params(seed, opts.cifar_pad, opts.flip)}

    def cifar_per_batch(images, batch):
        # After normalisation, so the zero pad is the mean colour.
        return aug.cifar_apply(images, batch.pop("crop_yx"), batch.pop("flip"), opts.cifar_pad)

    return Preset(cifar, cifar_per_batch, {"cifar_pad": opts.cifar_pad})


def _resnet_paper_preset(image_size: int, opts: Options, uint8: bool) -> Preset:
    """2015 paper §3.4: scale augmentation [256, 480], 224 crop, flip, colour (lighting)."""
    from resnet_jax.data import augment as aug

    def resnet_paper(encoded, seed):
        s_win, s_light, s_flip = aug.split_seed(seed, 3)
        crop = aug.decode_window(
            encoded,
            lambda hw: aug.resnet_paper_window(hw, s_win, image_size, tuple(opts.scale_range)),
        )
        img = aug.resize(crop, image_size, opts.resize_method, uint8)
        return _colour_and_flip(img, opts, uint8, s_light, None, s_flip)

    return Preset(resnet_paper)


def _inception_preset(image_size: int, opts: Options, uint8: bool) -> Preset:
    """Random-resized crop, flip, optional colour jitter (Flax example, torchvision, timm)."""
    from resnet_jax.data import augment as aug

    def inception(encoded, seed):
        s_win, s_jit, s_flip = aug.split_seed(seed, 3)
        crop = aug.decode_window(
            encoded,
            lambda hw: aug.inception_window(
                hw, s_win, tuple(opts.area_range), tuple(opts.aspect_range)
            ),
        )
        img = aug.resize(crop, image_size, opts.resize_method, uint8)
        return _colour_and_flip(img, opts, uint8, None, s_jit, s_flip)

    return Preset(inception)


def _colour_and_flip(img, opts: Options, uint8: bool, s_light, s_jit, s_flip) -> dict[str, Any]:
    """The resized crop's tail: lighting noise (seed ``s_light``; with ``uint8`` left to the
    device as ``lighting``), colour jitter (``s_jit``), flip (``s_flip``)."""
    from resnet_jax.data import augment as aug
    from resnet_jax.data.host_tf import tf

    out = {}
    if opts.lighting_std > 0 and s_light is not None:
        if uint8:
            out["lighting"] = aug.lighting_offset(s_light, opts.lighting_std)
        else:
            img = aug.lighting(img, s_light, opts.lighting_std)
    if opts.color_jitter > 0 and s_jit is not None:
        if uint8:  # jitter works on [0, 1] floats; the result is rounded back to pixels
            img = aug.color_jitter(tf.cast(img, tf.float32) / 255.0, s_jit, opts.color_jitter)
            img = tf.cast(tf.round(img * 255.0), tf.uint8)
        else:
            img = aug.color_jitter(img, s_jit, opts.color_jitter)
    out["image"] = aug.random_flip(img, s_flip) if opts.flip else img
    return out


# The registry of train presets: name -> builder.
TRAIN_PRESETS: dict[str, Callable[[int, Options, bool], Preset]] = {
    "none": _none_preset,
    "cifar": _cifar_preset,
    "resnet_paper": _resnet_paper_preset,
    "inception": _inception_preset,
}
PRESETS: tuple[str, ...] = tuple(TRAIN_PRESETS)


def train_preset(augment: str, image_size: int, opts: Options, uint8: bool = False) -> Preset:
    """The ``augment`` preset at ``image_size`` with ``opts`` (uint8 output with ``uint8``),
    followed by ``opts.auto_augment`` and ``opts.random_erasing`` where set."""
    if augment not in TRAIN_PRESETS:
        raise ValueError(f"augment must be one of {PRESETS}, not {augment!r}")
    return _with_host_extras(TRAIN_PRESETS[augment](image_size, opts, uint8), opts)


# ---- RandAugment / TrivialAugment and random erasing on top of any preset ----------------------


def _with_host_extras(preset: Preset, opts: Options) -> Preset:
    """``preset`` with RandAugment/TrivialAugment, then random erasing, after its per-example
    part (timm's order: crop, flip, auto-augment, ..., erasing); unchanged when both are off."""
    policy = parse_auto_augment(opts.auto_augment)
    if not 0.0 <= opts.random_erasing <= 1.0:
        raise ValueError(f"random_erasing must be in [0, 1], not {opts.random_erasing}")
    if policy is None and not opts.random_erasing:
        return preset
    from resnet_jax.data import autoaugment

    def per_example(encoded, seed):
        out = preset.per_example(encoded, seed)
        if policy is not None:
            out["image"] = autoaugment.apply_policy(out["image"], seed, policy)
        if opts.random_erasing:
            out["image"] = autoaugment.random_erasing(out["image"], seed, opts.random_erasing)
        return out

    return dataclasses.replace(preset, per_example=per_example)


# ---- evaluation views: (image_size, opts, uint8) -> View ---------------------------------------


def _center_view(image_size: int, opts: Options, uint8: bool) -> View:
    """Centre crop of ``crop_fraction`` of the shorter side (2015 paper §3.4 and §4.2)."""
    from resnet_jax.data import eval_views

    fraction = opts.crop_fraction or eval_views.default_crop_fraction(image_size)
    method = opts.resize_method
    return (lambda e: eval_views.center(e, image_size, fraction, method, uint8)), (image_size,)


def _ten_crop_view(image_size: int, opts: Options, uint8: bool) -> View:
    """Four corners and centre, and their mirror images (2015 paper Table 3)."""
    from resnet_jax.data import eval_views

    resize_to = opts.ten_crop_resize or int(round(image_size * 256 / 224))
    if resize_to < image_size:
        raise ValueError(f"ten_crop_resize {resize_to} < image_size {image_size}")
    method = opts.resize_method
    return (lambda e: eval_views.ten_crop(e, image_size, resize_to, method, uint8)), (image_size,)


def _multi_scale_view(image_size: int, opts: Options, uint8: bool) -> View:
    """One centre square per scale, smallest first (2015 paper Table 4)."""
    from resnet_jax.data import eval_views

    sizes = tuple(opts.multi_scale_sizes or eval_views.scaled_sizes(image_size))
    sizes = tuple(sorted(int(s) for s in sizes))
    method = opts.resize_method
    return (lambda e: eval_views.multi_scale(e, sizes, method, uint8)), sizes


# The registry of evaluation views: name -> builder.
EVAL_VIEWS: dict[str, Callable[[int, Options, bool], View]] = {
    "center": _center_view,
    "ten_crop": _ten_crop_view,
    "multi_scale": _multi_scale_view,
}
VIEWS: tuple[str, ...] = tuple(EVAL_VIEWS)


def eval_transform(view: str, image_size: int, opts: Options, uint8: bool = False) -> View:
    """encoded -> (view(s) as float32 in [0, 1], or uint8 pixels, view sizes)."""
    if view not in EVAL_VIEWS:
        raise ValueError(f"eval_view must be one of {VIEWS}, not {view!r}")
    return EVAL_VIEWS[view](image_size, opts, uint8)
