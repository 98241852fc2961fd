"""Training configuration: defaults, loading a config file, ``--config.key=value`` overrides.

Config files follow the Flax-examples / big_vision convention: a Python file with
``get_config() -> ml_collections.ConfigDict`` whose docstring holds the exact command, the
hardware and the expected result. Every config starts from :func:`default_config`, so every
key exists and has a type; an override of an unknown key or with a value of the wrong type is a
:class:`ConfigError` that names the key (and the closest known keys), never a silent no-op.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from resnet_jax.errors import ConfigError  # re-exported: resnet_jax.training.config.ConfigError

# Keys whose values are forwarded verbatim to another API, so new sub-keys may be added by an
# override (e.g. --config.model_kwargs.drop_path_rate=0.1).
FREE_FORM_KEYS = ("model_kwargs", "dataset_options")

# Keys that may change between a run and its resumption without changing what is computed
# (bookkeeping); any other difference, the length included (it shapes the schedule), is an
# error on resume.
RESUMABLE_CHANGES = frozenset(
    {
        "log_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "keep_best",
        "async_checkpointing",
        "progress_bar",
        "eval_every_epochs",
        "eval_batch_size",
        "data_dir",
        "parallel",
        "xla_flags",
        "inference_weights",  # which weights eval/keep_best/evaluate use, not how they train
    }
)



def choices() -> dict[str, tuple[str, ...]]:
    """Allowed values of each choice key, read from the registries that implement them.

    Imported on use, as in :func:`validate`: they import JAX and optax, which reading a config
    does not need. The dependency points downwards only: none of them imports this module
    (``ConfigError`` comes from ``resnet_jax.errors``; tests/test_imports.py).
    """
    from resnet_jax.data.presets import PRESETS, VIEWS
    from resnet_jax.training import build, optim, parallel
    from resnet_jax.training.metrics import Progress

    return {
        "schedule": tuple(optim.SCHEDULES),
        "schedule_unit": ("epochs", "steps"),
        "warmup": tuple(optim.WARMUPS),
        "precision": build.PRECISIONS,
        "parallel": parallel.modes(),
        "augment": PRESETS,
        "eval_view": VIEWS,
        "progress_bar": Progress.MODES,
        "optimizer": tuple(optim.OPTIMIZERS),
        "loss": tuple(optim.LOSSES),
        "inference_weights": INFERENCE_WEIGHTS,
    }


# Which weights evaluate/predict/export/init_from and keep_best use: the trained ones or the EMA.
INFERENCE_WEIGHTS = ("raw", "ema")


def default_config() -> ml_collections.ConfigDict:
    """All training options with their defaults (ResNet-50 v1.5 on ImageNet, batch 256)."""
    c = ml_collections.ConfigDict()
    # Model: any name from resnet_jax.list_models(); model_kwargs go to create_model.
    c.model = "resnet50"
    c.model_kwargs = ml_collections.ConfigDict()
    # Start from pretrained weights: a workdir or checkpoint dir (PATH@STEP), or a PyTorch
    # .pth/.pt/.th state_dict; weights only, the run starts at step 0 (docs/training.md).
    c.init_from = ""
    # Data: see resnet_jax.data.create_dataset.
    c.dataset = "imagenet2012"
    c.data_dir = ""  # "" -> the dataset's default location
    c.train_split = "train"
    c.eval_split = "validation"
    c.image_size = 224
    # Evaluation (and the recorded inference) input size; 0 -> image_size. The networks are fully
    # convolutional, so a larger test size pays ("ResNet strikes back" A3: train 160, test 224).
    c.eval_image_size = 0
    # Progressive resizing (FFCV's ResNet recipes): > 0 trains at this size until
    # progressive_start, then at sizes ramping linearly to image_size at progressive_end (both in
    # schedule_unit), rounded to a multiple of progressive_multiple; 0 -> off.
    c.progressive_min_size = 0
    c.progressive_start = 0.0
    c.progressive_end = 0.0
    c.progressive_multiple = 32
    c.augment = "resnet_paper"
    c.eval_view = "center"
    c.dataset_options = ml_collections.ConfigDict()
    c.global_batch_size = 256
    c.eval_batch_size = 0  # 0 -> global_batch_size
    # Length: num_train_steps > 0 wins over num_epochs.
    c.num_epochs = 90.0
    c.num_train_steps = -1
    # Optimizer (He et al. 2015, Sec. 3.4): SGD, momentum 0.9, weight decay 1e-4.
    c.learning_rate = 0.1
    c.lr_scale_with_batch = True  # lr = learning_rate * global_batch_size / 256 (Goyal et al. 2017)
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 1e-4
    c.wd_exclude_bn_and_bias = False
    c.label_smoothing = 0.0
    c.grad_clip_norm = 0.0  # 0 -> no clipping
    # Fine-tuning (docs/training.md#fine-tuning). Parameters are named by their '/'-joined path
    # in params, e.g. layer1/block0/conv1/kernel, fc/bias.
    c.frozen = ""  # re.search regex: matching params get no update, momentum or decay; "" -> none
    c.lr_multipliers = ""  # "REGEX=FACTOR;REGEX=FACTOR": lr x FACTOR, first match wins; "" -> none
    c.frozen_bn_stats = False  # BN uses (and never updates) its running statistics in training
    # Learning-rate schedule. lr_boundaries and warmup_length are in schedule_unit.
    c.schedule = "cosine"
    c.schedule_unit = "epochs"
    c.lr_boundaries = (30.0, 60.0)
    c.lr_decay_factor = 0.1
    c.warmup = "linear"  # linear: 0 -> lr; constant: warmup_lr, then lr (He et al. 2015, Sec. 4.2)
    c.warmup_length = 5.0
    c.warmup_lr = 0.01
    # Modern recipe (docs/recipes.md): optimizer, schedules, EMA, accumulation
    c.optimizer = "sgd"  # sgd (momentum/nesterov above) | adamw | radam | lamb | lars
    c.adam_b1 = 0.9  # adamw/radam/lamb first-moment decay (Loshchilov & Hutter 2019)
    c.adam_b2 = 0.999  # adamw/radam/lamb second-moment decay
    c.adam_eps = 1e-8  # adamw/radam/lamb epsilon (PyTorch AdamW; LAMB's paper uses 1e-6)
    c.lars_trust_coefficient = 0.001  # LARS eta (You et al. 2017, Alg. 1; MLPerf ResNet)
    c.lars_eps = 0.0  # LARS: added to the trust ratio's denominator
    c.lookahead_steps = 0  # k > 0: Lookahead (Zhang et al. 2019) syncs the slow weights every k
    c.lookahead_alpha = 0.5  # Lookahead slow-weight step size; radam + (6, 0.5) = fastai's Ranger
    c.flat_fraction = 0.75  # flat_cosine: peak lr for this fraction of training (fastai)
    c.schedule_power = 2.0  # polynomial: lr * (1 - t)^power after warm-up (MLPerf ResNet LARS)
    c.one_cycle_pct_start = 0.25  # one_cycle: rise lr/div -> lr over this fraction (fastai)
    c.one_cycle_div = 25.0  # one_cycle: the starting lr is lr / div (fastai, PyTorch OneCycleLR)
    c.one_cycle_div_final = 1e5  # one_cycle: the final lr is lr / div_final (fastai)
    # one_cycle: momentum / Adam's b1 goes m0 -> m1 (at the lr's peak) -> m2; () keeps it fixed
    c.one_cycle_moms = (0.95, 0.85, 0.95)  # fastai's fit_one_cycle moms
    c.ema_decay = 0.0  # EMA of params and BN statistics; 0 -> off, else in (0, 1), e.g. 0.9998
    c.ema_warmup = False  # decay = min(ema_decay, (1 + step) / (10 + step)) (TF/timm)
    c.inference_weights = "raw"  # "ema": evaluate/predict/export/init_from/keep_best use the EMA
    c.grad_accum_steps = 1  # k > 1: k micro-batches per optimizer step (same global batch)
    # Numerics and parallelism.
    c.precision = "auto"  # auto: bfloat16 on TPU/GPU, float32 on CPU
    c.loss_scale_init = 2.0**15  # float16 only: dynamic loss scaling
    c.loss_scale_period = 2000
    c.parallel = "shard_map"
    c.sync_bn = True  # BN statistics over the global batch; False: per device
    # Added to $XLA_FLAGS before JAX starts. "auto": GPU_XLA_FLAGS where a GPU plugin of jax is
    # installed, else none; "": none; else the flags themselves ("--a=1 --b=2").
    c.xla_flags = "auto"
    c.seed = 0
    # Bookkeeping.
    c.log_every_steps = 100
    c.eval_every_epochs = 1.0  # 0 -> evaluate only at the end
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.keep_best = True  # also keep the checkpoint with the best eval top-1
    c.async_checkpointing = True
    c.progress_bar = "auto"  # auto: a bar on a terminal, log lines otherwise
    # Modern recipe (docs/recipes.md): mixing, augmentation, loss. Mixup/CutMix run on the device
    # in the train step (timm's Mixup, batch mode); RandAugment/TrivialAugment and random erasing
    # are dataset_options (auto_augment, random_erasing; docs/input_pipeline.md).
    c.mixup_alpha = 0.0  # Beta(alpha, alpha) Mixup; 0 -> off
    c.cutmix_alpha = 0.0  # Beta(alpha, alpha) CutMix; 0 -> off
    c.mix_prob = 1.0  # probability that a batch is mixed at all
    c.mix_switch_prob = 0.5  # probability of CutMix instead of Mixup when both alphas are > 0
    c.loss = "softmax"  # softmax cross-entropy | bce: sigmoid BCE ("ResNet strikes back")
    c.bce_target_threshold = 0.0  # bce only: > 0 binarises the targets at it (RSB: 0.2); 0 -> off
    return c


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``get_config()`` from a Python file and applies ``key=value`` overrides.

    ``path`` may end in ``:arg`` (e.g. ``configs/resnet50.py:paper2015``), which calls
    ``get_config(arg)``, as ml_collections' config flags do. Overrides may be given as
    ``--config.a.b=v``, ``config.a.b=v`` or ``a.b=v``.
    """
    arg = None
    if not os.path.isfile(path) and ":" in path:
        path, arg = path.rsplit(":", 1)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location("_resnet_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()")
    try:
        config = module.get_config() if arg is None else module.get_config(arg)
    except (TypeError, ValueError) as e:
        shown = "" if arg is None else repr(arg)
        raise ConfigError(f"{path}: get_config({shown}) failed: {e}") from None
    unknown = _unknown_keys(config, default_config())
    if unknown:
        raise ConfigError(f"{path} sets unknown config keys: {', '.join(unknown)}")
    for item in overrides:
        apply_override(config, item)
    validate(config)
    return config


