"""Everything before the first step of a run: the resume check (or ``init_from``), datasets,
model, optimizer, and the train state in the devices' layout, gathered in a :class:`Run`."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from resnet_jax import fs
from resnet_jax.checkpoint import Checkpointer, CheckpointMismatchError
from resnet_jax.data.mix import MixConfig, mixer
from resnet_jax.inference_spec import InferenceSpec
from resnet_jax.training import build, optim, pretrained
from resnet_jax.training.config import ConfigError, config_diff, to_dict, validate
from resnet_jax.training.parallel import DataParallel
from resnet_jax.training.step import (
    TrainState,
    create_train_state,
    ema_of,
    make_eval_step,
    make_train_step,
)
from resnet_jax.training.xla_flags import apply_xla_flags


@dataclasses.dataclass(frozen=True)
class Run:
    """What the loop needs: built by :func:`prepare`, read-only afterwards."""

    config: ml_collections.ConfigDict
    workdir: str
    ckpt: Checkpointer
    dp: DataParallel
    train_ds: Any
    eval_ds: Any
    state: TrainState  # at start_step (restored, initialised or init_from), in dp's layout
    train_step: Callable  # (state, metrics, batch) -> (state, metrics), data-parallel
    eval_step: Callable  # (variables, batch) -> global sums
    lr_fn: Callable[[int], Any]
    precision: str
    start_step: int
    num_steps: int
    steps_per_epoch: int
    meta: dict[str, Any]  # saved beside every checkpoint (with "step")
    init_message: str  # init_from's summary, or why it was ignored; "" if neither
    resume_notes: tuple[str, ...] = ()  # damaged checkpoints skipped on resume, one line each

    @property
    def lead(self) -> bool:
        return jax.process_index() == 0

    @property
    def fp16(self) -> bool:
        return self.precision == "float16"

    @property
    def eval_every(self) -> int:
        """Steps between evaluations; 0: only at the end."""
        return int(round(self.config.eval_every_epochs * self.steps_per_epoch))


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Validates ``config``, applies its XLA flags and makes ``workdir``; returns it absolute."""
    validate(config)
    apply_xla_flags(config)  # a no-op where train.py applied them or JAX has started ("auto")
    workdir = fs.absolute(workdir)  # gs://... stays as it is (abspath would mangle it)
    # Fail here, with one message on every worker, on an unknown scheme, a missing bucket or
    # missing credentials.
    if jax.process_index() == 0 or fs.is_remote(workdir):
        fs.ensure_writable_dir(workdir)
    return workdir


def prepare(config: ml_collections.ConfigDict, workdir: str, ckpt: Checkpointer) -> Run:
    """Builds the run in ``workdir``, resuming from the newest checkpoint of ``ckpt`` if any."""
    precision = build.resolve_precision(config.precision)
    cfg = to_dict(config)
    # Resume: the newest checkpoint that reads completely gives the step, and so the data
    # position; damaged newer ones are set aside, each with one line.
    resume_notes: list[str] = []
    start_step = ckpt.newest_usable_step(resume_notes.append) or 0
    normalization, init_source = _check_resume(config, workdir, ckpt, cfg, start_step)
    if jax.process_index() == 0:
        fs.write_text(fs.join(workdir, "config.json"), json.dumps(cfg, indent=2))

    train_ds, eval_ds = build.create_datasets(config, start_step, precision, normalization)
    spec = build.inference_spec(config, train_ds)
    steps_per_epoch = train_ds.steps_per_epoch
    num_steps = optim.total_steps(config, steps_per_epoch)
    model = build.create_model(config, train_ds.num_classes, precision)
    lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch)
    tx = optim.create_optimizer(
        config, lr_fn, optim.create_momentum_fn(config, steps_per_epoch))

    dp = DataParallel(config.parallel)
    fp16 = precision == "float16"
    image_shape = (config.image_size, config.image_size, 3)
    loss_scale = config.loss_scale_init if fp16 else 1.0
    _check_accumulation(config, dp)
    init_fn = functools.partial(
        create_train_state, model, tx, jax.random.PRNGKey(config.seed), image_shape, loss_scale,
        ema=config.ema_decay > 0,
    )
    if start_step:
        state = dp.restore(ckpt, jax.eval_shape(init_fn), start_step)
        init_message = (
            f"init_from ignored: resuming this workdir's run at step {start_step}"
            if config.init_from else ""
        )
    elif init_source is not None:
        fresh = dp.init_state(init_fn)
        state, init_message = _load_pretrained(init_source, fresh, dp, config, train_ds, spec)
    else:
        state, init_message = dp.init_state(init_fn), ""

    train_fn = make_train_step(
        model,
        tx,
        label_smoothing=config.label_smoothing,
        per_device_bn=not config.sync_bn,
        dynamic_loss_scale=fp16,
        loss_scale_period=config.loss_scale_period,
        prepare=build.device_prepare(train_ds, precision),
        ema_decay=config.ema_decay,
        ema_warmup=config.ema_warmup,
        grad_accum_steps=config.grad_accum_steps,
        mix=mixer(MixConfig(config.mixup_alpha, config.cutmix_alpha, config.mix_prob,
                            config.mix_switch_prob)),
        loss=config.loss,
        bce_target_threshold=config.bce_target_threshold,
    )
    eval_fn = make_eval_step(model, build.device_prepare(eval_ds, precision))
    meta = {"config": cfg, "model": config.model, "num_classes": train_ds.num_classes,
            "inference": spec.to_json()}
    return Run(
        config=config, workdir=workdir, ckpt=ckpt, dp=dp, train_ds=train_ds, eval_ds=eval_ds,
        state=state, train_step=dp.train_step(train_fn), eval_step=dp.eval_step(eval_fn),
        lr_fn=lr_fn, precision=precision, start_step=start_step, num_steps=num_steps,
        steps_per_epoch=steps_per_epoch, meta=meta, init_message=init_message,
        resume_notes=tuple(resume_notes),
    )


