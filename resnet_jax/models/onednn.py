"""Convolutions run by oneDNN (what PyTorch uses on the CPU) inside jitted XLA:CPU programs.

XLA:CPU's own convolution kernels run ResNet-20's layers at about half oneDNN's speed forward,
a third backward, and bf16 at f32 speed (docs/benchmarks.md, "Issue 15"). This module compiles
``csrc/onednn_conv.cc`` (three XLA FFI handlers: forward, backward-data, backward-weights of an
NHWC/HWIO convolution, f32 and bf16) against the oneDNN of the ``onednn-cpu-gomp`` /
``onednn-devel-cpu-gomp`` wheels, once per source/jaxlib/oneDNN version, into a cache directory
(``$RESNET_JAX_CACHE``, else ``$XDG_CACHE_HOME/resnet_jax``, else ``~/.cache/resnet_jax``), loads
it and registers the targets with XLA. :func:`conv_general_dilated` is a drop-in for
``lax.conv_general_dilated`` whose forward and backward are those calls; ``conv_impl="auto"``
uses it on the CPU backend when :func:`available`.

:func:`available` never raises: without the wheels, a C++ compiler (``$CXX`` or ``g++``) or on a
platform the wheels do not cover it returns False, logs why once, and callers keep the
``cpu_fast`` path; so does a dtype this CPU has no oneDNN kernels for (:func:`supports`).
``RESNET_JAX_ONEDNN=0`` turns the oneDNN path off.

oneDNN runs its kernels on OpenMP (GNU libgomp) threads, as many as ``OMP_NUM_THREADS`` or the
cores, next to XLA's own intra-op thread pool; the two take turns (a convolution call blocks its
XLA thread until oneDNN is done).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models.cpu_conv import cpu_fast_conv_general_dilated, plain_conv_args

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "onednn_conv.cc"
LIB_DIST, DEVEL_DIST = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"
_TARGETS = {
    "fwd": "resnet_jax_onednn_conv_fwd",
    "bwd_data": "resnet_jax_onednn_conv_bwd_data",
    "bwd_weights": "resnet_jax_onednn_conv_bwd_weights",
}
_CXXFLAGS = ("-O3", "-DNDEBUG", "-std=c++17", "-shared", "-fPIC")
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

_lock = threading.Lock()


class Unavailable(RuntimeError):
    """Why the extension cannot be used; ``expected`` for a platform or install without oneDNN
    (logged at INFO), not for a broken setup (no compiler: WARNING)."""

    def __init__(self, reason: str, expected: bool):
        super().__init__(reason)
        self.expected = expected


_state: dict[str, Any] = {}  # "ok": bool, "reason": str, "library": ctypes.CDLL, "so": Path


def cache_dir() -> Path:
    """Where compiled extensions are kept (``$RESNET_JAX_CACHE`` overrides)."""
    if os.environ.get("RESNET_JAX_CACHE"):
        return Path(os.environ["RESNET_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resnet_jax"


def _dist_file(dist: str, suffix: str) -> Path | None:
    """The installed file of distribution ``dist`` whose path ends with ``suffix``."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            p = Path(f.locate()).resolve()
            if p.exists():
                return p
    return None


def locate() -> tuple[Path, Path, str]:
    """(directory of libdnnl.so.3, include directory, oneDNN version) of the installed wheels;
    raises :class:`Unavailable` saying what is missing."""
    lib = _dist_file(LIB_DIST, "lib/libdnnl.so.3")
    header = _dist_file(DEVEL_DIST, "include/oneapi/dnnl/dnnl.hpp")
    prefix = Path(sys.prefix)
    if lib is None and (prefix / "lib" / "libdnnl.so.3").exists():
        lib = prefix / "lib" / "libdnnl.so.3"
    if header is None and (prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp").exists():
        header = prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp"
    if lib is None or header is None:
        missing = [d for d, p in ((LIB_DIST, lib), (DEVEL_DIST, header)) if p is None]
        raise Unavailable(f"oneDNN not installed (pip install {' '.join(missing)})", True)
    try:
        version = importlib.metadata.version(LIB_DIST)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return lib.parent, header.parent.parent.parent, version


def _compiler() -> list[str]:
    cxx = shlex.split(os.environ.get("CXX") or "g++")
    if not cxx or shutil.which(cxx[0]) is None:
        raise Unavailable(f"no C++ compiler ({' '.join(cxx) or 'g++'} not found; set CXX)",
                          False)
    return cxx


def build(force: bool = False) -> Path:
    """Compiles the FFI extension if the cache lacks it and returns the shared object's path.

    The cache key hashes the source, the compiler command and flags, jaxlib's and oneDNN's
    versions and locations. The object is written to a temporary file and renamed into place,
    so concurrent processes never load a half-written one."""
    lib_dir, include_dir, dnnl_version = locate()
    cxx = _compiler()
    ffi_include = jax.ffi.include_dir()
    jaxlib_version = importlib.metadata.version("jaxlib")
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(cxx + list(_CXXFLAGS)).encode(),
                 jaxlib_version.encode(), ffi_include.encode(), dnnl_version.encode(),
                 str(lib_dir).encode(), str(include_dir).encode()):
        key.update(part)
        key.update(b"\0")
    out_dir = cache_dir()
    so = out_dir / f"onednn_conv-{key.hexdigest()[:20]}.so"
    if so.exists() and not force:
        return so
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=so.stem + ".", suffix=".tmp", dir=out_dir)
    os.close(fd)
    cmd = [*cxx, *_CXXFLAGS, f"-I{ffi_include}", f"-I{include_dir}", str(SOURCE), "-o", tmp,
           f"-L{lib_dir}", "-ldnnl", f"-Wl,-rpath,{lib_dir}"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"compiling {SOURCE.name} failed: " + " | ".join(tail))
        os.chmod(tmp, 0o755)
        os.replace(tmp, so)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("compiled %s in %.1f s -> %s", SOURCE.name, time.perf_counter() - start, so)
    return so


