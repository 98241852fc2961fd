"""The one place a config becomes datasets and a model (training, evaluation, predict, export,
the experiments and the benchmarks all go through here)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax.errors import ConfigError
from resnet_jax.inference_spec import InferenceSpec
from resnet_jax.models import registry
from resnet_jax.training import optim

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
PRECISIONS = ("auto", *DTYPES)  # config.precision


def resolve_precision(precision: str) -> str:
    """'auto' -> bfloat16 on TPU/GPU (f32 master weights and BN statistics), float32 on CPU."""
    if precision != "auto":
        return precision
    return "bfloat16" if jax.default_backend() in ("tpu", "gpu", "cuda", "rocm") else "float32"


def create_model(config: ml_collections.ConfigDict, num_classes: int, precision: str = "float32"):
    """The network of ``config.model`` with the compute dtype and BN axis of this run."""
    kwargs = config.model_kwargs.to_dict()
    if config.frozen_bn_stats:
        kwargs["frozen_bn"] = True
    return registry.create_model(
        config.model,
        num_classes=num_classes,
        dtype=DTYPES[precision],
        axis_name="batch" if config.sync_bn else None,  # sync BN: statistics of the global batch
        **kwargs,
    )


def eval_image_size(config: ml_collections.ConfigDict) -> int:
    """The evaluation input size: ``config.eval_image_size``, or the training size if 0."""
    return config.eval_image_size or config.image_size


def train_size_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> tuple[tuple[int, int], ...]:
    """Progressive resizing: ((first batch, size), ...), one entry per size of the run.

    Batch ``b`` (step b + 1) trains at the ramp's value at ``b``: ``progressive_min_size`` until
    ``progressive_start``, rising linearly to ``image_size`` at ``progressive_end`` (in
    ``schedule_unit``), rounded to the nearest multiple of ``progressive_multiple`` within
    [min size, image_size]. FFCV sets the size once per epoch; here it changes at the first batch
    whose rounded size differs, so short runs can ramp within an epoch.
    """
    unit = steps_per_epoch if config.schedule_unit == "epochs" else 1
    low, high, multiple = (config.progressive_min_size, config.image_size,
                           config.progressive_multiple)
    start, end = config.progressive_start * unit, config.progressive_end * unit
    num_steps = optim.total_steps(config, steps_per_epoch)
    if end > num_steps:
        raise ConfigError(
            f"config.progressive_end={config.progressive_end} {config.schedule_unit} is after the "
            f"run's end ({num_steps} steps): the run would never train at image_size"
        )
    b = np.arange(num_steps)
    t = np.clip((b - start) / (end - start), 0, 1) if end > start else (b >= start) * 1.0
    sizes = np.floor((low + t * (high - low)) / multiple + 0.5) * multiple
    sizes = np.where(t >= 1, high, np.clip(sizes, low, high)).astype(int)
    changes = [0, *(np.flatnonzero(np.diff(sizes)) + 1)]
    return tuple((int(i), int(sizes[i])) for i in changes)


def _data_options(config: ml_collections.ConfigDict, spec_options: dict[str, Any] | None):
    options = config.dataset_options.to_dict()
    options.update(spec_options or {})
    return options


def create_datasets(
    config: ml_collections.ConfigDict,
    start_step: int,
    precision: str,
    normalization: dict[str, Any] | None = None,
):
    """(train, eval) datasets of a training run; the train stream starts at ``start_step``.

    Both yield uint8 pixels; ``device_prepare(dataset, precision)`` makes the network's input
    from a batch inside the jitted step.

    ``normalization``: statistics to use as they are (a resumed run's or an ``init_from`` run's
    recorded ones) instead of the ones the config implies.
    """
    from resnet_jax import data

    recorded = {"normalization_stats": normalization} if normalization else None
    options = _data_options(config, recorded)
    common = dict(
        image_size=config.image_size,
        data_dir=config.data_dir or None,
        seed=config.seed,
        dtype="uint8",  # normalised on the device: see device_prepare
        **options,
    )
    train_ds = data.create_dataset(
        config.dataset,
        config.train_split,
        global_batch_size=config.global_batch_size,
        train=True,
        augment=config.augment,
        start_step=start_step,
        size_schedule=(functools.partial(train_size_schedule, config)
                       if config.progressive_min_size else None),
        **common,
    )
    # The eval stream uses the training stream's statistics (never those of the eval split).
    common["normalization_stats"] = train_ds.normalization
    common["image_size"] = eval_image_size(config)
    eval_ds = data.create_dataset(
        config.dataset,
        config.eval_split,
        global_batch_size=config.eval_batch_size or config.global_batch_size,
        train=False,
        eval_view=config.eval_view,
        **common,
    )
    return train_ds, eval_ds


def create_eval_dataset(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    batch_size: int,
    view: str | None = None,
    spec: InferenceSpec | None = None,
    uint8: bool = False,
):
    """One evaluation pass over ``split`` of the config's dataset.

    With ``spec`` (a trained run's), the run's class order, normalisation and preprocessing are
    used as recorded, and a dataset whose classes differ is a ``DataError``. ``uint8=True``
    yields the pixels (the model-side ``spec.normalize`` or ``device_prepare`` then normalises,
    e.g. for ensembles of runs with different statistics).
    """
    from resnet_jax import data

    spec_options = spec.data_options() if spec is not None else {}
    if spec is not None and config.dataset == data.sources.FOLDER and config.data_dir:
        present = data.sources.folder_classes(config.data_dir)
        if not set(present) <= set(spec.class_names):
            _class_mismatch(f"{config.data_dir}", present, spec)
        spec_options["class_names"] = list(spec.class_names)  # the run's label ids
    ds = data.create_dataset(
        config.dataset,
        split,
        global_batch_size=batch_size,
        train=False,
        image_size=eval_image_size(config) if spec is None else spec.image_size,
        eval_view=view or config.eval_view,
        data_dir=config.data_dir or None,
        seed=config.seed,
        dtype="uint8" if uint8 else "float32",
        **_data_options(config, spec_options),
    )
    if spec is not None and tuple(ds.class_names) != tuple(spec.class_names):
        _class_mismatch(f"{config.dataset}/{split}", ds.class_names, spec)
    return ds


def _class_mismatch(where: str, classes, spec: InferenceSpec) -> None:
    from resnet_jax.data import DataError

    raise DataError(
        f"{where} has classes {_short(classes)}, but the run was trained on "
        f"{_short(spec.class_names)}; evaluate on data with the run's classes (or fine-tune "
        "on these with --config.init_from)"
    )


def _short(names, limit: int = 6) -> str:
    names = list(names)
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + more + "]"


def inference_spec(config: ml_collections.ConfigDict, dataset) -> InferenceSpec:
    """What a run records for inference: ``dataset`` is its training or eval ``Dataset``."""
    from resnet_jax.data import eval_views

    opts = config.dataset_options
    size = eval_image_size(config)
    crop = opts.get("crop_fraction") or eval_views.default_crop_fraction(size)
    return InferenceSpec(
        model=config.model,
        model_kwargs=config.model_kwargs.to_dict(),
        class_names=tuple(dataset.class_names),
        image_size=size,
        resize_method=opts.get("resize_method", "bilinear"),
        crop_fraction=float(crop),
        eval_view=config.eval_view,
        normalization=dataset.normalization,
        weights=config.inference_weights,
    )


def device_prepare(dataset, precision: str = "float32"):
    """batch -> the network's input, inside the jitted step, for a uint8 ``dataset``: cast,
    lighting noise, the recorded normalisation, the CIFAR pad/crop/flip, the compute dtype."""
    from resnet_jax.data import device

    return functools.partial(
        device.finish,
        stats=dataset.normalization,
        dtype=DTYPES[precision],
        cifar_pad=(dataset.device_steps or {}).get("cifar_pad"),
    )
