"""``freetumor evaluate`` and ``freetumor compare``: per-case metrics, summaries, paired comparisons.

:func:`evaluate_predictions` scores a folder of predicted label maps against the ground truth
(a folder of label maps or a datalist) for one organ and writes ``metrics.csv`` (one row per
case), ``lesions.csv`` (one row per ground-truth lesion), ``summary.json`` (means with
bootstrap 95% intervals; lesion, early-tumour and patient-level detection with Wilson
intervals) and ``index.html`` with box plots. :func:`compare_reports` pairs two such reports on
their common cases and writes paired t / Wilcoxon tests, bootstrap intervals of the
differences, McNemar's exact test on lesion detection, a box-plot figure like the paper's
Fig. 3, ``compare.json``, ``compare.csv`` and ``index.html``.

Averages follow the paper: tumour Dice / NSD over cases whose ground truth has tumour, organ
Dice / NSD over all cases.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, InputError
from ..io import NIFTI_SUFFIXES, case_name, check_same_grid, load_volume, staged_output, write_bytes_atomic
from ..labels import get_label_map

CASE_METRICS = ("tumour_dice", "tumour_nsd", "organ_dice", "organ_nsd")
ORGAN3 = "organ3"  # predictions of an organ3 model: 1 organ, 2 tumour, whatever the organ


def _gt_cases(gt: str | os.PathLike) -> tuple[dict[str, Path], str | None]:
    """Case name -> ground-truth label path, from a datalist or a folder; and the datalist's label map."""
    p = Path(gt)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.name.lower().endswith(NIFTI_SUFFIXES))
        if not files:
            raise InputError(p, "holds no NIfTI label files")
        return {case_name(f): f for f in files}, None
    from ..data import datalist_label_map, load_datalist

    label_map = datalist_label_map(p)
    entries = [e for e in load_datalist(p) if e.get("label")]
    if not entries:
        raise InputError(p, "no entries with a \"label\"")
    return {case_name(e["image"]): Path(e["label"]) for e in entries}, label_map


def _pred_ids(pred_map: str, values: set[int], lm, organ: str) -> tuple[list[int], list[int]]:
    if pred_map == "auto":
        pred_map = ORGAN3 if values <= {0, 1, 2} else lm.name
    if pred_map == ORGAN3:
        return [1], [2]
    plm = get_label_map(pred_map, organ)
    return list(plm.organ_ids(organ)), [plm.tumour_id(organ)]


