"""Errors that modules of every layer raise, so any module may import them without importing
the code that reports them (``train.py`` and the CLIs turn them into ``error: ...`` lines)."""


class ConfigError(ValueError):
    """A config file, override or value is invalid."""
