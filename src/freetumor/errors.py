"""Error types. Every problem with user input is a :class:`FreeTumorError`.

The message is one line that names the file (when there is one) and what is
wrong with it; the CLI prints it as ``error: <message>`` and exits with 1.

Example:
    >>> err = InputError("scan.nii.gz", "contains NaN voxels")
    >>> str(err)
    'scan.nii.gz: contains NaN voxels'
    >>> isinstance(err, ValueError)
    True
"""

from __future__ import annotations

import os


class FreeTumorError(ValueError):
    """Base class of all errors caused by the user's input or settings."""

    def __init__(self, message: str):
        # Always a single line: the CLI promises one line per error.
        super().__init__(" ".join(str(message).split()))


class InputError(FreeTumorError):
    """A file the user gave is unreadable or inconsistent.

    Args:
        path: the offending file (or folder).
        problem: what is wrong, in a few words.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(FreeTumorError):
    """An option or setting has an invalid value."""
