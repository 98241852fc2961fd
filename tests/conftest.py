"""Test-suite setup: 8 simulated CPU devices, so data-parallel code runs for real on one CPU;
one XLA compilation cache for the whole session."""

import atexit
import os
import shutil
import tempfile

# Must be set before JAX initialises its backends (first import of jax anywhere in the suite).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Compilation is most of the suite's time, and many tests (and the train.py processes they
# start, which inherit this environment) compile the same tiny programs: a resumed run
# recompiles its first run's step. JAX's persistent cache keys on the program, the XLA flags
# and the backend, so a hit is the same executable. Fresh per session (nothing carries over
# between runs); set JAX_COMPILATION_CACHE_DIR yourself to keep one.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="resnet-jax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
