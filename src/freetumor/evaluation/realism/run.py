"""``freetumor realism``: score a set of synthetic tumours against real ones, write the report.

:func:`run_realism` crops the real lesions of a datalist and the synthetic lesions of a folder
written by ``freetumor synthesize`` (or the labelled lesions of a second datalist), computes
their features, runs :func:`.classifier.machine_vtt` and :func:`.classifier.feature_distance`
and writes ``realism.json``, ``features.csv``, ``realism.png`` and ``lesions.png``. With a
control datalist (more real lesions), the same classifier scores real against control too: the
floor that real-vs-synthetic should be read against.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

from ... import __version__
from ...data import checked_labelled_cases, datalist_label_map, load_datalist
from ...errors import ConfigError, InputError
from ...io import staged_output, write_bytes_atomic
from ...labels import LabelMap, get_label_map
from ...organs import Organ, get_organ
from ...lesions.features import (
    FEATURE_DEFINITIONS,
    GLCM_DIRECTIONS,
    GLCM_LEVELS,
    HIST_BIN_HU,
    RIM_MM,
    LesionCrop,
    crops_from_datalist,
    crops_from_synthetic_dir,
    read_synthesis_record,
    lesion_features,
)
from .classifier import BOOTSTRAP, cross_validate, feature_distance
from .cnn import CNN_MIN_LESIONS, cnn_reader
from .gallery import lesion_gallery_png

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


def _figure_png(y, oof, vtt, names, X, path: Path, title: str, control=None) -> None:
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
    if control is not None:
        y_c, oof_c, vtt_c = control
        fpr_c, tpr_c = _roc_points(y_c, oof_c)
        ax.plot(fpr_c, tpr_c, color="C0", lw=1.5, label=f"real vs control (floor) AUC {vtt_c['auc']:.3f}")
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


def _datalist_cases(path: Path, org: Organ, label_map, option: str, skip_bad: bool,
                    log) -> tuple[list[dict], LabelMap]:
    """The labelled cases of one datalist, checked up front; its label map is ``label_map``, else its
    own, else the organ's."""
    lm = get_label_map(label_map if label_map is not None else datalist_label_map(path), org.name)
    try:
        load_datalist(path)  # a JSON file that is no datalist, named as the option's
    except InputError as exc:
        if option != "--synthetic" or Path(exc.path) != path:
            raise
        raise InputError(path, f"{exc.problem}; --synthetic takes a datalist or a folder written by "
                               "`freetumor synthesize`") from None
    return checked_labelled_cases(path, lm, skip_bad=skip_bad, log=log), lm


def _datalist_crops(path: Path, entries: list[dict], lm: LabelMap, org: Organ, source: str,
                    crop_kw: dict, progress=None) -> list[LesionCrop]:
    """The labelled lesions of one datalist's checked cases (``progress`` called before each case)."""
    crops = crops_from_datalist(entries, org.name, label_map=lm, source=source, progress=progress, **crop_kw)
    if not crops:
        raise InputError(path, f"no {source} {org.name} tumours (label {lm.tumour_id(org.name)}, at least "
                               f"{crop_kw['min_voxels']} voxels) in the labelled cases")
    return crops


