"""Layers shared by the units and the network: convolution with the papers' init, BatchNorm,
Mish."""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax.models import onednn
from resnet_jax.models.cpu_conv import cpu_fast_conv_general_dilated

Dtype = Any
Initializer = Any  # a flax.linen initializer: (key, shape, dtype) -> array
ConvImpl = Literal["auto", "xla", "cpu_fast", "onednn"]
CONV_IMPLS = ("auto", "xla", "cpu_fast", "onednn")

# 2015 paper §3.4: weights initialised as in He et al. 2015 ("Delving deep"), N(0, 2/n); n is the
# fan-out k*k*c_out as in fb.resnet.torch and torchvision.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# fastai's init_cnn: kaiming_normal_ with PyTorch's default fan-in k*k*c_in/groups, every conv and
# linear layer. For a grouped conv it is groups x fan-out's variance (32x in ResNeXt 32x4d).
he_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _auto_conv(*args: Any, **kwargs: Any) -> jax.Array:
    # Decided at trace time: cuDNN and XLA:TPU already run the backward convolutions well.
    if jax.default_backend() != "cpu":
        return lax.conv_general_dilated(*args, **kwargs)
    fn = onednn.conv_general_dilated if onednn.available() else cpu_fast_conv_general_dilated
    return fn(*args, **kwargs)


def conv_general_dilated_fn(impl: ConvImpl) -> Any:
    """The convolution function for ``nn.Conv``: ``"xla"`` lax's, ``"cpu_fast"`` the custom
    backward of ``cpu_conv``, ``"onednn"`` oneDNN's kernels through XLA:CPU custom calls
    (``resnet_jax.models.onednn``; ``cpu_fast`` where oneDNN is unavailable or the case is not
    covered), ``"auto"`` on the CPU backend ``onednn`` if available, else ``cpu_fast``, and
    lax's on accelerators. ``onednn`` and ``cpu_fast`` are for the CPU backend only."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    return {"auto": _auto_conv, "xla": None, "cpu_fast": cpu_fast_conv_general_dilated,
            "onednn": onednn.conv_general_dilated}[impl]


def conv(features: int, kernel: int, strides: int = 1, *, groups: int = 1,
         zero_init: bool = False, kernel_init: Initializer = he_normal,
         dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
         impl: ConvImpl = "auto", name: str | None = None) -> nn.Conv:
    """A bias-free k x k convolution (BN follows it) with symmetric padding k//2, as in the
    papers' Torch/Caffe code (XLA's 'SAME' would pad stride-2 convs asymmetrically); kernels
    from ``kernel_init`` (He's fan-out normal), or zeros with ``zero_init``."""
    pad = kernel // 2
    return nn.Conv(
        features, (kernel, kernel), strides=(strides, strides), padding=((pad, pad), (pad, pad)),
        feature_group_count=groups, use_bias=False, dtype=dtype, param_dtype=param_dtype,
        kernel_init=nn.initializers.zeros if zero_init else kernel_init,
        conv_general_dilated=conv_general_dilated_fn(impl), name=name,
    )


class BatchNorm(nn.Module):
    """Batch normalisation (Ioffe & Szegedy 2015) over all axes but the last.

    Differs from ``flax.linen.BatchNorm`` in one deliberate way: the running variance is updated
    with the unbiased batch variance (n/(n-1)), as in the papers' Torch7 and Caffe code and in
    PyTorch, so statistics and converted weights agree exactly with those implementations.
    Statistics are computed in float32 whatever ``dtype`` is; with ``axis_name`` they are
    averaged over that mapped axis (synchronised BN over the global batch).

    Attributes:
      use_running_average: normalise with the running statistics (evaluation) instead of the
        batch's (training, which also updates the running statistics).
      momentum: running-average decay (PyTorch's ``momentum=0.1`` is 0.9 here).
      epsilon: added to the variance.
      dtype, param_dtype: output and parameter dtypes.
      axis_name: mapped axis over which batch statistics are averaged, or None.
      scale_init: initialiser of the scale (zeros for ``zero_init_residual``).
      frozen: normalise with the running statistics in training too and never update them, as
        detection backbones and small-batch fine-tuning do (torchvision's
        ``FrozenBatchNorm2d``); scale and bias stay parameters.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str | None = None
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    frozen: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

        if self.use_running_average or self.frozen:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            sync = self.axis_name is not None and not self.is_initializing()
            mean = jnp.mean(xf, axes)
            if sync:
                mean = jax.lax.pmean(mean, self.axis_name)
            # Two passes (mean, then mean squared deviation): exact even for large-mean inputs.
            var = jnp.mean(jnp.square(xf - mean), axes)
            count = x.size // features
            if sync:
                var = jax.lax.pmean(var, self.axis_name)
                count *= jax.lax.axis_size(self.axis_name)
            if not self.is_initializing():
                unbiased = var * (count / max(count - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased

        mul = jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
        y = (x.astype(jnp.float32) - mean) * mul + bias.astype(jnp.float32)
        return y.astype(self.dtype)


# Mish (Misra 2019) with one exp: tanh(softplus(x)) = n / (n + 2) for n = e^x (e^x + 2), and a
# closed-form derivative; 8% less step time than jax.nn.mish's exp, log1p, tanh and their
# autodiff for fastai's network on CPU (docs/recipes.md#imagenette-against-fastais-leaderboard).
@jax.custom_jvp
def mish(x: jax.Array) -> jax.Array:
    """x tanh(softplus(x)), equal to ``jax.nn.mish`` to float rounding."""
    return x * _tanh_softplus(x)[0]


def _tanh_softplus(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(tanh(softplus(x)), sigmoid(x)); e^x is capped at e^20, where the first is 1 in float32
    and bfloat16, so nothing overflows."""
    e = jnp.exp(jnp.minimum(x, 20.0))  # a Python float keeps x's dtype
    n = e * (e + 2)
    return n / (n + 2), e / (e + 1)


@mish.defjvp
def _mish_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (x,), (dx,) = primals, tangents
    t, sigmoid = _tanh_softplus(x)
    # d/dx x tanh(softplus(x)) = tanh(sp) + x sech^2(sp) sigmoid(x), as softplus' = sigmoid.
    return x * t, (t + x * (1 - t * t) * sigmoid) * dx
