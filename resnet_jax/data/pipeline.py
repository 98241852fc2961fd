"""``create_dataset``: one tf.data pipeline for every source, preset and evaluation view.

Stream layout (index sources: folders, digits, small tfds splits). Epoch ``e`` is a permutation
of the whole split seeded by (seed, e); global batch ``b`` of the epoch is positions
[b*G, (b+1)*G) of it and process ``p`` takes the slice [p*L, (p+1)*L) of that batch (G global,
L = G / process_count local batch). So each epoch's processes read disjoint examples that
together form the global batch a single process would have read, every epoch has exactly
``num_examples // G`` batches (the remainder differs from epoch to epoch), and batch number
``step`` is a pure function of (seed, step): resuming at ``start_step`` skips whole epochs
arithmetically and then ``start_step % steps_per_epoch`` batches of index tuples (no decoding).

Large tfds splits stream: process ``p`` reads the contiguous slice [n*p/P, n*(p+1)/P) of the
split, and each epoch is that slice shuffled through a buffer seeded by (seed, epoch). Resuming
skips whole epochs arithmetically and reads (without decoding) the records of a partial epoch.

Every random augmentation is seeded statelessly from (seed, epoch, position in epoch), so a
resumed stream is bit-identical to the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import tensorflow as tf

from resnet_jax.data import augment as aug
from resnet_jax.data import eval_views, sources
from resnet_jax.data.normalization import (  # noqa: F401  (re-exported: pipeline.normalizer)
    IMAGENET_MEAN_STD,
    KNOWN_MEAN_STD,
    NORMALIZATIONS,
    check_normalization_stats,
    normalization_stats,
    normalizer,
    normalizer_from_stats,
)
from resnet_jax.data.sources import (  # noqa: F401  (open_source re-exported)
    SEED_SALT,
    CorruptImageError,
    IndexSource,
    Shard,
    TfdsStreamSource,
    open_source,
)

log = logging.getLogger(__name__)

# tf.data only feeds the host; it must never take an accelerator from JAX.
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # already initialised by someone else; nothing to hide then
    pass

_DIAGNOSE_MAX_EXAMPLES = 200_000


@dataclasses.dataclass(frozen=True)
class Options:
    """Further options of ``create_dataset`` (passed as keyword arguments).

    Normalisation: ``normalization`` is ``"mean_std"`` (per channel; ``mean``/``std`` override
    the defaults: known constants for cifar10/cifar100, ImageNet's for imagenet-like and other
    large tfds data, estimated from the training split for folders and digits),
    ``"per_pixel_mean"`` (subtract the training set's mean image, 2015 paper §4.2), ``"imagenet"``
    (ImageNet's mean/std, what torchvision's weights expect) or ``"none"`` ([0, 1] pixels).
    ``stats_split`` (default ``"train"``) and ``stats_max_examples`` (default 2,000 evenly
    spaced images for mean/std, 50,000 for the mean image) choose the images the estimates come
    from. ``normalization_stats``: resolved statistics to use as they are (runs record them, see
    ``normalization_stats()``), so nothing is estimated.

    Augmentation: ``flip``; ``cifar_pad`` (4); ``scale_range`` ((256, 480) for a 224 output,
    scaled with image_size); ``lighting_std`` (0.1; 0 disables); ``area_range`` ((0.08, 1)) and
    ``aspect_range`` ((3/4, 4/3)); ``color_jitter`` (0: off; else brightness/contrast/saturation
    strength); ``resize_method`` (tf.image.resize method, "bilinear").

    Evaluation: ``crop_fraction`` of the shorter side for the centre view (default 1.0 for
    image_size <= 64, else 224/256); ``ten_crop_resize`` (shorter side before 10-crop, default
    image_size * 256/224); ``multi_scale_sizes`` (default (224, 256, 384, 480, 640) scaled by
    image_size / 224).

    Input: ``cache`` ("auto": hold encoded bytes in memory when the split is <= 1 GiB;
    True/False); ``skip_corrupt`` (skip and count undecodable folder files instead of raising);
    ``shuffle_buffer`` (streamed tfds splits only); ``download`` (default True: an
    unprepared tfds dataset is downloaded and prepared first, as ``tfds.load`` does) and
    ``manual_dir`` (tfds preparation); ``class_names`` (folder: fix the class list and order).

    Distribution: ``process_index``/``process_count`` (default: jax's), ``device_count`` (default
    jax.device_count()). Misc: ``with_index`` adds "index" (position in the split, -1 for
    padding) to each batch; ``num_parallel_calls``; ``threads`` (private tf.data thread pool
    size, 0 = TensorFlow's default of one per core).
    """

    normalization: str = "mean_std"
    normalization_stats: dict[str, Any] | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    stats_split: str | None = None
    stats_max_examples: int | None = None
    flip: bool = True
    cifar_pad: int = 4
    scale_range: tuple[float, float] = (256.0, 480.0)
    lighting_std: float = 0.1
    area_range: tuple[float, float] = (0.08, 1.0)
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: float = 0.0
    resize_method: str = "bilinear"
    crop_fraction: float | None = None
    ten_crop_resize: int | None = None
    multi_scale_sizes: Sequence[int] | None = None
    cache: bool | str = "auto"
    skip_corrupt: bool = False
    shuffle_buffer: int = 16_384
    download: bool = True  # as tfds.load: prepare an unprepared dataset (offline: DataError)
    manual_dir: str | None = None
    class_names: Sequence[str] | None = None
    process_index: int | None = None
    process_count: int | None = None
    device_count: int | None = None
    with_index: bool = False
    num_parallel_calls: int = tf.data.AUTOTUNE
    threads: int = 0


class Dataset:
    """An iterable of batches from ``create_dataset``, plus what the trainer needs to know.

    Attributes: ``num_classes``, ``class_names``, ``num_examples`` (whole split, all processes),
    ``steps_per_epoch`` (train: ``num_examples // global_batch_size``; eval: batches covering the
    split once), ``global_batch_size``, ``local_batch_size``, ``skipped_files`` (files skipped
    with ``skip_corrupt``), ``normalization`` (the statistics applied, see
    ``normalization_stats``), ``device_steps`` (uint8 output: what ``data.device.finish`` still
    applies on the device, e.g. ``{"cifar_pad": 4}``; None for normalised output),
    ``tf_dataset`` (the underlying tf.data.Dataset of tensors).

    Iterating yields dicts of numpy arrays local to this process (L = local batch): ``"image"``:
    [L, H, W, 3] float32/bfloat16, normalised (uint8 pixels with ``dtype="uint8"``, plus
    ``crop_yx``/``flip`` for the CIFAR preset and ``lighting`` for the paper's lighting;
    "ten_crop": [L, 10, H, W, 3]; the views are ordered top-left, top-right, bottom-left,
    bottom-right, centre, then the same five mirrored; "multi_scale": a tuple with one [L, s, s,
    3] array per scale, smallest first, sizes in ``view_sizes``); ``"label"``: int32 [L];
    ``"mask"``: bool [L], True for real examples (False only for the padding of the last
    evaluation batch). Training iterates forever; evaluation yields exactly ``steps_per_epoch``
    batches on every process.
    """

    def __init__(
        self,
        tf_dataset: tf.data.Dataset,
        *,
        source: IndexSource | TfdsStreamSource,
        num_examples: int,
        steps_per_epoch: int,
        global_batch_size: int,
        local_batch_size: int,
        view_sizes: tuple[int, ...],
        normalization: dict[str, Any],
        device_steps: dict[str, Any] | None = None,
    ):
        self.tf_dataset = tf_dataset
        self.source = source
        self.class_names: list[str] = list(source.class_names)
        self.num_classes: int = len(self.class_names)
        self.num_examples = num_examples
        self.steps_per_epoch = steps_per_epoch
        self.global_batch_size = global_batch_size
        self.local_batch_size = local_batch_size
        self.view_sizes = view_sizes
        self.normalization = normalization
        self.device_steps = device_steps
        self.skipped_files: list[str] = list(getattr(source, "skipped_files", []))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = self.tf_dataset.as_numpy_iterator()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except tf.errors.InvalidArgumentError as e:
                raise self._decode_error(e) from e
            yield batch

    def _decode_error(self, err: Exception) -> Exception:
        source = self.source
        msg = str(err).strip().splitlines()[0][:300]
        if isinstance(source, IndexSource) and len(source) <= _DIAGNOSE_MAX_EXAMPLES:
            bad = [source.describe(i) for i in sources.find_undecodable(source)]
            if bad:
                shown = ", ".join(repr(b) for b in bad[:5])
                return CorruptImageError(
                    f"{len(bad)} image(s) cannot be decoded: {shown}"
                    f"{' ...' if len(bad) > 5 else ''}. Remove them or pass skip_corrupt=True."
                )
        return CorruptImageError(
            f"an image of {source.name} cannot be decoded ({msg}); list the bad files with "
            "resnet_jax.data.find_corrupt_images(root, split) or pass skip_corrupt=True"
        )


def _jax_topology(opts: Options) -> tuple[int, int, int]:
    if None in (opts.process_index, opts.process_count, opts.device_count):
        import jax

        pi = jax.process_index() if opts.process_index is None else opts.process_index
        pc = jax.process_count() if opts.process_count is None else opts.process_count
        dc = jax.device_count() if opts.device_count is None else opts.device_count
        return pi, pc, dc
    return opts.process_index, opts.process_count, opts.device_count


def _example_seed(seed: int, epoch: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
    """Stateless per-example seed from (run seed, epoch, position in epoch)."""
    # One fold-in of (epoch, position) packed in 64 bits: positions < 2**40, epochs < 2**23.
    data = tf.cast(epoch, tf.int64) * (1 << 40) + tf.cast(position, tf.int64)
    return tf.random.experimental.stateless_fold_in(tf.constant([seed, SEED_SALT], tf.int64), data)


@dataclasses.dataclass(frozen=True)
class Preset:
    """All of one train augmentation preset. ``per_example(encoded, seed)`` runs in tf.data:
    {"image": float32 in [0, 1] (or uint8 pixels), ...its random parameters}; ``per_batch(images,
    batch)`` runs on the normalised batch: on the host for float output, while for uint8 output
    the device runs its twin, named in ``device_steps`` (``data.device.finish``)."""

    per_example: Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]
    per_batch: Callable[[tf.Tensor, dict[str, tf.Tensor]], tf.Tensor] | None = None
    device_steps: dict[str, Any] = dataclasses.field(default_factory=dict)


def _train_preset(augment: str, image_size: int, opts: Options, uint8: bool = False) -> Preset:
    """The ``augment`` preset. With ``uint8`` the image stays uint8 pixels (resized ones rounded)
    and what needs floats is left to the device as per-example parameters: the CIFAR crop and
    flip (``crop_yx``, ``flip``) and the lighting noise (``lighting``, an RGB offset on [0, 1]
    pixels); see ``data.device``."""
    method = opts.resize_method
    crop_fraction = opts.crop_fraction or eval_views.default_crop_fraction(image_size)

    def none(encoded, seed):
        del seed
        return {"image": eval_views.center(encoded, image_size, crop_fraction, method, uint8)}

    def cifar(encoded, seed):
        # 2015 paper §4.2: the whole 32x32 image, padded by 4 and randomly cropped, per batch.
        img = eval_views.center(encoded, image_size, 1.0, method, uint8)
        return {"image": img, **aug.cifar_params(seed, opts.cifar_pad, opts.flip)}

    def cifar_per_batch(images, batch):
        # After normalisation, so the zero pad is the mean colour.
        return aug.cifar_apply(images, batch.pop("crop_yx"), batch.pop("flip"), opts.cifar_pad)

    def finish(img, s_light, s_jit, s_flip):
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

    def resnet_paper(encoded, seed):
        # 2015 paper §3.4: scale augmentation [256, 480], 224 crop, flip, colour (lighting).
        s_win, s_light, s_flip = aug.split_seed(seed, 3)
        crop = aug.decode_window(
            encoded,
            lambda hw: aug.resnet_paper_window(hw, s_win, image_size, tuple(opts.scale_range)),
        )
        return finish(aug.resize(crop, image_size, method, uint8), s_light, None, s_flip)

    def inception(encoded, seed):
        s_win, s_jit, s_flip = aug.split_seed(seed, 3)
        crop = aug.decode_window(
            encoded,
            lambda hw: aug.inception_window(
                hw, s_win, tuple(opts.area_range), tuple(opts.aspect_range)
            ),
        )
        return finish(aug.resize(crop, image_size, method, uint8), None, s_jit, s_flip)

    table = {
        "none": Preset(none),
        "cifar": Preset(cifar, cifar_per_batch, {"cifar_pad": opts.cifar_pad}),
        "resnet_paper": Preset(resnet_paper),
        "inception": Preset(inception),
    }
    if augment not in table:
        raise ValueError(f"augment must be one of {aug.PRESETS}, not {augment!r}")
    return table[augment]


def _eval_transform(view: str, image_size: int, opts: Options, uint8: bool = False):
    """encoded -> (view(s) as float32 in [0, 1], or uint8 pixels, view sizes)."""
    method = opts.resize_method
    if view == "center":
        fraction = opts.crop_fraction or eval_views.default_crop_fraction(image_size)
        return (lambda e: eval_views.center(e, image_size, fraction, method, uint8)), (image_size,)
    if view == "ten_crop":
        resize_to = opts.ten_crop_resize or int(round(image_size * 256 / 224))
        if resize_to < image_size:
            raise ValueError(f"ten_crop_resize {resize_to} < image_size {image_size}")
        return (lambda e: eval_views.ten_crop(e, image_size, resize_to, method, uint8)), (
            image_size,
        )
    if view == "multi_scale":
        sizes = tuple(opts.multi_scale_sizes or eval_views.scaled_sizes(image_size))
        sizes = tuple(sorted(int(s) for s in sizes))
        return (lambda e: eval_views.multi_scale(e, sizes, method, uint8)), sizes
    raise ValueError(f"eval_view must be one of {eval_views.VIEWS}, not {view!r}")


def _finish(normalize, out_dtype: tf.DType, per_batch):
    """Per-batch tail on the host: normalise, the preset's per-batch part, cast. Not used for
    uint8 output, whose tail runs on the device (``data.device.finish``)."""

    def finish(batch):
        batch = dict(batch)
        image = tf.nest.map_structure(normalize, batch["image"])
        if per_batch is not None:
            image = per_batch(image, batch)
        batch["image"] = tf.nest.map_structure(lambda t: tf.cast(t, out_dtype), image)
        return batch

    return finish


def _with_label(out: dict, ex: dict, with_index: bool) -> dict:
    out.update(label=ex["label"], mask=tf.constant(True))
    if with_index:
        out["index"] = ex["index"]
    return out


def _padding_like(ds: tf.data.Dataset, count: int) -> tf.data.Dataset:
    """``count`` all-zero elements shaped like ``ds``'s, with mask False and index -1."""
    zeros = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    zeros["mask"] = tf.constant(False)
    if "index" in zeros:
        zeros["index"] = tf.constant(-1, tf.int64)
    return tf.data.Dataset.from_tensors(zeros).repeat(count)


def create_dataset(
    name: str,
    split: str,
    *,
    global_batch_size: int,
    train: bool,
    image_size: int,
    augment: str = "none",
    eval_view: str = "center",
    data_dir: str | None = None,
    seed: int = 0,
    start_step: int = 0,
    dtype: str = "float32",
    **options: Any,
) -> Dataset:
    """Build the input pipeline for one split; see the module docstring and ``Dataset``.

    Args:
      name: "cifar10", "cifar100", "imagenet2012", "imagenette" or any tfds image
        classification name; "folder" (``data_dir/<split>/<class>/*.jpg|png``); "digits"
        (scikit-learn's handwritten digits, splits "train"/"test").
      split: the split ("train", "test", "validation", ...; a sub-directory for "folder").
      global_batch_size: batch over all processes; divisible by jax.device_count().
      train: True: shuffled, augmented, repeated forever, ``steps_per_epoch`` batches per
        epoch. False: one pass over the whole split, the last batch padded (``mask`` False).
      image_size: output height and width.
      augment: train preset, "cifar" | "resnet_paper" | "inception" | "none".
      eval_view: eval only, "center" | "ten_crop" | "multi_scale".
      data_dir: tfds data_dir, or the image-folder root for "folder".
      seed: shuffling and augmentation seed; equal seeds give identical batches.
      start_step: the first batch yielded is batch ``start_step`` of the uninterrupted stream
        (train: of the infinite stream; eval: skips that many batches).
      dtype: "float32" or "bfloat16" for normalised ``image``s; "uint8" for the pixels
        themselves, with normalisation and the float parts of augmentation left to the device
        (``resnet_jax.data.device.finish``; what the trainer uses: 4x fewer bytes to the device).
      **options: see ``Options``.
    """
    try:
        opts = Options(**options)
    except TypeError:
        valid = sorted(f.name for f in dataclasses.fields(Options))
        unknown = sorted(set(options) - set(valid))
        raise TypeError(f"unknown option(s) {unknown}; valid options: {valid}") from None
    if dtype not in ("float32", "bfloat16", "uint8"):
        raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'uint8', not {dtype!r}")
    uint8 = dtype == "uint8"
    if image_size < 1:
        raise ValueError(f"image_size must be positive, not {image_size}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, not {start_step}")
    pidx, pcount, ndev = _jax_topology(opts)
    if not 0 <= pidx < pcount:
        raise ValueError(f"process_index {pidx} not in [0, {pcount})")
    if global_batch_size <= 0 or global_batch_size % ndev:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the number "
            f"of devices ({ndev}) so every device gets the same share of each batch"
        )
    if global_batch_size % pcount:
        raise ValueError(
            f"global_batch_size {global_batch_size} not divisible by process_count {pcount}"
        )
    local_batch = global_batch_size // pcount

    source = open_source(name, split, data_dir, opts)
    stats = normalization_stats(name, data_dir, image_size, split, opts)
    shard = Shard(seed=seed, process_index=pidx, process_count=pcount, local_batch=local_batch)
    n = source.num_examples

    if train:
        steps = n // global_batch_size
        if steps == 0:
            raise ValueError(
                f"{name}/{split} has {n} examples, fewer than global_batch_size "
                f"{global_batch_size}: not one full training batch"
            )
        first_epoch, skip_batches = divmod(start_step, steps)
        # Skipping before the load and decode: nothing is read for the skipped batches.
        records = source.train_examples(shard, steps, first_epoch, opts.shuffle_buffer)
        records = records.skip(skip_batches * local_batch)
        preset = _train_preset(augment, image_size, opts, uint8)
        load = source.load_fn()

        def train_map(ex):
            ex = load(ex)
            seed_ex = _example_seed(seed, ex["epoch"], ex["position"])
            out = preset.per_example(ex["encoded"], seed_ex)
            return _with_label(out, ex, opts.with_index)

        ds = records.map(train_map, num_parallel_calls=opts.num_parallel_calls, deterministic=True)
        ds = ds.batch(local_batch, drop_remainder=True)
        view_sizes = (image_size,)
    else:
        records, num_pad, steps = source.eval_examples(shard)
        transform, view_sizes = _eval_transform(eval_view, image_size, opts, uint8)
        load = source.load_fn()

        def eval_map(ex):
            ex = load(ex)
            return _with_label({"image": transform(ex["encoded"])}, ex, opts.with_index)

        ds = records.map(eval_map, num_parallel_calls=opts.num_parallel_calls, deterministic=True)
        if num_pad:
            ds = ds.concatenate(_padding_like(ds, num_pad))
        ds = ds.batch(local_batch, drop_remainder=True)
        if start_step:
            ds = ds.skip(start_step)
        preset = Preset(per_example=transform)  # evaluation views: nothing per batch

    # The per-batch tail: on the host for normalised output, on the device for uint8.
    if not uint8:
        out_dtype = {"bfloat16": tf.bfloat16, "float32": tf.float32}[dtype]
        finish = _finish(normalizer_from_stats(stats), out_dtype, preset.per_batch)
        ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    tf_opts = tf.data.Options()
    tf_opts.deterministic = True
    tf_opts.autotune.enabled = True
    tf_opts.experimental_optimization.map_parallelization = True
    if opts.threads:
        tf_opts.threading.private_threadpool_size = opts.threads
    ds = ds.with_options(tf_opts)
    return Dataset(
        ds,
        source=source,
        num_examples=n,
        steps_per_epoch=steps,
        global_batch_size=global_batch_size,
        local_batch_size=local_batch,
        view_sizes=view_sizes,
        normalization=stats,
        device_steps=dict(preset.device_steps) if uint8 else None,
    )
