"""The CPU convolution backward (cpu_conv.cpu_fast_conv_general_dilated) against lax's."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import resnet_jax
from resnet_jax.models.layers import conv_general_dilated_fn, cpu_fast_conv_general_dilated
from tests.variables import init_variables

DN = ("NHWC", "HWIO", "NHWC")


def _value_and_grads(fn, x, w, strides, pads, groups):
    def loss(x, w):
        y = fn(x, w, strides, pads, dimension_numbers=DN, feature_group_count=groups)
        return jnp.sum(y.astype(jnp.float32) * jnp.cos(jnp.arange(y.size).reshape(y.shape)))

    y = fn(x, w, strides, pads, dimension_numbers=DN, feature_group_count=groups)
    return (y, *jax.jit(jax.grad(loss, (0, 1)))(x, w))


def _inputs(shape_x, shape_w, dtype=jnp.float32):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    return (jax.random.normal(kx, shape_x).astype(dtype),
            jax.random.normal(kw, shape_w).astype(dtype))


def _close(a, b, rtol, name=None):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    chex.assert_equal_shape([a, b], custom_message=name)
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=rtol * np.abs(a).max(),
                                custom_message=name)


@pytest.mark.parametrize("kernel,strides,groups,size", [
    (1, 1, 1, 6), (1, 2, 1, 6), (3, 1, 1, 6), (3, 2, 1, 7), (7, 2, 1, 9), (3, 1, 4, 6),
    (3, 2, 4, 6), (1, 1, 4, 5),
])
def test_matches_lax(kernel, strides, groups, size):
    x, w = _inputs((2, size, size, 8), (kernel, kernel, 8 // groups, 12))
    pads = ((kernel // 2,) * 2,) * 2
    want = _value_and_grads(lax.conv_general_dilated, x, w, (strides,) * 2, pads, groups)
    got = _value_and_grads(cpu_fast_conv_general_dilated, x, w, (strides,) * 2, pads, groups)
    for a, b in zip(want, got, strict=True):
        _close(a, b, 1e-5)


@pytest.mark.parametrize("cin,cout", [(8, 12), (24, 16), (3, 16)])
def test_both_stride1_weight_gradient_forms(cin, cout, monkeypatch):
    # Narrow stride-1 convolutions (cin * cout <= 256) over many positions take the
    # swapped-convolution weight gradient, the others the shifted-copies matmul; both agree
    # with lax (jit caches are keyed on the traced function, so each setting retraces).
    from resnet_jax.models import cpu_conv

    x, w = _inputs((3, 7, 7, cin), (3, 3, cin, cout))
    pads = ((1, 1), (1, 1))
    want = _value_and_grads(lax.conv_general_dilated, x, w, (1, 1), pads, 1)
    for min_positions in (0, 1 << 30):  # swapped form where cin * cout <= 256, matmul form
        monkeypatch.setattr(cpu_conv, "_SWAPPED_DW_MIN_POSITIONS", min_positions)
        got = _value_and_grads(cpu_fast_conv_general_dilated, x, w, (1, 1), pads, 1)
        for a, b in zip(want, got, strict=True):
            _close(a, b, 1e-5)


@pytest.mark.parametrize("pads", [((0, 2), (1, 0)), "SAME", "VALID"])
def test_asymmetric_and_string_padding(pads):
    x, w = _inputs((2, 7, 7, 4), (3, 3, 4, 6))
    for strides in ((1, 1), (2, 2)):
        want = _value_and_grads(lax.conv_general_dilated, x, w, strides, pads, 1)
        got = _value_and_grads(cpu_fast_conv_general_dilated, x, w, strides, pads, 1)
        for a, b in zip(want, got, strict=True):
            _close(a, b, 1e-5)


def test_bfloat16(monkeypatch):
    from resnet_jax.models import cpu_conv

    monkeypatch.setattr(cpu_conv, "_SWAPPED_DW_MIN_POSITIONS", 0)  # the swapped dw in bf16 too
    x, w = _inputs((4, 8, 8, 8), (3, 3, 8, 8), jnp.bfloat16)
    want = _value_and_grads(lax.conv_general_dilated, x, w, (1, 1), ((1, 1), (1, 1)), 1)
    got = _value_and_grads(cpu_fast_conv_general_dilated, x, w, (1, 1), ((1, 1), (1, 1)), 1)
    for a, b in zip(want, got, strict=True):
        chex.assert_type([a, b], jnp.bfloat16)
        _close(a, b, 2e-2)


def test_unsupported_falls_back_to_lax():
    x, w = _inputs((2, 8, 8, 4), (3, 3, 4, 4))
    pads = ((2, 2), (2, 2))
    want = lax.conv_general_dilated(x, w, (1, 1), pads, rhs_dilation=(2, 2), dimension_numbers=DN)
    got = cpu_fast_conv_general_dilated(x, w, (1, 1), pads, rhs_dilation=(2, 2),
                                        dimension_numbers=DN)
    chex.assert_trees_all_equal(want, got)
    nchw = cpu_fast_conv_general_dilated(x.transpose(0, 3, 1, 2), w, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "HWIO", "NCHW"))
    chex.assert_trees_all_close(nchw.transpose(0, 2, 3, 1),
                                lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                         dimension_numbers=DN), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="conv_impl"):
        conv_general_dilated_fn("cudnn")  # type: ignore[arg-type]


def test_inside_scan_and_vmap():
    x, w = _inputs((2, 6, 6, 4), (3, 3, 4, 4))
    ws = jnp.stack([w, -0.5 * w, 0.3 * w])

    def loss(fn, x, ws):
        def body(h, w):
            return jnp.tanh(fn(h, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)), None

        return jnp.sum(lax.scan(body, x, ws)[0] ** 2)

    want = jax.jit(jax.grad(lambda x, ws: loss(lax.conv_general_dilated, x, ws), (0, 1)))(x, ws)
    got = jax.jit(jax.grad(lambda x, ws: loss(cpu_fast_conv_general_dilated, x, ws), (0, 1)))(
        x, ws)
    for a, b in zip(want, got, strict=True):
        _close(a, b, 1e-5)
    vm = jax.vmap(lambda x: cpu_fast_conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN))(x[:, None])
    _close(vm[:, 0], lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                              dimension_numbers=DN), 1e-5)


def test_model_gradients_match_lax():
    # Scanned units: the case where XLA:CPU's own backward convolutions are slowest.
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    labels = jnp.arange(2) % 10

    # conv_impl does not change the variables.
    v = init_variables(resnet_jax.create_model("resnet20", num_classes=10, conv_impl="xla",
                                               scan_units=True), x)

    def grads(impl):
        model = resnet_jax.create_model("resnet20", num_classes=10, conv_impl=impl,
                                        scan_units=True)

        def loss(params):
            logits, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]}, x,
                                    train=True, mutable=["batch_stats"])
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

        return jax.jit(jax.grad(loss))(v["params"])

    want, got = grads("xla"), grads("cpu_fast")
    chex.assert_trees_all_equal_structs(want, got)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got),
                            strict=True):
        _close(a, b, 1e-5, jax.tree_util.keystr(path))  # atol: rtol x each leaf's largest |value|
