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
resumed stream is bit-identical to the uninterrupted one. Progressive resizing (``size_schedule``)
numbers each record with its global batch and crops it at that batch's size: the same examples
and random parameters, another size.

Around it: ``options`` (its keyword options), ``sources`` (where records come from),
``presets`` (augmentation presets and evaluation views by name), ``normalization`` and
``dataset`` (what it returns).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

from resnet_jax.data import presets
from resnet_jax.data.dataset import Dataset
from resnet_jax.data.host_tf import no_autograph, tf
from resnet_jax.data.normalization import (  # noqa: F401  (re-exported: pipeline.normalizer)
    IMAGENET_MEAN_STD,
    KNOWN_MEAN_STD,
    NORMALIZATIONS,
    check_normalization_stats,
    normalization_stats,
    normalizer,
    normalizer_from_stats,
)
from resnet_jax.data.options import Options
from resnet_jax.data.presets import Preset
from resnet_jax.data.sources import (  # noqa: F401  (open_source and the source types re-exported)
    SEED_SALT,
    CorruptImageError,
    IndexSource,
    Shard,
    Source,
    TfdsStreamSource,
    open_source,
)


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
    size_schedule: Callable[[int], Sequence[tuple[int, int]]] | None = None,
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
      augment: train preset, one of ``data.PRESETS`` (registry: ``presets.TRAIN_PRESETS``).
      eval_view: eval only, one of ``data.VIEWS`` (registry: ``presets.EVAL_VIEWS``).
      data_dir: tfds data_dir, or the image-folder root for "folder".
      seed: shuffling and augmentation seed; equal seeds give identical batches.
      start_step: the first batch yielded is batch ``start_step`` of the uninterrupted stream
        (train: of the infinite stream; eval: skips that many batches).
      dtype: "float32" or "bfloat16" for normalised ``image``s; "uint8" for the pixels
        themselves, with normalisation and the float parts of augmentation left to the device
        (``resnet_jax.data.device.finish``; what the trainer uses: 4x fewer bytes to the device).
      size_schedule: train only, progressive resizing: called with the steps per epoch, it
        returns ((first batch, size), ...); batch ``b`` of the uninterrupted stream has the size
        of the last entry whose first batch is <= ``b`` (``image_size`` before the first).
        Which examples a batch holds and their random parameters do not depend on it.
      **options: see ``Options``.
    """
    opts = _options(options)
    _check_arguments(dtype, image_size, start_step)
    if size_schedule is not None and not train:
        raise ValueError("size_schedule is for training streams (train=True) only")
    shard = _process_shard(global_batch_size, seed, opts)
    uint8 = dtype == "uint8"
    source = open_source(name, split, data_dir, opts)
    stats = normalization_stats(name, data_dir, image_size, split, opts)
    schedule: tuple[tuple[int, int], ...] = ()
    if train:
        steps = _train_steps(name, split, source.num_examples, global_batch_size)
        records = _train_records(source, shard, steps, start_step, opts.shuffle_buffer)
        preset = presets.train_preset(augment, image_size, opts, uint8)
        view_sizes = (image_size,)
        per_example = _of_encoded(preset)
        if size_schedule is not None:
            schedule = _check_schedule(size_schedule(steps), stats)
            records = _with_batch_index(records, start_step, shard.local_batch)
            by_size = {image_size: preset}  # one preset per size: the ramp ends at image_size
            for _, size in schedule:
                if size not in by_size:
                    by_size[size] = presets.train_preset(augment, size, opts, uint8)
            before = ((0, image_size),) if schedule[0][0] > 0 else ()
            per_example = _sized_by_batch(
                tuple((first, by_size[size]) for first, size in before + schedule)
            )
        augment_fn = no_autograph(_augment_fn(source, per_example, seed, opts))
        examples = records.map(augment_fn, **_map_args(opts))
        batches = examples.batch(shard.local_batch, drop_remainder=True)
    else:
        records, num_pad, steps = source.eval_examples(shard)
        transform, view_sizes = presets.eval_transform(eval_view, image_size, opts, uint8)
        preset = Preset(per_example=transform)  # evaluation views: nothing per batch
        examples = records.map(no_autograph(_view_fn(source, transform, opts)), **_map_args(opts))
        batches = _eval_batches(examples, num_pad, shard.local_batch, start_step)
    if not uint8:  # the per-batch tail on the host; uint8 output gets it on the device
        tail = _host_tail(normalizer_from_stats(stats), dtype, preset.per_batch)
        batches = batches.map(
            no_autograph(tail), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    return Dataset(
        _with_tf_options(batches.prefetch(tf.data.AUTOTUNE), opts.threads), source=source,
        num_examples=source.num_examples, steps_per_epoch=steps, view_sizes=view_sizes,
        global_batch_size=global_batch_size, local_batch_size=shard.local_batch,
        normalization=stats, device_steps=dict(preset.device_steps) if uint8 else None,
        size_schedule=schedule,
    )  # fmt: skip


# ---- create_dataset's steps --------------------------------------------------------------------


def _options(options: dict[str, Any]) -> Options:
    """``Options(**options)``; an unknown option is a TypeError listing the valid ones."""
    try:
        return Options(**options)
    except TypeError:
        valid = sorted(f.name for f in dataclasses.fields(Options))
        unknown = sorted(set(options) - set(valid))
        raise TypeError(f"unknown option(s) {unknown}; valid options: {valid}") from None


def _check_arguments(dtype: str, image_size: int, start_step: int) -> None:
    """A ``ValueError`` naming the first argument out of range, if any."""
    if dtype not in ("float32", "bfloat16", "uint8"):
        raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'uint8', not {dtype!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, not {image_size}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, not {start_step}")


def _process_shard(global_batch_size: int, seed: int, opts: Options) -> Shard:
    """This process's share of every global batch; the batch must split evenly over the
    devices and the processes."""
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
    return Shard(
        seed=seed, process_index=pidx, process_count=pcount,
        local_batch=global_batch_size // pcount,
    )  # fmt: skip


def _jax_topology(opts: Options) -> tuple[int, int, int]:
    """(process index, process count, device count): ``opts``' or, where unset, jax's."""
    if None in (opts.process_index, opts.process_count, opts.device_count):
        import jax

        pi = jax.process_index() if opts.process_index is None else opts.process_index
        pc = jax.process_count() if opts.process_count is None else opts.process_count
        dc = jax.device_count() if opts.device_count is None else opts.device_count
        return pi, pc, dc
    return opts.process_index, opts.process_count, opts.device_count


def _train_steps(name: str, split: str, num_examples: int, global_batch_size: int) -> int:
    """Batches per training epoch; a split smaller than one batch is an error."""
    steps = num_examples // global_batch_size
    if steps == 0:
        raise ValueError(
            f"{name}/{split} has {num_examples} examples, fewer than global_batch_size "
            f"{global_batch_size}: not one full training batch"
        )
    return steps


def _train_records(
    source: Source, shard: Shard, steps: int, start_step: int, shuffle_buffer: int
) -> tf.data.Dataset:
    """This process's training records from batch ``start_step`` of the uninterrupted stream
    on: whole epochs skipped arithmetically, then the records of the partial epoch's batches
    (skipped before the load and decode: nothing is read for them)."""
    first_epoch, skip_batches = divmod(start_step, steps)
    records = source.train_examples(shard, steps, first_epoch, shuffle_buffer)
    return records.skip(skip_batches * shard.local_batch)


def _map_args(opts: Options) -> dict[str, Any]:
    """The per-example map's arguments: parallel (``opts.num_parallel_calls``), in order, so
    batches never depend on thread timing."""
    return {"num_parallel_calls": opts.num_parallel_calls, "deterministic": True}


def _augment_fn(source: Source, per_example: Callable, seed: int, opts: Options) -> Callable:
    """record -> training example: loaded, decoded and augmented by ``per_example(record,
    seed)``, seeded by (run seed, epoch, position in epoch)."""
    load = source.load_fn()

    def train_map(ex):
        ex = load(ex)
        out = per_example(ex, _example_seed(seed, ex["epoch"], ex["position"]))
        return _with_label(out, ex, opts.with_index)

    return train_map


def _of_encoded(preset: Preset) -> Callable:
    """(record, seed) -> ``preset``'s example from the record's encoded image."""
    return lambda ex, seed: preset.per_example(ex["encoded"], seed)


def _check_schedule(
    schedule: Sequence[tuple[int, int]], stats: dict[str, Any]
) -> tuple[tuple[int, int], ...]:
    """``schedule`` as a tuple of (first batch, size) pairs, ascending, sizes positive."""
    out = tuple((int(b), int(s)) for b, s in schedule)
    firsts = [b for b, _ in out]
    if not out or firsts != sorted(set(firsts)) or firsts[0] < 0 or min(s for _, s in out) < 1:
        raise ValueError(
            f"size_schedule must give ascending first batches >= 0 and sizes >= 1, not {out}"
        )
    if stats["kind"] == "per_pixel_mean":
        raise ValueError(
            "size_schedule needs a normalisation without a mean image (per_pixel_mean "
            "subtracts one of image_size); use mean_std"
        )
    return out


def _with_batch_index(records: tf.data.Dataset, start_step: int, local_batch: int):
    """``records`` with "batch": the number of the global batch each belongs to (``start_step``
    for the first ``local_batch`` records, and so on; each process reads ``local_batch`` records
    of every global batch)."""
    first = start_step * local_batch
    return records.enumerate(start=first).map(
        no_autograph(lambda k, ex: dict(ex, batch=k // local_batch))
    )


def _sized_by_batch(presets_from: tuple[tuple[int, Preset], ...]) -> Callable:
    """(record, seed) -> the example by the preset of the last (first batch, preset) entry with
    first batch <= the record's "batch" (``_with_batch_index``); only that preset's branch runs."""
    firsts = tf.constant([first for first, _ in presets_from], tf.int64)

    def augment(ex, seed):
        which = tf.searchsorted(firsts, ex["batch"][None], side="right")[0] - 1
        branches = [functools.partial(p.per_example, ex["encoded"], seed) for _, p in presets_from]
        return tf.switch_case(tf.cast(which, tf.int32), branches)

    return augment


def _view_fn(source: Source, transform: Callable, opts: Options) -> Callable:
    """record -> evaluation example: loaded, decoded and ``transform``ed to its view(s)."""
    load = source.load_fn()

    def eval_map(ex):
        ex = load(ex)
        return _with_label({"image": transform(ex["encoded"])}, ex, opts.with_index)

    return eval_map


def _eval_batches(
    examples: tf.data.Dataset, num_pad: int, local_batch: int, start_step: int
) -> tf.data.Dataset:
    """One pass in batches, the last one completed with ``num_pad`` masked padding examples,
    from batch ``start_step`` on."""
    if num_pad:
        examples = examples.concatenate(_padding_like(examples, num_pad))
    batches = examples.batch(local_batch, drop_remainder=True)
    if start_step:
        batches = batches.skip(start_step)
    return batches


def _example_seed(seed: int, epoch: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
    """Stateless per-example seed from (run seed, epoch, position in epoch)."""
    # One fold-in of (epoch, position) packed in 64 bits: positions < 2**40, epochs < 2**23.
    data = tf.cast(epoch, tf.int64) * (1 << 40) + tf.cast(position, tf.int64)
    return tf.random.experimental.stateless_fold_in(tf.constant([seed, SEED_SALT], tf.int64), data)


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


def _host_tail(normalize: Callable, dtype: str, per_batch: Callable | None) -> Callable:
    """Per-batch tail on the host: normalise, the preset's per-batch part, cast to ``dtype``.
    Not used for uint8 output, whose tail runs on the device (``data.device.finish``)."""
    out_dtype = {"bfloat16": tf.bfloat16, "float32": tf.float32}[dtype]

    def finish(batch):
        batch = dict(batch)
        image = tf.nest.map_structure(normalize, batch["image"])
        if per_batch is not None:
            image = per_batch(image, batch)
        batch["image"] = tf.nest.map_structure(lambda t: tf.cast(t, out_dtype), image)
        return batch

    return finish


def _with_tf_options(ds: tf.data.Dataset, threads: int) -> tf.data.Dataset:
    """``ds`` deterministic and autotuned, on a private pool of ``threads`` threads if set."""
    tf_opts = tf.data.Options()
    tf_opts.deterministic = True
    tf_opts.autotune.enabled = True
    tf_opts.experimental_optimization.map_parallelization = True
    if threads:
        tf_opts.threading.private_threadpool_size = threads
    return ds.with_options(tf_opts)
