"""The ResNet network: a stem, stages of residual units, global average pooling, a classifier."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.blocks import (
    ACTIVATIONS,
    BN_RELU,
    PREACT_ORDERS,
    ModuleFactory,
    ResidualUnit,
    SimpleSelfAttention,
    SqueezeExcite,
    activate,
    check_activation,
)
from resnet_jax.models.layers import BatchNorm, ConvImpl, conv, he_normal, he_normal_fan_in

Dtype = Any
STEMS = ("imagenet", "cifar", "deep")

# torch.nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (neither paper specifies one).
_fc_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# ``weight_init``: "torchvision" (convs He fan-out, the classifier PyTorch's Linear default) or
# "fastai" (xresnet's init_cnn: every conv and the classifier He fan-in, biases 0).
WEIGHT_INITS = ("torchvision", "fastai")


def _fc_bias_init(fan_in: int) -> nn.initializers.Initializer:
    bound = fan_in**-0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class _ScanBody(nn.Module):
    """One unit as a scan body: carry x, consume this unit's drop-path rate."""

    unit: functools.partial
    features: int
    train: bool
    drop_path: bool

    @nn.compact
    def __call__(self, x: jax.Array, rate: jax.Array) -> tuple[jax.Array, None]:
        unit = self.unit(features=self.features, name="unit")
        return unit(x, self.train, rate if self.drop_path else None), None


class Stage(nn.Module):
    """A stage: ``num_units`` residual units of one width; the first one may change the shape.

    With ``scan_units`` the identical units 1..n-1 run as one ``nn.scan`` (parameters stacked
    under ``blocks/unit`` with a leading axis of n-1): the compiled program no longer grows with
    depth. With ``remat`` each unit's activations are recomputed in the backward pass instead of
    stored. Neither changes the numbers the stage computes.
    """

    unit: functools.partial  # ResidualUnit with the network-wide options and parts bound
    num_units: int
    features: int
    strides: int
    first_preact: str
    drop_path_rates: Sequence[float]
    scan_units: bool = False
    remat: bool = False
    attention_in_last_unit: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.scan_units and self.attention_in_last_unit and self.num_units > 1:
            raise ValueError("self_attention makes a stage's last unit differ from the others, "
                             "so its units cannot be scanned: use scan_units=False")
        # static_argnums counts the module itself as argument 0: (x=1, train=2).
        unit = nn.remat(self.unit.func, static_argnums=(2,)) if self.remat else self.unit.func
        unit = functools.partial(unit, **self.unit.keywords)
        scanned = self.scan_units and self.num_units > 1
        for i in range(1 if scanned else self.num_units):
            x = unit(
                features=self.features,
                strides=self.strides if i == 0 else 1,
                preact=self.first_preact if i == 0 else "residual",
                drop_path_rate=self.drop_path_rates[i],
                self_attention=self.attention_in_last_unit and i == self.num_units - 1,
                name=f"block{i}",
            )(x, train)
        if scanned:
            body = nn.remat(_ScanBody) if self.remat else _ScanBody
            scan = nn.scan(
                body, variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True}, length=self.num_units - 1,
            )
            rates = jnp.asarray(self.drop_path_rates[1:], jnp.float32)
            x, _ = scan(self.unit, self.features, train, max(self.drop_path_rates) > 0,
                        name="blocks")(x, rates)
        return x


