"""Training: configs, optimizer and schedules, data-parallel steps, the loop, and tools.

    from resnet_jax.training import load_config, train_and_evaluate
    summary = train_and_evaluate(load_config("configs/quickstart.py"), "runs/quickstart")

Commands: ``python train.py``, ``python -m resnet_jax.training.evaluate``, ``... .predict``,
``... .plot``. See docs/training.md.
"""

from resnet_jax.training.config import ConfigError, default_config, load_config, validate
from resnet_jax.training.loop import TrainingDivergedError, train_and_evaluate
from resnet_jax.training.parallel import DataParallel

__all__ = [
    "ConfigError",
    "DataParallel",
    "TrainingDivergedError",
    "default_config",
    "load_config",
    "train_and_evaluate",
    "validate",
]
