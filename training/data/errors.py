"""Errors raised while reading, validating or naming OGBench-format dataset files."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file is unusable; the message names the file and what was expected."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A dataset file does not exist; the message says which command would create it."""


class UnknownEnvError(ValueError):
    """An environment or task name that the data tools do not know how to handle."""
