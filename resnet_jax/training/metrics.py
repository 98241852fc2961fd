"""Metric output: JSON lines, TensorBoard event files, and a progress bar or log lines.

Only process 0 writes (``enabled=False`` elsewhere). ``metrics.jsonl`` has one object per
line: ``{"step": s, "split": "train"|"eval", ...}``; ``python -m resnet_jax.training.plot``
turns it into PNGs.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import IO, Any

from resnet_jax import fs


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