def _load() -> None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise Unavailable(f"the oneDNN wheels are for Linux x86_64, not {sys.platform} "
                          f"{platform.machine()}", True)
    lib_dir, _, _ = locate()
    # The extension's DT_NEEDED libdnnl.so.3 resolves to this copy (also the rpath's).
    ctypes.CDLL(str(lib_dir / "libdnnl.so.3"), mode=ctypes.RTLD_GLOBAL)
    so = build()
    library = ctypes.CDLL(str(so))
    for name in _TARGETS.values():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)),
                                    platform="cpu")
    _state.update(library=library, so=so)


def available() -> bool:
    """True when the oneDNN convolutions can run: compiled (first call, once per version), loaded
    and registered. False (and one log line saying why) otherwise; never raises."""
    if "ok" in _state:
        return _state["ok"]
    with _lock:
        if "ok" in _state:
            return _state["ok"]
        if os.environ.get("RESNET_JAX_ONEDNN", "1").strip().lower() in ("0", "false", "no", "off"):
            ok, reason, level = False, "disabled by RESNET_JAX_ONEDNN", logging.INFO
        else:
            try:
                _load()
                ok, reason, level = True, "", logging.INFO
            except Unavailable as e:
                ok, reason = False, str(e)
                level = logging.INFO if e.expected else logging.WARNING
            except Exception as e:  # noqa: BLE001  (compile or load failure: keep going)
                ok, reason, level = False, f"{type(e).__name__}: {e}", logging.WARNING
        if not ok:
            logger.log(level, "oneDNN convolutions unavailable, using XLA's: %s", reason)
        _state.update(ok=ok, reason=reason)
        return ok


def supports(dtype: Any) -> bool:
    """True when oneDNN has convolutions of ``dtype`` on this CPU (checked once per dtype by
    creating the three passes; bfloat16 needs AVX-512 or AVX2-VNNI-2, so e.g. an AVX2-only
    Zen 1 has none). A dtype it lacks runs the ``cpu_fast`` path, said once in the log."""
    dtype = jnp.dtype(dtype)
    if dtype not in DTYPES or not available():
        return False
    with _lock:
        known = _state.setdefault("dtypes", {})
        if dtype not in known:
            known[dtype] = bool(_state["library"].resnet_jax_onednn_supports(DTYPES.index(dtype)))
            if not known[dtype]:
                logger.info("oneDNN has no %s convolutions on this CPU, using XLA's for them",
                            dtype.name)
        return known[dtype]


def unavailable_reason() -> str:
    """Why :func:`available` is False ('' when it is True)."""
    available()
    return _state["reason"]


# --- the convolution -------------------------------------------------------------------------

Pads = tuple[tuple[int, int], tuple[int, int]]


def _varying(x: jax.Array) -> frozenset:
    """The shard_map axes ``x`` varies over (empty outside shard_map or with check_vma off)."""
    return getattr(getattr(jax.typeof(x), "mat", None), "varying", frozenset())


