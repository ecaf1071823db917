"""``freetumor evaluate``: per-case metrics, lesion detection and their summary for one method.

:func:`evaluate_predictions` scores a folder of predicted label maps against the ground truth
(a folder of label maps or a datalist) for one organ and writes ``metrics.csv`` (one row per
case), ``lesions.csv`` (one row per ground-truth lesion), ``summary.json`` (means with
bootstrap 95% intervals; lesion, early-tumour and patient-level detection with Wilson
intervals), ``boxplot.png`` and ``index.html``. Two such reports are compared by
:func:`freetumor.evaluation.compare.compare_reports`.

Averages follow the paper: tumour Dice / NSD over cases whose ground truth has tumour, organ
Dice / NSD over all cases.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from ..data import datalist_label_map, load_datalist
from ..errors import ConfigError, InputError
from ..htmlpage import write_html_page
from ..io import NIFTI_SUFFIXES, case_name, check_same_grid, load_volume, staged_output, write_bytes_atomic
from ..labels import check_integer_labels, get_label_map
from .lesions import detection_summary, match_lesions
from .metrics import case_metrics
from .stats import bootstrap_ci
from .tables import CASE_METRICS, boxplot_png, write_csv

__all__ = ["ORGAN3", "evaluate_predictions"]

ORGAN3 = "organ3"  # predictions of an organ3 model: 1 organ, 2 tumour, whatever the organ


def gt_cases(gt: str | os.PathLike) -> tuple[dict[str, Path], str | None]:
    """Case name -> ground-truth label path, from a datalist or a folder; and the datalist's label map."""
    p = Path(gt)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.name.lower().endswith(NIFTI_SUFFIXES))
        if not files:
            raise InputError(p, "holds no NIfTI label files")
        return {case_name(f): f for f in files}, None
    label_map = datalist_label_map(p)
    entries = [e for e in load_datalist(p) if e.get("label")]
    if not entries:
        raise InputError(p, "no entries with a \"label\"")
    return {case_name(e["image"]): Path(e["label"]) for e in entries}, label_map


def _shown(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")


def _pred_ids(pred_map: str, values: set[int], lm, organ: str, name: str = "prediction") -> tuple[list[int], list[int]]:
    """(organ ids, tumour ids) of a prediction in ``pred_map``; a value outside that map (e.g. -1
    or 9 in an ``organ3`` or ``abdomen7`` prediction) is a one-line :class:`InputError` naming it.

    >>> _pred_ids("organ3", {0, 1, 2}, None, "liver")
    ([1], [2])
    >>> _pred_ids("auto", {-1, 0, 1, 9}, get_label_map("abdomen7"), "liver", "p.nii.gz")
    Traceback (most recent call last):
    ...
    freetumor.errors.InputError: p.nii.gz: prediction values -1, 9 are not in label map 'abdomen7' (--pred-label-map auto)
    """
    given = pred_map
    if pred_map == "auto":
        pred_map = ORGAN3 if values <= {0, 1, 2} else lm.name
    if pred_map == ORGAN3:
        unknown, ids = sorted(v for v in values if v not in (0, 1, 2)), ([1], [2])
    else:
        plm = get_label_map(pred_map, organ)
        unknown, ids = plm.unknown_values(values), (list(plm.organ_ids(organ)), [plm.tumour_id(organ)])
    if unknown:
        raise InputError(name, f"prediction values {_shown(unknown)} are not in label map {pred_map!r} "
                               f"(--pred-label-map {given})")
    return ids


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
    if not (isinstance(tolerance_mm, (int, float)) and tolerance_mm > 0):
        raise ConfigError(f"NSD tolerance must be a positive number of mm, got {tolerance_mm!r}")
    cases_gt, dl_map = gt_cases(gt)
    lm = get_label_map(label_map or dl_map, organ)
    organ_ids, tumour_id = list(lm.organ_ids(organ)), lm.tumour_id(organ)
    pdir = Path(pred)
    if not pdir.is_dir():
        raise InputError(pdir, "is not a folder of predictions")
    preds = {case_name(f): f for f in sorted(pdir.iterdir()) if f.name.lower().endswith(NIFTI_SUFFIXES)}
    missing = [c for c in cases_gt if c not in preds]
    if missing:
        raise InputError(pdir, f"no prediction for {len(missing)} of {len(cases_gt)} cases (first: {missing[0]})")
    rows, lesion_rows, matches = [], [], []
    items = list(cases_gt.items())
    if progress:
        items = tqdm(items, desc="evaluate", unit="case", dynamic_ncols=True)
    for case, gt_path in items:
        g = load_volume(gt_path)
        p = load_volume(preds[case])
        check_same_grid(g, p)
        check_integer_labels(g.array, g.name)
        check_integer_labels(p.array, p.name)  # a probability map is not a segmentation
        gv = np.asarray(g.array)
        pv = np.rint(np.asarray(p.array)).astype(np.int64)
        unknown = lm.unknown_values(np.unique(gv).tolist())
        if unknown:
            raise InputError(g.name, f"label values {_shown(unknown)} are not in label map {lm.name!r}")
        p_org, p_tum = _pred_ids(pred_label_map, set(np.unique(pv).tolist()), lm, organ, p.name)
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
        write_csv(stage / "metrics.csv", rows)
        write_csv(stage / "lesions.csv", lesion_rows, ["case", "index", "diameter_mm", "volume_ml", "bin", "detected"])
        write_bytes_atomic(stage / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
        png = boxplot_png({summary["name"]: rows}, CASE_METRICS, f"{summary['name']}: {organ}")
        write_bytes_atomic(stage / "boxplot.png", png)
        _write_eval_html(stage / "index.html", summary, rows)
    return summary


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _write_eval_html(path: Path, summary: dict, rows: list[dict]) -> None:
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
    write_html_page(path, f"freetumor evaluation: {summary['name']}", sections)
