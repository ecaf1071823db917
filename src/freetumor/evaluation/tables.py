"""The per-case metric table that ``freetumor evaluate`` and ``freetumor compare`` write.

:data:`CASE_METRICS` are its metric columns, :func:`write_csv` writes rows of dicts as CSV
(``None`` as an empty cell) and :func:`boxplot_png` draws one box per group and metric, with
the case values (and, for two paired groups, a line per case).

Example:
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> write_csv(p, [{"case": "a", "tumour_dice": 0.5}, {"case": "b", "tumour_dice": None}])
    >>> open(p).read()
    'case,tumour_dice\\na,0.5\\nb,\\n'
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np

from ..io import write_bytes_atomic

__all__ = ["CASE_METRICS", "write_csv", "boxplot_png"]

CASE_METRICS = ("tumour_dice", "tumour_nsd", "organ_dice", "organ_nsd")


def write_csv(path: str | os.PathLike, rows: list[dict], columns: list[str] | None = None) -> None:
    """Write ``rows`` atomically with a header; ``columns`` default to the first row's keys."""
    columns = columns or (list(rows[0]) if rows else ["case"])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    write_bytes_atomic(path, buf.getvalue().encode())


def boxplot_png(groups: dict[str, list[dict]], metrics, title: str, paired: bool = False) -> bytes:
    """Box plots per metric (one box per group), with the case values; paired lines when ``paired``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: heavy optional dependency
    from matplotlib.figure import Figure  # deferred: heavy optional dependency

    fig = Figure(figsize=(3.0 * len(metrics), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    names = list(groups)
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for j, k in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), j + 1)
        data = [[r[k] for r in groups[n] if r.get(k) is not None] for n in names]
        if any(data):
            bp = ax.boxplot([d if d else [np.nan] for d in data], widths=0.55, patch_artist=True, showfliers=False)
            for patch, c in zip(bp["boxes"], colours):
                patch.set_facecolor(c)
                patch.set_alpha(0.45)
            rng = np.random.default_rng(0)
            for i, d in enumerate(data):
                ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, len(d)), d, s=9, color=colours[i % 4], zorder=3)
            if paired and len(names) == 2:
                for ra, rb in zip(groups[names[0]], groups[names[1]]):
                    if ra.get(k) is not None and rb.get(k) is not None:
                        ax.plot([1, 2], [ra[k], rb[k]], color="grey", alpha=0.35, lw=0.7)
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels(names, rotation=15, fontsize=8)
        ax.set_title(k.replace("_", " "), fontsize=9)
        ax.set_ylim(-0.03, 1.03)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
