"""Checks of one config value each: the value, converted, when it is valid, else a ``ConfigError`` that names the
key, the value and what it must be (shown as one line, ``rankmix.errors``)."""

from __future__ import annotations

from rankmix.errors import ConfigError


def positive_int(key: str, value) -> int:
    """``value`` when it is a positive integer (not a bool), else ``ConfigError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, value, "must be a positive integer")
    return value


def probability(key: str, value) -> float:
    """``value`` as a float when it lies in [0, 1), else ``ConfigError`` naming ``key``."""
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(key, value, "must be a number in [0, 1)")
    return float(value)


def choice(key: str, value, allowed) -> str:
    """``value`` when it is one of ``allowed``, else ``ConfigError`` naming ``key`` and the allowed values."""
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(key, value, f"must be one of {', '.join(allowed)}")
    return value


def real(key: str, value) -> float:
    """``value`` as a float when it is a number (not a bool), else ``ConfigError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, "must be a number")
    return float(value)
