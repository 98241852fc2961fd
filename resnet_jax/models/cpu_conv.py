"""The CPU convolution path both CPU implementations share: ``cpu_fast``'s backward, written for
XLA:CPU, and :func:`plain_conv_args`, the cases the CPU paths (``cpu_fast``, ``onednn``) handle
themselves. Under both ``layers`` (which picks an implementation) and ``onednn`` (which falls
back to ``cpu_fast``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _dx(g: jax.Array, w: jax.Array, x_shape: tuple[int, ...], strides: tuple[int, int],
        pads: tuple[tuple[int, int], ...], groups: int) -> jax.Array:
    """Input gradient as one canonical NHWC/HWIO convolution: g (dilated by the strides) with
    the spatially flipped kernel whose in/out features are swapped per group."""
    kh, kw, cg, o = w.shape
    og = o // groups
    # (kh, kw, Cg, G, Og) -> (kh, kw, Og, G, Cg): group-wise transpose of the feature axes.
    wt = w.reshape(kh, kw, cg, groups, og).transpose(0, 1, 4, 3, 2).reshape(kh, kw, og, groups * cg)
    wt = jnp.flip(wt, (0, 1))
    # lhs_dilation inserts the stride's zeros; Eigen runs it (explicit interior padding is slower).
    new_pads = []
    for d, (k, s, (lo, _)) in enumerate(zip((kh, kw), strides, pads, strict=True)):
        span = (g.shape[1 + d] - 1) * s + 1
        before = k - 1 - lo
        new_pads.append((before, x_shape[1 + d] + k - 1 - before - span))
    return lax.conv_general_dilated(g, wt, (1, 1), new_pads, lhs_dilation=strides,
                                    dimension_numbers=_NHWC, feature_group_count=groups)


# Stride-1 weight gradients with at most this many input x output features per kernel tap, over
# at least this many positions N*H*W, go through _dw_swapped_conv: there the matmul form's k-fold
# operand copies cost more than its matmul (ResNet-20's 16->16 convs at 32 px, batch 128: 19 vs
# 7 ms alone, train step 1.08x f32 / 1.20x bf16 on a 2-core Zen 5). Narrower or wider layers and
# small batches keep the matmul form (ResNet-110 at batch 8: 0.97x with the swapped form).
_SWAPPED_DW_MAX_FEATURES = 16 * 16
_SWAPPED_DW_MIN_POSITIONS = 1 << 15


def _dw_swapped_conv(x: jax.Array, g: jax.Array, kernel: tuple[int, int],
                     strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> jax.Array:
    """Weight gradient as one canonical NHWC/HWIO convolution with batch and features swapped:
    x as (C, H, W, N) "images" of N features, g as an (Ho, Wo, N, O) kernel (strides become its
    dilation); the (C, kh, kw, O) result is the gradient. This is what XLA's
    ConvCanonicalization makes of autodiff's weight gradient (entry computation only); written
    out here it also holds inside scan bodies. XLA:CPU runs it through YNNPACK."""
    kh, kw = kernel
    acc = jnp.float32 if x.dtype in (jnp.bfloat16, jnp.float16) else None
    dw = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1), pads,
                                  rhs_dilation=strides, dimension_numbers=_NHWC,
                                  preferred_element_type=acc)
    return dw.transpose(1, 2, 0, 3)[:kh, :kw].astype(x.dtype)


def _dw(x: jax.Array, g: jax.Array, kernel: tuple[int, int], strides: tuple[int, int],
        pads: tuple[tuple[int, int], ...], groups: int) -> jax.Array:
    """Weight gradient as dense matmuls over N*H*W (XLA:CPU's own is 2-20x slower here), or, for
    narrow stride-1 convolutions, as ``_dw_swapped_conv``.

    Stride 1: the kernel's columns are shifted into the features of x (k copies) and its rows
    into those of g (k copies, shifted by whole rows of the flattened array), so one
    (N*H*W, k*C)^T @ (N*H*W, k*O) matmul yields every tap.
    Otherwise one matmul per kernel row on the strided taps of that row.
    """
    kh, kw = kernel
    n, _, _, c = x.shape
    _, ho, wo, o = g.shape
    cg, og = c // groups, o // groups
    if (strides == (1, 1) and kh > 1 and groups == 1 and c * o <= _SWAPPED_DW_MAX_FEATURES
            and n * ho * wo >= _SWAPPED_DW_MIN_POSITIONS):
        return _dw_swapped_conv(x, g, kernel, strides, pads)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    acc = jnp.float32 if x.dtype in (jnp.bfloat16, jnp.float16) else None

    def matmul(a: jax.Array, b: jax.Array, ka: int, kb: int) -> jax.Array:
        # (M, ka, G, Cg) x (M, kb, G, Og) -> (ka, kb, Cg, G*Og), contracting M per group.
        a = a.reshape(-1, ka, groups, cg)
        b = b.reshape(-1, kb, groups, og)
        if groups == 1:
            r = lax.dot_general(a.reshape(-1, ka * cg), b.reshape(-1, kb * og),
                                (((0,), (0,)), ((), ())), preferred_element_type=acc)
            return r.reshape(ka, cg, kb, og).transpose(0, 2, 1, 3)
        r = lax.dot_general(a, b, (((0,), (0,)), ((2,), (2,))), preferred_element_type=acc)
        return r.transpose(1, 3, 2, 0, 4).reshape(ka, kb, cg, o)

    if strides == (1, 1) and kh > 1:
        hp = xp.shape[1]
        cols = jnp.concatenate([xp[:, :, j:j + wo] for j in range(kw)], -1).reshape(-1, kw * c)
        # g's zero rows below each image keep the flat shifts from crossing into the next one;
        # shifting the 2-D (N*H*W, O) array is ~2x faster on XLA:CPU than padding the 4-D one.
        gf = jnp.pad(g, ((0, 0), (0, hp - ho), (0, 0), (0, 0))).reshape(-1, o)
        m = gf.shape[0]
        rows = jnp.concatenate([jnp.pad(gf, ((i * wo, 0), (0, 0)))[:m] for i in range(kh)], -1)
        # Tap (i, j) pairs x's column copy j with g's row copy i: result is (j, i, Cg, O).
        dw = matmul(cols, rows, kw, kh).transpose(1, 0, 2, 3)
    else:
        sh, sw = strides
        dw = jnp.stack([
            matmul(jnp.concatenate([xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                                    for j in range(kw)], -1), g, kw, 1)[:, 0]
            for i in range(kh)])
    return dw.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int],
          pads: tuple[tuple[int, int], ...], groups: int) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                    feature_group_count=groups)


def _conv_fwd(x: jax.Array, w: jax.Array, strides: tuple[int, int],
              pads: tuple[tuple[int, int], ...], groups: int) -> tuple[jax.Array, Any]:
    return _conv(x, w, strides, pads, groups), (x, w)


def _conv_bwd(strides: tuple[int, int], pads: tuple[tuple[int, int], ...], groups: int,
              res: Any, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    return (_dx(g, w, x.shape, strides, pads, groups),
            _dw(x, g, w.shape[:2], strides, pads, groups))


_conv.defvjp(_conv_fwd, _conv_bwd)


def cpu_fast_conv_general_dilated(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
    lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
    precision: Any = None, preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` with a backward pass written for XLA:CPU.

    Same values and gradients (up to roundoff). The backward uses only canonical NHWC/HWIO
    convolutions (input gradient) and matmuls (weight gradient), so it stays fast inside
    ``scan``/``while`` bodies, where XLA:CPU does not canonicalise autodiff's convolutions.
    Handles 2-D NHWC/HWIO convolutions without dilation; anything else goes to lax unchanged.
    """
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    plain = plain_conv_args(*args)
    if plain is None:
        return lax.conv_general_dilated(*args)
    return _conv(lhs, rhs, *plain)


def plain_conv_args(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
    lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
    precision: Any = None, preferred_element_type: Any = None,
) -> tuple[tuple[int, int], tuple[tuple[int, int], ...], int] | None:
    """(strides, explicit pads, groups) of a 2-D NHWC/HWIO convolution without dilation, one
    dtype, default precision and result type (``lax.conv_general_dilated``'s arguments); None for
    anything else. The cases the CPU convolution paths (cpu_fast, onednn) handle themselves."""
    if lhs.ndim != 4 or rhs.ndim != 4:
        return None
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = (
        dn == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
        and all(d == 1 for d in (lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1)))
        and batch_group_count == 1 and precision is None and preferred_element_type is None
        and lhs.dtype == rhs.dtype
    )
    if not plain:
        return None
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return strides, pads, int(feature_group_count)
