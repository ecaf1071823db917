"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, which puts this
folder on ``sys.path``; scripts loaded otherwise add it themselves)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def portable(text: str) -> str:
    """A result's text without machine paths: paths inside this repository become repository-relative,
    those beside it (``../shared/datasets``) relative to it too, and paths under the temporary folder
    relative to that (``/tmp/run/x`` -> ``run/x``). A root is replaced only where a path starts
    (``/tmp/a/work/b`` keeps its ``work/``).

    >>> portable(str(REPO / "benchmarks" / "results") + os.sep + "x.json")
    'benchmarks/results/x.json'
    >>> portable("--work " + tempfile.gettempdir() + "/fl/work/runs")
    '--work fl/work/runs'
    """
    roots = [(str(REPO) + os.sep, ""), (str(REPO.parent) + os.sep, ".." + os.sep)]
    roots += [(str(t) + os.sep, "") for t in (Path(tempfile.gettempdir()).resolve(), Path(tempfile.gettempdir()))]
    # the longest root first; of equal ones the first listed (a repository kept directly in the temporary
    # folder: its siblings are ``../<name>``)
    first: dict[str, str] = {}
    for root, new in roots:
        first.setdefault(root, new)
    for root, new in sorted(first.items(), key=lambda r: -len(r[0])):
        text = re.sub(r"(?<![\w.~/-])" + re.escape(root), lambda _m: new, text)
    return text
