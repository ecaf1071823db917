"""Scoring one model: ``predict`` and ``evaluate`` on the pooled crop test sets (centred, shifted,
composite; split back per set) with the nodule voxels called background, and FROC on whole scans
(``freetumor froc``, in the lung and over the whole scan)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .base import sh, write_datalist
from .data import ball


LUNG_REACH_MM = 5.0         # whole scans: false positives "in lung" = within this of the threshold lung mask
MIN_CANDIDATE_MM3 = 14.0    # FROC candidates: at least a 3 mm sphere (LIDC's smallest nodules)


def lesion_background(pred: Path, crops_dl: Path, tumour_id: int) -> dict[str, float | None]:
    """Per crop: the share of true nodule voxels that the model calls background (class 0, not lung)."""
    from freetumor.data import load_datalist
    from freetumor.io import case_name, load_volume

    out = {}
    for e in load_datalist(crops_dl):
        case = case_name(e["image"])
        gt = np.asarray(load_volume(e["label"]).array) == tumour_id
        p = np.asarray(load_volume(pred / f"{case}.nii.gz").array)
        out[case] = round(float((p[gt] == 0).mean()), 4) if gt.any() else None
    return out


def score_crops(model: Path, test: dict, work: Path, run_id: str, log: list) -> dict:
    pred = work / "pred" / test["name"] / run_id
    if not pred.exists():
        sh(["predict", "--model", model, "--image", test["images"], "--out", pred, "--device", "cpu"], log)
    rep = work / "eval" / test["name"] / run_id / "crops"
    if not (rep / "summary.json").exists():
        sh(["evaluate", "--pred", pred, "--gt", test["crops"], "--organ", "lung", "--out", rep,
            "--label-map", test["eval_label_map"], "--pred-label-map", "organ3"], log)
    res = read_report(rep)
    from freetumor.labels import get_label_map

    bg = lesion_background(pred, Path(test["crops"]), get_label_map(test["label_map"], "lung").tumour_id("lung"))
    for case, row in res["cases"].items():
        row["lesion_called_background"] = bg.get(case)
    return res


def pooled_set(crop_sets: dict[str, dict], work: Path) -> dict:
    """The crop test sets as one set (one ``predict`` and one ``evaluate`` per model): every image linked
    as ``<set>__<case>``, one datalist; :func:`split_sets` splits the scores back."""
    from freetumor.data import load_datalist
    from freetumor.io import case_name

    root = work / "tests" / "pooled_crops"
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, t in crop_sets.items():
        for e in load_datalist(t["crops"]):
            link = images / f"{name}__{case_name(e['image'])}.nii.gz"
            if not link.is_symlink():
                link.symlink_to(Path(e["image"]).resolve())
            rows.append({"image": str(link), "label": e["label"]})
    first = next(iter(crop_sets.values()))
    return {**first, "name": "pooled_crops", "images": str(images), "n_crops": len(rows),
            "crops": str(write_datalist(root / "crops.json", rows, first["label_map"]))}


def split_sets(scores: dict, crop_sets: dict) -> dict:
    """Scores of the pooled set -> per crop test set, cases under their own names."""
    out = {name: {"cases": {}, "lesions": []} for name in crop_sets}
    for case, row in scores["cases"].items():
        name, _, own = case.partition("__")
        out[name]["cases"][own] = row
    for les in scores["lesions"]:
        name, _, own = les["case"].partition("__")
        out[name]["lesions"].append({**les, "case": own})
    return out


def score_scans(model: Path, test: dict, work: Path, run_id: str, log: list) -> dict:
    """Whole scans: probability maps, then ``freetumor froc`` in the lung (within LUNG_REACH_MM of the
    threshold lung mask) and over the whole scan."""
    from freetumor.data import load_datalist
    from freetumor.io import case_name, load_volume

    pred = work / "pred" / test["name"] / f"{run_id}_scans"
    if not pred.exists():
        sh(["predict", "--model", model, "--image", test["scan_images"], "--out", pred, "--device", "cpu",
            "--probabilities"], log)
    out = {}
    region = None
    if test.get("lungs"):
        for e in load_datalist(test["scans"]):
            case = case_name(e["image"])
            near_lung(Path(test["lungs"]), case, load_volume(e["label"]).spacing)
        region = Path(test["lungs"]).parent / "lungs_near"
    for where, reg in (("in_lung", region), ("whole", None)):
        if where == "in_lung" and reg is None:
            continue
        rep = work / "eval" / test["name"] / run_id / f"froc_{where}.json"
        if not rep.exists():
            sh(["froc", "--prob", pred, "--gt", test["scans"], "--organ", "lung", "--out", rep,
                "--label-map", test["eval_label_map"], "--min-size-mm3", MIN_CANDIDATE_MM3,
                *(["--region", reg] if reg is not None else [])], log)
        r = json.loads(rep.read_text())
        out[where] = {k: r.get(k) for k in ("sensitivity_at", "cpm", "sensitivity_at_small", "cpm_small", "lesions",
                                             "small_lesions", "scans", "operating_point")}
    return out


def read_report(rep: Path) -> dict:
    with open(rep / "metrics.csv", newline="") as fh:
        cases = {r["case"]: r for r in csv.DictReader(fh)}
    with open(rep / "lesions.csv", newline="") as fh:
        lesions = [{"case": r["case"], "diameter_mm": float(r["diameter_mm"]), "detected": r["detected"] == "True"}
                   for r in csv.DictReader(fh)]
    num = lambda v: None if v in ("", None) else float(v)  # noqa: E731
    per_case = {c: {"dice": num(r["tumour_dice"]), "nsd": num(r["tumour_nsd"]), "fp": int(float(r["false_positives"])),
                    "detected": int(float(r["detected"])), "lesions": int(float(r["gt_lesions"])),
                    "volume_ratio": (num(r["tumour_volume_ml_pred"]) / num(r["tumour_volume_ml_gt"])
                                     if num(r.get("tumour_volume_ml_gt")) else None)}
                for c, r in cases.items()}
    return {"cases": per_case, "lesions": lesions}


def near_lung(lungs: Path, case: str, spacing) -> np.ndarray:
    """The threshold lung mask of a whole scan grown by LUNG_REACH_MM (computed once per scan, kept beside it)."""
    from scipy import ndimage

    from freetumor.io import load_volume, save_volume

    dst = lungs.parent / "lungs_near" / f"{case}.nii.gz"
    if dst.exists():
        return np.asarray(load_volume(dst).array) > 0
    mask = lungs / f"{case}_organs.nii.gz"  # organs' name for a case's mask (<case>.nii.gz before it)
    vol = load_volume(mask if mask.exists() else lungs / f"{case}.nii.gz")
    near = ndimage.binary_dilation(np.asarray(vol.array) > 0, structure=ball(LUNG_REACH_MM, spacing))
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_volume(vol.with_array(near.astype(np.uint8)), dst)
    return near
