"""What every mode of benchmarks/train_step.py shares: the JAX step under test, timing, the docs.

The step is what ``train.py`` runs: ``make_train_step`` wrapped by ``DataParallel("shard_map")``
(sync BN over the axis ``"batch"``, donated state) with the optimizer of
``resnet_jax.training.optim.create_optimizer``, on synthetic data already on the device.

    python benchmarks/train_step.py --models resnet20 --batch 128 --dtypes float32,bfloat16
"""

from __future__ import annotations

import functools
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import resnet_jax
from benchmarks import machine
from resnet_jax.training import config as train_config
from resnet_jax.training import optim
from resnet_jax.training.parallel import DataParallel
from resnet_jax.training.step import create_train_state, make_train_step

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
GIB = 1 << 30


class Runner(Protocol):
    """Anything ``time_alternating`` can time: ``run(n)`` takes n steps and waits for them."""

    def run(self, n: int) -> None: ...


# ---- the optimizer ---------------------------------------------------------------------------
def optimizer_config() -> ml_collections.ConfigDict:
    """train.py's optimizer settings (SGD, momentum 0.9, no Nesterov, weight decay 1e-4 on every
    parameter, no clipping) at a constant learning rate of 0.1 (no warm-up, no batch scaling)."""
    c = train_config.default_config()
    c.learning_rate, c.lr_scale_with_batch = 0.1, False
    c.schedule, c.warmup = "constant", "none"
    return c


def optimizer() -> optax.GradientTransformation:
    """The optimizer training runs (``optim.create_optimizer``), from ``optimizer_config()``."""
    c = optimizer_config()
    return optim.create_optimizer(c, optim.create_learning_rate_fn(c, steps_per_epoch=1))


# ---- models and data -------------------------------------------------------------------------
def default_image_size(name: str) -> int:
    """32 px for CIFAR-stem models, 224 px otherwise."""
    return 32 if resnet_jax.model_options(name).get("stem") == "cifar" else 224


def default_classes(name: str) -> int:
    """10 classes for CIFAR-stem models, 1000 otherwise."""
    return 10 if resnet_jax.model_options(name).get("stem") == "cifar" else 1000


def synthetic_batch(batch: int, size: int, classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Gaussian float32 images [batch, size, size, 3] and uniform int32 labels."""
    rng = np.random.RandomState(seed)
    return {
        "image": rng.randn(batch, size, size, 3).astype(np.float32),
        "label": rng.randint(0, classes, batch).astype(np.int32),
    }


def create_model(name: str, classes: int, dtype: str, conv_impl: str = "auto",
                 **options: Any) -> Any:
    """The library's model ``name`` as the train step runs it (BN synced over ``"batch"``)."""
    return resnet_jax.create_model(name, num_classes=classes, dtype=DTYPES[dtype],
                                   axis_name="batch", conv_impl=conv_impl, **options)


# ---- the JAX train step ----------------------------------------------------------------------
class JaxStep:
    """One compiled train step with its state, metrics and a device-resident batch."""

    def __init__(self, model: Any, batch: int, size: int, classes: int, dtype: str):
        tx = optimizer()
        dp = DataParallel("shard_map")
        self.num_devices = len(dp.devices)
        init_fn = functools.partial(create_train_state, model, tx, jax.random.PRNGKey(0),
                                    (size, size, 3))
        t0 = time.perf_counter()
        self.state = dp.init_state(init_fn)  # jitted: tracing + compiling + running the init
        jax.block_until_ready(self.state)
        self.init_s = time.perf_counter() - t0
        self.metrics = dp.init_metrics()
        data = synthetic_batch(batch, size, classes)
        # The training loop feeds images in the compute dtype (bf16 input pipeline).
        data["image"] = data["image"].astype(jnp.dtype(DTYPES[dtype]))
        self.batch = dp.shard_batch(data)
        jax.block_until_ready((self.state, self.batch))
        step = dp.train_step(make_train_step(model, tx))
        t0 = time.perf_counter()
        lowered = step.lower(self.state, self.metrics, self.batch)
        self.trace_s = time.perf_counter() - t0
        self.compiled = lowered.compile()
        self.compile_s = time.perf_counter() - t0
        self.flops, self.xla_bytes = _xla_costs(self.compiled)
        t0 = time.perf_counter()
        self.run(1)
        self.first_step_s = time.perf_counter() - t0

    def run(self, n: int) -> None:
        """``n`` steps, then waits for the last."""
        for _ in range(n):
            self.state, self.metrics = self.compiled(self.state, self.metrics, self.batch)
        jax.block_until_ready((self.state, self.metrics))


def _xla_costs(compiled: Any) -> tuple[float, int | None]:
    """(FLOPs, bytes) of a compiled step from XLA: cost analysis, and arguments + outputs +
    temporaries - aliased (donated) buffers."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    mem = compiled.memory_analysis()
    if mem is None:
        return flops, None
    return flops, (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                   + mem.output_size_in_bytes - mem.alias_size_in_bytes)  # fmt: skip


def device_peak_bytes() -> int | None:
    """Peak device memory in use, where the backend reports it (GPU, TPU; not CPU)."""
    stats = jax.devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def max_rss_gib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss / (1 << 20)


# ---- timing ----------------------------------------------------------------------------------
def time_alternating(
    runners: dict[str, Runner], warmup: int, repeats: int, min_seconds: float
) -> dict[str, dict[str, float]]:
    """Median ms/step of each runner: warm-up, then ``repeats`` rounds of A B A B ... chunks."""
    steps = {}
    for name, r in runners.items():
        t0 = time.perf_counter()
        r.run(warmup)
        per = (time.perf_counter() - t0) / max(warmup, 1)
        # Chunks of at least min_seconds so timer and dispatch noise stay small.
        steps[name] = max(1, int(np.ceil(min_seconds / max(per, 1e-6))))
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, r in runners.items():
            # Idle worker threads of the other framework (OpenMP, Eigen) stop spinning first.
            time.sleep(0.3)
            t0 = time.perf_counter()
            r.run(steps[name])
            samples[name].append((time.perf_counter() - t0) / steps[name] * 1e3)
    return {
        name: {"ms_per_step": statistics.median(s), "ms_min": min(s), "ms_max": max(s),
               "steps_per_chunk": steps[name], "repeats": len(s)}
        for name, s in samples.items()
    }


# ---- tables and docs -------------------------------------------------------------------------
def fmt(x: float | None, spec: str = ".1f") -> str:
    """A table cell: ``x`` formatted, or "n/a"."""
    return "n/a" if x is None else format(x, spec)


def write_docs(section: str, command: str, info: dict[str, Any], body: str) -> None:
    """Replaces (or appends) the section between this mode's markers in docs/benchmarks.md."""
    begin, end = f"<!-- BEGIN train_step:{section} -->", f"<!-- END train_step:{section} -->"
    block = (f"{begin}\n```\n{command}\n```\n\nMachine: {machine.machine_line(info)}. "
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n{body}\n{end}")
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        text = pre + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    DOCS.write_text(text)