def _unknown_keys(config: ml_collections.ConfigDict, ref: ml_collections.ConfigDict) -> list[str]:
    return [k for k in config.keys() if k not in ref]


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Applies one ``[--][config.]key=value`` override in place, checking key and type."""
    s = item[2:] if item.startswith("--") else item
    s = s[len("config.") :] if s.startswith("config.") else s
    if "=" not in s:
        raise ConfigError(f"override {item!r} is not of the form --config.key=value")
    key, raw = s.split("=", 1)
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(_unknown_message(".".join(parts[: i + 1]), node))
        node = node[part]
    leaf = parts[-1]
    free_form = parts[0] in FREE_FORM_KEYS and len(parts) > 1
    if leaf not in node:
        if not free_form:
            raise ConfigError(_unknown_message(key, node))
        # A Python literal; true/false are the bools they mean on every typed key (else the
        # string "false" would reach create_model and switch an option on).
        low = raw.strip().lower()
        node[leaf] = low == "true" if low in ("true", "false") else _literal(raw)
        return
    try:
        node[leaf] = _coerce(raw, node[leaf], key)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--config.{key}={raw}: {e}") from None


def _unknown_message(key: str, node: ml_collections.ConfigDict) -> str:
    leaf = key.split(".")[-1]
    close = difflib.get_close_matches(leaf, list(node.keys()), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown config key {key!r}.{hint} Known keys: {', '.join(sorted(node.keys()))}"


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _coerce(raw: str, current: Any, key: str) -> Any:
    """Parses ``raw`` as a value of the type of ``current``; wrong types raise ConfigError."""
    want = type(current).__name__
    if isinstance(current, bool):
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}={raw}: expected a bool (true/false)")
    if isinstance(current, str):
        return raw
    value = _literal(raw)
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"--config.{key}={raw}: expected an int, got {raw!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"--config.{key}={raw}: expected a number, got {raw!r}")
        return float(value)
    if isinstance(current, tuple | list):
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, tuple | list):
            raise ConfigError(f"--config.{key}={raw}: expected a tuple like (1, 2)")
        if value and current and not all(isinstance(v, int | float) for v in value):
            raise ConfigError(f"--config.{key}={raw}: expected a tuple of numbers")
        return tuple(value)
    raise ConfigError(f"--config.{key}: values of type {want} cannot be overridden")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks value ranges and choices; raises ConfigError naming the offending key."""
    ref = default_config()
    unknown = _unknown_keys(config, ref)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
    for key in ref.keys():
        if key not in config:
            raise ConfigError(f"config lacks key {key!r} (start configs from default_config())")
        got, want = config[key], ref[key]
        if isinstance(want, float) and isinstance(got, int) and not isinstance(got, bool):
            continue
        if isinstance(want, tuple | list) and isinstance(got, tuple | list):
            continue
        if type(got) is not type(want):
            raise ConfigError(
                f"config.{key} = {got!r} has type {type(got).__name__}, "
                f"expected {type(want).__name__}"
            )
    for key, allowed in choices().items():
        if config[key] not in allowed:
            raise ConfigError(f"config.{key} = {config[key]!r}; choose one of {allowed}")
    positive = ("global_batch_size", "log_every_steps", "checkpoint_every_steps", "image_size")
    for key in positive:
        if config[key] <= 0:
            raise ConfigError(f"config.{key} must be > 0, got {config[key]}")
    if config.eval_image_size < 0:
        raise ConfigError(
            f"config.eval_image_size must be >= 0 (0: image_size), got {config.eval_image_size}"
        )
    if (config.eval_image_size not in (0, config.image_size)
            and config.dataset_options.get("normalization") == "per_pixel_mean"):
        raise ConfigError(
            "config.eval_image_size differs from image_size, but per_pixel_mean normalisation "
            "subtracts a mean image of the training size; use mean_std or one size"
        )
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ConfigError("set config.num_train_steps > 0 or config.num_epochs > 0")
    if config.learning_rate < 0 or config.weight_decay < 0 or config.grad_clip_norm < 0:
        raise ConfigError("learning_rate, weight_decay and grad_clip_norm must be >= 0")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ConfigError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing}")
    if not 0.0 <= config.momentum < 1.0:
        raise ConfigError(f"config.momentum must be in [0, 1), got {config.momentum}")
    if config.keep_checkpoints < 1:
        raise ConfigError("config.keep_checkpoints must be >= 1")
    if config.warmup_length < 0:
        raise ConfigError("config.warmup_length must be >= 0")
    if list(config.lr_boundaries) != sorted(config.lr_boundaries):
        raise ConfigError(f"config.lr_boundaries must increase, got {config.lr_boundaries}")
    from resnet_jax.training import optim
    from resnet_jax.training.xla_flags import xla_flags_for

    optim.check_regex("frozen", config.frozen)
    optim.parse_lr_multipliers(config.lr_multipliers)
    _validate_recipe(config)
    _validate_progressive_resizing(config, ref)
    _validate_mixing_and_loss(config, ref)
    xla_flags_for(config.xla_flags)


