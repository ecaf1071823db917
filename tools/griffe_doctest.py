"""A griffe extension for the API reference (mkdocs.yml): doctest examples and reST literal
blocks of the docstrings become fenced code blocks before Markdown sees them.

freetumor's docstrings are written for ``pytest --doctest-modules`` and for reading in the source:
examples are ``>>>`` lines (under ``Example:`` or loose) and literal blocks follow a ``::``. Read as
Markdown, ``>>>`` would start nested block quotes and ``[...]`` in an output would be taken for a
link. Only the rendered text changes; the source is untouched.
"""

from __future__ import annotations

import re

import griffe

_INDENT = re.compile(r"^(\s*)")


def _indent(line: str) -> int:
    return len(_INDENT.match(line).group(1))


def fence_blocks(text: str) -> str:
    """Fence doctest runs (``>>>`` to the next blank line) and the indented block after a ``::``."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(">>>"):
            ind = " " * _indent(line)
            out.append(f"{ind}```pycon")
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= len(ind):
                out.append(ind + lines[i][len(ind):])
                i += 1
            out.append(f"{ind}```")
            continue
        if stripped.endswith("::") and not stripped.startswith(">>>"):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            base = _indent(line)
            if j < len(lines) and _indent(lines[j]) > base:
                out.append(line[: len(line) - 1] if stripped != "::" else "")
                ind = " " * base
                block = []
                k = j
                while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) > base):
                    block.append(lines[k])
                    k += 1
                while block and not block[-1].strip():
                    block.pop()
                    k -= 1
                deep = min(_indent(b) for b in block if b.strip())
                out += ["", f"{ind}```text", *[ind + b[deep:] if b.strip() else "" for b in block], f"{ind}```"]
                i = k
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Rewrite each docstring's examples and literal blocks as fenced code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_blocks(obj.docstring.value)