def _call(kind: str, shape: tuple[int, ...], dtype: Any, a: jax.Array, b: jax.Array,
          strides: tuple[int, int], pads: Pads, groups: int) -> jax.Array:
    (pt, pb), (pl, pr) = pads
    i64 = np.int64
    # Inside shard_map (check_vma) the result varies over the operands' axes (made equal by
    # conv_general_dilated), as lax's convolution's would.
    result = (jax.typeof(a).update(shape=shape, dtype=jnp.dtype(dtype)) if _varying(a)
              else jax.ShapeDtypeStruct(shape, dtype))
    return jax.ffi.ffi_call(_TARGETS[kind], result, vmap_method="sequential")(
        a, b, stride_h=i64(strides[0]), stride_w=i64(strides[1]), pad_top=i64(pt),
        pad_bottom=i64(pb), pad_left=i64(pl), pad_right=i64(pr), groups=i64(groups))


# The three passes are bilinear and each one's transposes are the other two, so every one is a
# custom_vjp in terms of the others: gradients of gradients stay on oneDNN too.

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _fwd(x: jax.Array, w: jax.Array, y_shape: tuple[int, ...], strides: tuple[int, int],
         pads: Pads, groups: int) -> jax.Array:
    return _call("fwd", y_shape, x.dtype, x, w, strides, pads, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _bwd_data(g: jax.Array, w: jax.Array, x_shape: tuple[int, ...], strides: tuple[int, int],
              pads: Pads, groups: int) -> jax.Array:
    return _call("bwd_data", x_shape, g.dtype, g, w, strides, pads, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _bwd_weights(x: jax.Array, g: jax.Array, w_shape: tuple[int, ...],
                 strides: tuple[int, int], pads: Pads, groups: int) -> jax.Array:
    return _call("bwd_weights", w_shape, x.dtype, x, g, strides, pads, groups)


def _fwd_fwd(x, w, y_shape, strides, pads, groups):
    return _fwd(x, w, y_shape, strides, pads, groups), (x, w)


def _fwd_bwd(y_shape, strides, pads, groups, res, ct):
    x, w = res
    return (_bwd_data(ct, w, x.shape, strides, pads, groups),
            _bwd_weights(x, ct, w.shape, strides, pads, groups))


def _bwd_data_fwd(g, w, x_shape, strides, pads, groups):
    return _bwd_data(g, w, x_shape, strides, pads, groups), (g, w)


def _bwd_data_bwd(x_shape, strides, pads, groups, res, ct):  # ct: like x
    g, w = res
    return (_fwd(ct, w, g.shape, strides, pads, groups),
            _bwd_weights(ct, g, w.shape, strides, pads, groups))


def _bwd_weights_fwd(x, g, w_shape, strides, pads, groups):
    return _bwd_weights(x, g, w_shape, strides, pads, groups), (x, g)


def _bwd_weights_bwd(w_shape, strides, pads, groups, res, ct):  # ct: like w
    x, g = res
    return (_bwd_data(g, ct, x.shape, strides, pads, groups),
            _fwd(x, ct, g.shape, strides, pads, groups))


_fwd.defvjp(_fwd_fwd, _fwd_bwd)
_bwd_data.defvjp(_bwd_data_fwd, _bwd_data_bwd)
_bwd_weights.defvjp(_bwd_weights_fwd, _bwd_weights_bwd)


def conv_general_dilated(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
    lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
    precision: Any = None, preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` run by oneDNN (forward, input and weight gradient).

    Same cases as :func:`~resnet_jax.models.cpu_conv.cpu_fast_conv_general_dilated` (2-D
    NHWC/HWIO, no dilation, one dtype, no precision/preferred type), for float32 and bfloat16
    (where this CPU :func:`supports` it), with non-negative padding; anything else, oneDNN not
    :func:`available`, or a default backend other than the CPU (the calls are XLA:CPU custom
    calls) goes to that function."""
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    plain = plain_conv_args(*args)
    if plain is None or lhs.dtype not in DTYPES or lhs.size == 0 or rhs.size == 0:
        return cpu_fast_conv_general_dilated(*args)
    strides, pads, groups = plain
    n, h, w, c = lhs.shape
    kh, kw, cg, o = rhs.shape
    ho = (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1
    wo = (w + pads[1][0] + pads[1][1] - kw) // strides[1] + 1
    if (min(p for pair in pads for p in pair) < 0 or ho < 1 or wo < 1 or c != cg * groups
            or o % groups or jax.default_backend() != "cpu" or not supports(lhs.dtype)):
        return cpu_fast_conv_general_dilated(*args)
    vma = _varying(lhs) | _varying(rhs)
    if vma:  # both operands vary over the same shard_map axes (autodiff psums rhs's gradient)
        lhs, rhs = (jax.lax.pcast(a, tuple(sorted(vma - _varying(a))), to="varying")
                    if vma - _varying(a) else a for a in (lhs, rhs))
    return _fwd(lhs, rhs, (n, ho, wo, o), strides, pads, groups)
