"""The benchmark's CPU peak comes from /proc/cpuinfo's flags (issue 15), never from the vendor."""

import os

import pytest

from benchmarks import machine as bench

AVX2 = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2"
AVX512 = AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl"


@pytest.mark.parametrize("flags,f32,bf16", [
    ("fpu sse sse2", 8, 8),
    (AVX2, 32, 32),  # Zen 2/3, Haswell..: bf16 runs on the f32 units
    (AVX512, 64, 64),  # Skylake-SP: no bf16 dot product
    (AVX512 + " avx512_bf16", 64, 128),  # Zen 4/5, Cooper Lake: VDPBF16PS
    (AVX512 + " avx512_bf16 amx_bf16 amx_tile", 64, 1024),  # Sapphire Rapids
])
def test_flop_per_cycle_from_flags(flags, f32, bf16):
    assert bench.cpu_flop_per_cycle(frozenset(flags.split())) == {"float32": f32, "bfloat16": bf16}


@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel"])
def test_peak_ignores_the_vendor(vendor):
    # The machine: 2-core AMD EPYC, family 26, avx512f + avx512_bf16.
    info = {"vendor_id": vendor, "cpu family": "26", "cpu MHz": "2500.000",
            "flags": AVX512 + " avx512_bf16"}
    cores = len(os.sched_getaffinity(0))
    peak, how = bench.cpu_peak_tflops("float32", info)
    assert peak == pytest.approx(cores * 2.5e9 * 64 / 1e12)
    assert "64 float32 FLOP/cycle (avx512f)" in how
    peak16, how16 = bench.cpu_peak_tflops("bfloat16", info)
    assert peak16 == pytest.approx(2 * peak) and "(avx512_bf16)" in how16


def test_clock_falls_back_to_bogomips():
    info = {"bogomips": "5000.00", "flags": AVX2}
    peak, how = bench.cpu_peak_tflops("float32", info)
    assert peak == pytest.approx(len(os.sched_getaffinity(0)) * 2.5e9 * 32 / 1e12)
    assert "bogomips/2" in how
    assert bench.simd_flags(info) == "fma avx avx2"