def _validate_recipe(config: ml_collections.ConfigDict) -> None:
    """Ranges of the modern-recipe keys (optimizer, schedules, EMA, accumulation)."""
    for key in ("adam_b1", "adam_b2"):
        if not 0.0 <= config[key] < 1.0:
            raise ConfigError(f"config.{key} must be in [0, 1) (e.g. 0.9), got {config[key]}")
    for key in ("adam_eps", "lars_eps"):
        if config[key] < 0:
            raise ConfigError(f"config.{key} must be >= 0, got {config[key]}")
    if config.lars_trust_coefficient <= 0:
        raise ConfigError(
            f"config.lars_trust_coefficient must be > 0 (e.g. 0.001), got "
            f"{config.lars_trust_coefficient}"
        )
    if config.lookahead_steps < 0:
        raise ConfigError(
            f"config.lookahead_steps must be >= 0 (0: off, e.g. 6), got {config.lookahead_steps}"
        )
    if not 0.0 < config.lookahead_alpha <= 1.0:
        raise ConfigError(
            f"config.lookahead_alpha must be in (0, 1] (e.g. 0.5), got {config.lookahead_alpha}"
        )
    if not 0.0 <= config.flat_fraction <= 1.0:
        raise ConfigError(f"config.flat_fraction must be in [0, 1], got {config.flat_fraction}")
    if config.schedule_power <= 0:
        raise ConfigError(f"config.schedule_power must be > 0, got {config.schedule_power}")
    if not 0.0 < config.one_cycle_pct_start < 1.0:
        raise ConfigError(
            f"config.one_cycle_pct_start must be in (0, 1) (e.g. 0.25), got "
            f"{config.one_cycle_pct_start}"
        )
    for key in ("one_cycle_div", "one_cycle_div_final"):
        if config[key] < 1.0:
            raise ConfigError(f"config.{key} must be >= 1 (lr / {key[10:]}), got {config[key]}")
    moms = tuple(config.one_cycle_moms)
    if moms and (len(moms) != 3 or not all(0.0 < m < 1.0 for m in moms)):
        raise ConfigError(
            f"config.one_cycle_moms must be three momentums in (0, 1), e.g. (0.95, 0.85, 0.95), "
            f"or () to keep the momentum fixed; got {moms}"
        )
    if config.ema_decay != 0.0 and not 0.0 < config.ema_decay < 1.0:
        raise ConfigError(
            f"config.ema_decay must be in (0, 1) (e.g. 0.9998), or 0 for no EMA; got "
            f"{config.ema_decay}"
        )
    if config.inference_weights == "ema" and config.ema_decay == 0.0:
        raise ConfigError(
            "config.inference_weights='ema' needs an EMA: set config.ema_decay in (0, 1)"
        )
    k = config.grad_accum_steps
    if k < 1 or config.global_batch_size % k:
        raise ConfigError(
            f"config.grad_accum_steps={k} must be >= 1 and divide config.global_batch_size="
            f"{config.global_batch_size} (and the per-device batch)"
        )


