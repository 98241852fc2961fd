"""Train-step benchmark: compile time, ms/step, images/s, memory and MFU of the real train step.

The JAX side is what ``train.py`` runs: ``make_train_step`` wrapped by ``DataParallel("shard_map")``
(sync BN over the axis ``"batch"``, donated state), with SGD momentum 0.9, weight decay 1e-4 and
cross-entropy, on synthetic data already on the device. Timings are medians of repeated timed
chunks after warm-up, each chunk ending in ``block_until_ready``; compared implementations are
timed in the same process, alternating (A B A B ...), so machine load affects both alike.

    python benchmarks/train_step.py --models resnet20 --batch 128 --dtypes float32,bfloat16
    python benchmarks/train_step.py --models resnet20 --batch 128 --compare torch
    python benchmarks/train_step.py --models resnet50 --batch 8 --image_size 112 \\
        --compare flax_example
    python benchmarks/train_step.py --xla_sweep --models resnet20 --batch 128
    python benchmarks/train_step.py --deep [--deep_timeout 300]

``--out results.json`` writes every number; ``--write-docs`` replaces this mode's section of
docs/benchmarks.md with the table, the exact command and the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import resnet_jax  # noqa: E402
from resnet_jax.training.step import DataParallel, create_train_state, make_train_step  # noqa: E402

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DOCS = ROOT / "docs" / "benchmarks.md"
GIB = 1 << 30

# Dense peak TFLOP/s per device (no sparsity), keyed by a lower-case substring of device_kind;
# the first match wins. float32 entries are what XLA runs f32 convolutions with by default:
# TF32 tensor cores on A100/H100, one bf16 pass on TPU (default precision).
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("h100 pcie", {"bfloat16": 756.0, "float32": 378.0}),
    ("h100", {"bfloat16": 989.0, "float32": 494.0}),  # SXM
    ("h200", {"bfloat16": 989.0, "float32": 494.0}),
    ("a100", {"bfloat16": 312.0, "float32": 156.0}),
    ("tpu v4", {"bfloat16": 275.0, "float32": 275.0}),
    ("tpu v5 lite", {"bfloat16": 197.0, "float32": 197.0}),  # v5e's device_kind
    ("tpu v5e", {"bfloat16": 197.0, "float32": 197.0}),
    ("tpu v5p", {"bfloat16": 459.0, "float32": 459.0}),
]


# ---- machine ---------------------------------------------------------------------------------
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_flop_per_cycle(flags: set[str] | frozenset[str]) -> dict[str, int]:
    """Dense FLOP/cycle of one core by dtype, from its /proc/cpuinfo flags (not the vendor).

    float32: AVX-512 (``avx512f``) 2 FMA pipes x 16 lanes x 2 = 64; AVX2+FMA 2 x 8 x 2 = 32;
    otherwise 8 (SSE: 4 lanes, separate add and multiply pipes). Cores that split AVX-512 into
    two 256-bit halves (Zen 4) issue at the AVX2 rate, so for them 64 is an upper bound.
    bfloat16: AMX (``amx_bf16``) 1024 (one TMUL tile op, Sapphire Rapids); ``avx512_bf16``
    (VDPBF16PS: two bf16 products per f32 lane, accumulated in f32) twice the f32 figure;
    without either, bf16 runs on the f32 units: the f32 figure.
    """
    if "avx512f" in flags:
        f32 = 64
    elif {"avx2", "fma"} <= flags:
        f32 = 32
    else:
        f32 = 8
    if "amx_bf16" in flags:
        bf16 = 1024
    elif "avx512_bf16" in flags:
        bf16 = 2 * f32
    else:
        bf16 = f32
    return {"float32": f32, "bfloat16": bf16}


def cpu_peak_tflops(dtype: str = "float32",
                    info: dict[str, str] | None = None) -> tuple[float, str]:
    """Nominal peak of the CPUs this process may use: cores x clock x FLOP/cycle (for ``dtype``,
    see ``cpu_flop_per_cycle``). ``info`` is /proc/cpuinfo's first processor (read if None).

    The clock is "cpu MHz", else bogomips/2 (the TSC rate on x86, i.e. the base clock): boost
    clocks can exceed it, so MFU on a CPU is a nominal figure.
    """
    info = _cpuinfo() if info is None else info
    flags = frozenset(info.get("flags", "").split())
    per_cycle = cpu_flop_per_cycle(flags).get(dtype, cpu_flop_per_cycle(flags)["float32"])
    if "cpu MHz" in info:
        mhz, src = float(info["cpu MHz"]), "cpu MHz"
    elif "bogomips" in info:
        mhz, src = float(info["bogomips"]) / 2, "bogomips/2"
    else:
        mhz, src = 2000.0, "assumed 2 GHz"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    peak = cores * mhz * 1e6 * per_cycle / 1e12
    isa = ("amx_bf16" if dtype == "bfloat16" and "amx_bf16" in flags else
           "avx512_bf16" if dtype == "bfloat16" and "avx512_bf16" in flags else
           "avx512f" if "avx512f" in flags else
           "avx2+fma" if {"avx2", "fma"} <= flags else "sse")
    how = (f"{cores} cores x {mhz / 1000:.2f} GHz ({src}) x {per_cycle} {dtype} FLOP/cycle "
           f"({isa})")
    return peak, how


def peak_tflops(dtype: str, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s of one device for ``dtype``, where the figure comes from)."""
    if override:
        return override, "--peak_tflops"
    device = jax.devices()[0]
    if device.platform == "cpu":
        return cpu_peak_tflops(dtype)
    kind = device.device_kind.lower()
    for key, peaks in PEAK_TFLOPS:
        if key in kind:
            return peaks.get(dtype), f"table ({key})"
    return None, f"unknown device {device.device_kind!r}: pass --peak_tflops"


