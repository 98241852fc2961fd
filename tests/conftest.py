"""Test-suite setup: 8 simulated CPU devices, so data-parallel code runs for real on one CPU."""

import os

# Must be set before JAX initialises its backends (first import of jax anywhere in the suite).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