def _check_accumulation(config: ml_collections.ConfigDict, dp: DataParallel) -> None:
    """``grad_accum_steps`` must divide each device's share of the global batch."""
    per_device = config.global_batch_size // max(1, len(dp.devices))
    if per_device % config.grad_accum_steps:
        raise ConfigError(
            f"config.grad_accum_steps={config.grad_accum_steps} does not divide the per-device "
            f"batch {per_device} (global_batch_size {config.global_batch_size} over "
            f"{len(dp.devices)} devices); choose a divisor of {per_device}"
        )


def _check_resume(
    config: ml_collections.ConfigDict,
    workdir: str,
    ckpt: Checkpointer,
    cfg: dict[str, Any],
    start_step: int,
) -> tuple[dict[str, Any] | None, pretrained.Source | None]:
    """(normalisation statistics to reuse or None, the ``init_from`` source or None).

    Raises CheckpointMismatchError if ``workdir`` holds a run with another config.
    """
    if start_step:
        saved_meta = ckpt.read_meta(start_step)
        changed = config_diff(saved_meta["config"], cfg)
        if changed:
            raise CheckpointMismatchError(
                f"{workdir} holds a run with a different config; changed keys "
                + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
                + ". Use a new --workdir (or restore the old values)."
            )
        if "inference" in saved_meta:  # the statistics this run trained with, not re-estimated
            return InferenceSpec.from_json(saved_meta["inference"]).normalization, None
        return None, None
    if config.init_from:
        source = pretrained.open_source(
            config.init_from, model_name=config.model, model_kwargs=config.model_kwargs.to_dict()
        )
        return source.normalization, source  # our runs: keep the pretrained statistics
    return None, None  # what the config implies


def _load_pretrained(
    source: pretrained.Source,
    state: TrainState,
    dp: DataParallel,
    config: ml_collections.ConfigDict,
    train_ds: Any,
    spec: InferenceSpec,
) -> tuple[TrainState, str]:
    """``state`` with ``source``'s parameters and BN statistics merged in, and a summary."""
    fresh = dp.unreplicate({"params": state.params, "batch_stats": state.batch_stats})
    loaded = pretrained.merge(source, fresh, target_name=config.model,
                              class_names=tuple(train_ds.class_names))
    weights = {k: loaded.variables[k] for k in ("params", "batch_stats")}
    # The EMA starts from the loaded weights too (its own buffers: the step donates both).
    state = state.replace(params=dp.replicate(weights["params"]),
                          batch_stats=dp.replicate(weights["batch_stats"]))
    if ema_of(state) is not None:
        state = state.replace(ema=dp.replicate(weights))
    return state, loaded.summary + _normalization_note(source, spec)


def _normalization_note(source: pretrained.Source, spec: InferenceSpec) -> str:
    kind = spec.normalization["kind"]
    if source.normalization is not None:
        return f"; normalisation: {source.normalization_of} ({kind})"
    return f"; normalisation: this config's ({kind}; torchvision weights expect 'imagenet')"