def evaluate_predictions(
    pred: str | os.PathLike,
    gt: str | os.PathLike,
    organ: str,
    out: str | os.PathLike,
    *,
    label_map: str | None = None,
    pred_label_map: str = "auto",
    tolerance_mm: float = 2.0,
    nsd_method: str = "surface-distance",
    name: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Score predictions against ground truth; write the report into ``out`` (all or nothing).

    Args:
        pred: folder of ``<case>.nii.gz`` predictions (as ``freetumor predict`` writes them).
        gt: folder of label maps named by case, or a datalist (cases named after their images).
        organ: the tumour type evaluated.
        label_map: the ground truth's label convention (default: the datalist's, else by organ).
        pred_label_map: the predictions' convention: ``organ3`` (1 organ, 2 tumour), a label-map
            name / JSON, or ``auto`` (``organ3`` when the values are within 0..2, else ``label_map``).
        tolerance_mm: NSD tolerance.
    Returns:
        the summary written to ``summary.json``.
    """
    from .lesions import detection_summary, match_lesions
    from .metrics import case_metrics
    from .stats import bootstrap_ci

    if not (isinstance(tolerance_mm, (int, float)) and tolerance_mm > 0):
        raise ConfigError(f"NSD tolerance must be a positive number of mm, got {tolerance_mm!r}")
    gt_cases, dl_map = _gt_cases(gt)
    lm = get_label_map(label_map or dl_map, organ)
    organ_ids, tumour_id = list(lm.organ_ids(organ)), lm.tumour_id(organ)
    pdir = Path(pred)
    if not pdir.is_dir():
        raise InputError(pdir, "is not a folder of predictions")
    preds = {case_name(f): f for f in sorted(pdir.iterdir()) if f.name.lower().endswith(NIFTI_SUFFIXES)}
    missing = [c for c in gt_cases if c not in preds]
    if missing:
        raise InputError(pdir, f"no prediction for {len(missing)} of {len(gt_cases)} cases (first: {missing[0]})")
    rows, lesion_rows, matches = [], [], []
    items = list(gt_cases.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="evaluate", unit="case", dynamic_ncols=True)
    for case, gt_path in items:
        g = load_volume(gt_path)
        p = load_volume(preds[case])
        check_same_grid(g, p)
        gv = np.asarray(g.array)
        pv = np.rint(np.asarray(p.array)).astype(np.int64)
        p_org, p_tum = _pred_ids(pred_label_map, set(np.unique(pv).tolist()), lm, organ)
        m = case_metrics(pv, gv, g.spacing, organ_ids, [tumour_id], p_org, p_tum, tolerance_mm=tolerance_mm,
                         nsd_method=nsd_method)
        match = match_lesions(np.isin(pv, p_tum), gv == tumour_id, g.spacing)
        matches.append(match)
        rows.append({"case": case, **{k: m[k] for k in CASE_METRICS},
                     "gt_lesions": match.n_gt, "detected": match.tp, "false_positives": match.fp,
                     "tumour_volume_ml_gt": m["tumour_volume_ml_gt"],
                     "tumour_volume_ml_pred": m["tumour_volume_ml_pred"]})
        for les in match.gt:
            lesion_rows.append({"case": case, "index": les["index"], "diameter_mm": round(les["diameter_mm"], 2),
                                "volume_ml": round(les["volume_mm3"] / 1000, 4), "bin": les["bin"],
                                "detected": bool(les["detected"])})
        if log:
            log(f"{case}: tumour Dice {_fmt(m['tumour_dice'])}, NSD {_fmt(m['tumour_nsd'])}, "
                f"{match.tp}/{match.n_gt} lesions, {match.fp} FP")
    summary: dict = {
        "name": name or Path(out).name,
        "organ": organ,
        "cases": len(rows),
        "label_map": lm.name,
        "pred_label_map": pred_label_map,
        "nsd_tolerance_mm": tolerance_mm,
        "nsd_method": nsd_method,
        "pred": str(pdir),
        "gt": str(gt),
        "metrics": {},
        "detection": detection_summary(matches),
    }
    for k in CASE_METRICS:
        vals = [r[k] for r in rows if r[k] is not None]
        entry = {"n": len(vals), "mean": float(np.mean(vals)) if vals else None,
                 "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                 "median": float(np.median(vals)) if vals else None}
        entry["ci95"] = list(bootstrap_ci(vals)) if len(vals) > 1 else None
        summary["metrics"][k] = entry
    with staged_output(out) as stage:
        _write_csv(stage / "metrics.csv", rows)
        _write_csv(stage / "lesions.csv", lesion_rows, ["case", "index", "diameter_mm", "volume_ml", "bin", "detected"])
        write_bytes_atomic(stage / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
        png = _boxplot({summary["name"]: rows}, CASE_METRICS, f"{summary['name']}: {organ}")
        write_bytes_atomic(stage / "boxplot.png", png)
        _write_eval_html(stage / "index.html", summary, rows)
    return summary


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or (list(rows[0]) if rows else ["case"])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    write_bytes_atomic(path, buf.getvalue().encode())


def read_metrics_csv(report: str | os.PathLike) -> dict[str, dict]:
    """Case -> metrics of a report folder (``metrics.csv``)."""
    p = Path(report) / "metrics.csv"
    if not p.is_file():
        raise InputError(report, "is not an evaluation report (no metrics.csv); run `freetumor evaluate` first")
    out = {}
    with open(p, newline="") as fh:
        for r in csv.DictReader(fh):
            out[r["case"]] = {k: (None if v == "" else (float(v) if k != "case" else v)) for k, v in r.items()}
    return out


def _read_lesions(report: Path) -> dict[tuple[str, str], tuple[float, bool]]:
    """(case, lesion index) -> (diameter in mm, detected) of a report's ``lesions.csv``."""
    p = report / "lesions.csv"
    if not p.is_file():
        return {}
    with open(p, newline="") as fh:
        return {(r["case"], r["index"]): (float(r["diameter_mm"]), r["detected"] == "True") for r in csv.DictReader(fh)}