def _validate_progressive_resizing(
    config: ml_collections.ConfigDict, ref: ml_collections.ConfigDict
) -> None:
    """progressive_*: a ramp from a size in (0, image_size] that ends after it starts."""
    keys = ("progressive_start", "progressive_end", "progressive_multiple")
    low = config.progressive_min_size
    if low == 0:
        for key in keys:
            if config[key] != ref[key]:
                raise ConfigError(f"config.{key} = {config[key]} has no effect: progressive "
                                  "resizing is off; set config.progressive_min_size > 0")
        return
    if not 0 < low <= config.image_size:
        raise ConfigError(f"config.progressive_min_size must be in (0, image_size="
                          f"{config.image_size}] (0: off), got {low}")
    if not 0 <= config.progressive_start <= config.progressive_end or config.progressive_end == 0:
        raise ConfigError(
            "config.progressive_start and progressive_end must satisfy 0 <= start <= end, end > 0 "
            f"(in {config.schedule_unit}), got {config.progressive_start} and "
            f"{config.progressive_end}")
    if config.progressive_multiple < 1:
        raise ConfigError(f"config.progressive_multiple must be >= 1 (e.g. 32), got "
                          f"{config.progressive_multiple}")
    if config.dataset_options.get("normalization") == "per_pixel_mean":
        raise ConfigError("progressive resizing needs a normalisation without a mean image of one "
                          "size (per_pixel_mean); use mean_std")


