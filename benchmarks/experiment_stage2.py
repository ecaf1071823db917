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
5. ``predict`` on the test cohort, ``evaluate`` each method, ``compare`` each synthesis method with
   ``none`` (paired tests on the same test cases).

Writes ``OUT/results.json`` with every number and the commands; prints it.

Run: ``python benchmarks/experiment_stage2.py --out /tmp/stage2-exp [--steps 400]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--labelled", type=int, default=4, help="training cases with tumour labels")
    ap.add_argument("--unlabelled", type=int, default=8, help="healthy training cases (organ masks only)")
    ap.add_argument("--test", type=int, default=10, help="held-aside test cases (all with tumours)")
    ap.add_argument("--steps", type=int, default=400, help="Stage-0 and Stage-2 optimiser steps")
    ap.add_argument("--synth-steps", type=int, default=200, help="Stage-1 iterations")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
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
            cmp_dir = out / "compare" / test / f"none_vs_{name}"
            if not (cmp_dir / "compare.json").exists():
                sh(["compare", out / "eval" / test / "none", out / "eval" / test / name, "--out", cmp_dir], log)
            comparisons[test][f"none_vs_{name}"] = json.loads((cmp_dir / "compare.json").read_text())
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
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
