"""k-fold cross-validation of a segmentor: every fold trained, then scored on its own validation cases.

:func:`train_kfold` is ``train-seg --folds N``. Fold ``k`` is exactly the run ``train-seg --fold k``
with ``train.folds = N`` (same split, same recipe, run folder ``OUT/fold_k``); the labelled
"training" cases of the datalist are dealt into the ``N`` folds by
:func:`~freetumor.training.data.kfold_split` (the datalist's own ``fold`` field when every case has
one), so every labelled case is a validation case of exactly one fold. Unlabelled cases
(``unlabelled``, Stage 2) join every fold's training pool; they have no label to validate on.

When every fold is trained, each fold's ``best.pt`` predicts that fold's validation cases
(:class:`~freetumor.inference.Predictor`, on each case's native grid) into ``OUT/fold_k/val_pred``
and :func:`~freetumor.evaluation.evaluate.evaluate_predictions` scores them into
``OUT/fold_k/val_eval`` (tumour and organ Dice / NSD, lesion detection). ``OUT/folds.json`` holds,
per fold, the case ids, the per-case metrics and the fold means, and a summary over folds by
:func:`~freetumor.evaluation.stats.kfold_summary` (mean and sd of the fold means).

Every input is checked before anything is written (config of each fold, datalist, split, the run
folders); ``resume`` continues each fold from its own ``last.pt``, skips folds that are already
trained and starts folds that never began. It runs in one process (one GPU or the CPU): under
``torchrun`` the process group of a finished fold cannot be joined again, so there it refuses and
each fold is trained with ``--fold K``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from ..config import Config
from ..data import datalist_label_map, write_datalist
from ..errors import ConfigError, InputError
from ..evaluation.compare import read_metrics_csv
from ..evaluation.evaluate import ORGAN3, evaluate_predictions
from ..evaluation.stats import kfold_summary
from ..evaluation.tables import CASE_METRICS
from ..inference import Predictor
from ..io import case_name, load_volume, save_volume, staged_output, write_bytes_atomic
from ..synthesis import SynthesisOptions
from .data import SPLIT_SEED, kfold_split
from .run import check_run_folder
from .checks import check_synthesis, checked_pool
from .stage0 import train_segmentation

__all__ = ["SUMMARY_METRICS", "fold_dir", "train_kfold", "format_folds_table"]

# Metrics summarised over folds: the evaluation's per-case metrics, and false positives per case,
# whose fold mean is the fold's false positives per scan.
SUMMARY_METRICS = (*CASE_METRICS, "false_positives_per_scan")
_COUNT_COLUMNS = ("gt_lesions", "detected", "false_positives")
_DETECTION_KEYS = ("lesion_sensitivity", "early_sensitivity", "false_positives_per_scan",
                   "patient_sensitivity", "patient_specificity")


def fold_dir(out: str | os.PathLike, fold: int) -> Path:
    """The run folder of fold ``fold``: ``OUT/fold_<fold>``."""
    return Path(out) / f"fold_{fold}"


def _check_folds(folds: object) -> int:
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"--folds must be an integer of at least 2, got {folds!r}")
    return int(folds)


def _fold_state(run: Path, cfg: Config, val: list[dict], resume: bool) -> str:
    """``new``, ``resume`` or ``done`` for one fold's run folder; one-line errors for a folder that
    cannot be used (a checkpoint without ``resume``, a different split)."""
    if not resume:
        check_run_folder(run, False)
        return "new"
    split = run / "split.json"
    if split.is_file():
        try:
            planned = json.loads(split.read_text())["val"]
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(split, "unreadable split of the run being resumed") from None
        if planned != [e["image"] for e in val]:
            raise InputError(split, "the datalist or number of folds differs from the run being resumed")
    if not (run / "last.pt").exists():
        return "new"
    final = run / "final.json"
    if final.is_file() and (run / "best.pt").is_file():
        try:
            steps = int(json.loads(final.read_text())["steps"])
        except (OSError, ValueError, KeyError, TypeError):
            steps = -1
        if steps >= int(cfg.train.max_steps):
            return "done"
    return "resume"


def _plan(cfg: Config, datalist, out: Path, folds: int, resume: bool, unlabelled, skip_bad: bool = False,
          log: Callable[[str], None] | None = None) -> list[dict]:
    """Every fold's config, cases and run-folder state, or a one-line error; writes nothing.

    Every case is checked here, once for all folds (a skipped-cases line is said once); each
    plan's ``pool`` is the checked (labelled, unlabelled) entries its fold trains from."""
    entries, extra = checked_pool(cfg, datalist, unlabelled, skip_bad, log)
    if all("fold" in e for e in entries):
        try:
            outside = sorted({int(e["fold"]) for e in entries} - set(range(folds)))
        except (TypeError, ValueError):
            raise InputError(datalist, "a \"fold\" field is not an integer") from None
        if outside:
            raise InputError(datalist, f"\"fold\" values {outside} are outside 0..{folds - 1} (--folds {folds}); "
                                       "those cases would never be validated")
    plan = []
    for k in range(folds):
        cfg_k = cfg.replace(**{"train.folds": folds, "train.fold": k})
        train, val = kfold_split(entries, folds, k)
        if not val:
            raise InputError(datalist, f"fold {k} of {folds} has no validation case ({len(entries)} labelled "
                                       "cases); use fewer folds")
        ids = [case_name(e["image"]) for e in val]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise InputError(datalist, f"fold {k} validates two cases named {dup[0]!r}; case ids (image file "
                                       "names) must be unique")
        run = fold_dir(out, k)
        plan.append({"fold": k, "cfg": cfg_k, "run": run, "train": train, "val": val, "pool": (entries, extra),
                     "state": _fold_state(run, cfg_k, val, resume)})
    if resume and all(p["state"] == "new" for p in plan):
        raise InputError(out, f"nothing to resume: no fold_K/last.pt in any of the {folds} fold folders")
    return plan