def _validate_mixing_and_loss(
    config: ml_collections.ConfigDict, ref: ml_collections.ConfigDict
) -> None:
    """Mixup/CutMix, the loss, and the dataset_options auto_augment / random_erasing."""
    for key in ("mixup_alpha", "cutmix_alpha"):
        if config[key] < 0:
            raise ConfigError(f"config.{key} must be >= 0 (0 turns it off), got {config[key]}")
    for key in ("mix_prob", "mix_switch_prob"):
        if not 0.0 <= config[key] <= 1.0:
            raise ConfigError(f"config.{key} must be in [0, 1], got {config[key]}")
    if config.mixup_alpha == 0 and config.cutmix_alpha == 0:
        for key in ("mix_prob", "mix_switch_prob"):
            if config[key] != ref[key]:
                raise ConfigError(
                    f"config.{key} = {config[key]} has no effect: mixing is off; set "
                    "config.mixup_alpha and/or config.cutmix_alpha > 0 (e.g. 0.2 and 1.0)"
                )
    if not 0.0 <= config.bce_target_threshold < 1.0:
        raise ConfigError(
            f"config.bce_target_threshold must be in [0, 1), got {config.bce_target_threshold}"
        )
    if config.bce_target_threshold > 0 and config.loss != "bce":
        raise ConfigError("config.bce_target_threshold needs config.loss='bce'")
    _validate_host_augment(config.dataset_options)


