"""The training loop: build, (resume,) train, evaluate, checkpoint. Read it top to bottom.

The step runs asynchronously on device; the host only fetches the accumulated metrics every
``log_every_steps`` steps (and before each checkpoint, so a diverged state is never saved).
"""

from __future__ import annotations

import functools
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import ml_collections

from resnet_jax import fs
from resnet_jax.checkpoint import Checkpointer, CheckpointMismatchError
from resnet_jax.inference import InferenceSpec
from resnet_jax.training import build, optim, pretrained
from resnet_jax.training.config import apply_xla_flags, config_diff, to_dict, validate
from resnet_jax.training.metrics import MetricWriter, Progress
from resnet_jax.training.step import (
    DataParallel,
    TrainState,
    create_train_state,
    make_eval_step,
    make_train_step,
)

Hook = Callable[[int, TrainState], None]


class TrainingDivergedError(FloatingPointError):
    """The loss or the gradients became NaN or Inf."""


def evaluate(
    eval_step: Callable, variables: Any, batches: Iterable[dict], dp: DataParallel
) -> dict[str, float]:
    """Top-1/top-5 accuracy and loss over every (unpadded) example of ``batches``."""
    from resnet_jax.training.evaluate import accuracy, summed

    return accuracy(summed(eval_step, variables, batches, dp))


