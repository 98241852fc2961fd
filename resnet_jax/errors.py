"""Errors that modules of every layer raise, so any module may import them without importing
the code that reports them (``train.py`` and the CLIs turn them into ``error: ...`` lines)."""


class ConfigError(ValueError):
    """A config file, override or value is invalid."""


class PretrainedError(ValueError):
    """``init_from`` names nothing usable, or weights that do not fit the model."""