def _predict_cases(model: Path, entries: list[dict], out_dir: Path, device: str | None) -> None:
    """Predictions of ``entries`` as ``out_dir/<case>.nii.gz``, on each case's native grid (all or nothing)."""
    predictor = Predictor(model, device)
    with staged_output(out_dir) as stage:
        for e in entries:
            save_volume(predictor.predict_volume(load_volume(e["image"])), stage / f"{case_name(e['image'])}.nii.gz")


def _case_rows(report: Path) -> dict[str, dict]:
    rows = {}
    for case, r in read_metrics_csv(report).items():
        row = {k: v for k, v in r.items() if k != "case"}
        for k in _COUNT_COLUMNS:
            if row.get(k) is not None:
                row[k] = int(row[k])
        rows[case] = row
    return rows


def _evaluate_fold(p: dict, datalist, label_map, device, tolerance_mm: float, progress: bool) -> dict:
    cfg, run = p["cfg"], p["run"]
    gt = write_datalist(run / "val_datalist.json", p["val"], label_map=label_map)
    _predict_cases(run / "best.pt", p["val"], run / "val_pred", device)
    pred_map = "abdomen7" if cfg.task == "abdomen7" else ORGAN3  # the model's own classes
    s = evaluate_predictions(run / "val_pred", gt, cfg.organ, run / "val_eval", label_map=label_map,
                             pred_label_map=pred_map, tolerance_mm=tolerance_mm, name=f"fold_{p['fold']}",
                             progress=progress)
    cases = _case_rows(run / "val_eval")
    ids = [case_name(e["image"]) for e in p["val"]]
    means = {m: s["metrics"][m]["mean"] for m in CASE_METRICS}
    means["false_positives_per_scan"] = s["detection"]["false_positives_per_scan"]["value"]
    final = json.loads((run / "final.json").read_text()) if (run / "final.json").is_file() else {}
    return {
        "fold": p["fold"],
        "run": run.name,
        "report": f"{run.name}/val_eval",
        "steps": final.get("steps"),
        "best_score": final.get("best_score"),
        "train_cases": sorted({case_name(e["image"]) for e in p["train"]}),
        "val_cases": ids,
        "cases": {c: cases[c] for c in ids},
        "means": means,
        "detection": {k: s["detection"][k] for k in _DETECTION_KEYS},
    }


def _per_case(fold: dict, metric: str) -> list:
    key = "false_positives" if metric == "false_positives_per_scan" else metric
    return [fold["cases"][c][key] for c in fold["val_cases"]]