def compare_reports(a: str | os.PathLike, b: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Paired comparison of two evaluation reports on their common cases (B minus A)."""
    from .stats import mcnemar_exact, paired_bootstrap_ci, paired_tests

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
        keep = [(x, y) for x, y in zip(va, vb) if x is not None and y is not None
                and not (isinstance(x, float) and math.isnan(x)) and not (isinstance(y, float) and math.isnan(y))]
        ci = list(paired_bootstrap_ci([x for x, _ in keep], [y for _, y in keep])) if len(keep) > 1 else None
        result["metrics"][k] = {**tests, "mean_diff_ci95": ci}
        rows.append({"metric": k, "n": tests["n"], f"mean_{name_a}": tests["mean_a"], f"mean_{name_b}": tests["mean_b"],
                     "mean_diff": tests["mean_diff"], "ci95_low": ci[0] if ci else None,
                     "ci95_high": ci[1] if ci else None, "t_p": (tests.get("t_test") or {}).get("p"),
                     "wilcoxon_p": (tests.get("wilcoxon") or {}).get("p")})
    from .lesions import EARLY_MM

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
        _write_csv(stage / "compare.csv", rows)
        png = _boxplot({name_a: [ra[c] for c in common], name_b: [rb[c] for c in common]}, CASE_METRICS,
                       f"{name_a} vs {name_b} ({len(common)} paired cases)", paired=True)
        write_bytes_atomic(stage / "boxplot.png", png)
        _write_compare_html(stage / "index.html", result, rows)
    return result


def _report_name(report) -> str:
    p = Path(report) / "summary.json"
    try:
        return str(json.loads(p.read_text()).get("name") or Path(report).name)
    except (OSError, ValueError):
        return Path(report).name


def _boxplot(groups: dict[str, list[dict]], metrics, title: str, paired: bool = False) -> bytes:
    """Box plots per metric (one box per group), with the case values; paired lines when ``paired``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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


def _write_eval_html(path: Path, summary: dict, rows: list[dict]) -> None:
    from ..htmlpage import render_html

    det = summary["detection"]
    mrows = [[k, v["n"], v["mean"], v["sd"], v["median"],
              "" if not v["ci95"] else f"{v['ci95'][0]:.3f}-{v['ci95'][1]:.3f}"] for k, v in summary["metrics"].items()]

    def prop(d):
        return ["" if d.get("value") is None else d["value"], f"{d['k']}/{d['n']}",
                "" if not d.get("ci95") else f"{d['ci95'][0]:.3f}-{d['ci95'][1]:.3f}"]

    drows = [["lesion sensitivity", *prop(det["lesion_sensitivity"])],
             ["early (< 20 mm) sensitivity", *prop(det["early_sensitivity"])],
             *[[f"sensitivity {b}", *prop(v)] for b, v in det["per_bin"].items()],
             ["patient sensitivity", *prop(det["patient_sensitivity"])],
             ["patient specificity", *prop(det["patient_specificity"])],
             ["false positives per scan", *prop(det["false_positives_per_scan"])]]
    sections = [
        {"heading": "Summary", "text": f"{summary['cases']} cases, organ {summary['organ']}, NSD tolerance "
                                       f"{summary['nsd_tolerance_mm']} mm ({summary['nsd_method']}). Tumour metrics "
                                       "are averaged over cases whose ground truth has tumour.",
         "table": {"columns": ["metric", "n", "mean", "sd", "median", "95% CI (bootstrap)"], "rows": mrows}},
        {"heading": "Detection", "table": {"columns": ["measure", "value", "k/n", "95% CI"], "rows": drows}},
        {"heading": "Distribution", "images": ["boxplot.png"]},
        {"heading": "Per case", "table": {"columns": list(rows[0]) if rows else ["case"],
                                          "rows": [list(r.values()) for r in rows]}},
    ]
    write_bytes_atomic(path, render_html(f"freetumor evaluation: {summary['name']}", sections).encode())


def _write_compare_html(path: Path, result: dict, rows: list[dict]) -> None:
    from ..htmlpage import render_html

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
    write_bytes_atomic(path, render_html(f"freetumor compare: {result['a']['name']} vs {result['b']['name']}",
                                         sections).encode())
