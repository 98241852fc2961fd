"""``config.xla_flags``: which XLA flags a setting stands for, and putting them in $XLA_FLAGS
before JAX starts its backends (XLA reads the variable once)."""

from __future__ import annotations

import logging
import os

import ml_collections

from resnet_jax.errors import ConfigError
from resnet_jax.training.host import gpu_plugin_installed

# Recommended on GPUs (JAX "GPU performance tips"; the default of NVIDIA's JAX-Toolbox images):
# lets XLA overlap the gradient all-reduce with the backward pass on several GPUs.
GPU_XLA_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true",)


def xla_flags_for(setting: str) -> list[str]:
    """The flags ``config.xla_flags`` stands for; a malformed flag is a ConfigError."""
    if setting == "auto":
        return list(GPU_XLA_FLAGS) if gpu_plugin_installed() else []
    flags = setting.split()
    bad = [f for f in flags if not f.startswith("--") or len(f) < 3]
    if bad:
        raise ConfigError(
            f"config.xla_flags: {bad} are not XLA flags; give them as '--name=value', "
            "space-separated, or 'auto' / '' (see docs/training.md)"
        )
    return flags


def apply_xla_flags(config: ml_collections.ConfigDict) -> list[str]:
    """Adds ``config.xla_flags`` to $XLA_FLAGS (a flag already there keeps its value) and
    returns what was added. XLA reads the variable once, when JAX starts its backends: later,
    explicit flags are a ConfigError and "auto" ones are skipped with a warning."""
    flags = xla_flags_for(config.xla_flags)
    present = os.environ.get("XLA_FLAGS", "").split()
    names = {f.split("=", 1)[0] for f in present}
    new = [f for f in flags if f.split("=", 1)[0] not in names]
    if not new:
        return []
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        message = (f"config.xla_flags {new} cannot take effect: JAX has already started; set them "
                   "before the first JAX computation (train.py does) or in $XLA_FLAGS")
        if config.xla_flags != "auto":
            raise ConfigError(message)
        logging.getLogger(__name__).warning(message)
        return []
    os.environ["XLA_FLAGS"] = " ".join([*present, *new])
    return new
