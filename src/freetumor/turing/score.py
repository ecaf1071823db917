"""``freetumor turing score``: how well readers told synthetic tumours from real ones.

As in the FreeTumor paper's Visual Turing Test (Fig. 2): **sensitivity** = synthetic cases
called synthetic / synthetic cases read; **specificity** = real cases called real / real cases
read; **accuracy** = correct calls / cases read. Per reader and pooled over readers, overall and
per tumour type, each with a 95% Wilson interval (pooled intervals treat reads as independent).
A synthetic case **passed** when most readers who read it called it real (ties do not pass), as
in Fig. 2f. Unanswered cases are left out of the denominators and counted.

Outputs: ``score.json``, ``score.csv`` (one row per reader and tumour type, plus pooled rows),
``passed.csv``, ``score.png`` (bar chart with intervals).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..structured import read_json
from ..io import staged_output, write_bytes_atomic
from . import db
from ..evaluation.stats import wilson_ci

MEASURES = ("sensitivity", "specificity", "accuracy")


def _prop(k: int, n: int) -> dict:
    if n == 0:
        return {"k": 0, "n": 0, "value": None, "ci95": None}
    lo, hi = wilson_ci(k, n)
    return {"k": int(k), "n": int(n), "value": k / n, "ci95": [float(lo), float(hi)]}


def _measures(reads: list[tuple[str, str]]) -> dict:
    """reads: (truth, answer) pairs."""
    syn = [a for t, a in reads if t == "synthetic"]
    real = [a for t, a in reads if t == "real"]
    return {
        "sensitivity": _prop(sum(a == "synthetic" for a in syn), len(syn)),
        "specificity": _prop(sum(a == "real" for a in real), len(real)),
        "accuracy": _prop(sum(t == a for t, a in reads), len(reads)),
        "reads": len(reads),
    }


def load_key(study: str | os.PathLike) -> dict:
    p = Path(study) / "key.json"
    if not p.is_file():
        raise InputError(study, "is not a study folder (no key.json)")
    key = read_json(p, "answer key")  # size and depth bounded before parsing
    if not isinstance(key, dict) or not isinstance(key.get("cases"), dict):
        raise InputError(p, 'unreadable answer key (no "cases" object)')
    return key["cases"]


def score_study(study: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Score every reader's answers; write the report into ``out`` (all or nothing)."""
    key = load_key(study)
    reads = [r for r in db.answers(study) if r["case_id"] in key]
    readers = {r["name"] for r in db.readers(study)}
    types = sorted({v["tumour_type"] for v in key.values()})
    result: dict = {"study": str(study), "cases": len(key), "readers": {}, "pooled": {}, "by_type": {},
                    "passed": []}

    def pairs(rows):
        return [(key[r["case_id"]]["truth"], r["answer"]) for r in rows]

    for name in sorted(readers):
        rows = [r for r in reads if r["reader"] == name]
        result["readers"][name] = {**_measures(pairs(rows)), "unanswered": len(key) - len(rows),
                                   "by_type": {t: _measures(pairs([r for r in rows
                                                                   if key[r["case_id"]]["tumour_type"] == t]))
                                               for t in types}}
    result["pooled"] = _measures(pairs(reads))
    result["by_type"] = {t: _measures(pairs([r for r in reads if key[r["case_id"]]["tumour_type"] == t]))
                         for t in types}
    per_case = {}
    for r in reads:
        per_case.setdefault(r["case_id"], []).append(r["answer"])
    for cid, v in sorted(key.items()):
        if v["truth"] != "synthetic" or cid not in per_case:
            continue
        calls = per_case[cid]
        called_real = sum(a == "real" for a in calls)
        if called_real * 2 > len(calls):
            result["passed"].append({"case": cid, "tumour_type": v["tumour_type"], "called_real": called_real,
                                     "reads": len(calls), "image": v.get("image"), "record": v.get("record"),
                                     "lesion": v.get("lesion")})
    n_syn_read = sum(1 for cid, v in key.items() if v["truth"] == "synthetic" and cid in per_case)
    result["passed_fraction"] = _prop(len(result["passed"]), n_syn_read)
    rows = []
    for name, m in [*result["readers"].items(), ("pooled", result["pooled"])]:
        by_type = result["by_type"] if name == "pooled" else m["by_type"]
        blocks = [("all", m)] + list(by_type.items())
        for t, b in blocks:
            rows.append({"reader": name, "tumour_type": t, "reads": b["reads"],
                         **{f"{k}": ("" if b[k]["value"] is None else round(b[k]["value"], 4)) for k in MEASURES},
                         **{f"{k}_ci95": ("" if not b[k]["ci95"] else
                                          f"{b[k]['ci95'][0]:.3f}-{b[k]['ci95'][1]:.3f}") for k in MEASURES}})
    with staged_output(out) as stage:
        write_bytes_atomic(stage / "score.json", (json.dumps(result, indent=1) + "\n").encode())
        write_bytes_atomic(stage / "score.csv", _csv(rows))
        write_bytes_atomic(stage / "passed.csv", _csv(result["passed"], ["case", "tumour_type", "called_real", "reads",
                                                                         "image", "record", "lesion"]))
        write_bytes_atomic(stage / "score.png", _chart(result))
    return result


def _csv(rows: list[dict], columns: list[str] | None = None) -> bytes:
    columns = columns or (list(rows[0]) if rows else ["reader"])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue().encode()


def _chart(result: dict) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib (about 1 s to import) only for figures
    from matplotlib.figure import Figure  # deferred: matplotlib (about 1 s to import) only for figures

    groups = [*result["readers"].items(), ("pooled", result["pooled"])]
    fig = Figure(figsize=(max(5.0, 1.6 * len(groups) + 2), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.26
    colours = {"sensitivity": "#c44e52", "specificity": "#4c72b0", "accuracy": "#55a868"}
    for j, m in enumerate(MEASURES):
        xs, vals, lo, hi = [], [], [], []
        for i, (_name, g) in enumerate(groups):
            v = g[m]
            if v["value"] is None:
                continue
            xs.append(i + (j - 1) * width)
            vals.append(v["value"])
            lo.append(max(0.0, v["value"] - v["ci95"][0]))
            hi.append(max(0.0, v["ci95"][1] - v["value"]))
        ax.bar(xs, vals, width, yerr=[lo, hi] if xs else None, capsize=3, color=colours[m], label=m)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([n for n, _ in groups], fontsize=8, rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("proportion (95% CI)")
    ax.set_title("Visual Turing Test: readers telling synthetic from real tumours", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
