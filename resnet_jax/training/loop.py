"""The training loop: prepare (resume), then for each step: step; every N, log; every M,
evaluate and save. Read it top to bottom.

The step runs asynchronously on device; the host only fetches the accumulated metrics every
``log_every_steps`` steps (and before each checkpoint, so a diverged state is never saved).
Setup lives in ``prepare.py``, the metric sums in ``metrics.TrainMetrics``, device placement
in ``parallel.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import ml_collections

from resnet_jax import fs
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.training import host, optim
from resnet_jax.training.metrics import (
    MetricWriter,
    Progress,
    TrainingDivergedError,
    TrainMetrics,
    read_jsonl,
)
from resnet_jax.training.parallel import DataParallel
from resnet_jax.training.prepare import Run, check_workdir, prepare
from resnet_jax.training.step import TrainState, ema_of

__all__ = ["Hook", "MAX_STEPS_AHEAD", "TrainingDivergedError", "evaluate", "train_and_evaluate"]

Hook = Callable[[int, TrainState], None]

# Steps the host may dispatch ahead of the devices. Dispatch is asynchronous, so without a bound
# the host runs ahead to its next sync, the next log step (a SIGTERM, checked once per step on
# the host, then waited 12 minutes on a CPU's 20 s steps); 2 keeps the next step queued.
MAX_STEPS_AHEAD = 2


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
    workdir = check_workdir(config, workdir)
    # prepare() resumes from the newest complete checkpoint here, if there is one.
    ckpt = Checkpointer(
        fs.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        keep_best=config.keep_best,
        async_save=config.async_checkpointing,
    )
    run = prepare(config, workdir, ckpt)
    writer = MetricWriter(workdir, enabled=run.lead)
    progress = Progress(run.num_steps, config.progress_bar, enabled=run.lead, stream=stream)
    _log_start(run, progress)
    end = _train(run, writer, progress, hooks, stop_after_steps)
    progress.close()
    return _finish(run, end, writer, t_start)


@dataclasses.dataclass
class _End:
    """Where the loop stopped, and the latest metrics (for the summary)."""

    state: TrainState
    step: int
    metrics: TrainMetrics
    last_eval: dict[str, float]
    eval_step: int | None  # the step of last_eval
    last_saved: int
    stopped: str | None  # None: finished; "SIGTERM" or "stop_after_steps": resumable


def _train(
    run: Run, writer: MetricWriter, progress: Progress, hooks: Sequence[Hook], stop_after: int
) -> _End:
    """Steps from ``run.start_step`` to the end, a stop request or SIGTERM."""
    config, state, step = run.config, run.state, run.start_step
    metrics = TrainMetrics(run.dp, run.lr_fn, run.steps_per_epoch, fp16=run.fp16,
                           checkpoints=run.ckpt)
    last_eval: dict[str, float] = {}
    eval_step, last_saved, stopped = None, run.start_step, None
    batches = run.dp.device_batches(run.train_ds)  # the next batches already on the devices
    in_flight: collections.deque = collections.deque()  # the metric sums of unfinished steps
    with _Preemption() as preemption:
        for step in range(run.start_step + 1, run.num_steps + 1):
            state, sums = run.train_step(state, metrics.sums, next(batches))
            metrics.update(sums)
            in_flight.append(sums)
            if len(in_flight) > MAX_STEPS_AHEAD:
                jax.block_until_ready(in_flight.popleft())  # step - MAX_STEPS_AHEAD is done
            stop = preemption.check(step) or step == stop_after
            do_eval = step == run.num_steps or (run.eval_every > 0 and step % run.eval_every == 0)
            do_save = do_eval or stop or step % config.checkpoint_every_steps == 0
            if step % config.log_every_steps == 0 or do_save:
                metrics.log(step, state, writer, progress)  # raises if diverged: before saving
            save_metrics = None
            if do_eval and not stop:
                last_eval, eval_step = _evaluate_state(run, state), step
                _log_eval(step, last_eval, writer, progress)
                save_metrics = {"eval_top1": _selected_top1(config, last_eval)}
                metrics.restart_clock()  # images/s counts training time only
            if do_save:
                _save(run, step, state, save_metrics)
                last_saved = step
            for hook in hooks:
                hook(step, state)
            if stop:
                stopped = "stop_after_steps" if step == stop_after else "SIGTERM"
                run.ckpt.wait()
                progress.log(f"stopped ({stopped}) at step {step}: checkpoint saved")
                break
    return _End(state, step, metrics, last_eval, eval_step, last_saved, stopped)


def _finish(run: Run, end: _End, writer: MetricWriter, t_start: float) -> dict[str, Any]:
    """Evaluates if the loop did not, saves the last step if unsaved, writes the summary."""
    last_eval, eval_step, last_train = end.last_eval, end.eval_step, end.metrics.last
    if end.stopped is None and not last_eval:
        # Resumed at (or past) the end: evaluate the final state once more for the summary.
        last_eval, eval_step = _evaluate_state(run, end.state), end.step
    if end.last_saved != end.step and end.step not in run.ckpt.all_steps():
        _save(run, end.step, end.state)
    run.ckpt.close()
    writer.close()
    if not last_eval:  # stopped before this process evaluated: the run's latest evaluation
        last_eval, eval_step = _logged_eval(writer.path, end.step)
    summary = {
        "step": end.step,
        "epoch": end.step / run.steps_per_epoch,
        "eval_step": eval_step,
        "eval_top1": last_eval.get("top1"),
        "eval_top5": last_eval.get("top5"),
        "eval_loss": last_eval.get("loss"),
        **({f"eval_{k}": v for k, v in last_eval.items() if k.startswith("ema_")}),
        "train_loss": last_train.get("loss"),
        "train_top1": last_train.get("top1"),
        "images_per_s": end.metrics.images_per_s,
        "wall_s": time.time() - t_start,
        "stopped": end.stopped,  # None: finished; "SIGTERM" or "stop_after_steps": resumable
        "workdir": run.workdir,
    }
    if run.lead:
        fs.write_text(fs.join(run.workdir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def _logged_eval(metrics_path: str, up_to_step: int) -> tuple[dict[str, float], int | None]:
    """The latest eval row of metrics.jsonl at or before ``up_to_step`` (a resumed run repeats
    the same steps bit-identically, so an earlier process's evaluation still holds)."""
    if not fs.exists(metrics_path):
        return {}, None
    rows = [r for r in read_jsonl(metrics_path)
            if r.get("split") == "eval" and r["step"] <= up_to_step]
    if not rows:
        return {}, None
    row = max(rows, key=lambda r: r["step"])  # equal steps hold equal values; any one will do
    return {k: v for k, v in row.items() if k not in ("step", "split", "error")}, row["step"]


def _log_start(run: Run, progress: Progress) -> None:
    """The run's header line, init_from's summary and the parameter groups."""
    config = run.config
    for note in run.resume_notes:
        progress.log(note)
    progress.log(
        f"{config.model} on {config.dataset}: {run.num_steps} steps ({run.steps_per_epoch}/epoch), "
        f"global batch {config.global_batch_size}, {len(run.dp.devices)} devices "
        f"({jax.process_count()} processes), {config.parallel}, {run.precision}"
        + (f"; resumed from step {run.start_step}" if run.start_step else "")
    )
    if jax.default_backend() == "cpu":  # the step's speed on a CPU depends on it (~1.3x)
        progress.log(host.malloc_note())
    if run.init_message:
        progress.log(run.init_message)
    recipe = _describe_recipe(config)
    if recipe:
        progress.log(recipe)
    if run.train_ds.size_schedule:
        progress.log(_describe_sizes(run.train_ds.size_schedule))
    if config.frozen or config.lr_multipliers:
        # Shapes suffice: no copy of the parameters to the host.
        shapes = run.dp.replica_shapes(run.state.params)
        progress.log(optim.describe_param_groups(shapes, config))


def _describe_recipe(config: ml_collections.ConfigDict) -> str:
    """One line on the non-default optimizer, Lookahead, EMA and accumulation; "" when all are
    off."""
    parts = []
    if config.optimizer != "sgd":
        parts.append(f"optimizer {config.optimizer}")
    if config.schedule == "one_cycle" and config.one_cycle_moms:
        name = "momentum" if config.optimizer in ("sgd", "lars") else "b1"
        parts.append(f"one-cycle {name} " + " -> ".join(f"{m:g}" for m in config.one_cycle_moms))
    if config.lookahead_steps > 0:
        parts.append(f"Lookahead every {config.lookahead_steps} steps, alpha "
                     f"{config.lookahead_alpha:g}")
    if config.ema_decay > 0:
        warm = " with warm-up" if config.ema_warmup else ""
        parts.append(f"EMA decay {config.ema_decay:g}{warm}, inference uses "
                     f"{config.inference_weights} weights")
    if config.grad_accum_steps > 1:
        k = config.grad_accum_steps
        parts.append(f"gradients of {k} micro-batches of {config.global_batch_size // k} "
                     "per optimizer step")
    return "; ".join(parts)


def _describe_sizes(schedule: tuple[tuple[int, int], ...]) -> str:
    """Progressive resizing's line: each size and its first step (batch b is step b + 1)."""
    parts = ", ".join(f"{size} px from step {first + 1}" for first, size in schedule)
    return f"progressive resizing: {parts}; the train step compiles once for each size"


def evaluate(
    eval_step: Callable, variables: Any, batches: Iterable[dict], dp: DataParallel
) -> dict[str, float]:
    """Top-1/top-5 accuracy and loss over every (unpadded) example of ``batches``."""
    from resnet_jax.training.evaluate import accuracy, summed

    return accuracy(summed(eval_step, variables, batches, dp))


def _evaluate_state(run: Run, state: TrainState) -> dict[str, float]:
    """The raw weights' top1/top5/loss, and the EMA's as ema_top1/ema_top5/ema_loss if kept."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    result = evaluate(run.eval_step, variables, run.eval_ds, run.dp)
    if ema_of(state) is not None:
        ema = evaluate(run.eval_step, ema_of(state), run.eval_ds, run.dp)
        result.update({f"ema_{k}": v for k, v in ema.items() if k in ("top1", "top5", "loss")})
    return result


def _selected_top1(config: ml_collections.ConfigDict, result: dict[str, float]) -> float:
    """keep_best's metric: the top-1 of the weights inference uses (config.inference_weights)."""
    return result["ema_top1"] if config.inference_weights == "ema" else result["top1"]


def _log_eval(
    step: int, result: dict[str, float], writer: MetricWriter, progress: Progress
) -> None:
    writer.write(step, "eval", {**result, "error": 1 - result["top1"]})
    ema = (f" ema_top1={result['ema_top1']:.4f} ema_top5={result['ema_top5']:.4f}"
           if "ema_top1" in result else "")
    progress.log(
        f"eval step {step}: top1={result['top1']:.4f} "
        f"top5={result['top5']:.4f} loss={result['loss']:.4f}{ema}"
    )


def _save(run: Run, step: int, state: TrainState, metrics: dict | None = None) -> None:
    # A host copy (replicated state): orbax writes it from the primary process.
    run.ckpt.save(step, run.dp.unreplicate(state), {**run.meta, "step": step}, metrics=metrics)


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
