"""What a benchmark ran on: the CPU (from /proc/cpuinfo), its nominal peak FLOP/s, the JAX device.

The one machine description every script of benchmarks/ uses. Standard library only at import
(benchmarks/device_check.py runs under any python3); ``machine()`` and ``peak_tflops()`` import
JAX when called.

    python benchmarks/machine.py [--dtype float32]   # the description and the peak, as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
SIMD_FLAG_PREFIXES = ("avx", "fma", "amx")

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


# ---- the CPU ---------------------------------------------------------------------------------
def cpuinfo(path: Path = CPUINFO) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    info: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_name(info: dict[str, str] | None = None) -> str:
    """The CPU's model name, else what ``platform`` knows, else "unknown CPU"."""
    info = cpuinfo() if info is None else info
    return (info.get("model name") or platform.processor() or platform.machine()
            or "unknown CPU")  # fmt: skip


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), else every core."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def simd_flags(info: dict[str, str]) -> str:
    """The /proc/cpuinfo flags that decide the peak (AVX*, FMA, AMX), space-separated."""
    return " ".join(f for f in info.get("flags", "").split() if f.startswith(SIMD_FLAG_PREFIXES))


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


def _isa(dtype: str, flags: frozenset[str]) -> str:
    """The instruction set ``cpu_flop_per_cycle`` counted for ``dtype``."""
    if dtype == "bfloat16" and "amx_bf16" in flags:
        return "amx_bf16"
    if dtype == "bfloat16" and "avx512_bf16" in flags:
        return "avx512_bf16"
    if "avx512f" in flags:
        return "avx512f"
    return "avx2+fma" if {"avx2", "fma"} <= flags else "sse"


def cpu_peak_tflops(dtype: str = "float32",
                    info: dict[str, str] | None = None) -> tuple[float, str]:
    """Nominal peak of the CPUs this process may use: cores x clock x FLOP/cycle (for ``dtype``,
    see ``cpu_flop_per_cycle``). ``info`` is /proc/cpuinfo's first processor (read if None).

    The clock is "cpu MHz", else bogomips/2 (the TSC rate on x86, i.e. the base clock): boost
    clocks can exceed it, so MFU on a CPU is a nominal figure.
    """
    info = cpuinfo() if info is None else info
    flags = frozenset(info.get("flags", "").split())
    per_cycle = cpu_flop_per_cycle(flags).get(dtype, cpu_flop_per_cycle(flags)["float32"])
    if "cpu MHz" in info:
        mhz, src = float(info["cpu MHz"]), "cpu MHz"
    elif "bogomips" in info:
        mhz, src = float(info["bogomips"]) / 2, "bogomips/2"
    else:
        mhz, src = 2000.0, "assumed 2 GHz"
    cores = usable_cores()
    peak = cores * mhz * 1e6 * per_cycle / 1e12
    how = (f"{cores} cores x {mhz / 1000:.2f} GHz ({src}) x {per_cycle} {dtype} FLOP/cycle "
           f"({_isa(dtype, flags)})")
    return peak, how


# ---- the device ------------------------------------------------------------------------------
def peak_tflops(dtype: str, override: float | None = None) -> tuple[float | None, str]:
    """(peak TFLOP/s of one JAX device for ``dtype``, where the figure comes from)."""
    if override:
        return override, "--peak_tflops"
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return cpu_peak_tflops(dtype)
    kind = device.device_kind.lower()
    for key, peaks in PEAK_TFLOPS:
        if key in kind:
            return peaks.get(dtype), f"table ({key})"
    return None, f"unknown device {device.device_kind!r}: pass --peak_tflops"


# ---- descriptions ----------------------------------------------------------------------------
def host() -> dict[str, Any]:
    """The host without JAX: CPU name, family/model, SIMD flags, cores, RAM, Python."""
    info = cpuinfo()
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return {
        "cpu": info.get("model name", platform.processor()),
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "cpu_flags": simd_flags(info),
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / (1 << 20), 1),
        "python": platform.python_version(),
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on: ``host()`` plus JAX, its backend and devices."""
    import jax

    h = host()
    python = h.pop("python")  # last, as in every results file so far
    return {
        **h,
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "python": python,
    }


def machine_line(info: dict[str, Any]) -> str:
    """``machine()`` as the one line under each table of docs/benchmarks.md."""
    line = (
        f"{info['cpu']} (family/model {info['cpu_family_model']}), {info['cores']} cores, "
        f"flags {info.get('cpu_flags') or 'n/a'}, "
        f"{info['ram_gib']} GiB RAM; JAX {info['jax']} on {info['backend']} "
        f"({info['device']} x{info['num_devices']})"
    )
    flags = info["xla_flags"].strip()
    return line + (f"; XLA_FLAGS=`{flags}`" if flags else "")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    dtype = p.parse_args(argv).dtype
    peak, how = peak_tflops(dtype)
    print(json.dumps({**machine(), "peak_tflops": peak, "peak_source": how}, indent=2))


if __name__ == "__main__":
    main()
