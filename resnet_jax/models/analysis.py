"""Counting a model's parameters and multiply-accumulates without running it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jex_core


def abstract_variables(model: nn.Module, input_shape: Sequence[int]) -> Any:
    """Shapes/dtypes of ``model.init``'s variables, at no compute cost (``jax.eval_shape``)."""
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    rng = jax.random.PRNGKey(0)
    return jax.eval_shape(lambda: model.init(rng, jnp.zeros(x.shape), train=False))


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs, e.g. variables["params"]."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _macs_of_jaxpr(jaxpr: jex_core.Jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        prim = eqn.primitive.name
        if prim == "conv_general_dilated":
            lhs, rhs = (v.aval for v in eqn.invars)
            out = eqn.outvars[0].aval
            dn = eqn.params["dimension_numbers"]
            # Each output element needs (kernel spatial size) x (input channels per group) MACs.
            rhs_spec = dn.rhs_spec  # (out_feature_dim, in_feature_dim, *spatial_dims)
            kernel_in = rhs.shape[rhs_spec[1]]
            kernel_spatial = math.prod(rhs.shape[d] for d in rhs_spec[2:])
            total += math.prod(out.shape) * kernel_in * kernel_spatial
        elif prim == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars)
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            contracted = math.prod(lhs.shape[d] for d in lhs_contract)
            total += math.prod(eqn.outvars[0].aval.shape) * contracted
        else:
            multiplier = eqn.params.get("length", 1) if prim == "scan" else 1
            for sub in _sub_jaxprs(eqn.params):
                total += multiplier * _macs_of_jaxpr(sub)
    return total


def _sub_jaxprs(params: dict[str, Any]) -> list[jex_core.Jaxpr]:
    """Jaxprs nested in an equation's params (jit, scan, remat, cond branches, custom_vjp...)."""
    found = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jex_core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, jex_core.Jaxpr):
                found.append(item)
    return found


def count_macs(model: nn.Module, input_shape: Sequence[int], train: bool = False) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on an input of ``input_shape`` (NHWC).

    Counts every convolution and matrix multiply (the convention of the papers' FLOP figures,
    2015 Table 1, and of torchvision's "GFLOPS", which are really GMACs); BN, ReLU, pooling and
    additions are not multiply-accumulates and are not counted. Traces the model abstractly:
    nothing is computed, so even ResNet-1202 costs seconds.
    """
    if "conv_impl" in getattr(model, "__dataclass_fields__", {}):
        # Count lax's convolutions: the oneDNN path hides them in opaque custom calls.
        model = model.clone(conv_impl="xla")
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    key = jax.random.PRNGKey(0)

    def init_and_forward(images: jax.Array) -> Any:
        # One trace: init runs the forward pass once, and initialisers multiply nothing.
        return model.init_with_output({"params": key, "dropout": key}, images, train=train)

    closed = jax.make_jaxpr(init_and_forward)(x)
    return _macs_of_jaxpr(closed.jaxpr)