class _Preemption:
    """SIGTERM (how TPU VMs and clusters preempt) sets a flag; the loop saves and exits."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def check(self, step: int) -> bool:
        if jax.process_count() > 1:
            # All hosts agree on the step to save at (JAX's preemption sync manager, SIGTERM).
            from jax.experimental import multihost_utils

            try:
                return self.requested or multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:
                return self.requested
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    hooks: Sequence[Hook] = (),
    stop_after_steps: int = 0,
    stream=None,
) -> dict[str, Any]:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint; returns a summary.

    ``hooks`` are called as ``hook(step, state)`` after every step (profiling, tests).
    ``stop_after_steps`` > 0: save and return at that step (for schedulers with time limits);
    running again without it continues the same run. SIGTERM does the same at the next step.
    """
    t_start = time.time()
    validate(config)
    apply_xla_flags(config)  # a no-op where train.py applied them or JAX has started ("auto")
    lead = jax.process_index() == 0
    workdir = fs.absolute(workdir)  # gs://... stays as it is (abspath would mangle it)
    precision = build.resolve_precision(config.precision)
    cfg = to_dict(config)

    if lead or fs.is_remote(workdir):  # fail here, with one message, on every worker, on an
        fs.ensure_writable_dir(workdir)  # unknown scheme, a missing bucket or credentials
    # Resume: the newest complete checkpoint gives the step, and so the data position.
    ckpt = Checkpointer(
        fs.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        keep_best=config.keep_best,
        async_save=config.async_checkpointing,
    )
    start_step = ckpt.latest_step() or 0
    normalization = None  # None: what the config implies; else recorded statistics
    init_source = None
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
            normalization = InferenceSpec.from_json(saved_meta["inference"]).normalization
    elif config.init_from:
        init_source = pretrained.open_source(
            config.init_from, model_name=config.model, model_kwargs=config.model_kwargs.to_dict()
        )
        normalization = init_source.normalization  # our runs: keep the pretrained statistics
    if lead:
        fs.write_text(fs.join(workdir, "config.json"), json.dumps(cfg, indent=2))

    train_ds, eval_ds = build.create_datasets(config, start_step, precision, normalization)
    spec = build.inference_spec(config, train_ds)
    steps_per_epoch = train_ds.steps_per_epoch
    num_steps = optim.total_steps(config, steps_per_epoch)
    model = build.create_model(config, train_ds.num_classes, precision)
    lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch)
    tx = optim.create_optimizer(config, lr_fn)

    dp = DataParallel(config.parallel)
    if config.global_batch_size % len(dp.devices):
        raise ValueError(
            f"global_batch_size {config.global_batch_size} is not divisible by "
            f"{len(dp.devices)} devices"
        )
    fp16 = precision == "float16"
    init_fn = functools.partial(
        create_train_state,
        model,
        tx,
        jax.random.PRNGKey(config.seed),
        (config.image_size, config.image_size, 3),
        config.loss_scale_init if fp16 else 1.0,
    )
    init_message = ""
    if start_step:
        state = _restore(ckpt, dp, init_fn, start_step)
        if config.init_from:
            init_message = f"init_from ignored: resuming this workdir's run at step {start_step}"
    else:
        state = dp.init_state(init_fn)
        if init_source is not None:
            fresh = dp.unreplicate({"params": state.params, "batch_stats": state.batch_stats})
            loaded = pretrained.merge(init_source, fresh, target_name=config.model,
                                      class_names=tuple(train_ds.class_names))
            state = state.replace(
                params=dp.replicate(loaded.variables["params"]),
                batch_stats=dp.replicate(loaded.variables["batch_stats"]),
            )
            init_message = loaded.summary + _normalization_note(init_source, spec)
    meta = {
        "config": cfg,
        "model": config.model,
        "num_classes": train_ds.num_classes,
        "inference": spec.to_json(),
    }

    train_step = dp.train_step(
        make_train_step(
            model,
            tx,
            label_smoothing=config.label_smoothing,
            per_device_bn=not config.sync_bn,
            dynamic_loss_scale=fp16,
            loss_scale_period=config.loss_scale_period,
            prepare=build.device_prepare(train_ds, precision),
        )
    )
    eval_step = dp.eval_step(make_eval_step(model, build.device_prepare(eval_ds, precision)))
    eval_every = int(round(config.eval_every_epochs * steps_per_epoch))

    writer = MetricWriter(workdir, enabled=lead)
    progress = Progress(num_steps, config.progress_bar, enabled=lead, stream=stream)
    progress.log(
        f"{config.model} on {config.dataset}: {num_steps} steps ({steps_per_epoch}/epoch), "
        f"global batch {config.global_batch_size}, {len(dp.devices)} devices "
        f"({jax.process_count()} processes), {config.parallel}, {precision}"
        + (f"; resumed from step {start_step}" if start_step else "")
    )
    if init_message:
        progress.log(init_message)
    if config.frozen or config.lr_multipliers:
        # Shapes suffice: no copy of the parameters to the host (pmap adds a device axis).
        device_axis = 1 if config.parallel == "pmap" else 0
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[device_axis:], x.dtype),
                              state.params)
        progress.log(optim.describe_param_groups(shapes, config))

    metrics = dp.init_metrics()
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    last_saved = start_step
    t_log, n_since = time.time(), 0
    images_total, t_train = 0, 0.0
    step = start_step
    stopped = None

    def fetch_train_metrics(step: int) -> dict[str, float]:
        nonlocal metrics, t_log, n_since, images_total, t_train
        m = dp.unreplicate(metrics)
        metrics = dp.init_metrics()
        count = max(float(m["count"]), 1.0)
        loss = float(m["loss_sum"]) / count
        if not math.isfinite(loss) or (m["nonfinite"] > 0 and not fp16):
            kept = ckpt.latest_step()
            raise TrainingDivergedError(
                f"loss is {loss} (non-finite gradients in {int(m['nonfinite'])} steps) "
                f"by step {step}; stopping. The last good checkpoint (step {kept}) is kept in "
                f"{ckpt.directory}. Lower learning_rate, add warm-up or use float32."
            )
        dt = time.time() - t_log
        images_total += int(count)
        t_train += dt
        out = {
            "epoch": step / steps_per_epoch,
            "loss": loss,
            "top1": float(m["top1_sum"]) / count,
            "lr": float(lr_fn(step - 1)),
            "images_per_s": count / max(dt, 1e-9),
        }
        if fp16:
            out["loss_scale"] = float(dp.unreplicate(state.loss_scale))
            out["skipped_steps"] = float(m["nonfinite"])
        t_log, n_since = time.time(), 0
        return out

    batches = dp.device_batches(train_ds)  # the next batches already on the devices
    with _Preemption() as preemption:
        while step < num_steps:
            state, metrics = train_step(state, metrics, next(batches))
            step += 1
            n_since += 1
            is_last = step == num_steps
            stop = preemption.check(step) or step == stop_after_steps
            do_eval = is_last or (eval_every > 0 and step % eval_every == 0)
            do_save = do_eval or stop or step % config.checkpoint_every_steps == 0
            if n_since and (step % config.log_every_steps == 0 or do_save):
                last_train = fetch_train_metrics(step)
                writer.write(step, "train", {**last_train, "error": 1 - last_train["top1"]})
                progress.update(
                    step,
                    {
                        "epoch": last_train["epoch"],
                        "loss": last_train["loss"],
                        "acc": last_train["top1"],
                        "lr": last_train["lr"],
                        "img/s": last_train["images_per_s"],
                    },
                )
            save_metrics = None
            if do_eval and not stop:
                variables = {"params": state.params, "batch_stats": state.batch_stats}
                last_eval = evaluate(eval_step, variables, eval_ds, dp)
                writer.write(step, "eval", {**last_eval, "error": 1 - last_eval["top1"]})
                progress.log(
                    f"eval step {step}: top1={last_eval['top1']:.4f} "
                    f"top5={last_eval['top5']:.4f} loss={last_eval['loss']:.4f}"
                )
                save_metrics = {"eval_top1": last_eval["top1"]}
                t_log = time.time()  # images/s counts training time only
            if do_save:
                # A host copy (replicated state): orbax writes it from the primary process.
                ckpt.save(step, dp.unreplicate(state), {**meta, "step": step}, metrics=save_metrics)
                last_saved = step
            for hook in hooks:
                hook(step, state)
            if stop:
                stopped = "stop_after_steps" if step == stop_after_steps else "SIGTERM"
                ckpt.wait()
                progress.log(f"stopped ({stopped}) at step {step}: checkpoint saved")
                break
    progress.close()

    if stopped is None and not last_eval:
        # Resumed at (or past) the end: evaluate the final state once more for the summary.
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        last_eval = evaluate(eval_step, variables, eval_ds, dp)
    if last_saved != step and step not in ckpt.all_steps():
        ckpt.save(step, dp.unreplicate(state), {**meta, "step": step})
    ckpt.close()
    writer.close()
    summary = {
        "step": step,
        "epoch": step / steps_per_epoch,
        "eval_top1": last_eval.get("top1"),
        "eval_top5": last_eval.get("top5"),
        "eval_loss": last_eval.get("loss"),
        "train_loss": last_train.get("loss"),
        "train_top1": last_train.get("top1"),
        "images_per_s": images_total / t_train if t_train else None,
        "wall_s": time.time() - t_start,
        "stopped": stopped,  # None: finished; "SIGTERM" or "stop_after_steps": resumable
        "workdir": workdir,
    }
    if lead:
        fs.write_text(fs.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def _normalization_note(source: pretrained.Source, spec: InferenceSpec) -> str:
    kind = spec.normalization["kind"]
    if source.normalization is not None:
        return f"; normalisation: the pretrained run's ({kind})"
    return f"; normalisation: this config's ({kind}; torchvision weights expect 'imagenet')"


def _restore(ckpt: Checkpointer, dp: DataParallel, init_fn: Callable, step: int) -> TrainState:
    """Restores the state of ``step`` directly into this run's device layout."""
    abstract = jax.eval_shape(init_fn)
    if dp.mode == "pmap":
        device = jax.local_devices()[0]
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(device)
            ),
            abstract,
        )
        state, _ = ckpt.restore(target, step)
        return dp.replicate(jax.device_get(state))
    state, _ = ckpt.restore(dp.state_shardings(abstract), step)
    return state
