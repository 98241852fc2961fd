"""The residual unit: one module whose options compose every block of both ResNet papers.

A unit is the residual branch F(x) (two 3x3 convs, "basic", or 1x1-3x3-1x1, "bottleneck") added
to a shortcut h(x). What differs between the papers' variants is a parameter, never a new class:

- ``order``: where BN and ReLU sit relative to the addition (Identity Mappings, Fig. 4 / Table 2).
- ``shortcut``: option A, B or C of the 2015 paper (§3.3), or ``"none"`` for the plain nets (§4.1).
- ``stride_in_1x1``: the 2015 paper strides the first 1x1 of a bottleneck (v1); torchvision and
  fb.resnet.torch stride the 3x3 (v1.5).
- ``groups``/``base_width``: ResNeXt cardinality and Wide ResNet width.
- ``avg_down``: ResNet-D's average-pool downsampling shortcut (Bag of Tricks, He et al. 2019).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.layers import BatchNorm, ConvImpl, conv

Dtype = Any

ORDERS = ("post", "bn_after_add", "relu_before_add", "relu_preact", "full_preact")
PREACT_ORDERS = ("relu_preact", "full_preact")
SHORTCUTS = ("A", "B", "C", "none")
PREACT_MODES = ("residual", "both", "none")

def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Drops the whole residual branch per example with probability ``rate`` (stochastic depth,
    Huang et al. 2016) and rescales survivors so the expectation is unchanged."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class ResidualUnit(nn.Module):
    """One residual unit ("building block") of a ResNet.

    Attributes:
      features: the unit's base width ("planes"): the 3x3 conv's width before grouping/widening.
        The unit outputs ``features * 4`` channels if ``bottleneck`` else ``features``.
      strides: spatial stride of the unit (2 at the first unit of stages 2..4).
      bottleneck: 1x1-3x3-1x1 with expansion 4 (2015 paper Fig. 5 right) instead of two 3x3.
      order: activation placement, Identity Mappings Fig. 4: ``post`` (a, original),
        ``bn_after_add`` (b), ``relu_before_add`` (c), ``relu_preact`` (d, ReLU-only
        pre-activation), ``full_preact`` (e, BN and ReLU before each conv).
      preact: for pre-activation orders, which paths see the unit's pre-activation: ``residual``
        (the branch only), ``both`` (applied before the split, so the shortcut takes the
        pre-activated input; Identity Mappings §4 and appendix), or ``none`` (input already
        activated).
      shortcut: ``A`` identity, zero-padding extra channels and subsampling (2015 §3.3); ``B``
        projection only where the shape changes; ``C`` projection everywhere; ``none`` plain net.
      stride_in_1x1: stride on the bottleneck's first 1x1 (2015 paper, v1), not its 3x3 (v1.5).
      avg_down: projection shortcut as 2x2 average pool then stride-1 1x1 conv (ResNet-D).
      groups, base_width: bottleneck 3x3 width = int(features * base_width / 64) * groups
        (ResNeXt, Wide ResNet; the formula torchvision uses).
      zero_init_residual: initialise the branch's last BN scale to zero (or, where the branch
        ends in a conv, as in pre-activation units, that conv's kernel): the branch outputs zero
        at init, so the unit starts as (nearly) the identity.
      drop_path_rate: stochastic-depth probability of dropping the branch in training.
      dropout_rate: dropout between the branch's last two convs (Wide ResNet, Zagoruyko 2016 §2.4).
      bn_momentum, bn_epsilon: BatchNorm running-average momentum (Flax convention: 0.9 equals
        PyTorch's 0.1) and epsilon.
      frozen_bn: BN normalises with its running statistics in training too and never updates
        them, as detection backbones and small-batch fine-tuning do (torchvision's
        ``FrozenBatchNorm2d``); BN scale and bias stay parameters.
      dtype, param_dtype: computation and parameter dtypes (BN statistics are always float32).
      axis_name: mapped axis over which BN statistics are averaged (cross-device BN), or None.
      conv_impl: convolution backward pass: ``auto`` (``cpu_fast`` on the CPU backend, else
        ``xla``), ``xla`` (lax's autodiff) or ``cpu_fast``
        (``layers.cpu_fast_conv_general_dilated``); the values computed are the same.
    """

    features: int
    strides: int = 1
    bottleneck: bool = False
    order: str = "post"
    preact: str = "residual"
    shortcut: str = "B"
    stride_in_1x1: bool = False
    avg_down: bool = False
    groups: int = 1
    base_width: int = 64
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0
    dropout_rate: float = 0.0
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    frozen_bn: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str | None = None
    conv_impl: ConvImpl = "auto"

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
        if not self.bottleneck and (self.groups != 1 or self.base_width != 64):
            raise ValueError(
                "groups/base_width apply to bottleneck units only; widen a basic-block network "
                "with width_multiplier instead"
            )

    def _conv(self, features: int, kernel: int, strides: int = 1, groups: int = 1,
              zero_init: bool = False, name: str | None = None) -> nn.Conv:
        return conv(features, kernel, strides, groups=groups, zero_init=zero_init,
                    dtype=self.dtype, param_dtype=self.param_dtype, impl=self.conv_impl, name=name)

    def _norm(self, train: bool, zero_init: bool = False, name: str | None = None) -> BatchNorm:
        return BatchNorm(
            use_running_average=not train or self.frozen_bn, momentum=self.bn_momentum,
            epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
            axis_name=self.axis_name,
            scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones, name=name,
        )

    def _branch_convs(self) -> list[tuple[int, int, int, int]]:
        """(features, kernel, strides, groups) of the residual branch's convolutions, in order."""
        s = self.strides
        if not self.bottleneck:  # 2015 paper Fig. 5 left
            return [(self.features, 3, s, 1), (self.features, 3, 1, 1)]
        width = int(self.features * self.base_width / 64) * self.groups
        s1, s3 = (s, 1) if self.stride_in_1x1 else (1, s)
        return [(width, 1, s1, 1), (width, 3, s3, self.groups), (self.out_features, 1, 1, 1)]

    def _shortcut(self, x: jax.Array, train: bool) -> jax.Array | None:
        if self.shortcut == "none":
            return None
        in_features = x.shape[-1]
        reshape = self.strides != 1 or in_features != self.out_features
        if self.shortcut == "C" or (self.shortcut == "B" and reshape):
            strides = self.strides
            if self.avg_down and strides > 1:
                # ResNet-D: let the 1x1 see every pixel instead of skipping 3 of 4 (ceil mode).
                pads = ((0, x.shape[1] % 2), (0, x.shape[2] % 2))
                x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding=pads, count_include_pad=False)
                strides = 1
            x = self._conv(self.out_features, 1, strides, name="downsample_conv")(x)
            if self.order not in PREACT_ORDERS:
                # Pre-activation nets project without BN (Identity Mappings, released Torch code).
                x = self._norm(train, name="downsample_bn")(x)
            return x
        if not reshape:
            return x
        # Option A (2015 §3.3): parameter-free; subsample, then zero-pad the new channels
        # (split on both sides, as the common PyTorch CIFAR ResNets do, for weight compatibility).
        if in_features > self.out_features:
            raise ValueError(
                f"shortcut 'A' cannot reduce channels ({in_features} -> {self.out_features}); "
                "use shortcut 'B' or 'C'"
            )
        x = x[:, :: self.strides, :: self.strides, :]
        extra = self.out_features - in_features
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool, drop_path_rate: jax.Array | None = None
    ) -> jax.Array:
        """``drop_path_rate``, when given, overrides the attribute (a traced per-unit rate, so
        that identical units can be scanned)."""
        self._check()
        drop_rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
        order = self.order
        preact_order = order in PREACT_ORDERS
        convs = self._branch_convs()
        last = len(convs) - 1
        # Which BN (if any) ends the branch and should start at zero for zero_init_residual.
        branch_ends_in_bn = order in ("post", "relu_before_add", "relu_preact")
        if self.zero_init_residual and order == "bn_after_add":
            raise ValueError(
                "zero_init_residual has no branch-final BN or conv to zero in order "
                "'bn_after_add' (Fig. 4b normalises after the addition)"
            )

        # Pre-activation of the unit's input (Fig. 4d/4e).
        def activate(y: jax.Array) -> jax.Array:
            if order == "full_preact":
                y = self._norm(train, name="bn1")(y)
            return nn.relu(y)

        if preact_order and self.preact == "both":
            x = activate(x)
        shortcut = self._shortcut(x, train)
        y = activate(x) if preact_order and self.preact == "residual" else x

        for i, (features, kernel, strides, groups) in enumerate(convs):
            n, is_last = i + 1, i == last
            if order == "full_preact" and i > 0:  # BN-ReLU before every later conv (Fig. 4e)
                y = nn.relu(self._norm(train, name=f"bn{n}")(y))
            if is_last and self.dropout_rate > 0:
                y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
            zero_conv = self.zero_init_residual and is_last and not branch_ends_in_bn
            y = self._conv(features, kernel, strides, groups, zero_conv, name=f"conv{n}")(y)
            if branch_ends_in_bn or (order == "bn_after_add" and not is_last):
                zero_bn = self.zero_init_residual and is_last
                y = self._norm(train, zero_bn, name=f"bn{n}")(y)
            if kernel == 3:  # layer responses of 2015 Fig. 7: 3x3 outputs after BN, before ReLU
                self.sow("intermediates", f"response{n}", y)
            if order != "full_preact" and (not is_last or order == "relu_before_add"):
                y = nn.relu(y)

        if shortcut is not None:
            if train and (drop_path_rate is not None or self.drop_path_rate > 0):
                y = drop_path(y, drop_rate, self.make_rng("dropout"))
            y = y + shortcut
        if order == "bn_after_add":
            y = self._norm(train, name=f"bn{last + 1}")(y)
        if order in ("post", "bn_after_add"):
            y = nn.relu(y)
        self.sow("intermediates", "output", y)
        return y