class ResNet(nn.Module):
    """A residual (or plain) network in NHWC layout.

    The registered networks (``resnet_jax.list_models()``) are this class with options bound;
    every option below can be overridden through ``create_model(name, **options)``.

    Attributes:
      stage_sizes: residual units per stage, e.g. (3, 4, 6, 3) for ResNet-50 (2015 Table 1).
      stage_widths: base width ("planes") of each stage's units; stage i > 0 halves the resolution.
      num_classes: classifier outputs.
      bottleneck: bottleneck units (expansion 4) instead of basic ones.
      stem: ``imagenet`` (7x7/2 conv, BN, ReLU, 3x3/2 max-pool; 2015 Table 1), ``cifar`` (3x3 conv,
        BN, ReLU; 2015 §4.2) or ``deep`` (three 3x3 convs then max-pool; ResNet-D).
      stem_width: channels of the stem (the deep stem's first two convs use half of it).
      width_multiplier: multiplies stage_widths (Wide ResNet's k).
      order, shortcut, stride_in_1x1, avg_down, down_pool, groups, base_width, zero_init_residual:
        see ``ResidualUnit``.
      activation: ``relu`` (the papers), ``mish`` (fastai's xresnet) or ``silu``: the
        nonlinearity of the stem and every unit (``blocks.NONLINEARITIES``).
      se_reduction: squeeze-and-excitation in every unit with reduction r (SE-ResNet, Hu et al.
        2018; 16 in the paper); 0: none. See ``blocks.SqueezeExcite``.
      self_attention: fastai's ``SimpleSelfAttention`` in the last unit of the first stage, where
        fastai's xresnet puts it (``XResNet(sa=True)``); not with ``scan_units``. See
        ``blocks.SimpleSelfAttention``.
      weight_init: ``torchvision`` (convs He-normal over the fan-out k*k*c_out, as the 2015
        paper's Torch code and torchvision; the classifier ``torch.nn.Linear``'s default) or
        ``fastai`` (fastai's ``init_cnn``: He-normal over the fan-in k*k*c_in/groups for every
        conv and the classifier, biases 0; a grouped conv's kernels start sqrt(groups) times
        larger). Either way zero-init residual gammas and the self-attention layer are unchanged.
      bn_momentum, bn_epsilon: BatchNorm running-average momentum (Flax convention: 0.9 equals
        PyTorch's 0.1) and epsilon.
      frozen_bn: every BN (stem and units) normalises with its running statistics in training
        too and never updates them, as detection backbones and small-batch fine-tuning do
        (torchvision's ``FrozenBatchNorm2d``); parameters are unchanged.
      dtype, param_dtype: computation and parameter dtypes (BN statistics and logits are always
        float32).
      axis_name: mapped axis over which BN statistics are averaged (cross-device BN), or None.
      drop_path_rate: stochastic depth of the last unit; unit l of L gets l/L of it (the linear
        decay rule of Huang et al. 2016, Eq. 4). Needs a ``dropout`` rng in training.
      block_dropout_rate: dropout inside each residual branch (Wide ResNet).
      dropout_rate: dropout before the classifier.
      in_channels: channels of the input images.
      scan_units: run each stage's identical units (all but the first) as one ``nn.scan``:
        compile time and program size stop growing with depth (ResNet-1202 compiles in seconds),
        but with ``conv_impl="xla"`` the XLA:CPU step runs ~10x slower than unrolled
        (``conv_impl="auto"`` avoids the cause; docs/models.md).
        Parameters of those units are stacked; ``resnet_jax.models.layout`` converts.
      remat: recompute each unit's activations in the backward pass (``nn.remat``): activation
        memory of a train step no longer grows with depth, at ~1/3 more compute.
      conv_impl: convolution implementation, see ``layers.conv_general_dilated_fn``.

    The conv options (dtype, param_dtype, conv_impl) and BN options (bn_*, frozen_bn, dtypes,
    axis_name) are bound once into the ``conv`` and ``norm`` parts (``_parts``) that the stem and
    every unit build their layers from (and the dtypes into the units' SE gate and
    self-attention).

    Call as ``model.apply(variables, images, train=...)``, images of shape (N, H, W, in_channels).
    Logits are float32. ``return_features=True`` returns a dict with the stem, every stage's
    output, the pooled features and the logits (a backbone's multi-scale features); per-unit
    outputs and the 3x3 layers' responses are sown into the ``intermediates`` collection (pass
    ``mutable=["intermediates"]`` to get them).
    """

    stage_sizes: Sequence[int]
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    num_classes: int = 1000
    bottleneck: bool = False
    stem: str = "imagenet"
    stem_width: int = 64
    width_multiplier: int = 1
    order: str = "post"
    shortcut: str = "B"
    stride_in_1x1: bool = False
    avg_down: bool = False
    down_pool: str = "avg"
    groups: int = 1
    base_width: int = 64
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0
    block_dropout_rate: float = 0.0
    dropout_rate: float = 0.0
    in_channels: int = 3
    scan_units: bool = False
    remat: bool = False
    activation: str = "relu"
    se_reduction: int = 0
    self_attention: bool = False
    weight_init: str = "torchvision"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    frozen_bn: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str | None = None
    conv_impl: ConvImpl = "auto"

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            hint = ""
            if x.ndim == 4 and x.shape[1] == self.in_channels:
                hint = " Images look NCHW: transpose them with x.transpose(0, 2, 3, 1)."
            raise ValueError(
                f"expected NHWC images of shape (batch, height, width, {self.in_channels}), "
                f"got shape {tuple(x.shape)}.{hint}"
            )
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        check_activation(self.activation)
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(
                f"weight_init must be one of {WEIGHT_INITS}, got {self.weight_init!r}")

    def _parts(self) -> tuple[ModuleFactory, ModuleFactory, ModuleFactory, ModuleFactory]:
        """The configured conv, BatchNorm (train mode is bound where they are used), SE and
        self-attention."""
        kernel_init = he_normal_fan_in if self.weight_init == "fastai" else he_normal
        conv_part = functools.partial(conv, kernel_init=kernel_init, dtype=self.dtype,
                                      param_dtype=self.param_dtype, impl=self.conv_impl)
        norm_part = functools.partial(
            BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
            param_dtype=self.param_dtype, axis_name=self.axis_name, frozen=self.frozen_bn)
        se_part = functools.partial(SqueezeExcite, kernel_init=kernel_init, dtype=self.dtype,
                                    param_dtype=self.param_dtype)
        sa_part = functools.partial(SimpleSelfAttention, dtype=self.dtype,
                                    param_dtype=self.param_dtype)
        return conv_part, norm_part, se_part, sa_part

    def _stem(self, x: jax.Array, conv: ModuleFactory, norm: ModuleFactory) -> jax.Array:
        if self.stem == "deep":  # ResNet-D: three 3x3 convs replace the 7x7 (Bag of Tricks §4.2)
            x = conv(self.stem_width // 2, 3, 2, name="conv1_1")(x)
            x = activate(self, x, BN_RELU, norm, "bn1_1")
            x = conv(self.stem_width // 2, 3, 1, name="conv1_2")(x)
            x = activate(self, x, BN_RELU, norm, "bn1_2")
            x = conv(self.stem_width, 3, 1, name="conv1_3")(x)
        elif self.stem == "cifar":  # 2015 §4.2: "the first layer is 3x3 convolutions"
            x = conv(self.stem_width, 3, 1, name="conv1")(x)
        else:
            x = conv(self.stem_width, 7, 2, name="conv1")(x)
        # The CIFAR stem's 3x3 is the first layer of 2015 Fig. 7's responses.
        x = activate(self, x, BN_RELU, norm, "bn1",
                     response="response" if self.stem == "cifar" else None)
        if self.stem != "cifar":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool, return_features: bool = False
    ) -> jax.Array | dict[str, jax.Array]:
        self._check_input(x)
        x = jnp.asarray(x, self.dtype)
        features: dict[str, jax.Array] = {}
        preact_order = self.order in PREACT_ORDERS
        conv_part, norm_part, se_part, sa_part = self._parts()
        norm = functools.partial(norm_part, use_running_average=not train)

        x = self._stem(x, conv_part, norm)
        features["stem"] = x

        unit = functools.partial(
            ResidualUnit, conv=conv_part, norm=norm_part, squeeze_excite=se_part,
            attention=sa_part,
            bottleneck=self.bottleneck, order=self.order, shortcut=self.shortcut,
            stride_in_1x1=self.stride_in_1x1, avg_down=self.avg_down, down_pool=self.down_pool,
            groups=self.groups, base_width=self.base_width,
            zero_init_residual=self.zero_init_residual,
            dropout_rate=self.block_dropout_rate, activation=self.activation,
            se_reduction=self.se_reduction,
        )
        total_units = sum(self.stage_sizes)
        done = 0
        stages = zip(self.stage_sizes, self.stage_widths, strict=True)
        for s, (num_units, width) in enumerate(stages):
            rates = [self.drop_path_rate * (done + i + 1) / total_units for i in range(num_units)]
            # Identity Mappings §4: the stem's activation serves the first unit (no second
            # pre-activation); later stages pre-activate before the split, so projection
            # shortcuts take the pre-activated input (fb.resnet.torch "both_preact").
            first_preact = "none" if s == 0 else "both"
            x = Stage(
                unit=unit, num_units=num_units, features=width * self.width_multiplier,
                strides=1 if s == 0 else 2,
                first_preact=first_preact if preact_order else "residual",
                drop_path_rates=tuple(rates), scan_units=self.scan_units, remat=self.remat,
                attention_in_last_unit=self.self_attention and s == 0,
                name=f"layer{s + 1}",
            )(x, train)
            done += num_units
            features[f"stage{s + 1}"] = x

        if preact_order:  # Identity Mappings §4: the last unit is followed by a pre-activation
            x = activate(self, x, ACTIVATIONS[self.order].before, norm, "final_bn")
        x = jnp.mean(x, axis=(1, 2))
        features["pre_logits"] = x
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        fastai_init = self.weight_init == "fastai"
        x = nn.Dense(
            self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=he_normal_fan_in if fastai_init else _fc_kernel_init,
            bias_init=nn.initializers.zeros if fastai_init else _fc_bias_init(x.shape[-1]),
            name="fc",
        )(x)
        logits = jnp.asarray(x, jnp.float32)
        if return_features:
            features["logits"] = logits
            return features
        return logits