def train_kfold(
    cfg: Config,
    datalist: str | os.PathLike,
    out: str | os.PathLike,
    folds: int,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
    unlabelled: str | os.PathLike | None = None,
    synthesis: str = "none",
    options: SynthesisOptions | None = None,
    device: str | None = None,
    tolerance_mm: float = 2.0,
    skip_bad_cases: bool = False,
) -> dict:
    """Train folds ``0..folds-1`` into ``out/fold_k`` and score each on its validation cases.

    ``cfg.train.folds`` / ``cfg.train.fold`` are replaced by ``folds`` and each fold in turn; the
    other arguments are those of :func:`~freetumor.training.stage0.train_segmentation` (given to
    every fold). ``device`` is the evaluation's (default: CUDA when available); ``tolerance_mm``
    the NSD tolerance. Returns what ``out/folds.json`` holds.
    """
    folds = _check_folds(folds)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--folds trains the folds one after another in one process and does not run under "
                          "torchrun; there, train each fold with --fold K")
    out = Path(out)
    check_synthesis(synthesis, options, cfg)
    for path in (options.generator, options.qc_segmentor) if options is not None else ():
        if isinstance(path, (str, os.PathLike)) and not Path(path).is_file():
            raise InputError(path, "no such checkpoint file")
    if out.exists() and not out.is_dir():
        raise InputError(out, "output path exists and is not a folder")
    plan = _plan(cfg, datalist, out, folds, resume, unlabelled, skip_bad_cases, log)

    for p in plan:
        k, n_val = p["fold"], len(p["val"])
        if p["state"] == "done":
            log(f"fold {k}/{folds}: already trained ({p['run']}); skipped")
            continue
        log(f"fold {k}/{folds}: {len({e['image'] for e in p['train']})} training, {n_val} validation cases -> "
            f"{p['run']}")
        train_segmentation(p["cfg"], datalist, p["run"], resume=p["state"] == "resume", log=log, progress=progress,
                           unlabelled=unlabelled, synthesis=synthesis, options=options,
                           skip_bad_cases=skip_bad_cases, checked=p["pool"])

    label_map = cfg.label_map or datalist_label_map(datalist)
    per_fold = []
    for p in plan:
        log(f"fold {p['fold']}/{folds}: predicting and scoring {len(p['val'])} validation case(s)")
        per_fold.append(_evaluate_fold(p, datalist, label_map, device, tolerance_mm, progress))
    summary = {m: kfold_summary({f["fold"]: _per_case(f, m) for f in per_fold}) for m in SUMMARY_METRICS}
    result = {
        "kind": "freetumor-kfold",
        "folds": folds,
        "config": cfg.name,
        "datalist": str(Path(datalist).resolve()),
        "unlabelled": None if unlabelled is None else str(Path(unlabelled).resolve()),
        "synthesis": synthesis,
        "organ": cfg.organ,
        "split_seed": SPLIT_SEED,
        "split": "the datalist's fold field" if all("fold" in e for e in plan[0]["train"] + plan[0]["val"])
                 else f"a deterministic shuffle (seed {SPLIT_SEED}) of the sorted image paths",
        "nsd_tolerance_mm": tolerance_mm,
        "metrics": list(SUMMARY_METRICS),
        "per_fold": per_fold,
        "summary": summary,
    }
    write_bytes_atomic(out / "folds.json", (json.dumps(result, indent=1) + "\n").encode())
    return result


def format_folds_table(result: dict) -> str:
    """A short text table of :func:`train_kfold`'s result: one row per fold, then mean ± sd over folds."""
    cols = [("tumour_dice", "tumour Dice", 3), ("tumour_nsd", "tumour NSD", 3), ("organ_dice", "organ Dice", 3),
            ("false_positives_per_scan", "FP/scan", 1)]
    width = 16

    def num(v, digits):
        return "n/a" if v is None else f"{v:.{digits}f}"

    lines = [f"{'fold':<8}{'train':>6}{'val':>5}" + "".join(f"{name:>{width}}" for _k, name, _d in cols)]
    for fold in result["per_fold"]:
        lines.append(f"{fold['fold']:<8}{len(fold['train_cases']):>6}{len(fold['val_cases']):>5}"
                     + "".join(f"{num(fold['means'][k], d):>{width}}" for k, _name, d in cols))
    cells = []
    for k, _name, d in cols:
        s = result["summary"][k]
        cells.append(num(s["mean"], d) if s["sd"] is None else f"{num(s['mean'], d)} ± {num(s['sd'], d)}")
    lines.append(f"{'mean ± sd':<19}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)
