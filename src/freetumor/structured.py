"""Bounded reading of the JSON and YAML documents a command is given.

Every JSON or YAML file that a command reads from the user (datalists, label maps, lesion
profiles, configs, synthesis records, report summaries) goes through :func:`read_json` or
:func:`read_yaml`. Before anything is parsed into Python objects, the text is checked against two
limits, and a document past either is a one-line :class:`~freetumor.errors.InputError` that names
the file and the limit:

* its size, at most :data:`MAX_BYTES` (64 MiB: the largest datalist of the public sources is
  well under 1 MiB; a bigger file is almost surely not one of ours, and parsing it could take
  gigabytes of memory);
* its nesting depth, at most :data:`MAX_DEPTH` levels (100: our formats are at most about 6 deep;
  Python's parsers recurse per level and would fail with a ``RecursionError`` past about 1000).
  JSON's depth is found by a scan of its brackets outside strings; YAML's from the parser's event
  stream, which does not recurse.

Example:
    >>> json_depth('{"a": [1, {"b": "[[[["}]}')
    3
    >>> try:
    ...     check_json_text("[" * 200 + "]" * 200, "deep.json", "datalist")
    ... except InputError as exc:
    ...     print(exc)
    deep.json: datalist nested too deeply (200 levels, the limit is 100); refused before parsing
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

MAX_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 100
_JSON_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # a backslash and the character it escapes


def _size_text(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def read_text_bounded(path: str | os.PathLike, what: str, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of ``path``, refused (one line) when larger than ``max_bytes``, before reading it.

    Raises:
        InputError: missing file, a folder, too large, unreadable or not UTF-8 text.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise InputError(p, f"{what} not found") from None
    except OSError as exc:
        raise InputError(p, f"cannot read the {what} ({exc.strerror or type(exc).__name__})") from None
    if p.is_dir():
        raise InputError(p, f"is a folder, not a {what} file")
    if size > max_bytes:
        raise InputError(p, f"{what} of {_size_text(size)} is larger than the limit of {_size_text(max_bytes)}; "
                            "refused before reading")
    try:
        with open(p, "rb") as fh:
            data = fh.read(max_bytes + 1)  # a FIFO or a growing file cannot exceed the limit either
    except OSError as exc:
        raise InputError(p, f"cannot read the {what} ({exc.strerror or type(exc).__name__})") from None
    if len(data) > max_bytes:
        raise InputError(p, f"{what} is larger than the limit of {_size_text(max_bytes)}; refused before reading")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(p, f"not a readable {what}: not UTF-8 text (a binary file?)") from None


def json_depth(text: str | bytes) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON text, brackets inside strings not counted.

    Vectorised (a few hundred MB/s): escaped characters are dropped, then a character is inside a
    string when an odd number of quotes precede it.
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if b"\\" in raw:
        raw = _JSON_ESCAPE.sub(b"", raw)
    b = np.frombuffer(raw, np.uint8)
    if b.size == 0:
        return 0
    # parity of the quotes so far (a uint8 running sum wraps, its parity does not)
    outside = (np.cumsum((b == 0x22).view(np.uint8), dtype=np.uint8) & 1) == 0
    step = (((b == 0x5B) | (b == 0x7B)).view(np.int8) - ((b == 0x5D) | (b == 0x7D)).view(np.int8)) * outside
    return int(max(0, np.cumsum(step, dtype=np.int64).max()))


def check_json_text(text: str, where: str | os.PathLike, what: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse (one line) JSON text nested deeper than ``max_depth``, before it is parsed."""
    depth = json_depth(text)
    if depth > max_depth:
        raise InputError(where, f"{what} nested too deeply ({depth} levels, the limit is {max_depth}); "
                                "refused before parsing")


def parse_json(text: str, where: str | os.PathLike, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """JSON text checked for depth (:func:`check_json_text`), then parsed; a syntax error is one line."""
    check_json_text(text, where, what, max_depth)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError(where, f"not a readable JSON {what} ({type(exc).__name__})") from None


def read_json(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """A JSON file of at most ``max_bytes`` and ``max_depth`` levels, parsed; every problem one line on ``path``.

    ``what`` names the document in messages (``"datalist"``, ``"lesion profile"``, ...).
    """
    return parse_json(read_text_bounded(path, what, max_bytes), path, what, max_depth)


def yaml_depth(text: str, loader=None, stop_after: int | None = None) -> int:
    """The deepest nesting of YAML text, from the parser's events (no objects are built, no recursion).

    Stops counting once past ``stop_after``. Raises the parser's ``yaml.YAMLError`` on bad YAML.
    """
    import yaml  # deferred: PyYAML loads only when a YAML document is read (--help stays light)

    depth = deepest = 0
    for event in yaml.parse(text, Loader=loader or yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            deepest = max(deepest, depth)
            if stop_after is not None and deepest > stop_after:
                break
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
    return deepest


def check_yaml_text(text: str, where: str | os.PathLike, what: str, loader=None, max_depth: int = MAX_DEPTH) -> None:
    """Refuse (one line) YAML text nested deeper than ``max_depth``, before any object is built.

    A syntax error is left to the caller's own parse (it reports it in its own words)."""
    import yaml  # deferred: as in yaml_depth

    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise InputError(where, f"{what} is larger than the limit of {_size_text(MAX_BYTES)}; refused before parsing")
    try:
        depth = yaml_depth(text, loader, stop_after=max_depth)
    except yaml.YAMLError:
        return
    if depth > max_depth:
        raise InputError(where, f"{what} nested too deeply (more than the limit of {max_depth} levels); "
                                "refused before parsing")


def read_yaml(path: str | os.PathLike, what: str, loader=None, *, max_bytes: int = MAX_BYTES,
              max_depth: int = MAX_DEPTH) -> Any:
    """A YAML file of at most ``max_bytes`` and ``max_depth`` levels, parsed with ``loader`` (a
    ``SafeLoader`` by default); every problem is one line on ``path``."""
    import yaml  # deferred: as in yaml_depth

    text = read_text_bounded(path, what, max_bytes)
    check_yaml_text(text, path, what, loader, max_depth)
    try:
        return yaml.load(text, Loader=loader or yaml.SafeLoader)  # noqa: S506 - a SafeLoader (or subclass)
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({' '.join(str(exc).split())[:200] or type(exc).__name__})") from None
    except RecursionError:
        raise InputError(path, f"{what} nested too deeply; refused") from None
