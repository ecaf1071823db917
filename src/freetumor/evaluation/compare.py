"""``freetumor compare``: paired comparison of two ``freetumor evaluate`` reports.

:func:`compare_reports` pairs two reports (folders written by
:func:`freetumor.evaluation.evaluate.evaluate_predictions`) on their common cases and writes
paired t / Wilcoxon tests, bootstrap intervals of the differences, McNemar's exact test on
lesion detection, a box-plot figure like the paper's Fig. 3, ``compare.json``, ``compare.csv``
and ``index.html``. Differences are B minus A.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..errors import InputError
from ..htmlpage import write_html_page
from ..io import staged_output, write_bytes_atomic
from ..structured import read_json, read_text_bounded
from .lesions import EARLY_MM
from .stats import mcnemar_exact, paired_bootstrap_ci, paired_tests
from .tables import CASE_METRICS, boxplot_png, write_csv

__all__ = ["compare_reports", "read_metrics_csv"]


def read_metrics_csv(report: str | os.PathLike) -> dict[str, dict]:
    """Case -> metrics of a report folder (``metrics.csv``)."""
    p = Path(report) / "metrics.csv"
    if not p.is_file():
        raise InputError(report, "is not an evaluation report (no metrics.csv); run `freetumor evaluate` first")
    return {r["case"]: {k: (None if v == "" else (v if k == "case" else _number(p, k, v, r["case"])))
                        for k, v in r.items()} for r in _csv_rows(p, ("case", *CASE_METRICS))}


def _csv_rows(p: Path, columns: tuple[str, ...]) -> list[dict]:
    """The rows of a report's CSV, read as text (size bounded); a file that is not one is one line."""
    text = read_text_bounded(p, "report table")  # a binary file is refused here: not UTF-8 text
    if "\0" in text:
        raise InputError(p, "not a readable report table: it holds NUL bytes (a binary file?)")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
    except csv.Error as exc:
        raise InputError(p, f"not a readable CSV report table ({' '.join(str(exc).split())[:120]})") from None
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(p, f"not a report table of `freetumor evaluate`: no column {', '.join(missing)}")
    if any(None in r or any(v is None for v in r.values()) for r in rows):
        raise InputError(p, "not a readable CSV report table: a row has more or fewer fields than the header")
    return rows


def _number(p: Path, column: str, value: str, case: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise InputError(p, f"column {column!r} of case {case!r} is not a number: {value[:40]!r}") from None


def _read_lesions(report: Path) -> dict[tuple[str, str], tuple[float, bool]]:
    """(case, lesion index) -> (diameter in mm, detected) of a report's ``lesions.csv``."""
    p = report / "lesions.csv"
    if not p.is_file():
        return {}
    return {(r["case"], r["index"]): (_number(p, "diameter_mm", r["diameter_mm"], r["case"]), r["detected"] == "True")
            for r in _csv_rows(p, ("case", "index", "diameter_mm", "detected"))}


def compare_reports(a: str | os.PathLike, b: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Paired comparison of two evaluation reports on their common cases (B minus A)."""
    ra, rb = read_metrics_csv(a), read_metrics_csv(b)
    name_a, name_b = _report_name(a), _report_name(b)
    if name_a == name_b:
        name_a, name_b = f"A ({name_a})", f"B ({name_b})"
    common = sorted(set(ra) & set(rb))
    if not common:
        raise InputError(b, f"has no case in common with {a}")
    result: dict = {"a": {"name": name_a, "report": str(a)}, "b": {"name": name_b, "report": str(b)},
                    "cases": len(common), "only_in_a": len(set(ra) - set(rb)), "only_in_b": len(set(rb) - set(ra)),
                    "difference": "b - a", "metrics": {}}
    rows = []
    for k in CASE_METRICS:
        va = [ra[c][k] for c in common]
        vb = [rb[c][k] for c in common]
        tests = paired_tests(va, vb)
        ci = list(paired_bootstrap_ci(va, vb)) if tests["n"] > 1 else None  # both drop incomplete pairs
        result["metrics"][k] = {**tests, "mean_diff_ci95": ci}
        rows.append({"metric": k, "n": tests["n"], f"mean_{name_a}": tests["mean_a"], f"mean_{name_b}": tests["mean_b"],
                     "mean_diff": tests["mean_diff"], "ci95_low": ci[0] if ci else None,
                     "ci95_high": ci[1] if ci else None, "t_p": (tests.get("t_test") or {}).get("p"),
                     "wilcoxon_p": (tests.get("wilcoxon") or {}).get("p")})
    la, lb = _read_lesions(Path(a)), _read_lesions(Path(b))
    keys = sorted(set(la) & set(lb))
    if keys:
        pairs = [(la[k][1], lb[k][1]) for k in keys]
        only_a = sum(x and not y for x, y in pairs)
        only_b = sum(y and not x for x, y in pairs)
        result["lesion_detection"] = {
            "lesions": len(keys), "detected_a": sum(x for x, _ in pairs), "detected_b": sum(y for _, y in pairs),
            "only_a": only_a, "only_b": only_b, "mcnemar_exact_p": mcnemar_exact(only_a, only_b)}
        early = [(la[k][1], lb[k][1]) for k in keys if la[k][0] < EARLY_MM]
        if early:
            ea = sum(x for x, _ in early)
            eb = sum(y for _, y in early)
            result["early_detection"] = {
                "lesions": len(early), "detected_a": ea, "detected_b": eb,
                "mcnemar_exact_p": mcnemar_exact(sum(x and not y for x, y in early), sum(y and not x for x, y in early))}
    with staged_output(out) as stage:
        write_bytes_atomic(stage / "compare.json", (json.dumps(result, indent=1) + "\n").encode())
        write_csv(stage / "compare.csv", rows)
        png = boxplot_png({name_a: [ra[c] for c in common], name_b: [rb[c] for c in common]}, CASE_METRICS,
                       f"{name_a} vs {name_b} ({len(common)} paired cases)", paired=True)
        write_bytes_atomic(stage / "boxplot.png", png)
        _write_compare_html(stage / "index.html", result, rows)
    return result


def _report_name(report) -> str:
    p = Path(report) / "summary.json"
    try:
        summary = read_json(p, "report summary")  # size and depth bounded
    except InputError:
        return Path(report).name
    name = summary.get("name") if isinstance(summary, dict) else None
    return str(name) if isinstance(name, (str, int, float)) and str(name) else Path(report).name


def _write_compare_html(path: Path, result: dict, rows: list[dict]) -> None:
    text = (f"{result['cases']} paired cases; differences are {result['b']['name']} minus {result['a']['name']}; "
            "two-sided paired t-test and Wilcoxon signed-rank test; 95% CI of the mean difference by paired bootstrap.")
    sections = [{"heading": "Paired tests", "text": text,
                 "table": {"columns": list(rows[0]) if rows else [], "rows": [list(r.values()) for r in rows]}},
                {"heading": "Box plots", "images": ["boxplot.png"]}]
    for key, title in (("lesion_detection", "Lesion detection (McNemar exact test)"),
                       ("early_detection", "Early tumours (< 20 mm)")):
        if key in result:
            d = result[key]
            sections.append({"heading": title, "table": {"columns": list(d), "rows": [list(d.values())]}})
    write_html_page(path, f"freetumor compare: {result['a']['name']} vs {result['b']['name']}", sections)