SIMD_FLAG_PREFIXES = ("avx", "fma", "amx")


def simd_flags(info: dict[str, str]) -> str:
    """The /proc/cpuinfo flags that decide the peak (AVX*, FMA, AMX), space-separated."""
    return " ".join(f for f in info.get("flags", "").split() if f.startswith(SIMD_FLAG_PREFIXES))


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info = _cpuinfo()
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    device = jax.devices()[0]
    return {
        "cpu": info.get("model name", platform.processor()),
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "cpu_flags": simd_flags(info),
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / (1 << 20), 1),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__,
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "num_devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "python": platform.python_version(),
    }


def max_rss_gib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss / (1 << 20)


# ---- the JAX train step ----------------------------------------------------------------------
def sgd() -> optax.GradientTransformation:
    """The papers' optimizer, as resnet_jax.training.optim.create_optimizer builds it."""
    return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM))


def default_image_size(name: str) -> int:
    return 32 if resnet_jax.model_options(name).get("stem") == "cifar" else 224


def default_classes(name: str) -> int:
    return 10 if resnet_jax.model_options(name).get("stem") == "cifar" else 1000


def synthetic_batch(batch: int, size: int, classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    return {
        "image": rng.randn(batch, size, size, 3).astype(np.float32),
        "label": rng.randint(0, classes, batch).astype(np.int32),
    }


class JaxStep:
    """One compiled train step with its state, metrics and a device-resident batch."""

    def __init__(self, model: Any, batch: int, size: int, classes: int, dtype: str):
        tx = sgd()
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
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        self.flops = float(cost.get("flops", 0.0)) if cost else 0.0
        mem = self.compiled.memory_analysis()
        self.xla_bytes = None
        if mem is not None:
            self.xla_bytes = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                              + mem.output_size_in_bytes - mem.alias_size_in_bytes)
        t0 = time.perf_counter()
        self.run(1)
        self.first_step_s = time.perf_counter() - t0

    def run(self, n: int) -> None:
        for _ in range(n):
            self.state, self.metrics = self.compiled(self.state, self.metrics, self.batch)
        jax.block_until_ready((self.state, self.metrics))


def device_peak_bytes() -> int | None:
    """Peak device memory in use, where the backend reports it (GPU, TPU; not CPU)."""
    stats = jax.devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


# ---- the PyTorch twin ------------------------------------------------------------------------
class TorchStep:
    """PyTorch eager, channels-last: the same network, SGD step, loss and batch."""

    def __init__(self, name: str, batch: int, size: int, classes: int, dtype: str):
        import torch
        import torch.nn.functional as F

        from benchmarks import torch_resnet

        torch.set_num_threads(os.cpu_count())
        torch.manual_seed(0)
        self.torch, self.F = torch, F
        self.net = torch_resnet.build(name, classes).to(memory_format=torch.channels_last).train()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM,
                                   weight_decay=WEIGHT_DECAY)
        data = synthetic_batch(batch, size, classes)
        image = torch.from_numpy(data["image"]).permute(0, 3, 1, 2)
        self.x = image.contiguous(memory_format=torch.channels_last)
        self.y = torch.from_numpy(data["label"]).long()
        self.bf16 = dtype == "bfloat16"
        t0 = time.perf_counter()
        self.run(1)
        self.first_step_s = time.perf_counter() - t0

    def run(self, n: int) -> None:
        torch = self.torch
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.F.cross_entropy(self.net(self.x), self.y)
            loss.backward()
            self.opt.step()


