"""``freetumor realism``: score a folder of synthetic tumours against real ones, write the report.

:func:`run_realism` crops the real lesions of a datalist and the synthetic lesions of a folder
written by ``freetumor synthesize``, computes their features, runs :func:`.classifier.machine_vtt`
and :func:`.classifier.feature_distance` and writes ``realism.json``, ``features.csv`` and
``realism.png``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ... import __version__
from ...data import datalist_label_map
from ...errors import InputError
from ...io import staged_output, write_bytes_atomic
from ...labels import get_label_map
from ...organs import get_organ
from .classifier import BOOTSTRAP, cross_validate, feature_distance
from .features import (
    FEATURE_DEFINITIONS,
    GLCM_DIRECTIONS,
    GLCM_LEVELS,
    HIST_BIN_HU,
    RIM_MM,
    crops_from_datalist,
    crops_from_synthetic_dir,
    lesion_features,
)

__all__ = ["run_realism"]


def _roc_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, kind="stable")
    ys, ss = y[order], score[order]
    distinct = np.r_[np.nonzero(np.diff(ss))[0], ys.size - 1]
    tp = np.cumsum(ys)[distinct]
    fp = np.cumsum(1 - ys)[distinct]
    tpr = np.r_[0.0, tp / max(1.0, ys.sum())]
    fpr = np.r_[0.0, fp / max(1.0, (1 - ys).sum())]
    return fpr, tpr


def _figure_png(y, oof, vtt, names, X, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: heavy optional dependency
    from matplotlib.figure import Figure  # deferred: heavy optional dependency

    shown = [t["feature"] for t in vtt["top_features"][:3]]
    for extra in ("firstorder_mean", "glcm_contrast", "rim_contrast"):
        if len(shown) >= 5:
            break
        if extra in names and extra not in shown:
            shown.append(extra)
    ncol = (len(shown) + 1) // 2
    fig = Figure(figsize=(6.5 + 3.6 * ncol, 7.0), dpi=100)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, ncol + 1, width_ratios=[1.8] + [1.0] * ncol)
    ax = fig.add_subplot(gs[:, 0])
    fpr, tpr = _roc_points(y, oof)
    ax.plot(fpr, tpr, color="C3", lw=2, label=f"out-of-fold AUC {vtt['auc']:.3f}")
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="indistinguishable")
    ax.set_xlabel("false positive rate (real called synthetic)")
    ax.set_ylabel("true positive rate (synthetic found)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"machine VTT ({vtt['folds']}-fold CV)")
    for k, name in enumerate(shown):
        a = fig.add_subplot(gs[k % 2, 1 + k // 2])
        c = names.index(name)
        vals = X[:, c]
        lo, hi = float(vals.min()), float(vals.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
        a.hist(vals[y == 0], bins=bins, alpha=0.55, color="C0", label="real", density=True)
        a.hist(vals[y == 1], bins=bins, alpha=0.55, color="C3", label="synthetic", density=True)
        a.set_title(name, fontsize=9)
        a.tick_params(labelsize=7)
        if k == 0:
            a.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path))


def run_realism(real_datalist, synthetic_dir, out_dir, organ: str, label_map=None, folds: int = 5,
                seed: int = 0) -> dict:
    """Score the realism of a folder of synthetic tumours against the real tumours of a datalist.

    Writes (all or nothing) into ``out_dir``: ``realism.json`` (the returned dict:
    ``machine_vtt`` and ``distance`` blocks, ``summary``, ``counts``, ``features``
    with their definitions, ``settings``), ``features.csv`` (one row per lesion:
    source, case, index, volume_ml, features) and ``realism.png`` (ROC curve of the
    out-of-fold predictions and histograms of a few features, real vs synthetic).

    Raises:
        InputError: missing datalist / folder / image, no lesions found.
        ConfigError: bad organ / label map, fewer than 3 lesions in a class.
    """
    org = get_organ(organ)
    syn_dir = Path(synthetic_dir)
    if not syn_dir.is_dir():
        raise InputError(syn_dir, "synthetic folder not found" if not syn_dir.exists() else "not a folder")
    dl_path = Path(real_datalist)
    if not dl_path.is_file():
        raise InputError(dl_path, "datalist not found")
    if label_map is None:
        label_map = datalist_label_map(dl_path)
    lm = get_label_map(label_map, org.name)
    tid = lm.tumour_id(org.name)
    crop_kw = {"spacing": (1.0, 1.0, 1.0), "margin_mm": 5.0, "min_voxels": 20}

    real_crops = crops_from_datalist(dl_path, org.name, label_map=lm, **crop_kw)
    if not real_crops:
        raise InputError(dl_path, f"no real {org.name} tumours (label {tid}, at least "
                                  f"{crop_kw['min_voxels']} voxels) in the labelled cases")
    syn_crops = crops_from_synthetic_dir(syn_dir, org.name, **crop_kw)
    if not syn_crops:
        raise InputError(syn_dir, f"no synthetic {org.name} lesions of at least "
                                  f"{crop_kw['min_voxels']} voxels in the folder")
    window = [float(v) for v in org.hu_window]
    real_f = [lesion_features(c, window) for c in real_crops]
    syn_f = [lesion_features(c, window) for c in syn_crops]
    vtt, y, oof, names, X = cross_validate(real_f, syn_f, folds, seed)
    dist = feature_distance(real_f, syn_f)

    result = {
        "organ": org.name,
        "label_map": lm.name,
        "tumour_id": int(tid),
        "real_datalist": str(dl_path),
        "synthetic_dir": str(syn_dir),
        "summary": {"auc": vtt["auc"], "auc_ci95": vtt["auc_ci95"], "mean_abs_d": dist["mean_abs_d"],
                    "frechet": dist["frechet"]},
        "counts": {
            "real_lesions": len(real_crops),
            "synthetic_lesions": len(syn_crops),
            "real_cases": len({c.case for c in real_crops}),
            "synthetic_cases": len({c.case for c in syn_crops}),
        },
        "machine_vtt": vtt,
        "distance": dist,
        "features": list(names),
        "feature_definitions": {k: FEATURE_DEFINITIONS.get(k, "") for k in names},
        "settings": {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in crop_kw.items()},
            "hu_window": window,
            "hist_bin_width_hu": HIST_BIN_HU,
            "glcm_levels": GLCM_LEVELS,
            "glcm_directions": len(GLCM_DIRECTIONS),
            "glcm_distance": 1,
            "rim_mm": RIM_MM,
            "folds": int(folds),
            "seed": int(seed),
            "bootstrap": BOOTSTRAP,
        },
        "freetumor_version": __version__,
    }

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["source", "case", "index", "volume_ml", *names])
    for crop, row in zip(real_crops + syn_crops, X):
        writer.writerow([crop.source, crop.case, crop.index, f"{crop.meta['volume_ml']:.6g}",
                         *(f"{v:.8g}" for v in row)])
    with staged_output(out_dir) as stage:
        write_bytes_atomic(stage / "features.csv", buf.getvalue().encode())
        _figure_png(y, oof, vtt, names, X, stage / "realism.png",
                    f"{org.name}: {len(real_crops)} real vs {len(syn_crops)} synthetic lesions")
        write_bytes_atomic(stage / "realism.json", (json.dumps(result, indent=2) + "\n").encode())
    return result
