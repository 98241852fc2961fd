"""oneDNN convolutions in XLA:CPU programs (resnet_jax.models.onednn) against lax's.

Forward, input gradient and weight gradient equal ``lax.conv_general_dilated`` with autodiff
(float32 to 1e-5 of the largest magnitude, as tests/test_conv.py; bfloat16 to 2e-2) over kernel
sizes, strides, paddings and groups, under jit, scan, vmap and shard_map over the 8 simulated
devices, and a ResNet-20's gradient equals the one with ``conv_impl="xla"``. Skipped where the
extension cannot be built (oneDNN wheels or a C++ compiler missing); the bfloat16 cases where the
CPU has no oneDNN bfloat16 kernels (AVX2-only CPUs such as Zen 1), which then take XLA's path.
"""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import resnet_jax
from resnet_jax.models import layers, onednn
from tests.variables import init_variables

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason=f"oneDNN unavailable: {onednn.unavailable_reason()}")

DN = ("NHWC", "HWIO", "NHWC")
conv = onednn.conv_general_dilated


def _loss(fn, strides, pads, groups):
    def loss(x, w):
        y = fn(x, w, strides, pads, dimension_numbers=DN, feature_group_count=groups)
        return jnp.sum(y.astype(jnp.float32) * jnp.cos(jnp.arange(y.size).reshape(y.shape)))

    return loss


def _value_and_grads(fn, x, w, strides, pads, groups):
    y = jax.jit(lambda x, w: fn(x, w, strides, pads, dimension_numbers=DN,
                                feature_group_count=groups))(x, w)
    return (y, *jax.jit(jax.grad(_loss(fn, strides, pads, groups), (0, 1)))(x, w))


def _inputs(shape_x, shape_w, dtype=jnp.float32):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    return (jax.random.normal(kx, shape_x).astype(dtype),
            jax.random.normal(kw, shape_w).astype(dtype))


def _close(a, b, rtol):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(a).max())


def _uses_onednn(fn, *args):
    return "resnet_jax_onednn_conv" in jax.jit(fn).lower(*args).as_text()


CASES = [  # kernel, stride, groups, size, pads (None: k // 2 on every side)
    (1, 1, 1, 6, None), (1, 2, 1, 6, None), (1, 2, 1, 7, None), (3, 1, 1, 6, None),
    (3, 2, 1, 7, None), (3, 2, 1, 8, None), (7, 2, 1, 9, None), (7, 1, 1, 8, ((2, 4), (3, 1))),
    (3, 1, 4, 6, None), (3, 2, 4, 6, None), (1, 1, 4, 5, None), (3, 2, 2, 7, ((0, 2), (1, 0))),
    (3, 1, 1, 7, ((0, 2), (2, 0))), (3, 2, 1, 7, ((0, 0), (0, 0))), (1, 1, 8, 4, None),
]


NO_BF16 = pytest.mark.skipif(
    onednn.available() and not onednn.supports(jnp.bfloat16),
    reason="this CPU has no oneDNN bfloat16 convolutions (needs AVX-512 or AVX2-VNNI-2)")


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-5),
                                        pytest.param(jnp.bfloat16, 2e-2, marks=NO_BF16)],
                         ids=["float32", "bfloat16"])
