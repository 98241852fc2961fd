"""The residual unit, built from small named parts so that each paper figure reads in one place.

A unit adds a residual branch F(x) to a shortcut h(x) (2015 paper Eq. 1). Its parts:

- ``ACTIVATIONS``: where BN and ReLU sit around the addition, one row per ``order`` (Identity
  Mappings Fig. 4 (a)-(e)); between two convs of the branch it is always BN-ReLU.
- ``ResidualUnit._shortcut``: option A, B or C of the 2015 paper (§3.3), ``none`` for the plain
  nets (§4.1), and ResNet-D's average-pool downsampling (``avg_down``, Bag of Tricks §4.2).
- ``ResidualUnit._branch_convs``: basic (2015 Fig. 5 left) or bottleneck (Fig. 5 right) convs,
  with the v1/v1.5 stride placement and ResNeXt/Wide ResNet widths (``groups``, ``base_width``).
- ``SqueezeExcite``: the channel gate of SE networks (Hu et al. 2018, Fig. 3), on the branch's
  output before the addition, when ``se_reduction`` is set.
- ``SimpleSelfAttention``: fastai's self-attention on the branch's output (after SE), when
  ``self_attention`` is set (xresnet's ``sa``).
- ``conv``/``norm``/``squeeze_excite``/``attention``: the configured convolution, BatchNorm, SE
  gate and self-attention, passed down by ``ResNet``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.layers import (
    BatchNorm,
    Dtype,
    Initializer,
    conv,
    he_normal,
    he_normal_fan_in,
    mish,
)

ModuleFactory = Callable[..., nn.Module]

# The activations of the table below: nothing, ReLU, BN, or BN then ReLU.
NONE, RELU, BN, BN_RELU = "", "relu", "bn", "bn_relu"

# What "ReLU" computes, by name (``activation``): the papers' ReLU, or Mish (Misra 2019), the
# nonlinearity of fastai's xresnet behind the Imagenette leaderboard, or SiLU.
NONLINEARITIES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu, "mish": mish, "silu": nn.silu,
}


class Activation(NamedTuple):
    """Where BN and ReLU sit in one unit (Identity Mappings Fig. 4); between convs: BN-ReLU."""

    before: str  # on the unit's input, before the branch: NONE, RELU or BN_RELU (``bn1``)
    end: str  # after the branch's last conv: BN, NONE or BN_RELU
    after_add: str  # after the addition: RELU, BN_RELU or NONE

    @property
    def preact(self) -> bool:
        """Pre-activation unit: the branch starts with an activation, not a conv."""
        return self.before != NONE

    @property
    def bn_before_conv(self) -> bool:
        """Each conv's BN ``bn{n}`` precedes it (Fig. 4e) instead of following it."""
        return self.before == BN_RELU


ACTIVATIONS: dict[str, Activation] = {
    "post": Activation(NONE, BN, RELU),  # (a) original: ReLU after the addition (2015 paper)
    "bn_after_add": Activation(NONE, NONE, BN_RELU),  # (b) the last BN moved after the addition
    "relu_before_add": Activation(NONE, BN_RELU, NONE),  # (c) ReLU before the addition
    "relu_preact": Activation(RELU, BN, NONE),  # (d) ReLU-only pre-activation
    "full_preact": Activation(BN_RELU, NONE, NONE),  # (e) full pre-activation: BN-ReLU, conv
}
ORDERS = tuple(ACTIVATIONS)
PREACT_ORDERS = tuple(order for order, act in ACTIVATIONS.items() if act.preact)
SHORTCUTS = ("A", "B", "C", "none")
# The 2x2 pool of an ``avg_down`` shortcut: ResNet-D's average, or the max of fastai's xresnet
# run with ``--pool MaxPool`` (its 2020-01 Imagenette recipe).
DOWN_POOLS = ("avg", "max")
PREACT_MODES = ("residual", "both", "none")


class ConvSpec(NamedTuple):
    """One convolution of the residual branch."""

    features: int
    kernel: int
    strides: int
    groups: int = 1