def _datalist_path(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(p, f"{what} not found")
    if not p.is_file():
        raise InputError(p, f"not a {what} file")
    return p


def _synthetic_kind(path) -> tuple[Path, str]:
    """``(path, "folder" | "datalist")`` for ``--synthetic``; one-line errors for anything else."""
    p = Path(path)
    if p.is_dir():
        return p, "folder"
    if p.suffix.lower() == ".json":
        if not p.exists():
            raise InputError(p, "synthetic datalist not found")
        return p, "datalist"
    if not p.exists():
        raise InputError(p, "synthetic folder not found")
    raise InputError(p, "not a folder written by `freetumor synthesize` or a .json datalist")


def _rows(crops: list[LesionCrop], X: np.ndarray) -> list[list[str]]:
    return [[crop.source, crop.case, crop.index, f"{crop.meta['volume_ml']:.6g}", *(f"{v:.8g}" for v in row)]
            for crop, row in zip(crops, X)]


def run_realism(real_datalist, synthetic, out_dir, organ: str, label_map=None, folds: int = 5,
                seed: int = 0, control=None, skip_bad_cases: bool = False, log=None, progress=None,
                reader: str = "radiomics") -> dict:
    """Score the realism of a set of synthetic tumours against the real tumours of a datalist.

    ``synthetic`` is a folder written by ``freetumor synthesize`` (each lesion scored on its own
    voxels, see :func:`.features.crops_from_synthetic_dir`) or a datalist (.json) whose labelled
    lesions are the "synthetic" set (a third-party synthetic set, or real lesions for a control).
    ``control`` (optional) is a second datalist of real lesions: the same features and classifier
    score ``real`` against it, the floor of the AUC for sets that differ only by sampling.
    ``label_map`` applies to every datalist; without it each uses its own ``label_map``, else
    the organ's default. Every case of every datalist is checked before any is read for
    features (:func:`~freetumor.data.check_cases`): a bad one stops the run before anything is
    written, or with ``skip_bad_cases`` is left out and counted through ``log``.

    ``reader="cnn"`` adds, beside the radiomics reader, the CNN reader (:mod:`.cnn`: a small 3D CNN
    on crops of one geometry for both sets, matched slice thickness, native in-plane spacing,
    group-wise folds with one group per case) against the synthetic set and, with a control,
    against the control: the ``cnn`` block of ``realism.json`` and ``summary["cnn_auc"]``. It needs
    at least :data:`.cnn.CNN_MIN_LESIONS` (20) lesions on each side.

    Writes (all or nothing) into ``out_dir``: ``realism.json`` (the returned dict:
    ``machine_vtt`` and ``distance`` blocks, ``summary``, ``counts``, ``features``
    with their definitions, ``settings``, ``lesion_figure`` and, with a control, ``control``),
    ``features.csv`` (one row per lesion: source, case, index, volume_ml, features),
    ``realism.png`` (ROC curves of the out-of-fold predictions and histograms of a few
    features, real vs synthetic) and ``lesions.png`` (real, synthetic and control lesions side
    by side at one scale, see :mod:`.gallery`).

    Raises:
        InputError: missing / unreadable datalist, folder or image; a JSON file that is not a
            datalist; no lesions in a set.
        CaseErrors: one line per bad case of the datalists (unless ``skip_bad_cases``).
        ConfigError: bad organ / label map, fewer than 3 lesions in a class; an unknown ``reader``;
            with the CNN reader fewer than 20 lesions on a side or lesions of a single case.
    """
    if reader not in ("radiomics", "cnn"):
        raise ConfigError(f"--reader must be radiomics or cnn, got {reader!r}")
    org = get_organ(organ)
    syn_path, syn_kind = _synthetic_kind(synthetic)
    dl_path = _datalist_path(real_datalist, "datalist")
    control_path = None if control is None else _datalist_path(control, "control datalist")
    crop_kw = {"spacing": (1.0, 1.0, 1.0), "margin_mm": 5.0, "min_voxels": 20}

    say = progress or (lambda text: None)
    case_log = getattr(progress, "log", None)
    # every datalist's cases checked first, before any lesion is cropped
    say("checking the cases")
    real_cases, lm = _datalist_cases(dl_path, org, label_map, "--real", skip_bad_cases, log)
    syn_cases, syn_lm = (_datalist_cases(syn_path, org, label_map, "--synthetic", skip_bad_cases, log)
                         if syn_kind == "datalist" else (None, None))
    control_cases, control_lm = (_datalist_cases(control_path, org, label_map, "--control", skip_bad_cases, log)
                                 if control_path is not None else (None, None))
    if syn_kind == "folder":  # and every synthesis record (bounded, its fields checked)
        for rec in sorted(Path(syn_path).glob("*.json")):
            read_synthesis_record(rec)
    say("cropping the real lesions")
    real_crops = _datalist_crops(dl_path, real_cases, lm, org, "real", crop_kw, case_log)
    say("cropping the synthetic lesions")
    tid = lm.tumour_id(org.name)
    if syn_kind == "folder":
        syn_crops = crops_from_synthetic_dir(syn_path, org.name, **crop_kw)
        if not syn_crops:
            raise InputError(syn_path, f"no synthetic {org.name} lesions of at least "
                                       f"{crop_kw['min_voxels']} voxels in the folder")
    else:
        syn_crops = _datalist_crops(syn_path, syn_cases, syn_lm, org, "synthetic", crop_kw, case_log)
    control_crops = []
    if control_path is not None:
        say("cropping the control lesions")
        control_crops = _datalist_crops(control_path, control_cases, control_lm, org, "control", crop_kw, case_log)
    if reader == "cnn":
        sides = [("real", real_crops), ("synthetic", syn_crops)] + ([("control", control_crops)] if control_crops else [])
        if min(len(c) for _, c in sides) < CNN_MIN_LESIONS:
            raise ConfigError(f"--reader cnn needs at least {CNN_MIN_LESIONS} lesions per side, got "
                              + " and ".join(f"{len(c)} {name}" for name, c in sides))
    window = [float(v) for v in org.hu_window]
    say(f"features of {len(real_crops)} real and {len(syn_crops)} synthetic lesions; {folds}-fold classifier")
    real_f = [lesion_features(c, window) for c in real_crops]
    syn_f = [lesion_features(c, window) for c in syn_crops]
    vtt, y, oof, names, X = cross_validate(real_f, syn_f, folds, seed)
    dist = feature_distance(real_f, syn_f)

    result = {
        "organ": org.name,
        "label_map": lm.name,
        "tumour_id": int(tid),
        "real_datalist": str(dl_path),
        "synthetic_dir": str(syn_path) if syn_kind == "folder" else None,
        "synthetic_datalist": str(syn_path) if syn_kind == "datalist" else None,
        "summary": {"auc": vtt["auc"], "auc_ci95": vtt["auc_ci95"], "mean_abs_d": dist["mean_abs_d"],
                    "frechet": dist["frechet"]},
        "counts": {
            "real_lesions": len(real_crops),
            "synthetic_lesions": len(syn_crops),
            "real_cases": len({c.case for c in real_crops}),
            "synthetic_cases": len({c.case for c in syn_crops}),
            "synthetic_masks": dict(sorted(Counter(c.meta.get("mask", "component") for c in syn_crops).items())),
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
    if syn_lm is not None:
        result["synthetic_label_map"] = syn_lm.name
    rows = _rows(real_crops + syn_crops, X)
    roc_control = None
    if control_path is not None:
        say("the real-vs-control floor")
        control_f = [lesion_features(c, window) for c in control_crops]
        vtt_c, y_c, oof_c, names_c, X_c = cross_validate(real_f, control_f, folds, seed)
        dist_c = feature_distance(real_f, control_f)
        roc_control = (y_c, oof_c, vtt_c)
        result["summary"].update(control_auc=vtt_c["auc"], control_auc_ci95=vtt_c["auc_ci95"])
        result["control"] = {
            "datalist": str(control_path),
            "label_map": control_lm.name,
            "what": "real (--real, class 0) against control (--control, class 1) with the same features, "
                    "classifier, folds and seed: the AUC of two real sets, the floor for real-vs-synthetic",
            "auc": vtt_c["auc"],
            "auc_ci95": vtt_c["auc_ci95"],
            "mean_abs_d": dist_c["mean_abs_d"],
            "frechet": dist_c["frechet"],
            "counts": {"real_lesions": len(real_crops), "control_lesions": len(control_crops),
                       "control_cases": len({c.case for c in control_crops})},
            "machine_vtt": vtt_c,
            "distance": dist_c,
        }
        rows += _rows(control_crops, X_c[len(real_crops):])
    if reader == "cnn":
        say(f"CNN reader: {len(real_crops)} real vs {len(syn_crops)} synthetic lesions")
        cnn = cnn_reader(real_crops, syn_crops, window, folds, seed)
        cnn.pop("oof")
        result["cnn"] = cnn
        result["summary"].update(cnn_auc=cnn["auc"], cnn_auc_ci95=cnn["auc_ci95"])
        if control_crops:
            say("CNN reader: the real-vs-control floor")
            cnn_c = cnn_reader(real_crops, control_crops, window, folds, seed, grid=cnn["grid"])
            cnn_c.pop("oof")
            result["cnn"]["control"] = cnn_c
            result["summary"].update(cnn_control_auc=cnn_c["auc"], cnn_control_auc_ci95=cnn_c["auc_ci95"])
    result["settings"]["reader"] = reader

    buf = io.StringIO()
    say("writing the report and figures")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["source", "case", "index", "volume_ml", *names])
    writer.writerows(rows)
    sets = [("real", real_crops), ("synthetic", syn_crops)] + ([("control", control_crops)] if control_crops else [])
    with staged_output(out_dir) as stage:
        write_bytes_atomic(stage / "features.csv", buf.getvalue().encode())
        _figure_png(y, oof, vtt, names, X, stage / "realism.png",
                    f"{org.name}: {len(real_crops)} real vs {len(syn_crops)} synthetic lesions", control=roc_control)
        result["lesion_figure"] = lesion_gallery_png(sets, window, stage / "lesions.png",
                                                     title=f"{org.name}: real and synthetic lesions")
        write_bytes_atomic(stage / "realism.json", (json.dumps(result, indent=2) + "\n").encode())
    return result
