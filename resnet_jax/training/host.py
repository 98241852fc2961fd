"""Facts about the host that must be settled before JAX starts: which accelerator plugins are
installed, and whether glibc's malloc should back large buffers with huge pages.

Standard library only: ``train.py`` loads this file by path before it imports anything heavy
(its packages import JAX), so that it can re-execute itself with a new environment.

Huge pages: XLA:CPU maps a fresh scratch buffer of hundreds of MB every step and unmaps it
afterwards, so each step takes ~10^5-10^6 minor page faults of 4 KiB. glibc backs such mappings
with transparent huge pages when told so at process start (``GLIBC_TUNABLES`` is read once, by
the dynamic loader), which made the CPU train step 1.28-1.46x faster here
(docs/benchmarks.md#huge-pages-for-xlacpus-scratch-buffer).

tcmalloc: where gperftools' tcmalloc is installed, the run also preloads it (``LD_PRELOAD``,
also read only at process start). It keeps the freed scratch buffer for the next step, so
there are no page faults at all: 4-33% less time per step than huge pages alone, for 1.4-1.8x
the resident memory (docs/benchmarks.md#tcmalloc-for-xlacpus-scratch-buffer).
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Mapping

HUGE_PAGES = "glibc.malloc.hugetlb=1"
# Set beside GLIBC_TUNABLES when train.py chose it, so the run can say so in its log.
SET_BY_TRAIN_ENV = "RESNET_JAX_HUGE_PAGES_SET"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # the first glibc with the glibc.malloc.hugetlb tunable
# gperftools' libraries (Debian/Ubuntu: apt install libtcmalloc-minimal4), in order of preference.
TCMALLOC_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")
# Set beside LD_PRELOAD when train.py chose it.
TCMALLOC_SET_BY_TRAIN_ENV = "RESNET_JAX_TCMALLOC_SET"


def gpu_plugin_installed() -> bool:
    """Whether a CUDA or ROCm plugin of jaxlib is installed (checked without starting JAX)."""
    names = [m.name for m in pkgutil.iter_modules()]
    try:
        import jax_plugins

        names += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
    except ImportError:
        pass
    return any(("cuda" in n or "rocm" in n) and ("jax" in n or "xla" in n) for n in names)


def accelerator_expected(environ: Mapping[str, str]) -> bool:
    """Whether JAX will run on a GPU or TPU: a plugin for one is installed, or JAX_PLATFORMS
    names no CPU."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms and not platforms.split(",")[0].strip().startswith("cpu"):
        return True
    return gpu_plugin_installed() or importlib.util.find_spec("libtpu") is not None


def glibc_version() -> tuple[int, ...] | None:
    """(major, minor) of the C library if it is glibc, else None (musl, macOS, ...)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return None
    if name != "glibc":
        return None
    try:
        return tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None


def thp_mode(path: str = THP_SETTING) -> str | None:
    """The kernel's transparent-huge-page mode (the bracketed word: always, madvise or never)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def huge_pages_apply(
    environ: Mapping[str, str],
    *,
    platform: str,
    glibc: tuple[int, ...] | None,
    thp: str | None,
    accelerator: bool,
) -> bool:
    """Whether to re-execute with huge pages for malloc. Not when the user decided
    (GLIBC_TUNABLES set to anything: ``glibc.malloc.hugetlb=0`` opts out), off Linux, on glibc
    older than 2.35 or another C library, with transparent huge pages off, or for a GPU/TPU run
    (measured on CPUs only)."""
    if "GLIBC_TUNABLES" in environ or not platform.startswith("linux"):
        return False
    if glibc is None or glibc < MIN_GLIBC or thp not in ("always", "madvise"):
        return False
    return not accelerator


def find_tcmalloc() -> str | None:
    """The soname of an installed tcmalloc (``libtcmalloc_minimal.so.4``), or None."""
    for name in TCMALLOC_LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def tcmalloc_apply(
    environ: Mapping[str, str], *, platform: str, tcmalloc: str | None, accelerator: bool,
) -> bool:
    """Whether to re-execute with tcmalloc preloaded. Not when the user decided (LD_PRELOAD set
    to anything: ``LD_PRELOAD=`` opts out), off Linux, where no tcmalloc is installed, or for a
    GPU/TPU run (measured on CPUs only)."""
    return ("LD_PRELOAD" not in environ and platform.startswith("linux") and bool(tcmalloc)
            and not accelerator)


def malloc_environ(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-execute a training process with, so that XLA:CPU's scratch buffer
    is cheap (huge pages for glibc's malloc, tcmalloc preloaded, each where it applies on this
    machine); None to carry on as is."""
    accelerator = accelerator_expected(environ)
    new = dict(environ)
    facts = {"platform": sys.platform, "glibc": glibc_version(), "thp": thp_mode()}
    if huge_pages_apply(environ, **facts, accelerator=accelerator):
        new.update({"GLIBC_TUNABLES": HUGE_PAGES, SET_BY_TRAIN_ENV: "1"})
    tcmalloc = find_tcmalloc()
    if tcmalloc_apply(environ, platform=sys.platform, tcmalloc=tcmalloc, accelerator=accelerator):
        new.update({"LD_PRELOAD": tcmalloc, TCMALLOC_SET_BY_TRAIN_ENV: "1"})
    return new if new != environ else None


def reexec_with_fast_malloc(argv: list[str]) -> None:
    """Replaces this process by ``python argv...`` with the environment of ``malloc_environ``
    where it says so; returns (doing nothing) otherwise. Same pid, so a supervisor or launcher
    that waits on it is unaffected."""
    environ = malloc_environ(os.environ)
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], environ)


def malloc_note(environ: Mapping[str, str] = os.environ) -> str:
    """One log line on the run's malloc, for its header."""
    preload = environ.get("LD_PRELOAD")
    if environ.get(TCMALLOC_SET_BY_TRAIN_ENV) and preload:
        return (f"malloc: tcmalloc (train.py set LD_PRELOAD={preload}; set LD_PRELOAD= to opt "
                "out)")
    note = huge_pages_note(environ)
    return note + (f"; LD_PRELOAD={preload} (yours)" if preload else "")


def huge_pages_note(environ: Mapping[str, str] = os.environ) -> str:
    """One log line on malloc's huge pages, for the run's header."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(SET_BY_TRAIN_ENV) and tunables == HUGE_PAGES:
        return (f"malloc: huge pages (train.py set GLIBC_TUNABLES={HUGE_PAGES}; "
                "set GLIBC_TUNABLES=glibc.malloc.hugetlb=0 to opt out)")
    if tunables:
        return f"malloc: GLIBC_TUNABLES={tunables} (yours)"
    return "malloc: glibc's default (no huge pages)"