@pytest.mark.parametrize("kernel,stride,groups,size,pads", CASES)
def test_matches_lax(kernel, stride, groups, size, pads, dtype, rtol):
    x, w = _inputs((2, size, size, 8), (kernel, kernel, 8 // groups, 16), dtype)
    pads = pads or ((kernel // 2,) * 2,) * 2
    strides = (stride, stride)
    assert _uses_onednn(lambda x, w: conv(x, w, strides, pads, dimension_numbers=DN,
                                          feature_group_count=groups), x, w)
    want = _value_and_grads(lax.conv_general_dilated, x, w, strides, pads, groups)
    got = _value_and_grads(conv, x, w, strides, pads, groups)
    for a, b in zip(want, got, strict=True):
        assert b.dtype == a.dtype == dtype
        _close(a, b, rtol)


@pytest.mark.parametrize("pads", ["SAME", "VALID"])
def test_string_padding_and_unequal_strides(pads):
    x, w = _inputs((3, 9, 7, 5), (3, 2, 5, 6))
    for strides in ((1, 1), (2, 1), (1, 3)):
        want = _value_and_grads(lax.conv_general_dilated, x, w, strides, pads, 1)
        got = _value_and_grads(conv, x, w, strides, pads, 1)
        for a, b in zip(want, got, strict=True):
            _close(a, b, 1e-5)


def test_second_order_gradients():
    # Each pass's transposes are the other two passes: gradients of gradients stay on oneDNN.
    x, w = _inputs((2, 7, 7, 4), (3, 3, 4, 6))

    def gnorm(fn):
        loss = _loss(fn, (2, 2), ((1, 1), (1, 1)), 1)
        return lambda x, w: sum(jnp.sum(g ** 2) for g in jax.grad(loss, (0, 1))(x, w))

    want = jax.jit(jax.grad(gnorm(lax.conv_general_dilated), (0, 1)))(x, w)
    got = jax.jit(jax.grad(gnorm(conv), (0, 1)))(x, w)
    for a, b in zip(want, got, strict=True):
        _close(a, b, 1e-5)


def test_unsupported_cases_fall_back():
    x, w = _inputs((2, 8, 8, 4), (3, 3, 4, 4))
    cases = [
        dict(rhs_dilation=(2, 2)),
        dict(lhs_dilation=(2, 2)),
        dict(preferred_element_type=jnp.float32),
        dict(precision=lax.Precision.HIGHEST),
    ]
    for kw in cases:
        fn = functools.partial(conv, window_strides=(1, 1), padding=((1, 1), (1, 1)),
                               dimension_numbers=DN, **kw)
        assert not _uses_onednn(fn, x, w), kw
        np.testing.assert_allclose(
            fn(x, w), lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                               dimension_numbers=DN, **kw), rtol=1e-5, atol=1e-5)
    # Negative padding, float16 and another layout: the cpu_fast path, same values.
    for args in [(x, w, (1, 1), ((-1, 1), (1, 1))),
                 (x.astype(jnp.float16), w.astype(jnp.float16), (1, 1), ((1, 1), (1, 1)))]:
        fn = functools.partial(conv, window_strides=args[2], padding=args[3],
                               dimension_numbers=DN)
        assert not _uses_onednn(fn, *args[:2])
        np.testing.assert_allclose(
            np.asarray(fn(*args[:2]), np.float32),
            np.asarray(layers.cpu_fast_conv_general_dilated(*args, dimension_numbers=DN),
                       np.float32), rtol=1e-3, atol=1e-3)
    nchw = conv(x.transpose(0, 3, 1, 2), w, (1, 1), ((1, 1), (1, 1)),
                dimension_numbers=("NCHW", "HWIO", "NCHW"))
    np.testing.assert_allclose(nchw.transpose(0, 2, 3, 1),
                               lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                        dimension_numbers=DN), rtol=1e-5,
                               atol=1e-5)


def test_dtype_support_is_probed_and_an_unsupported_dtype_falls_back(monkeypatch):
    # float32 runs everywhere oneDNN does; float16 has no oneDNN kernels here; a dtype the CPU
    # lacks (bfloat16 without AVX-512) takes the cpu_fast path with the same values.
    assert onednn.supports(jnp.float32) and not onednn.supports(jnp.float16)
    assert isinstance(onednn.supports(jnp.bfloat16), bool)  # probed once, never raises
    x, w = _inputs((2, 6, 6, 4), (3, 3, 4, 4))

    def fn(x, w):  # a new function per trace (jit caches traces by function)
        return conv(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)

    assert _uses_onednn(fn, x, w)
    monkeypatch.setitem(onednn._state, "dtypes", {jnp.dtype(jnp.float32): False})
    assert not onednn.supports(jnp.float32) and not _uses_onednn(lambda x, w: fn(x, w), x, w)
    want = _value_and_grads(lax.conv_general_dilated, x, w, (2, 2), ((1, 1), (1, 1)), 1)
    got = _value_and_grads(conv, x, w, (2, 2), ((1, 1), (1, 1)), 1)
    for a, b in zip(want, got, strict=True):
        _close(a, b, 1e-5)


def test_conv_impl_names():
    assert "onednn" in layers.CONV_IMPLS
    x, w = _inputs((2, 6, 6, 4), (3, 3, 4, 4))
    for impl in ("auto", "onednn"):  # "auto" on the CPU backend with oneDNN available
        fn = functools.partial(layers.conv_general_dilated_fn(impl), window_strides=(1, 1),
                               padding=((1, 1), (1, 1)), dimension_numbers=DN)
        assert _uses_onednn(fn, x, w)
    fn = functools.partial(layers.conv_general_dilated_fn("cpu_fast"), window_strides=(1, 1),
                           padding=((1, 1), (1, 1)), dimension_numbers=DN)
    assert not _uses_onednn(fn, x, w)


def test_inside_scan_and_vmap():
    x, w = _inputs((2, 6, 6, 4), (3, 3, 4, 4))
    ws = jnp.stack([w, -0.5 * w, 0.3 * w])

    def loss(fn, x, ws):
        def body(h, w):
            return jnp.tanh(fn(h, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)), None

        return jnp.sum(lax.scan(body, x, ws)[0] ** 2)

    want = jax.jit(jax.grad(lambda x, ws: loss(lax.conv_general_dilated, x, ws), (0, 1)))(x, ws)
    got = jax.jit(jax.grad(lambda x, ws: loss(conv, x, ws), (0, 1)))(x, ws)
    for a, b in zip(want, got, strict=True):
        _close(a, b, 1e-5)

    def one(x, w):
        return conv(x[None], w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)[0]

    def one_lax(x, w):
        return lax.conv_general_dilated(x[None], w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=DN)[0]

    _close(jax.jit(jax.vmap(one, (0, None)))(x, w), jax.vmap(one_lax, (0, None))(x, w), 1e-5)
    # Both operands batched, and the gradient of a vmapped loss.
    _close(jax.jit(jax.vmap(one))(x, ws[:2]), jax.vmap(one_lax)(x, ws[:2]), 1e-5)
    for a, b in zip(jax.grad(lambda x, ws: jnp.sum(jax.vmap(one)(x, ws[:2]) ** 2), (0, 1))(x, ws),
                    jax.grad(lambda x, ws: jnp.sum(jax.vmap(one_lax)(x, ws[:2]) ** 2), (0, 1))(
                        x, ws), strict=True):
        _close(a, b, 1e-5)


@pytest.mark.parametrize("check_vma", [True, False])
def test_shard_map_over_devices(check_vma):
    devices = np.array(jax.devices())
    assert len(devices) == 8
    mesh = Mesh(devices, ("batch",))
    x, w = _inputs((16, 8, 8, 4), (3, 3, 4, 8))
    pads = ((1, 1), (1, 1))

    def sharded(fn):
        @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P("batch"), P()),
                           out_specs=(P(), P("batch"), P()), check_vma=check_vma)
        def f(x, w):
            loss = _loss(fn, (2, 2), pads, 1)
            gx, gw = jax.grad(loss, (0, 1))(x, w)
            return lax.psum(loss(x, w), "batch"), gx, lax.psum(gw, "batch")

        return jax.jit(f)

    want = sharded(lax.conv_general_dilated)(x, w)
    got = sharded(conv)(x, w)
    for a, b in zip(want, got, strict=True):
        _close(a, b, 1e-5)