# tf.image.ResizeMethod's values (a test checks them against TensorFlow's): named here so a
# typo is a config error before TensorFlow is imported.
RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian",
                  "mitchellcubic")


def _validate_host_augment(options: ml_collections.ConfigDict) -> None:
    """dataset_options.auto_augment (a policy string), random_erasing (a probability) and
    resize_method (a tf.image.resize method)."""
    from resnet_jax.data.policy import parse_auto_augment  # no TensorFlow import

    method = options.get("resize_method", "bilinear")
    if method not in RESIZE_METHODS:
        raise ConfigError(
            f"config.dataset_options.resize_method = {method!r}; choose one of {RESIZE_METHODS}")

    try:
        parse_auto_augment(options.get("auto_augment", ""))
    except ValueError as e:
        raise ConfigError(f"config.dataset_options.auto_augment: {e}") from None
    prob = options.get("random_erasing", 0.0)
    if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0.0 <= prob <= 1.0:
        raise ConfigError(
            f"config.dataset_options.random_erasing must be a probability in [0, 1] "
            f"(0: off; timm/RSB use 0.25), got {prob!r}"
        )


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A JSON-serialisable plain dict of the config (tuples become lists)."""
    return json.loads(config.to_json())


def config_from_dict(saved: dict[str, Any]) -> ml_collections.ConfigDict:
    """The config of a saved ``to_dict`` (a checkpoint's), on top of today's defaults, so keys
    added since that run was saved take their default values."""
    config = default_config()
    config.update_from_flattened_dict(_flatten(saved))
    return config


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            sub = _flatten(v, f"{prefix}{k}.")
            if sub:
                out.update(sub)
            else:
                out[f"{prefix}{k}"] = ml_collections.ConfigDict()
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two config dicts (``RESUMABLE_CHANGES`` ignored).

    A key added to ``default_config`` after ``saved`` was written counts as its default there,
    so runs from before the key existed still resume.
    """
    defaults = to_dict(default_config())
    keys = (set(saved) | set(current)) - RESUMABLE_CHANGES
    before = {k: saved.get(k, defaults.get(k)) for k in keys}
    return {
        k: (before[k], current.get(k))
        for k in sorted(keys)
        if before[k] != current.get(k)
    }
