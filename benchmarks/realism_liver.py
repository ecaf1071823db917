"""Realism of builtin:liver-style lesions on real CT, leave-one-tumour-out (LOTO) on one scan.

Data: Real CT (3D-IRCADb-01 patient 1, ``../shared/datasets/ircadb01_liver01``), 7 real liver tumours.
For each real tumour T: a combined profile is built exactly as ``builtin:liver``
(``benchmarks/fit_liver_profile.py``) but from the *other* 6 tumours' ``lesions fit`` rows (the
hypo-attenuating ones) plus the literature size distribution, and ``--per-fold`` lesions are drawn from it
into the same liver, at least 10 mm from every real tumour (real tumours protected). The realism features
(:func:`freetumor.lesions.features.lesion_features`, liver window) of the synthetic lesions are compared with
the real tumours' for contrast to the liver (``rim_contrast``), edge sharpness (``edge_sharpness``) and GLCM
correlation: per fold, the share of synthetic lesions inside the 7 real tumours' 5-95 % range and the held-out
tumour's own value against the fold's synthetic values; and a real-vs-synthetic machine AUC (all features,
``freetumor.evaluation.realism.machine_vtt``) with its bootstrap CI -- with 7 real lesions a very small sample.

Usage::

    python benchmarks/realism_liver.py [--per-fold 4] [--seed 0] [--out benchmarks/results/realism_liver.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, portable  # noqa: E402

import fit_liver_profile as flp  # noqa: E402

FEATURES = ("rim_contrast", "edge_sharpness", "glcm_correlation")


def main(argv=None) -> int:
    from freetumor.evaluation.realism import machine_vtt
    from freetumor.grids import Grid
    from freetumor.io import load_volume
    from freetumor.lesions.features import extract_crops, lesion_features
    from freetumor.lesions.profile import FEATURE_ORDER, LesionProfile
    from freetumor.lesions.render import draw_lesion
    from freetumor.organs import get_organ

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--per-fold", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "realism_liver.json")
    a = ap.parse_args(argv)
    t0 = time.time()
    window = get_organ("liver").hu_window
    scan = a.datasets / flp.SCAN
    image = load_volume(scan / "image.nii.gz")
    lab = load_volume(scan / "label.nii.gz").array
    grid = Grid.of(image)
    tum, liver = lab == 2, lab == 1
    bb = tuple(slice(int(v.min()), int(v.max()) + 1) for v in np.nonzero(lab > 0))
    far = np.zeros(lab.shape, bool)
    far[bb] = ndimage.distance_transform_edt(~tum[bb], sampling=grid.spacing) > 10.0
    allowed = liver & far

    rows, _ = flp.fit_rows(a.datasets)
    names = flp._tumour_names(a.datasets, rows)
    real_crops = extract_crops(image, image.with_array(tum.astype(np.uint8)), 1, "real", "ircad01")
    real = {n: lesion_features(c, window=window) for n, c in zip(names, real_crops)}
    lit = json.loads(flp.LITERATURE.read_text(encoding="utf-8"))
    dists = {f: lit["distributions"][f] for f in flp.FROM_LITERATURE}
    j = FEATURE_ORDER.index("contrast_hu")
    rng = np.random.default_rng(a.seed)
    rng_vals = {f: [float(np.percentile([r[f] for r in real.values()], q)) for q in (5, 95)] for f in FEATURES}
    folds, synth_all = [], []
    for held, name in enumerate(names):
        others = [r for k, r in enumerate(rows) if k != held and r[j] < 0]
        prof = LesionProfile.combined("liver", others, dists, {"kind": "combined"}, f"loto-{name}", summary_draws=200)
        feats = []
        for _k in range(a.per_fold):
            r, params, _ = draw_lesion(prof, image.array, allowed, grid, rng, tries=20, protect=tum)
            if r is None:
                continue
            out = np.asarray(image.array, np.float32).copy()
            out[r.box] = r.values
            mask = np.zeros(lab.shape, np.uint8)
            mask[r.box] = r.label
            crops = extract_crops(image.with_array(out), image.with_array(mask), 1, "synthetic", name, min_voxels=8)
            if crops:
                f = lesion_features(max(crops, key=lambda c: c.meta["voxels"]), window=window)
                f["_diameter_mm"] = round(params["diameter_mm"], 2)
                feats.append(f)
        synth_all += feats
        fold = {"held_out": name, "fit_rows": len(others), "n_synthetic": len(feats)}
        for f in FEATURES:
            v = np.array([s[f] for s in feats])
            lo, hi = rng_vals[f]
            fold[f] = {"real": round(real[name][f], 4), "synthetic_median": round(float(np.median(v)), 4),
                       "synthetic": [round(float(x), 4) for x in v],
                       "share_in_real_5_95": round(float(np.mean((v >= lo) & (v <= hi))), 3)}
        folds.append(fold)
        print(f"{name}: {len(feats)} lesions, {time.time() - t0:.0f} s", flush=True)

    summary = {}
    for f in FEATURES:
        v = np.array([s[f] for s in synth_all])
        r = np.array([x[f] for x in real.values()])
        lo, hi = rng_vals[f]
        summary[f] = {"real_p5_p95": [round(lo, 4), round(hi, 4)], "real_median": round(float(np.median(r)), 4),
                      "real_values": {n: round(float(real[n][f]), 4) for n in names},
                      "synthetic_median": round(float(np.median(v)), 4),
                      "synthetic_p5_p95": [round(float(np.percentile(v, 5)), 4), round(float(np.percentile(v, 95)), 4)],
                      "synthetic_median_inside_real_5_95": bool(lo <= np.median(v) <= hi),
                      "share_synthetic_inside_real_5_95": round(float(np.mean((v >= lo) & (v <= hi))), 3)}
    strip = lambda fs: [{k: v for k, v in x.items() if not k.startswith("_")} for x in fs]  # noqa: E731
    vtt = machine_vtt(strip(list(real.values())), strip(synth_all), folds=5, seed=a.seed)
    result = {
        "data": "Real CT (3D-IRCADb-01 patient 1)",
        "split": "leave-one-tumour-out on one scan: for each of the 7 real tumours, synthetic lesions from a profile "
                 "fitted on the other 6 (hypo-attenuating rows only) plus the literature size distribution",
        "command": "python benchmarks/realism_liver.py " + " ".join(portable(x) for x in (argv or sys.argv[1:])),
        "scan": portable(str(scan)),
        "n_real": len(real), "per_fold": a.per_fold, "n_synthetic": len(synth_all), "seed": a.seed,
        "window": list(window),
        "features": {"rim_contrast": "mean HU of the 3 mm shell outside minus the lesion mean (positive = hypodense)",
                     "edge_sharpness": "mean HU/mm gradient on the boundary band",
                     "glcm_correlation": "GLCM correlation (liver window, 32 levels, 3D average)"},
        "summary": summary,
        "auc": {"value": round(vtt["auc"], 4), "ci95": [round(v, 4) for v in vtt["auc_ci95"]],
                "folds": vtt.get("folds"), "n_features": vtt.get("n_features"),
                "top_features": vtt.get("top_features", [])[:5],
                "caveat": "7 real lesions from one patient: a very small sample, the CI is wide and the AUC is "
                          "indicative only"},
        "folds": folds,
        "seconds": round(time.time() - t0, 1),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"summary": summary, "auc": result["auc"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
