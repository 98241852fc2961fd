"""Training: configs, optimizer and schedules, data-parallel steps, the loop, and tools.

    from resnet_jax.training import load_config, train_and_evaluate
    summary = train_and_evaluate(load_config("configs/quickstart.py"), "runs/quickstart")

Commands: ``python train.py``, ``python -m resnet_jax.training.evaluate``, ``... .predict``,
``... .plot``. See docs/training.md.

The names below are imported on first use (PEP 562), so importing one module of this package
(``config``, as ``train.py`` and ``resnet_jax.inference.load_run`` do) does not import the loop
and everything above it: the package stays a set of layers that only import downwards
(tests/test_imports.py).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# Public name -> the module of this package that defines it.
_EXPORTS = {
    "ConfigError": "config",
    "DataParallel": "parallel",
    "TrainingDivergedError": "metrics",
    "default_config": "config",
    "load_config": "config",
    "train_and_evaluate": "loop",
    "validate": "config",
}


def __getattr__(name: str) -> Any:
    """A public name or a module of this package, imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = sorted(_EXPORTS)
