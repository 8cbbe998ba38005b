"""Errors that rankmix reports as one clear line (no traceback) before or during a run."""


def first_line(err: BaseException) -> str:
    """The first line of an underlying library's error, whole (never cut mid-reason), else its type's name."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


class RankmixError(Exception):
    """Base class: the message is shown to the user as is."""


class ConfigError(RankmixError):
    """A configuration value is invalid. The message names the key, the value and the fix."""

    def __init__(self, key: str, value, problem: str):
        self.key, self.value, self.problem = key, value, problem
        super().__init__(f"{key}={value!r}: {problem}")

    def prefixed(self, prefix: str) -> "ConfigError":
        return ConfigError(f"{prefix}.{self.key}", self.value, self.problem)


class DataError(RankmixError):
    """A data file is missing or malformed. The message names the file (and line) and the fix."""


class NonFiniteLossError(RankmixError):
    """The training loss became NaN or infinite."""


class NotMergeableError(RankmixError):
    """merge()/unmerge() was asked of a method whose update is not a fixed matrix."""