# ---- timing ----------------------------------------------------------------------------------
def time_alternating(
    runners: dict[str, Any], warmup: int, repeats: int, min_seconds: float
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


# ---- the benchmarks --------------------------------------------------------------------------
def bench_main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (model, batch, dtype): our step, and the --compare baseline side by side."""
    rows = []
    for name in args.models:
        size = args.image_size or default_image_size(name)
        classes = default_classes(name)
        macs = resnet_jax.count_macs(resnet_jax.create_model(name, num_classes=classes),
                                     (1, size, size, 3))
        for batch in args.batch:
            for dtype in args.dtypes:
                print(f"# {name} batch {batch} {size}px {dtype}", file=sys.stderr, flush=True)
                model = resnet_jax.create_model(name, num_classes=classes, dtype=DTYPES[dtype],
                                                axis_name="batch", conv_impl=args.conv_impl)
                runners: dict[str, Any] = {"jax": JaxStep(model, batch, size, classes, dtype)}
                if args.compare == "conv_xla":  # the same step with lax's convolution backward
                    old = resnet_jax.create_model(name, num_classes=classes, dtype=DTYPES[dtype],
                                                  axis_name="batch", conv_impl="xla")
                    runners["conv_xla"] = JaxStep(old, batch, size, classes, dtype)
                elif args.compare == "torch":
                    runners["torch"] = TorchStep(name, batch, size, classes, dtype)
                elif args.compare == "flax_example":
                    from benchmarks import flax_example_resnet

                    ex = flax_example_resnet.create_model(name, classes, DTYPES[dtype])
                    runners["flax_example"] = JaxStep(ex, batch, size, classes, dtype)
                times = time_alternating(runners, args.warmup, args.repeats, args.min_seconds)
                peak, peak_src = peak_tflops(dtype, args.peak_tflops)
                jx: JaxStep = runners["jax"]
                dev_peak = device_peak_bytes()
                row: dict[str, Any] = {
                    "model": name, "batch": batch, "image_size": size, "dtype": dtype,
                    "compile_s": jx.compile_s, "trace_s": jx.trace_s,
                    "first_step_s": jx.first_step_s,
                    "ms_per_step": times["jax"]["ms_per_step"],
                    "images_per_s": batch * 1e3 / times["jax"]["ms_per_step"],
                    "timing": times,
                    "step_flops_xla": jx.flops,
                    "step_flops_6macs": 6.0 * macs * batch / jx.num_devices,
                    "peak_tflops": peak, "peak_source": peak_src,
                    "xla_step_memory_gib": jx.xla_bytes / GIB if jx.xla_bytes else None,
                    "peak_memory_gib": (dev_peak / GIB) if dev_peak else max_rss_gib(),
                    "peak_memory_source": (
                        "device peak_bytes_in_use" if dev_peak else "process max RSS"
                        + (" (incl. PyTorch)" if args.compare == "torch" else "")
                    ),
                }
                step_s = row["ms_per_step"] / 1e3
                row["mfu"] = (jx.flops / step_s / (peak * 1e12)) if peak and jx.flops else None
                row["achieved_tflops"] = jx.flops / step_s / 1e12
                for other in runners:
                    if other == "jax":
                        continue
                    ms = times[other]["ms_per_step"]
                    row[f"{other}_ms_per_step"] = ms
                    row[f"{other}_images_per_s"] = batch * 1e3 / ms
                    row[f"jax_over_{other}"] = ms / row["ms_per_step"]
                    if other in ("flax_example", "conv_xla"):
                        row[f"{other}_compile_s"] = runners[other].compile_s
                    if other == "flax_example":
                        row["flax_example_compile_s"] = runners[other].compile_s
                        row["flax_example_step_flops_xla"] = runners[other].flops
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "timing"}),
                      file=sys.stderr, flush=True)
                del runners
    return rows


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)


def table_main(rows: list[dict[str, Any]], compare: str | None) -> str:
    head = ["model", "batch", "px", "dtype", "compile s", "ms/step", "img/s", "GFLOP/step (XLA)",
            "GFLOP/step (6·MACs·B)", "TFLOP/s", "MFU", "XLA step mem GiB", "peak mem GiB"]
    if compare:
        head += [f"{compare} img/s", f"JAX / {compare}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], str(r["batch"]), str(r["image_size"]), r["dtype"],
                 _fmt(r["compile_s"]), _fmt(r["ms_per_step"]), _fmt(r["images_per_s"]),
                 _fmt(r["step_flops_xla"] / 1e9), _fmt(r["step_flops_6macs"] / 1e9),
                 _fmt(r["achieved_tflops"], ".3f"),
                 _fmt(None if r["mfu"] is None else 100 * r["mfu"]) + "%",
                 _fmt(r["xla_step_memory_gib"], ".2f"),
                 f"{_fmt(r['peak_memory_gib'], '.2f')} ({r['peak_memory_source']})"]
        if compare:
            cells += [_fmt(r[f"{compare}_images_per_s"]), _fmt(r[f"jax_over_{compare}"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- XLA:CPU flag sweep ----------------------------------------------------------------------
XLA_FLAG_SETS = [
    "",
    "--xla_cpu_use_thunk_runtime=false",  # the pre-thunk runtime; deprecated (a no-op) here
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_xnnpack=false",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
    "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
]


def _child_cmd(extra: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *extra]


def _run_child(cmd: list[str], env: dict[str, str], timeout: float,
               mem_limit_gib: float | None) -> dict[str, Any]:
    """Runs a child of this script; returns its RESULT json, or why there is none.

    The child sets its own address-space limit (``--mem_limit_gib``): a preexec_fn would fork
    this multithreaded (JAX) process.
    """
    if mem_limit_gib:
        cmd = [*cmd, "--mem_limit_gib", str(mem_limit_gib)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"> {timeout:.0f} s (stopped)", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return {**json.loads(line[7:]), "wall_s": wall}
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    # A native crash ends in stack frames; the cause is the last line that names an error.
    keys = ("Error", "error", "Check failed", "RESOURCE_EXHAUSTED", "bad_alloc", "Killed")
    cause = [ln for ln in lines if any(k in ln for k in keys)][-1:] or lines[-2:]
    return {"error": f"rc {proc.returncode}: " + " / ".join(cause)[-300:], "wall_s": wall}


def bench_xla_sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each XLA_FLAGS set in its own process (flags are read once); rounds alternate the sets."""
    name, batch, dtype = args.models[0], args.batch[0], args.dtypes[0]
    flag_sets = args.xla_flag_sets or XLA_FLAG_SETS
    results: dict[str, list[dict[str, Any]]] = {f: [] for f in flag_sets}
    for _ in range(args.sweep_rounds):
        for flags in flag_sets:
            env = dict(os.environ)
            # An empty XLA_FLAGS must be absent: XLA reads a non-"--" value as a flag file.
            joined = (env.pop("XLA_FLAGS", "") + " " + flags).strip()
            if joined:
                env["XLA_FLAGS"] = joined
            cmd = _child_cmd(["--_child", "jax", "--models", name, "--batch", str(batch),
                              "--dtypes", dtype, "--repeats", str(args.repeats),
                              "--warmup", str(args.warmup),
                              "--min_seconds", str(args.min_seconds),
                              "--conv_impl", args.conv_impl]
                             + (["--image_size", str(args.image_size)] if args.image_size else []))
            res = _run_child(cmd, env, args.deep_timeout, None)
            print(f"# XLA_FLAGS={flags!r}: {res}", file=sys.stderr, flush=True)
            results[flags].append(res)
    rows = []
    base = [r.get("ms_per_step") for r in results[flag_sets[0]]]
    for flags, runs in results.items():
        ms = [r["ms_per_step"] for r in runs if "ms_per_step" in r]
        rel = [b / m for b, m in zip(base, [r.get("ms_per_step") for r in runs], strict=True)
               if b and m]
        rows.append({
            "xla_flags": flags or "(none)", "model": name, "batch": batch, "dtype": dtype,
            "ms_per_step": statistics.median(ms) if ms else None,
            "compile_s": statistics.median([r["compile_s"] for r in runs if "compile_s" in r])
            if ms else None,
            "speedup_vs_none": statistics.median(rel) if rel else None,
            "runs": runs,
            "error": next((r["error"] for r in runs if "error" in r), None),
        })
    return rows


def table_sweep(rows: list[dict[str, Any]]) -> str:
    lines = ["| XLA_FLAGS | compile s | ms/step | speed-up vs none | note |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['xla_flags']}` | {_fmt(r['compile_s'])} | {_fmt(r['ms_per_step'])} | "
                     f"{_fmt(r['speedup_vs_none'], '.2f')} | {r['error'] or ''} |")
    return "\n".join(lines)


# ---- deep networks ---------------------------------------------------------------------------
DEEP_MODELS = ["resnet50", "resnet110", "preact_resnet1001", "resnet1202"]
DEEP_VARIANTS = [(False, False), (True, False), (False, True), (True, True)]


def bench_deep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Compile, first-step and steady-state time and memory per (model, scan_units, remat),
    each in a subprocess with a timeout and an address-space limit."""
    rows = []
    models = args.models if args.models_given else DEEP_MODELS
    for name in models:
        size = args.image_size or default_image_size(name)
        for scan, remat in DEEP_VARIANTS:
            if (name, scan, remat) in args.deep_skip:
                continue
            cmd = _child_cmd(["--_child", "deep", "--models", name, "--batch", str(args.batch[0]),
                              "--dtypes", args.dtypes[0], "--scan", str(int(scan)),
                              "--remat", str(int(remat)), "--steady_steps",
                              str(args.steady_steps), "--conv_impl", args.conv_impl,
                              "--image_size", str(size)])
            timeout = args.deep_timeout
            if not scan and args.unrolled_timeout:
                timeout = args.unrolled_timeout
            res = _run_child(cmd, dict(os.environ), timeout, args.mem_limit_gib)
            row = {"model": name, "scan_units": scan, "remat": remat, "batch": args.batch[0],
                   "image_size": size, "dtype": args.dtypes[0], **res}
            print(f"# {json.dumps(row)}", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def table_deep(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | batch | px | scan_units | remat | init s | compile s | first step s | "
             "steady ms/step | XLA step mem GiB | peak RSS GiB | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['image_size']} | {r['scan_units']} | "
            f"{r['remat']} | {_fmt(r.get('init_s'))} | {_fmt(r.get('compile_s'))} | "
            f"{_fmt(r.get('first_step_s'), '.2f')} | {_fmt(r.get('ms_per_step'))} | "
            f"{_fmt(r.get('xla_step_memory_gib'), '.2f')} | {_fmt(r.get('max_rss_gib'), '.2f')} | "
            f"{r.get('error', '')} |"
        )
    return "\n".join(lines)


# ---- children --------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """One measurement in a fresh process; prints ``RESULT {json}`` on stdout."""
    if args.mem_limit_gib:
        # An unrolled ResNet-1202 must fail alone rather than take the machine's RAM.
        lim = int(args.mem_limit_gib * GIB)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    name, batch, dtype = args.models[0], args.batch[0], args.dtypes[0]
    size = args.image_size or default_image_size(name)
    classes = default_classes(name)
    opts = {}
    if args._child == "deep":
        opts = dict(scan_units=bool(args.scan), remat=bool(args.remat))
    model = resnet_jax.create_model(name, num_classes=classes, dtype=DTYPES[dtype],
                                    axis_name="batch", conv_impl=args.conv_impl, **opts)
    step = JaxStep(model, batch, size, classes, dtype)
    out: dict[str, Any] = {"init_s": step.init_s, "compile_s": step.compile_s,
                           "trace_s": step.trace_s,
                           "first_step_s": step.first_step_s, "flops": step.flops,
                           "xla_step_memory_gib": step.xla_bytes / GIB if step.xla_bytes else None}
    if args._child == "deep":
        times = []
        for _ in range(args.steady_steps):
            t0 = time.perf_counter()
            step.run(1)
            times.append((time.perf_counter() - t0) * 1e3)
        out["ms_per_step"] = statistics.median(times) if times else None
        out["ms_all"] = times
    else:
        out.update(time_alternating({"jax": step}, args.warmup, args.repeats,
                                    args.min_seconds)["jax"])
    out["max_rss_gib"] = max_rss_gib()
    out["device_peak_gib"] = (device_peak_bytes() or 0) / GIB or None
    print("RESULT " + json.dumps(out), flush=True)


# ---- docs ------------------------------------------------------------------------------------
def write_docs(section: str, command: str, info: dict[str, Any], body: str) -> None:
    """Replaces (or appends) the section between this mode's markers in docs/benchmarks.md."""
    begin, end = f"<!-- BEGIN train_step:{section} -->", f"<!-- END train_step:{section} -->"
    machine_line = (
        f"{info['cpu']} (family/model {info['cpu_family_model']}), {info['cores']} cores, "
        f"flags {info.get('cpu_flags') or 'n/a'}, "
        f"{info['ram_gib']} GiB RAM; JAX {info['jax']} on {info['backend']} "
        f"({info['device']} x{info['num_devices']})"
        + (f"; XLA_FLAGS=`{info['xla_flags'].strip()}`" if info["xla_flags"].strip() else "")
    )
    block = (f"{begin}\n```\n{command}\n```\n\nMachine: {machine_line}. "
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n{body}\n{end}")
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        text = pre + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    DOCS.write_text(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    csv: Callable[[str], list[str]] = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--models", type=csv, default=None, help="comma-separated (resnet20)")
    p.add_argument("--batch", type=lambda s: [int(x) for x in csv(s)], default=[128])
    p.add_argument("--dtypes", type=csv, default=["float32", "bfloat16"])
    p.add_argument("--image_size", type=int, default=0, help="default: 32 CIFAR, 224 ImageNet")
    p.add_argument("--compare", choices=["torch", "flax_example", "conv_xla"], default=None,
                   help="conv_xla: the same model with conv_impl='xla' (lax's conv backward)")
    p.add_argument("--conv_impl", choices=["auto", "xla", "cpu_fast"], default="auto",
                   help="the model's conv_impl (convolution backward pass)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min_seconds", type=float, default=1.0, help="length of a timed chunk")
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak override")
    p.add_argument("--out", default=None, help="JSON results file")
    p.add_argument("--write-docs", dest="write_docs", action="store_true")
    p.add_argument("--xla_sweep", action="store_true", help="XLA_FLAGS sets, one process each")
    p.add_argument("--xla_flag_sets", type=lambda s: s.split(";"), default=None,
                   help="';'-separated XLA_FLAGS sets (the first is the baseline)")
    p.add_argument("--sweep_rounds", type=int, default=2)
    p.add_argument("--deep", action="store_true",
                   help="resnet50/resnet110/preact_resnet1001/resnet1202 (or --models)")
    p.add_argument("--deep_timeout", type=float, default=300.0)
    p.add_argument("--unrolled_timeout", type=float, default=0.0,
                   help="timeout of scan_units=False configurations (default: --deep_timeout)")
    p.add_argument("--deep_skip", type=lambda s: {
        (m, bool(int(sc)), bool(int(rm))) for m, sc, rm in (x.split(":") for x in csv(s))
    }, default=set(), help="model:scan:remat,... configurations to leave out")
    p.add_argument("--mem_limit_gib", type=float, default=12.0)
    p.add_argument("--steady_steps", type=int, default=3)
    p.add_argument("--_child", choices=["jax", "deep"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--scan", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--remat", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models_given = args.models is not None
    if args.models is None:
        args.models = ["resnet20"]
    if args.deep and args.batch == [128]:
        args.batch = [8]
    if args.deep and args.dtypes == ["float32", "bfloat16"]:
        args.dtypes = ["float32"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._child:
        child(args)
        return
    info = machine()
    command = "python benchmarks/train_step.py " + shlex.join(sys.argv[1:] if argv is None
                                                               else argv)
    env_flags = os.environ.get("XLA_FLAGS", "").strip()
    if env_flags:
        command = f"XLA_FLAGS={shlex.quote(env_flags)} {command}"
    if args.deep:
        # One section per model list, so deep runs split over invocations keep each other.
        tag = "-".join(args.models) if args.models_given else "all"
        section, rows = f"deep:{tag}", bench_deep(args)
        body = table_deep(rows)
    elif args.xla_sweep:
        section, rows = "xla_sweep", bench_xla_sweep(args)
        body = table_sweep(rows)
    else:
        section, rows = args.compare or "main", bench_main(args)
        body = table_main(rows, args.compare)
    print(body)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": command, "machine": info,
                                              "rows": rows}, indent=2, default=str))
    if args.write_docs:
        write_docs(section, command, info, body)


if __name__ == "__main__":
    main()
