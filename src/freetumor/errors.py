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


class CaseErrors(FreeTumorError):
    """Bad cases found by an up-front check: the CLI prints one ``error:`` line per case.

    Args:
        lines: one ``<file>: <problem>`` line per bad case; the last may carry a closing note.

    Example:
        >>> err = CaseErrors(["a.nii.gz: empty file", "b.nii.gz: not 3D"])
        >>> err.lines[1], str(err)
        ('b.nii.gz: not 3D', 'a.nii.gz: empty file (and 1 more bad case)')
    """

    def __init__(self, lines: list[str]):
        self.lines = [" ".join(str(line).split()) for line in lines]
        more = len(self.lines) - 1
        super().__init__(self.lines[0] + (f" (and {more} more bad case{'s' if more > 1 else ''})" if more else ""))
