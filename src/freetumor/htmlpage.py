"""Static HTML report pages: headings, text, pictures and tables in one file.

:func:`write_html_page` writes a self-contained page (inline CSS, no scripts,
no external resources) that opens from disk in any browser; pictures are
referenced by relative path, so keep them beside the page. All text is
HTML-escaped. :func:`lesion_table` turns lesion records into a table section.

Example:
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "index.html")
    >>> write_html_page(out, "Demo", [{"heading": "Lesions", "text": "a < b",
    ...                                "table": {"columns": ["n", "ml"], "rows": [[1, 2.345678]]}}])
    >>> page = open(out, encoding="utf-8").read()
    >>> "a &lt; b" in page, "2.35" in page
    (True, True)
"""

from __future__ import annotations

import html
import math
import numbers
import os
import re
from typing import Sequence
from urllib.parse import quote

from . import __version__
from .io import write_bytes_atomic

__all__ = ["write_html_page", "lesion_table", "format_value"]

LESION_COLUMNS = [
    "case",
    "lesion",
    "organ",
    "size class",
    "centre (mm)",
    "semi-axes (mm)",
    "volume (mL)",
    "mean HU before",
    "mean HU after",
    "seed",
]

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #1d1f23;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #1f2933; color: #fff; padding: 18px 0; }
header h1 { margin: 0; font-size: 1.5rem; font-weight: 600; }
.wrap { max-width: 1240px; margin: 0 auto; padding: 0 20px; }
nav { margin-top: 6px; font-size: .9rem; }
nav a { color: #b8d8ff; margin-right: 14px; text-decoration: none; }
nav a:hover { text-decoration: underline; }
main { padding: 8px 0 24px; }
section { background: #fff; border: 1px solid #e1e4e8; border-radius: 6px; padding: 4px 20px 16px; margin: 18px 0; }
h2 { font-size: 1.2rem; margin: 14px 0 8px; }
p { margin: 8px 0; }
figure { margin: 12px 0; }
img { max-width: 100%; height: auto; display: block; border: 1px solid #d0d4d9; border-radius: 3px; }
figcaption { font-size: .85rem; color: #5a6270; margin-top: 3px; }
.table { overflow-x: auto; margin: 12px 0; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border: 1px solid #cfd4da; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
footer { color: #6b7280; font-size: .8rem; padding: 10px 0 24px; }
"""


def format_value(value) -> str:
    """Compact text for a table cell.

    Integers as they are, floats to 3 significant digits (whole numbers of 100 or
    more without decimals, no exponent unless tiny or huge), sequences joined with
    commas, ``None`` and NaN as an en dash.

    Example:
        >>> [format_value(v) for v in (3, 2.345678, 104.26, -0.5, 1234.5, None, [1.23456, -12.5, 250.0])]
        ['3', '2.35', '104', '-0.5', '1234', '–', '1.23, -12.5, 250']
    """
    if value is None:
        return "\u2013"
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        x = float(value)
        if math.isnan(x):
            return "\u2013"
        if math.isinf(x):
            return "\u221e" if x > 0 else "-\u221e"
        if x == 0:
            return "0"
        ax = abs(x)
        if ax >= 1e12 or ax < 1e-3:
            return f"{x:.3g}"
        if ax >= 100:
            return f"{x:.0f}"
        text = f"{x:.3g}"
        return text
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and hasattr(value, "ndim")):
        items = value.tolist() if hasattr(value, "tolist") else value
        if not isinstance(items, list):  # a numpy scalar
            return format_value(items)
        return ", ".join(format_value(v) for v in items)
    return str(value)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, n = base, 2
    while slug in used:
        slug, n = f"{base}-{n}", n + 1
    used.add(slug)
    return slug


def _paragraphs(text: str) -> str:
    blocks = [b.strip() for b in re.split(r"\n\s*\n", str(text)) if b.strip()]
    return "\n".join(f"<p>{html.escape(b).replace(chr(10), '<br>')}</p>" for b in blocks)


def _image(item, heading: str) -> str:
    if isinstance(item, dict):
        src, alt, caption = item["src"], item.get("alt"), item.get("caption")
    else:
        src, alt, caption = item, None, None
    src = os.fspath(src).replace(os.sep, "/")
    if alt is None:
        alt = f"{heading}: {os.path.basename(src)}" if heading else os.path.basename(src)
    url = quote(src, safe="/._-~")
    cap = f"<figcaption>{html.escape(str(caption))}</figcaption>" if caption else ""
    return (f'<figure><a href="{html.escape(url)}"><img src="{html.escape(url)}" '
            f'alt="{html.escape(str(alt))}" loading="lazy"></a>{cap}</figure>')


def _table(table: dict) -> str:
    columns = list(table.get("columns", []))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row in table.get("rows", []):
        cells = []
        for v in row:
            cls = ' class="num"' if _is_number(v) or (isinstance(v, (list, tuple)) and v and all(map(_is_number, v))) else ""
            cells.append(f"<td{cls}>{html.escape(format_value(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ('<div class="table"><table>'
            + (f"<thead><tr>{head}</tr></thead>" if columns else "")
            + "<tbody>" + "\n".join(body) + "</tbody></table></div>")


def render_html(title: str, sections: Sequence[dict]) -> str:
    """The page :func:`write_html_page` writes, as a string."""
    used: set[str] = set()
    parts = []
    nav = []
    for sec in sections:
        heading = str(sec.get("heading", ""))
        sid = _slug(heading, used)
        nav.append(f'<a href="#{sid}">{html.escape(heading)}</a>')
        body = [f'<section id="{sid}">', f"<h2>{html.escape(heading)}</h2>"]
        if sec.get("text"):
            body.append(_paragraphs(sec["text"]))
        for item in sec.get("images") or []:
            body.append(_image(item, heading))
        if sec.get("table"):
            body.append(_table(sec["table"]))
        body.append("</section>")
        parts.append("\n".join(body))
    nav_html = f"<nav>{''.join(nav)}</nav>" if len(nav) > 1 else ""
    t = html.escape(str(title))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="freetumor {html.escape(__version__)}">
<title>{t}</title>
<style>{_CSS}</style>
</head>
<body>
<header><div class="wrap"><h1>{t}</h1>{nav_html}</div></header>
<main class="wrap">
{chr(10).join(parts)}
</main>
<footer class="wrap">generated by freetumor {html.escape(__version__)}</footer>
</body>
</html>
"""


def write_html_page(path: str | os.PathLike, title: str, sections: Sequence[dict]) -> None:
    """Write a self-contained static HTML page atomically.

    Args:
        path: the ``.html`` file to write.
        title: page title and header.
        sections: each a dict with ``heading`` (str) and optionally ``text`` (a
            paragraph; blank lines start new ones), ``images`` (paths relative to the
            page, or dicts ``{"src", "alt", "caption"}``) and ``table``
            (``{"columns": [...], "rows": [[...], ...]}``; numbers are formatted
            compactly by :func:`format_value`).

    Example:
        >>> import tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "page.html")
        >>> write_html_page(out, "Run <1>", [{"heading": "Pictures", "images": ["case1.png"]}])
        >>> page = open(out, encoding="utf-8").read()
        >>> "Run &lt;1&gt;" in page, 'src="case1.png"' in page
        (True, True)
    """
    write_bytes_atomic(path, render_html(title, sections).encode("utf-8"))


def lesion_table(records: Sequence[dict]) -> dict:
    """A table (``{"columns", "rows"}``) of lesion records for :func:`write_html_page`.

    Uses the keys ``case``, ``index``, ``organ``, ``size_class``, ``centre_mm``,
    ``semi_axes_mm``, ``volume_ml``, ``mean_hu_before``, ``mean_hu_after`` and
    ``seed``; a missing key leaves its cell empty (shown as a dash).

    Example:
        >>> t = lesion_table([{"case": "ct1", "index": 1, "organ": "liver", "size_class": "small",
        ...                    "centre_mm": [1.0, 2.0, 3.0], "volume_ml": 2.4}])
        >>> t["columns"][:4], t["rows"][0][:4]
        (['case', 'lesion', 'organ', 'size class'], ['ct1', 1, 'liver', 'small'])
    """
    keys = ["case", "index", "organ", "size_class", "centre_mm", "semi_axes_mm",
            "volume_ml", "mean_hu_before", "mean_hu_after", "seed"]
    rows = []
    for k, rec in enumerate(records):
        row = [rec.get(key) for key in keys]
        if row[1] is None:
            row[1] = k + 1
        rows.append(row)
    return {"columns": list(LESION_COLUMNS), "rows": rows}
