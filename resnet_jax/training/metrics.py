"""Training metrics: the running sums between log steps (:class:`TrainMetrics`), and their
output: JSON lines, TensorBoard event files, and a progress bar or log lines.

Only process 0 writes (``enabled=False`` elsewhere). ``metrics.jsonl`` has one object per
line: ``{"step": s, "split": "train"|"eval", ...}``; ``python -m resnet_jax.training.plot``
turns it into PNGs.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from resnet_jax import fs

if TYPE_CHECKING:
    from resnet_jax.checkpoint import Checkpointer
    from resnet_jax.training.parallel import DataParallel
    from resnet_jax.training.step import TrainState


class TrainingDivergedError(FloatingPointError):
    """The loss or the gradients became NaN or Inf."""


class TrainMetrics:
    """The training metrics of one log interval: on-device sums in, one host row out.

    The step adds to :attr:`sums` on the devices, asynchronously; :meth:`log` (every
    ``log_every_steps`` and before each checkpoint) fetches them, stops a diverged run, writes
    the row and the progress line, and restarts the sums and the clock.
    """

    def __init__(
        self,
        dp: DataParallel,
        lr_fn: Callable[[int], Any],
        steps_per_epoch: int,
        *,
        fp16: bool,
        checkpoints: Checkpointer,
    ):
        self.sums = dp.init_metrics()  # in dp's layout; the step returns the next sums
        self.last: dict[str, float] = {}  # the latest row
        self._dp, self._lr_fn, self._steps_per_epoch = dp, lr_fn, steps_per_epoch
        self._fp16, self._checkpoints = fp16, checkpoints
        self._images, self._train_s = 0, 0.0  # totals over the logged intervals
        self._t = time.time()

    def update(self, sums: dict) -> None:
        """Takes the sums the step returned (the previous ones plus this step's)."""
        self.sums = sums

    def restart_clock(self) -> None:
        """Leaves the time since the last row (an evaluation) out of images/s."""
        self._t = time.time()

    @property
    def images_per_s(self) -> float | None:
        """Training throughput over every logged interval; None before the first row."""
        return self._images / self._train_s if self._train_s else None

    def log(self, step: int, state: TrainState, writer: MetricWriter, progress: Progress) -> None:
        """Fetches the row of ``step`` and writes it to ``writer`` and ``progress``."""
        row = self.fetch(step, state)
        writer.write(step, "train", {**row, "error": 1 - row["top1"]})
        progress.update(
            step,
            {
                "epoch": row["epoch"],
                "loss": row["loss"],
                "acc": row["top1"],
                "lr": row["lr"],
                "img/s": row["images_per_s"],
            },
        )

    def fetch(self, step: int, state: TrainState) -> dict[str, float]:
        """Means over the interval ending at ``step`` (a host sync); raises
        :class:`TrainingDivergedError` on a non-finite loss or gradients."""
        m = self._dp.unreplicate(self.sums)
        self.sums = self._dp.init_metrics()
        count = max(float(m["count"]), 1.0)
        loss = float(m["loss_sum"]) / count
        self._check_finite(step, loss, m["nonfinite"])
        dt = time.time() - self._t
        self._images += int(count)
        self._train_s += dt
        row = {
            "epoch": step / self._steps_per_epoch,
            "loss": loss,
            "top1": float(m["top1_sum"]) / count,
            "lr": float(self._lr_fn(step - 1)),
            "images_per_s": count / max(dt, 1e-9),
        }
        if self._fp16:
            row["loss_scale"] = float(self._dp.unreplicate(state.loss_scale))
            row["skipped_steps"] = float(m["nonfinite"])
        self._t = time.time()
        self.last = row
        return row

    def _check_finite(self, step: int, loss: float, nonfinite: Any) -> None:
        # float16 skips steps with non-finite gradients by design (dynamic loss scaling).
        if not math.isfinite(loss) or (nonfinite > 0 and not self._fp16):
            kept = self._checkpoints.latest_step()
            raise TrainingDivergedError(
                f"loss is {loss} (non-finite gradients in {int(nonfinite)} steps) "
                f"by step {step}; stopping. The last good checkpoint (step {kept}) is kept in "
                f"{self._checkpoints.directory}. Lower learning_rate, add warm-up or use float32."
            )


class MetricWriter:
    """Appends scalars to ``<workdir>/metrics.jsonl`` and ``<workdir>/tensorboard/<split>``.

    ``workdir`` may be remote (``gs://...``, see docs/remote_paths.md): there metrics.jsonl is
    kept open and uploaded on eval rows, every ``remote_flush_s`` seconds and on
    ``flush()``/``close()`` (each upload rewrites the whole object), like TensorBoard's files.
    """

    def __init__(
        self,
        workdir: str,
        enabled: bool = True,
        tensorboard: bool = True,
        remote_flush_s: float = 60.0,
    ):
        self.enabled = enabled
        self.path = fs.join(workdir, "metrics.jsonl")
        self._tb_dir = fs.join(workdir, "tensorboard")
        self._tb = tensorboard
        self._writers: dict[str, Any] = {}
        self._remote = fs.is_remote(workdir)
        self._remote_flush_s = remote_flush_s
        self._handle: IO[str] | None = None  # remote only: one append handle for the run
        self._last_flush = time.time()
        if enabled:
            fs.makedirs(workdir)

    def _tb_writer(self, split: str):
        if split not in self._writers:
            import tensorflow as tf  # lazy: only the writing process pays the import

            self._writers[split] = tf.summary.create_file_writer(fs.join(self._tb_dir, split))
        return self._writers[split]

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split}
        row.update({k: float(v) for k, v in scalars.items()})
        self._append(json.dumps(row) + "\n", force_flush=split != "train")
        if self._tb:
            import tensorflow as tf

            md = _scalar_metadata()
            with self._tb_writer(split).as_default():
                for k, v in scalars.items():
                    # tf.summary.write + scalar-plugin metadata is what tf.summary.scalar does,
                    # without needing the tensorboard package installed.
                    tf.summary.write(k, tf.constant(float(v)), step=int(step), metadata=md)

    def _append(self, line: str, force_flush: bool) -> None:
        if not self._remote:  # local: open/append/close per row, readable at once (as before)
            with open(self.path, "a") as f:
                f.write(line)
            return
        if self._handle is None:
            self._handle = fs.open_append(self.path)
        self._handle.write(line)
        if force_flush or time.time() - self._last_flush >= self._remote_flush_s:
            self._handle.flush()
            self._last_flush = time.time()

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            self._last_flush = time.time()
        for w in self._writers.values():
            w.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        for w in self._writers.values():
            w.close()
        self._writers.clear()


