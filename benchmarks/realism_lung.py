"""Realism of synthetic lung lesions on real CT only: released rules vs fitted profile vs real control.

Data (all real, from ../shared/datasets; the script exits with a message when it is absent):

* real lesions: the 735 LIDC-IDRI nodule crops (``lidc_nodule_vois``), split **patient-wise**
  (seed ``--seed``) into a *fit* half (the profile is fitted on it; patients LIDC-IDRI-0001 and
  -0003, whose whole scans are hosts, are forced into it) and two disjoint *held-out* quarters
  A and B (other patients);
* hosts: the thin-slice whole LIDC chests (``lidc_full_scans``, 2.5 mm), the two pyradiomics
  chests (5 mm) and NSCLC LUNG1-001 (3 mm); lungs from the model-free mask
  (``freetumor organs --engine threshold``), each host's own lesions (grown by 5 mm) excluded.

Rows (each scored against held-out quarter A with the machine Visual Turing Test of
``freetumor realism``: 24 radiomic features on 1 mm crops, logistic regression, 5-fold CV AUC
with bootstrap CI; 0.5 = indistinguishable):

* ``released``: the released rule-based synthesis (``Synthesizer("lung")``, size mix, the
  released code's shape convention, ``--shape-convention released``);
* ``rules_physical``: the same rules with freetumor's default physical shapes (round, sizes
  fitted to real nodules);
* ``profile``: lesions drawn from the profile fitted on the fit half
  (:mod:`freetumor.lesion_fit`) and rendered by :mod:`freetumor.appearance`;
* ``control``: real quarter B against real quarter A (the floor).

For every row: AUC and CI (pooled over hosts, and per host), per-feature Cohen's d, and the
lesion size distribution (median equivalent diameter). Writes
``benchmarks/results/realism_lung.json`` (``--out`` for another place).

    python benchmarks/realism_lung.py [--per-host 24] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


def patient_of(path: str) -> str:
    return Path(path).name.split("_")[0]


def split_patients(entries: list[dict], seed: int, forced_fit=("LIDC-IDRI-0001", "LIDC-IDRI-0003")):
    patients = sorted({patient_of(e["image"]) for e in entries})
    rng = np.random.default_rng(seed)
    order = [patients[i] for i in rng.permutation(len(patients))]
    rest = [p for p in order if p not in forced_fit]
    n_fit = len(patients) // 2 - len(forced_fit)
    fit = set(forced_fit) | set(rest[:n_fit])
    held = rest[n_fit:]
    a, b = set(held[: len(held) // 2]), set(held[len(held) // 2:])
    pick = lambda group: [e for e in entries if patient_of(e["image"]) in group]  # noqa: E731
    return pick(fit), pick(a), pick(b)


def hosts() -> list[dict]:
    out = []
    for pid in ("LIDC-IDRI-0001", "LIDC-IDRI-0003"):
        d = DATASETS / "lidc_full_scans" / pid
        out.append({"name": pid.lower(), "image": d / "image.nii.gz", "lesions": d / "label.nii.gz", "ids": (1,)})
    for k in (1, 2):
        d = DATASETS / "pyradiomics_lung"
        out.append({"name": f"pyradiomics_lung{k}", "image": d / f"lung{k}_image.nii.gz",
                    "lesions": d / f"lung{k}_label.nii.gz", "ids": (1,)})
    d = DATASETS / "nsclc_radiomics_lung1_001"
    out.append({"name": "nsclc_lung1_001", "image": d / "image.nii.gz", "lesions": d / "label.nii.gz", "ids": (1,)})
    return out


def crop_features(image, lesion_mask: np.ndarray, case: str, window) -> dict | None:
    from freetumor.evaluation.realism import extract_crops, lesion_features

    lab = image.with_array(lesion_mask.astype(np.uint8))
    crops = extract_crops(image, lab, 1, "synthetic", case, min_voxels=8)
    if not crops:
        return None
    crop = max(crops, key=lambda c: c.meta["voxels"])
    f = lesion_features(crop, window=window)
    f["_diameter_mm"] = float((6.0 * crop.meta["volume_ml"] * 1000.0 / np.pi) ** (1.0 / 3.0))
    return f


def host_setup(h: dict):
    from freetumor.grids import Grid
    from freetumor.io import load_volume
    from freetumor.lung_threshold import threshold_lung_mask

    image = load_volume(h["image"])
    lungs = threshold_lung_mask(image)
    lesions = np.isin(load_volume(h["lesions"]).array, h["ids"])
    grid = Grid.of(image)
    reach = [max(1, int(np.ceil(5.0 / s))) for s in grid.spacing]
    near = ndimage.binary_dilation(lesions, structure=np.ones([2 * r + 1 for r in reach], bool))
    allowed = lungs & ~near
    return image, grid, lungs, lesions, allowed


def rule_lesions(image, lungs, lesions, n: int, seed: int, name: str, window, convention: str) -> list[dict]:
    from freetumor.shapes import OrganTooSmallError
    from freetumor.synthesis import Synthesizer

    label = image.with_array((lungs.astype(np.uint8) + lesions.astype(np.uint8) * 1).astype(np.uint8))
    label.array[lesions] = 2
    synth = Synthesizer("lung", label_map="chest3", size="mix", shape_convention=convention)
    feats = []
    for k in range(n):
        try:
            res = synth(image, label, count=1, seed=seed * 1000 + k)
        except OrganTooSmallError:
            continue
        f = crop_features(res.image, res.masks[0].full(image.shape), f"{name}-rel{k}", window)
        if f:
            feats.append(f)
    return feats


def profile_lesions(image, grid, allowed, lesions, profile, n: int, seed: int, name: str, window) -> list[dict]:
    from freetumor.appearance import draw_lesion

    rng = np.random.default_rng(seed)
    feats = []
    for k in range(n):
        r, _params, _draws = draw_lesion(profile, image.array, allowed, grid, rng, protect=lesions)
        if r is None:
            continue
        out = np.asarray(image.array, np.float32).copy()
        out[r.box] = r.values
        mask = np.zeros(image.shape, bool)
        mask[r.box] = r.label
        f = crop_features(image.with_array(out), mask, f"{name}-prof{k}", window)
        if f:
            feats.append(f)
    return feats


def score(real: list[dict], synthetic: list[dict], seed: int) -> dict:
    from freetumor.evaluation.realism import feature_distance, machine_vtt

    strip = lambda fs: [{k: v for k, v in f.items() if not k.startswith("_")} for f in fs]  # noqa: E731
    vtt = machine_vtt(strip(real), strip(synthetic), folds=5, seed=seed)
    dist = feature_distance(strip(real), strip(synthetic))
    d = {k: round(v["cohens_d"], 3) for k, v in dist["per_feature"].items()}
    sizes = lambda fs: [f["_diameter_mm"] for f in fs if "_diameter_mm" in f]  # noqa: E731
    return {"n_real": len(real), "n_synthetic": len(synthetic), "auc": round(vtt["auc"], 4),
            "auc_ci95": [round(v, 4) for v in vtt["auc_ci95"]], "cohens_d": d,
            "max_abs_d": round(max((abs(v) for v in d.values()), default=float("nan")), 3),
            "median_diameter_mm": {"real": round(float(np.median(sizes(real))), 2) if sizes(real) else None,
                                   "synthetic": round(float(np.median(sizes(synthetic))), 2)
                                   if sizes(synthetic) else None},
            "top_features": vtt.get("top_features", [])[:5]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-host", type=int, default=24, help="synthetic lesions per host and method")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "realism_lung.json")
    args = ap.parse_args()
    vois = DATASETS / "lidc_nodule_vois"
    if not vois.is_dir():
        print(f"real CT not available: {vois}", file=sys.stderr)
        return 2

    from freetumor.evaluation.realism import extract_crops, lesion_features
    from freetumor.io import case_name, load_volume
    from freetumor.lesion_fit import FIT_MARGIN_MM, MIN_VOXELS, fit_profile

    t0 = time.time()
    entries = [{"image": str(p), "label": str(vois / "labels" / p.name)} for p in sorted((vois / "images").glob("*.nii.gz"))]
    fit_e, a_e, b_e = split_patients(entries, args.seed)
    window = (-1000.0, 500.0)

    def crops_of(es):
        out = []
        for e in es:
            img, lab = load_volume(e["image"]), load_volume(e["label"])
            out += extract_crops(img, lab, 1, "real", case_name(e["image"]), margin_mm=FIT_MARGIN_MM, min_voxels=MIN_VOXELS)
        return out

    fit_crops = crops_of(fit_e)
    profile = fit_profile(fit_crops, "lung", {"split": "fit half of the shared LIDC crops", "seed": args.seed})

    def feats_of(crops):
        out = []
        for c in crops:
            f = lesion_features(c, window=window)
            f["_diameter_mm"] = float((6.0 * c.meta["volume_ml"] * 1000.0 / np.pi) ** (1.0 / 3.0))
            out.append(f)
        return out

    real_a, real_b = feats_of(crops_of(a_e)), feats_of(crops_of(b_e))
    per_host: dict = {}
    pooled = {"released": [], "rules_physical": [], "profile": []}
    for i, h in enumerate(hosts()):
        if not Path(h["image"]).exists():
            continue
        image, grid, lungs, lesions, allowed = host_setup(h)
        sets = {
            "released": rule_lesions(image, lungs, lesions, args.per_host, args.seed + i, h["name"], window, "released"),
            "rules_physical": rule_lesions(image, lungs, lesions, args.per_host, args.seed + i, h["name"], window,
                                           "physical"),
            "profile": profile_lesions(image, grid, allowed, lesions, profile, args.per_host, args.seed + i, h["name"],
                                       window),
        }
        per_host[h["name"]] = {"spacing_mm": [round(float(s), 3) for s in image.spacing]}
        for k, fs in sets.items():
            pooled[k] += fs
            per_host[h["name"]][k] = score(real_a, fs, args.seed) if len(fs) >= 5 else None
        print(h["name"] + ": " + ", ".join(f"{k} AUC {v['auc']}" for k, v in per_host[h["name"]].items()
                                           if isinstance(v, dict)), flush=True)
    result = {
        "data": "real CT only: shared LIDC nodule crops split patient-wise (fit half / held-out quarters A, B), "
                "hosts = real chest CT (LIDC whole scans 2.5 mm, pyradiomics 5 mm, NSCLC 3 mm)",
        "command": "python benchmarks/realism_lung.py " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "lesions": {"fit": len(fit_crops), "held_out_a": len(real_a), "held_out_b": len(real_b)},
        "patients": {"fit": len({patient_of(e['image']) for e in fit_e}),
                     "held_out_a": len({patient_of(e['image']) for e in a_e}),
                     "held_out_b": len({patient_of(e['image']) for e in b_e})},
        "rows": {**{k: score(real_a, v, args.seed) for k, v in pooled.items()},
                 "control": score(real_a, real_b, args.seed)},
        "not_measured": {"generator": "the generator trained on real data (issue 12 item 4) is not built yet"},
        "per_host": per_host,
        "profile_summary": {k: v.get("median") for k, v in profile.summary.items()},
        "seconds": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for k, r in result["rows"].items():
        print(f"{k:14s} AUC {r['auc']:.3f} ({r['auc_ci95'][0]:.3f}-{r['auc_ci95'][1]:.3f})  max|d| {r['max_abs_d']}  "
              f"median diameter real {r['median_diameter_mm']['real']} synthetic {r['median_diameter_mm']['synthetic']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
