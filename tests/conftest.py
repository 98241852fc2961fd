"""Test-suite setup: bytecode written on first import; 8 simulated CPU devices, so data-parallel
code runs for real on one CPU; LLVM -O1; no Keras import; one XLA compilation cache for the whole
session; the longest files collected first."""

import atexit
import os
import shutil
import sys
import tempfile

# Bytecode is written on first import (this process's later imports, and every process it
# starts), also where PYTHONDONTWRITEBYTECODE is set (as on our CI machines): otherwise each of
# the suite's ~30 Python processes compiles TensorFlow's, JAX's and PyTorch's sources again
# (~15 s each), or the install compiles all of every package (~45 s on 2 cores) up front.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# Must be set before JAX initialises its backends (first import of jax anywhere in the suite).
_flags = os.environ.get("XLA_FLAGS", "").split()
_flags.append("--xla_force_host_platform_device_count=8")
# LLVM's -O1 instead of XLA:CPU's default -O2: the same semantics (fast-math settings are
# separate flags), but -O2 spends 3-25 s compiling each eager jax.random draw of a small
# many-dimensional shape (threefry's rounds, fully unrolled; (3, 3, 8, 12): 26 s vs 0.35 s on
# a Zen 1), which most tests make for their inputs. And without LLVM's expensive passes (the
# same semantics too): compiling is most of a test's time, and it saved 11% of two compile-bound
# files (test_train_step, test_finetune_optim: 138 -> 123 s). A user's own setting wins.
# train.py subprocesses that set their own XLA_FLAGS (device counts) add these too.
COMPILE_FLAGS = [
    next((f for f in _flags if f.startswith(f"--{name}=")), f"--{name}={default}")
    for name, default in (("xla_backend_optimization_level", 1),
                          ("xla_llvm_disable_expensive_passes", "true"))
]
os.environ["XLA_FLAGS"] = " ".join(dict.fromkeys(_flags + COMPILE_FLAGS))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `import tensorflow` also imports Keras 3 (installed as TF's dependency; nothing here uses it):
# ~3 of its ~9 s, in every process that imports TF. Pointing TF at the legacy tf_keras, which is
# not installed, skips that import; tf.keras is then unavailable, and nothing uses it.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

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


# The longest files first (by --durations on 2 cores), so that under `-n 2 --dist loadfile` the
# short files fill in beside them instead of one of these running alone at the end
# (longest-processing-time-first scheduling; without xdist the order changes nothing else).
LONGEST_FILES = ("test_train_loop.py", "test_models.py", "test_reliability.py",
                 "test_experiments.py", "test_benchmarks.py", "test_onednn_conv.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within


def pytest_ignore_collect(collection_path, config):
    """With ``-m serial`` (the README's second run), files without a serial test are not
    imported: collecting all of them (TensorFlow, PyTorch, ...) took 16 s to select one test."""
    if (config.getoption("markexpr") == "serial" and collection_path.suffix == ".py"
            and collection_path.name.startswith("test_")):
        return "mark.serial" not in collection_path.read_text() or None
    return None