@functools.cache
def _variables(scan_units=False):
    # One init per layout, shared: neither conv_impl nor the input size changes the variables.
    model = resnet_jax.create_model("resnet20", num_classes=10, conv_impl="xla",
                                    scan_units=scan_units)
    return init_variables(model, jnp.zeros((1, 8, 8, 3)))


def _model_grads(impl, x, labels, dtype=jnp.float32, **options):
    model = resnet_jax.create_model("resnet20", num_classes=10, conv_impl=impl, dtype=dtype,
                                    **options)
    v = _variables(**options)

    def loss(params):
        logits, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]}, x,
                                train=True, mutable=["batch_stats"])
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1))

    return jax.jit(jax.grad(loss))(v["params"])


@pytest.mark.parametrize("scan_units", [False, True])
def test_model_gradients_match_lax(scan_units):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    labels = jnp.arange(2) % 10
    want = _model_grads("xla", x, labels, scan_units=scan_units)
    got = _model_grads("onednn", x, labels, scan_units=scan_units)
    assert jax.tree.structure(want) == jax.tree.structure(got)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        _close(a, b, 1e-5)


def test_deterministic():
    # Same program, same inputs: bit-identical gradients (resumed training must match).
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 16, 16, 3))
    labels = jnp.arange(8) % 10
    first = _model_grads("onednn", x, labels)
    for _ in range(2):
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(_model_grads("onednn", x, labels)),
                        strict=True):
            np.testing.assert_array_equal(a, b)


def test_build_is_cached(tmp_path, monkeypatch):
    so = onednn.build()
    mtime = os.stat(so).st_mtime_ns
    assert onednn.build() == so and os.stat(so).st_mtime_ns == mtime  # no recompilation
    assert so.parent == onednn.cache_dir()
    monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path))
    assert onednn.cache_dir() == tmp_path


def test_unavailable_falls_back_without_raising(tmp_path):
    # No compiler and an empty cache: available() is False with one log line, and a model with
    # conv_impl "auto" or "onednn" runs the cpu_fast convolutions instead.
    code = textwrap.dedent("""
        import logging
        logging.basicConfig(level=logging.INFO, format="LOG %(name)s: %(message)s")
        import jax, jax.numpy as jnp
        import resnet_jax
        from resnet_jax.models import onednn
        assert not onednn.available() and not onednn.available()
        assert "compiler" in onednn.unavailable_reason(), onednn.unavailable_reason()
        for impl in ("auto", "onednn"):
            m = resnet_jax.create_model("resnet20", num_classes=10, conv_impl=impl)
            x = jnp.ones((1, 8, 8, 3))
            v = m.init(jax.random.PRNGKey(0), x, train=False)
            text = jax.jit(lambda v, x: m.apply(v, x, train=False)).lower(v, x).as_text()
            assert "onednn" not in text
        print("OK")
    """)
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), RESNET_JAX_CACHE=str(tmp_path),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")
    logs = [line for line in proc.stderr.splitlines() if line.startswith("LOG resnet_jax")]
    assert len(logs) == 1 and "unavailable" in logs[0], proc.stderr[-3000:]
