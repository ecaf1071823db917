#!/usr/bin/env python
"""Does online synthesis help when tumour labels are scarce? A phantom experiment, end to end.

Everything runs through the ``freetumor`` command line, as a user would:

1. ``phantom``: a training cohort (``--labelled`` cases with tumour labels, ``--unlabelled`` healthy
   cases with organ masks only) and two separate held-aside test cohorts: ``test`` with the
   phantom's usual tumours (liver 8-30 mm radius) and ``test-small`` with early tumours only
   (3-9 mm radius, diameters < 20 mm), the phantom's own tumour model in both (not FreeTumor's);
2. ``train-seg --synthesis none`` on the labelled cases: the Stage-0 baseline, also the frozen
   segmentor of Stage 1 and of quality control;
3. ``train-synth``: the Stage-1 generator;
4. three Stage-2 runs that differ only in ``--synthesis`` (``none``, ``procedural``, ``generator``
   with QC), all with the labelled and unlabelled pools, CutMix, the same steps and seed;
5. ``predict`` on the test cohorts, ``evaluate`` each method, ``compare`` each synthesis method with
   both baselines (paired tests on the same test cases): ``none`` (the same recipe and pools, no
   synthesis) and ``stage0`` (labelled cases only; ``none`` also trains on the healthy cases, which
   dilutes its tumour patches, so it can be the weaker baseline).

Every training run is ``train-seg`` on the labelled datalist with the default split (``train.folds``
5, fold 0): with 4 labelled cases, 3 train and 1 is the validation case; validation runs only at the
last step, so ``best.pt`` is the final model. The Stage-2 runs add all unlabelled cases.

Writes ``OUT/results.json`` with every number and the commands; prints it, then the table of every
run and the gain of each synthesis method over the better baseline of each row.

Run: ``python benchmarks/experiment_stage2.py --out /tmp/stage2-exp [--steps 400]``
Table of a finished run, nothing run:
``python benchmarks/experiment_stage2.py --table benchmarks/results/experiment_stage2.json``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import portable  # noqa: E402

CLI = [str(Path(sys.executable).parent / "freetumor")]
if not Path(CLI[0]).exists():
    CLI = [sys.executable, "-m", "freetumor.cli"]


def sh(args: list, log: list) -> str:
    cmd = [*CLI, *map(str, args)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))
    log.append({"cmd": "freetumor " + " ".join(map(str, args)), "rc": r.returncode,
                "seconds": round(time.perf_counter() - t, 1)})
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return r.stdout


BASELINES = ("stage0", "none")
LABELS = {"stage0": "`stage0` (labelled only)", "none": "`none`", "procedural": "`procedural`",
          "generator": "`generator` + QC"}
# (row label, cohort, what, higher is better); what: a metric of the evaluation, or a detection count
ROWS = [
    ("tumour Dice, usual tumours", "test", "tumour_dice", True),
    ("tumour NSD (2 mm), usual tumours", "test", "tumour_nsd", True),
    ("organ Dice, usual tumours", "test", "organ_dice", True),
    ("lesions detected, usual tumours", "test", "lesion_sensitivity", True),
    ("false positives per scan, usual tumours", "test", "false_positives_per_scan", False),
    ("early tumours (< 20 mm) detected", "test-small", "early_sensitivity", True),
    ("tumour Dice, early tumours", "test-small", "tumour_dice", True),
    ("tumour NSD (2 mm), early tumours", "test-small", "tumour_nsd", True),
    ("false positives per scan, early-tumour cohort", "test-small", "false_positives_per_scan", False),
]


def _value(summary: dict, what: str) -> float | None:
    """The number of one row in one evaluation summary (detections as counts k of n)."""
    if what in summary["metrics"]:
        return summary["metrics"][what]["mean"]
    d = summary["detection"][what]
    return d["value"] if what == "false_positives_per_scan" else d["k"]


def _cell(summary: dict, what: str) -> str:
    v = _value(summary, what)
    if v is None:
        return "n/a"
    if what in summary["metrics"]:
        return f"{v:.3f}"
    if what == "false_positives_per_scan":
        return f"{v:.1f}"
    return f"{v}/{summary['detection'][what]['n']}"


def _paired(result: dict, cohort: str, base: str, arm: str, what: str) -> str | None:
    """The paired test of ``arm`` against ``base`` stored in the results; ``None`` when there is none
    (``compare`` has no test of false positives; older results compared with ``none`` only)."""
    cmp = result.get("comparisons", {}).get(cohort, {}).get(f"{base}_vs_{arm}")
    if cmp is None or what == "false_positives_per_scan":
        return None
    if what in cmp["metrics"]:
        m = cmp["metrics"][what]
        ci = "" if not m["mean_diff_ci95"] else \
            f", 95% CI {m['mean_diff_ci95'][0]:+.3f} to {m['mean_diff_ci95'][1]:+.3f}"
        return f"paired t p = {m['t_test']['p']:.2g}, Wilcoxon p = {m['wilcoxon']['p']:.2g}{ci}"
    key = "early_detection" if what == "early_sensitivity" else "lesion_detection"
    return f"McNemar p = {cmp[key]['mcnemar_exact_p']:.2g}"


def stage2_tables(result: dict) -> str:
    """Two markdown tables from the results: every run's numbers, then each synthesis method against
    the better of the two baselines row by row, with the paired test against that baseline when the
    results hold one (and a note saying which are missing)."""
    runs = list(result["summaries"]["test"])
    arms = [r for r in runs if r not in BASELINES]
    lines = ["| held-aside cases | " + " | ".join(LABELS.get(r, f"`{r}`") for r in runs) + " |",
             "|---" * (len(runs) + 1) + "|"]
    for label, cohort, what, _hib in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(result["summaries"][cohort][r], what) for r in runs) + " |")
    lines += ["", "| held-aside cases | better baseline | " + " | ".join(
        f"{LABELS.get(a, a)} minus it" for a in arms) + " |", "|---" * (len(arms) + 2) + "|"]
    missing = set()
    for label, cohort, what, hib in ROWS:
        s = result["summaries"][cohort]
        vals = {b: _value(s[b], what) for b in BASELINES if b in s}
        vals = {b: v for b, v in vals.items() if v is not None}
        if not vals:
            continue
        best = (max if hib else min)(vals, key=lambda b: vals[b])
        tie = [b for b in vals if vals[b] == vals[best]]
        cells = []
        for a in arms:
            v = _value(s[a], what)
            if v is None:
                cells.append("n/a")
                continue
            d = v - vals[best]
            if what in s[a]["metrics"]:
                diff = f"{d:+.3f}"
            else:
                diff = f"{d:+.1f}" if what == "false_positives_per_scan" else f"{d:+d}"
            test = _paired(result, cohort, best, a, what)
            if test is None and what != "false_positives_per_scan":
                missing.add(best)
            cells.append(diff if test is None else f"{diff} ({test})")
        name = " = ".join(f"`{b}`" for b in tie)
        lines.append(f"| {label} | {name}: {_cell(s[best], what)} | " + " | ".join(cells) + " |")
    notes = ["Differences are of the means (of the counts for detections) on the same test cases; "
             "`compare` has no paired test of false positives per scan."]
    if missing:
        notes.append("These results hold no paired comparison against " + ", ".join(f"`{b}`" for b in sorted(missing))
                     + ", so those rows have no p-value (the script now compares with both baselines; "
                     "a rerun stores those tests).")
    return "\n".join(lines + [""] + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="experiment folder (resumable)")
    ap.add_argument("--table", type=Path, help="print the tables of a results JSON and run nothing")
    ap.add_argument("--labelled", type=int, default=4, help="training cases with tumour labels")
    ap.add_argument("--unlabelled", type=int, default=8, help="healthy training cases (organ masks only)")
    ap.add_argument("--test", type=int, default=10, help="held-aside test cases (all with tumours)")
    ap.add_argument("--steps", type=int, default=400, help="Stage-0 and Stage-2 optimiser steps")
    ap.add_argument("--synth-steps", type=int, default=200, help="Stage-1 iterations")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.table is not None:
        try:
            print(stage2_tables(json.loads(args.table.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"error: {args.table}: not a results JSON of this experiment ({exc!r})")
        return
    if args.out is None:
        ap.error("--out is required (or --table RESULTS.json)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log: list = []
    common = ["--set", "data.roi_size=[48,48,48]", "--set", "data.num_samples=4", "--set", "data.cache=true",
              "--set", "val.overlap=0.25", "--set", f"train.seed={args.seed}"]
    seg_opts = ["--set", "train.lr=5e-3", "--set", "data.pos=3", "--set", "train.warmup_steps=20",
                "--set", f"train.val_every={args.steps}", "--set", f"train.checkpoint_every={args.steps}"]

    # 1. cohorts: labelled + unlabelled training pools, and a separate test cohort
    n_train = args.labelled + args.unlabelled
    if not (out / "train" / "datalist.json").exists():
        sh(["phantom", "--out", out / "train", "--cases", n_train, "--seed", 1000 + args.seed,
            "--tumour-fraction", args.labelled / n_train], log)
    if not (out / "test" / "datalist.json").exists():
        sh(["phantom", "--out", out / "test", "--cases", args.test, "--seed", 2000 + args.seed,
            "--tumour-fraction", 1.0], log)
    if not (out / "test-small" / "datalist.json").exists():
        sh(["phantom", "--out", out / "test-small", "--cases", args.test, "--seed", 3000 + args.seed,
            "--tumour-fraction", 1.0, "--tumour-radius-mm", 3, 9], log)
    lab, unl = out / "train" / "labelled.json", out / "train" / "unlabelled.json"

    def train_seg(name: str, extra: list) -> Path:
        run = out / "runs" / name
        if not (run / "final.json").exists():
            resume = ["--resume"] if (run / "last.pt").exists() else []
            sh(["train-seg", "--config", "liver-cpu-tiny", "--datalist", lab, "--out", run,
                "--max-steps", args.steps, *common, *seg_opts, *extra, *resume], log)
        return run

    # 2. Stage 0 (labelled only): the frozen segmentor for Stage 1 and QC
    stage0 = train_seg("stage0", [])
    # 3. Stage 1
    s1 = out / "runs" / "stage1"
    if not (s1 / "final.json").exists():
        sh(["train-synth", "--config", "liver-cpu-tiny", "--datalist", lab, "--unlabeled", unl,
            "--segmentor", stage0 / "best.pt", "--out", s1, "--max-steps", args.synth_steps, *common,
            "--set", "data.num_samples=2", "--set", "synth.probe_samples=16"], log)
    # 4. Stage 2: identical recipe, only --synthesis differs
    runs = {
        "none": train_seg("none", ["--unlabeled", unl]),
        "procedural": train_seg("procedural", ["--unlabeled", unl, "--synthesis", "procedural"]),
        "generator": train_seg("generator", ["--unlabeled", unl, "--synthesis", "generator",
                                             "--generator", s1 / "generator.pt",
                                             "--qc-segmentor", stage0 / "best.pt"]),
    }
    # 5. predict, evaluate, compare, on both test cohorts
    reports: dict = {}
    comparisons: dict = {}
    for test in ("test", "test-small"):
        reports[test] = {}
        for name, run in {"stage0": stage0, **runs}.items():
            pred = out / "pred" / test / name
            if not pred.exists():
                sh(["predict", "--model", run / "best.pt", "--image", out / test / "imagesTr", "--out", pred], log)
            rep = out / "eval" / test / name
            if not (rep / "summary.json").exists():
                sh(["evaluate", "--pred", pred, "--gt", out / test / "datalist.json", "--organ", "liver",
                    "--out", rep], log)
            reports[test][name] = json.loads((rep / "summary.json").read_text())
        comparisons[test] = {}
        for name in ("procedural", "generator"):
            for base in ("none", "stage0"):  # paired against both baselines, on the same test cases
                cmp_dir = out / "compare" / test / f"{base}_vs_{name}"
                if not (cmp_dir / "compare.json").exists():
                    sh(["compare", out / "eval" / test / base, out / "eval" / test / name, "--out", cmp_dir], log)
                comparisons[test][f"{base}_vs_{name}"] = json.loads((cmp_dir / "compare.json").read_text())
    stage1 = [json.loads(ln) for ln in (s1 / "epochs.jsonl").read_text().splitlines() if ln]
    synth_counts = {}
    for name, run in runs.items():
        tally: dict = {}
        for ln in (run / "metrics.jsonl").read_text().splitlines():
            for k, v in (json.loads(ln).get("synth") or {}).items():
                tally[k] = tally.get(k, 0) + v
        synth_counts[name] = tally
    result = {
        "experiment": "experiment_stage2",
        "settings": vars(args) | {"out": str(out)},
        "stage1_probe_recall": [(e["step"], e.get("probe_recall"), e.get("probe_accepted")) for e in stage1],
        "synthesis_status_counts": synth_counts,
        "summaries": reports,
        "comparisons": comparisons,
        "commands": log,
    }
    text = portable(json.dumps(result, indent=1, default=str))
    (out / "results.json").write_text(text + "\n")
    print(text)
    print()
    print(stage2_tables(result))


if __name__ == "__main__":
    main()