def activate(module: nn.Module, y: jax.Array, kind: str, norm: ModuleFactory, bn_name: str, *,
             zero_init: bool = False, response: str | None = None) -> jax.Array:
    """Applies one activation of ``Activation``: BN ``bn_name`` (scale zero-initialised with
    ``zero_init``) if ``kind`` has one; sows ``response`` (after BN, before ReLU: the layer
    responses of 2015 Fig. 7) if given; then ReLU (``module.activation``'s nonlinearity) if
    ``kind`` has one."""
    if kind in (BN, BN_RELU):
        scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
        y = norm(scale_init=scale_init, name=bn_name)(y)
    if response is not None:
        module.sow("intermediates", response, y)
    if kind in (RELU, BN_RELU):
        y = NONLINEARITIES[module.activation](y)
    return y


def check_activation(name: str) -> None:
    if name not in NONLINEARITIES:
        raise ValueError(f"activation must be one of {tuple(NONLINEARITIES)}, got {name!r}")


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``, never
    below 90% of ``value``): the SE width rule of timm and fastai, which equals the paper's C/r
    on every network of its tables."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018, §3 and Fig. 3): global average pool ("squeeze"),
    FC to C/r, ReLU, FC back to C, sigmoid, and the input scaled channel-wise by the result.

    The FCs are 1x1 convolutions with biases (timm's and fastai's layout, so their weights map
    one to one), named ``fc1`` and ``fc2``; kernels from ``kernel_init`` as the network's convs,
    biases 0.

    Attributes:
      reduction: r of §3.2 (16 in the paper); the hidden width is ``make_divisible(C / r)``.
      activation: the nonlinearity between the FCs (the paper's ReLU; fastai uses the network's).
      kernel_init: the FCs' kernel initializer (He's fan-out normal, as every conv here).
      dtype, param_dtype: computation and parameter dtypes.
    """

    reduction: int = 16
    activation: str = "relu"
    kernel_init: Initializer = he_normal
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        fc = functools.partial(nn.Conv, kernel_size=(1, 1), dtype=self.dtype,
                               param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
        s = fc(make_divisible(channels / self.reduction), name="fc1")(s)
        s = fc(channels, name="fc2")(NONLINEARITIES[self.activation](s))
        return x * nn.sigmoid(s).astype(x.dtype)


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x), eps)  # torch.nn.functional.normalize


class SimpleSelfAttention(nn.Module):
    """fastai's ``SimpleSelfAttention`` (Doria 2019; xresnet's ``sa=True``): each position's
    features mixed through the channels' Gram matrix, ``x + gamma * (x W^T)(x^T x)`` with x as
    (positions, channels), W a C x C 1x1 kernel under spectral normalisation (Miyato et al.
    2018) and gamma a scalar initialised to 0, so the layer starts as the identity.

    The spectral norm is PyTorch's ``spectral_norm`` exactly (written here because Flax's
    ``nn.SpectralNorm`` iterates again in eval and keeps no v): in training one power
    iteration from the stored u updates u and v (``batch_stats``), and sigma = u . W v with
    the gradient flowing through W only; in eval the stored u and v give sigma.

    Attributes:
      dtype, param_dtype: computation and parameter dtypes (the Gram matrix and sigma are
        float32).
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b, h, w, c = x.shape
        # fastai's 1x1 Conv1d in Flax's (width, in, out) layout, drawn as its init_cnn does.
        kernel = self.param("kernel", he_normal_fan_in, (1, c, c), self.param_dtype)
        gamma = self.param("gamma", nn.initializers.zeros, (1,), self.param_dtype)
        key = self.make_rng("params") if self.is_initializing() else None
        u = self.variable("batch_stats", "u",
                          lambda: _l2_normalize(jax.random.normal(key, (c,))))
        v = self.variable("batch_stats", "v",
                          lambda: _l2_normalize(jax.random.normal(jax.random.fold_in(key, 1),
                                                                  (c,))))
        weight = jnp.asarray(kernel[0], jnp.float32).T  # PyTorch's (out, in)
        u_now, v_now = u.value, v.value
        if train:
            v_now = jax.lax.stop_gradient(_l2_normalize(weight.T @ u_now))
            u_now = jax.lax.stop_gradient(_l2_normalize(weight @ v_now))
            if not self.is_initializing():
                u.value, v.value = u_now, v_now
        sigma = u_now @ (weight @ v_now)
        kernel_sn = (kernel[0] / sigma).astype(self.dtype)
        flat = x.reshape(b, h * w, c).astype(self.dtype)
        gram = jnp.einsum("bnc,bnd->bcd", flat, flat, preferred_element_type=jnp.float32)
        mixed = jnp.einsum("bnc,bcd->bnd", flat @ kernel_sn, gram.astype(self.dtype))
        return (flat + gamma.astype(self.dtype) * mixed).reshape(b, h, w, c).astype(x.dtype)


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Drops the whole residual branch per example with probability ``rate`` (stochastic depth,
    Huang et al. 2016) and rescales survivors so the expectation is unchanged."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def zero_pad_shortcut(x: jax.Array, strides: int, out_features: int) -> jax.Array:
    """Option A (2015 §3.3): parameter-free; subsample, then zero-pad the new channels (split on
    both sides, as the common PyTorch CIFAR ResNets do, for weight compatibility)."""
    in_features = x.shape[-1]
    if in_features > out_features:
        raise ValueError(
            f"shortcut 'A' cannot reduce channels ({in_features} -> {out_features}); "
            "use shortcut 'B' or 'C'"
        )
    x = x[:, ::strides, ::strides, :]
    extra = out_features - in_features
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class ResidualUnit(nn.Module):
    """One residual unit ("building block") of a ResNet.

    Attributes:
      features: the unit's base width ("planes"): the 3x3 conv's width before grouping/widening.
        The unit outputs ``features * 4`` channels if ``bottleneck`` else ``features``.
      strides: spatial stride of the unit (2 at the first unit of stages 2..4).
      bottleneck: 1x1-3x3-1x1 with expansion 4 (2015 paper Fig. 5 right) instead of two 3x3.
      order: activation placement, a key of ``ACTIVATIONS`` (Identity Mappings Fig. 4):
        ``post`` (a, original), ``bn_after_add`` (b), ``relu_before_add`` (c), ``relu_preact``
        (d, ReLU-only pre-activation), ``full_preact`` (e, BN and ReLU before each conv).
      preact: for pre-activation orders, which paths see the unit's pre-activation: ``residual``
        (the branch only), ``both`` (applied before the split, so the shortcut takes the
        pre-activated input; Identity Mappings §4 and appendix), or ``none`` (input already
        activated).
      shortcut: ``A`` identity, zero-padding extra channels and subsampling (2015 §3.3); ``B``
        projection only where the shape changes; ``C`` projection everywhere; ``none`` plain net.
      stride_in_1x1: stride on the bottleneck's first 1x1 (2015 paper, v1), not its 3x3 (v1.5).
      avg_down: projection shortcut as 2x2 average pool then stride-1 1x1 conv (ResNet-D).
      down_pool: that pool, ``avg`` (ResNet-D) or ``max`` (fastai's ``--pool MaxPool``).
      groups, base_width: bottleneck 3x3 width = int(features * base_width / 64) * groups
        (ResNeXt, Wide ResNet; the formula torchvision uses).
      zero_init_residual: initialise the branch's last BN scale to zero (or, where the branch
        ends in a conv, as in pre-activation units, that conv's kernel): the branch outputs zero
        at init, so the unit starts as (nearly) the identity.
      drop_path_rate: stochastic-depth probability of dropping the branch in training.
      dropout_rate: dropout between the branch's last two convs (Wide ResNet, Zagoruyko 2016 §2.4).
      activation: the nonlinearity wherever the tables say ReLU, a key of ``NONLINEARITIES``.
      se_reduction: squeeze-and-excitation with reduction r on the branch output, before the
        addition (SE-ResNet module, Hu et al. 2018 Fig. 3; r = 16 in the paper); 0: none.
      self_attention: fastai's ``SimpleSelfAttention`` on the branch output after SE, before
        the addition (fastai's ``ResBlock(sa=True)``).
      conv: makes each convolution, called as ``conv(features, kernel, strides, groups=...,
        zero_init=..., name=...)``: ``layers.conv`` with the network's ``kernel_init``,
        ``dtype``, ``param_dtype`` and ``impl`` bound (default: float32, ``impl="auto"``).
      norm: makes each BatchNorm, called with ``use_running_average``, ``scale_init`` and
        ``name``: ``layers.BatchNorm`` with the network's momentum, epsilon, dtypes,
        ``axis_name`` and ``frozen`` bound (default: float32, momentum 0.9, epsilon 1e-5).
      squeeze_excite: makes the SE gate, called with ``reduction``, ``activation`` and ``name``:
        ``SqueezeExcite`` with the network's kernel init and dtypes bound.
      attention: makes the self-attention layer, called with ``name``: ``SimpleSelfAttention``
        with the network's dtypes bound.
    """

    features: int
    strides: int = 1
    bottleneck: bool = False
    order: str = "post"
    preact: str = "residual"
    shortcut: str = "B"
    stride_in_1x1: bool = False
    avg_down: bool = False
    down_pool: str = "avg"
    groups: int = 1
    base_width: int = 64
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0
    dropout_rate: float = 0.0
    activation: str = "relu"
    se_reduction: int = 0
    self_attention: bool = False
    conv: ModuleFactory = conv
    norm: ModuleFactory = BatchNorm
    squeeze_excite: ModuleFactory = SqueezeExcite
    attention: ModuleFactory = SimpleSelfAttention

    @property
    def out_features(self) -> int:
        return self.features * (4 if self.bottleneck else 1)

    def _check(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        if self.preact not in PREACT_MODES:
            raise ValueError(f"preact must be one of {PREACT_MODES}, got {self.preact!r}")
        check_activation(self.activation)
        if self.down_pool not in DOWN_POOLS:
            raise ValueError(f"down_pool must be one of {DOWN_POOLS}, got {self.down_pool!r}")
        if self.down_pool != "avg" and not self.avg_down:
            raise ValueError("down_pool is the pool of avg_down shortcuts; set avg_down=True")
        if self.se_reduction < 0:
            raise ValueError(f"se_reduction must be >= 0 (0: no SE), got {self.se_reduction}")
        if not self.bottleneck and (self.groups != 1 or self.base_width != 64):
            raise ValueError(
                "groups/base_width apply to bottleneck units only; widen a basic-block network "
                "with width_multiplier instead"
            )
        if self.zero_init_residual and self.order == "bn_after_add":
            raise ValueError(
                "zero_init_residual has no branch-final BN or conv to zero in order "
                "'bn_after_add' (Fig. 4b normalises after the addition)"
            )

    def _branch_convs(self) -> list[ConvSpec]:
        """The residual branch's convolutions, in order."""
        s = self.strides
        if not self.bottleneck:  # 2015 paper Fig. 5 left: two 3x3
            return [ConvSpec(self.features, 3, s), ConvSpec(self.features, 3, 1)]
        # Fig. 5 right: 1x1 reduce, 3x3 (grouped: ResNeXt), 1x1 expand; v1 strides the first 1x1.
        width = int(self.features * self.base_width / 64) * self.groups
        s1, s3 = (s, 1) if self.stride_in_1x1 else (1, s)
        return [ConvSpec(width, 1, s1), ConvSpec(width, 3, s3, self.groups),
                ConvSpec(self.out_features, 1, 1)]

    def _shortcut(self, x: jax.Array, act: Activation, norm: ModuleFactory) -> jax.Array | None:
        """h(x) of 2015 §3.3: identity, option A's zero padding, or a 1x1 projection (option B
        where the shape changes, C everywhere); None for the plain nets (§4.1)."""
        if self.shortcut == "none":
            return None
        reshape = self.strides != 1 or x.shape[-1] != self.out_features
        if not (self.shortcut == "C" or (self.shortcut == "B" and reshape)):
            return zero_pad_shortcut(x, self.strides, self.out_features) if reshape else x
        strides = self.strides
        if self.avg_down and strides > 1:
            # ResNet-D: let the 1x1 see every pixel instead of skipping 3 of 4 (ceil mode).
            pads = ((0, x.shape[1] % 2), (0, x.shape[2] % 2))
            if self.down_pool == "max":  # pads with -inf: PyTorch's MaxPool2d(2, ceil_mode=True)
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding=pads)
            else:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding=pads, count_include_pad=False)
            strides = 1
        x = self.conv(self.out_features, 1, strides, name="downsample_conv")(x)
        if not act.preact:  # pre-activation nets project without BN (Identity Mappings' code)
            x = norm(name="downsample_bn")(x)
        return x

    def _branch(self, y: jax.Array, convs: Sequence[ConvSpec], act: Activation,
                norm: ModuleFactory, train: bool) -> jax.Array:
        """F(x) after the unit's pre-activation: the convs, BN-ReLU between each two,
        ``act.end`` after the last. ``bn{n}`` is conv n's BN: after it, before it (Fig. 4e), or,
        for the last conv, after the addition (Fig. 4b)."""
        for n, (features, kernel, strides, groups) in enumerate(convs, 1):
            last = n == len(convs)
            if n > 1 and act.bn_before_conv:  # Fig. 4e: BN-ReLU before every later conv
                y = activate(self, y, BN_RELU, norm, f"bn{n}")
            if last and self.dropout_rate > 0:  # Wide ResNet §2.4: between the last two convs
                y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
            # After conv n: act.end if last, else BN-ReLU (which Fig. 4e puts before conv n+1).
            follow = act.end if last else (NONE if act.bn_before_conv else BN_RELU)
            zero = self.zero_init_residual and last  # zero the branch's last BN, else its conv
            y = self.conv(features, kernel, strides, groups=groups,
                          zero_init=zero and follow not in (BN, BN_RELU), name=f"conv{n}")(y)
            y = activate(self, y, follow, norm, f"bn{n}", zero_init=zero,
                         response=f"response{n}" if kernel == 3 else None)
        return y

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool, drop_path_rate: jax.Array | None = None
    ) -> jax.Array:
        """``drop_path_rate``, when given, overrides the attribute (a traced per-unit rate, so
        that identical units can be scanned)."""
        self._check()
        act = ACTIVATIONS[self.order]
        convs = self._branch_convs()
        norm = functools.partial(self.norm, use_running_average=not train)

        # Identity Mappings §4: pre-activate before the split, the branch only, or not at all.
        if self.preact == "both":
            x = activate(self, x, act.before, norm, "bn1")
        shortcut = self._shortcut(x, act, norm)
        y = activate(self, x, act.before, norm, "bn1") if self.preact == "residual" else x
        y = self._branch(y, convs, act, norm, train)
        if self.se_reduction:  # Hu et al. Fig. 3: gate the branch, then add the shortcut
            y = self.squeeze_excite(reduction=self.se_reduction, activation=self.activation,
                                    name="se")(y)
        if self.self_attention:  # fastai's ResBlock: appended to the branch after SE
            y = self.attention(name="sa")(y, train)
        if shortcut is not None:
            if train and (drop_path_rate is not None or self.drop_path_rate > 0):
                rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
                y = drop_path(y, rate, self.make_rng("dropout"))
            y = y + shortcut
        y = activate(self, y, act.after_add, norm, f"bn{len(convs)}")  # Fig. 4b: the last BN
        self.sow("intermediates", "output", y)
        return y