def _scalar_metadata():
    from tensorflow.core.framework import summary_pb2

    md = summary_pb2.SummaryMetadata()
    md.plugin_data.plugin_name = "scalars"
    return md


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl file (local or remote)."""
    return [json.loads(line) for line in fs.read_text(path).splitlines() if line.strip()]


def _fmt(v: float) -> str:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    if abs(v) >= 1000:
        return f"{v:.0f}"
    return f"{v:.4g}"


class Progress:
    """A one-line progress bar on a terminal, plain log lines otherwise.

    ``mode``: "auto" (bar if stdout is a TTY), "on" or "off".
    """

    MODES = ("auto", "on", "off")  # config.progress_bar

    def __init__(self, total: int, mode: str = "auto", enabled: bool = True, stream=None):
        self.total = total
        self.stream = stream or sys.stdout
        self.enabled = enabled
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.bar = enabled and (mode == "on" or (mode == "auto" and tty))
        self._t0 = time.time()
        self._open = False

    def update(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        text = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        if self.bar:
            frac = step / max(self.total, 1)
            filled = int(25 * frac)
            bar = "#" * filled + "." * (25 - filled)
            self.stream.write(f"\r[{bar}] {step}/{self.total} {text}\x1b[K")
            self._open = True
        else:
            self.stream.write(f"step {step}/{self.total} {text}\n")
        self.stream.flush()

    def log(self, line: str) -> None:
        """A line that stays (eval results, checkpoints), above the bar."""
        if not self.enabled:
            return
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open and self.enabled:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
