#!/usr/bin/env python
"""Few labels, real lungs: does synthesis help when only K nodules are labelled? Real CT, through the CLI.

A fair comparison (see the documentation's few-label page for the diagnosis of the earlier version):

* **No position prior.** Labelled crops smaller than the training patch are placed at a fresh random
  offset in an air canvas (``data.crop_placement=random``); every model is also scored on **shifted**
  test crops (the same crops at a random offset in a 72 x 72 x 40 mm window of noisy air), and the gap
  between centred and shifted Dice is reported for every arm (the shortcut test).
* **Host data that teach the task.** Healthy host patches are centred in the lung
  (``data.host_patches=organ``); synthesis only draws into host patches that hold no real lesion
  and keeps off padding (FreeTumor's rule, ``synth.online_on=hosts``); the loss's Dice is over the
  batch (``train.dice_batch=true``) in every arm.
* **Equal real-label exposure.** ``stage0`` trains on one labelled sample per step; every host arm on
  the same labelled sample plus one host sample per step (``train.batch_size=2``,
  ``data.labelled_share=0.5``): the labelled patches of each step are the same in every arm, and
  each run logs its labelled share.
* **The strongest cheap baseline.** ``copy_paste`` pastes the same K real labelled nodules into the
  host lung (TumorCP / CarveMix style).

Data (all real, from ``../shared/datasets``; the script stops with one line when it is absent):

* **crops**: the 735 LIDC-IDRI nodule crops (``lidc_nodule_vois``), split **patient-wise** with a
  fixed seed into a training pool, a validation part and a test part (>= 150 crops; the patients of
  ``lidc_full_scans``, LIDC-IDRI-0001 and -0003, are forced into it). The split is stored
  (``benchmarks/results/fewlabel_lung_split.json``) and reused.
* **labels**: for each seed, K crops of the pool (one per patient, K = 10 and 30, the 10 inside the
  30) are the only labelled nodules any arm sees. Validation crops pick each run's ``best.pt`` and
  the step budget (the smallest of 350 / 1000 / 2000 steps whose ``stage0`` validation Dice is within
  0.01 of the best, K = 10, seed 0; stored in ``benchmarks/results/fewlabel_lung/budget.json``).
* **healthy hosts**: slabs of the three real chests that are not LIDC patients (pyradiomics lung1,
  lung2; NSCLC LUNG1-001): the slices more than 15 mm away from the scan's own tumour, with the
  model-free lung mask of ``freetumor organs --engine threshold`` as lung.
* **tests** (never trained or tuned on): the test crops, centred (as stored) and shifted; a
  **composite** set (held-out test nodules pasted into the real lung of the two whole LIDC test
  chests, away from their own nodules, in a 60 x 60 x 40 mm window at a random position: real
  nodules in real context, but a composite; 72 x 72 x 40 mm); and the two whole thin-slice LIDC test chests
  (FROC from probability maps, ``freetumor froc``: sensitivity at 1, 2, 4, 8 false positives per
  scan in the lung and a CPM-style mean, candidates of at least 14 mm^3 = a 3 mm sphere).

Arms (``train-seg``; every number from the CLI's ``predict``, ``evaluate`` and ``froc``):
``stage0`` (the K crops alone), ``none`` (K crops + hosts, no synthesis), ``copy_paste``,
``procedural`` (``--synthesis profile``: a lung profile fitted with ``lesions fit`` on the same K
crops), ``generator`` (a Stage-1 generator trained on the K crops + hosts, the ``stage0`` model as
its frozen segmentor and as the QC judge).

**Resumable across machines.** Each finished run writes its scores to
``benchmarks/results/fewlabel_lung/runs/k<K>_s<seed>_<arm>.json`` (with a signature of the recipe,
the budget and the split; ``--commit`` also commits each file as it is written). A rerun, on any
machine, skips every run whose file is there with the current signature, and the summary
(``--out``) is rebuilt from the files present: a later session continues, it does not restart.

    python benchmarks/experiment_fewlabel_lung.py --quick --out /tmp/fewlabel-quick.json
    nice python benchmarks/experiment_fewlabel_lung.py --out benchmarks/results/fewlabel_lung.json \\
        --work /tmp/fewlabel-work --commit
    python benchmarks/experiment_fewlabel_lung.py --table benchmarks/results/fewlabel_lung.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The parts live in the package beside this script (benchmarks/fewlabel/); that folder goes on the path so
# that this file works run as a script and loaded by path (tests, qc_judge_lung.py). The parts' names are
# re-exported here: `experiment_fewlabel_lung.NAME` keeps working for those callers.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# ruff: noqa: E402, F401
from fewlabel.base import CLI, DATASETS, REPO, RESULTS, SPLIT_FILE, Failure, rel, sets, sh, write_datalist, write_json
from fewlabel.split import (SPLIT_SEED, TEST_FRACTION, TEST_PATIENTS, VAL_FRACTION, crop_entries, labelled_crops,
                            load_split, make_split, patient_of)
from fewlabel.data import HOST_MARGIN_MM, HOSTS, MIN_SLAB_MM, ball, fill_slices, host_slabs, write_crop_chest3
from fewlabel.testsets import (AIR_HU, AIR_NOISE_HU, COMPOSITE_AWAY_MM, N_COMPOSITE, NODULES_MAP, PADDING_HU,
                               WHOLE_SCAN_MM, WINDOW_MM, check_crops_fit, check_test_datalist, composite_crops,
                               evaluation_map, in_plane_mm, noisy_air, prepare_test_set, shifted_crops,
                               window_voxels)
from fewlabel.arms import (ARMS, BASELINES, GEOMETRY, HOST_RECIPE, JUDGES, PLACEMENTS, RENDER_WORKERS, STAGE0_RECIPE,
                           SYNTH_ARMS, SYNTH_RECIPE, arm_model, best_val, geometry, run_facts, run_tag,
                           stage0_recipe, train_seg, train_stage0, train_synth)
from fewlabel.evaluate import (LUNG_REACH_MM, MIN_CANDIDATE_MM3, lesion_background, near_lung, pooled_set,
                               read_report, score_crops, score_scans, split_sets)
from fewlabel.runs import BUDGETS, PLATEAU, choose_budget, commit_file, load_runs, signature
from fewlabel.summary import (BINS, CROP_SETS, FP_RATES, TARGETS, arm_summary, bin_of, brief, compare, comparisons,
                              mean_or_none, per_case_mean, targets)
from fewlabel.table import fmt, markdown_table
from fewlabel.experiment import run

FULL = {"k": [10, 30], "seeds": 3, "steps": None, "synth_steps": 100}
QUICK = {"k": [10], "seeds": 1, "steps": 150, "synth_steps": 30}
QUICK_EVERY = 3             # --quick: every 3rd test crop (61), a third of the composite nodules, no whole scans


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="See the module docstring and docs/benchmarks/fewlabel-lung.md.")
    ap.add_argument("--out", type=Path,
                    help="summary JSON (a .json file; work folder <stem>_work beside it) or a folder")
    ap.add_argument("--table", type=Path, metavar="RESULTS.json",
                    help="only print the markdown tables of an earlier run's summary JSON")
    ap.add_argument("--work", type=Path, help="work folder (default: --out, or <stem>_work beside a .json --out)")
    ap.add_argument("--quick", action="store_true",
                    help="reduced run: K = 10, one seed, 150 steps, every arm, every 3rd test crop, no whole scans")
    ap.add_argument("--test", type=Path, action="append", default=[], metavar="DATALIST",
                    help="also score the trained models on this labelled nodule datalist (repeatable)")
    ap.add_argument("--split", type=Path, default=SPLIT_FILE, help="stored patient-wise split (made when absent)")
    ap.add_argument("--results", type=Path, help="folder of the per-run result files (default: "
                    "benchmarks/results/fewlabel_lung, or <work>/results with --quick)")
    ap.add_argument("--commit", action="store_true", help="git-commit each per-run result file as it is written")
    ap.add_argument("--summary-only", action="store_true", help="train nothing: rebuild the summary from the run "
                    "files present (the test sets are prepared to check the signature)")
    ap.add_argument("--only", type=str, help="comma list of K:seed pairs to run now, e.g. 10:0,10:1 (the summary "
                    "still covers every finished run)")
    ap.add_argument("--arms", type=str, help=f"comma list of arms to run now (default: all: {','.join(ARMS)})")
    ap.add_argument("--placement", choices=PLACEMENTS, default="random",
                    help="labelled crops at random offsets in an air canvas (default) or pasted into host lung "
                         "(data.crop_placement=host; stage0 then uses the hosts as context only)")
    ap.add_argument("--judge", choices=JUDGES, default="stage0",
                    help="the generator arm's frozen segmentor and QC judge: the stage0 or the none arm's model")
    ap.add_argument("--k", type=str, help=argparse.SUPPRESS)
    ap.add_argument("--seeds", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--synth-steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, help=argparse.SUPPRESS)          # tests: first N test and val crops
    ap.add_argument("--hosts", type=str, help=argparse.SUPPRESS)          # tests: host subset (comma list)
    ap.add_argument("--no-scans", action="store_true", help=argparse.SUPPRESS)  # tests: skip the whole scans
    args = ap.parse_args(argv)
    if args.table is None and args.out is None:
        ap.error("--out is required (or --table RESULTS.json)")
    if args.table is not None:
        return args
    base = QUICK if args.quick else FULL
    args.k = [int(x) for x in args.k.split(",")] if args.k else base["k"]
    for key in ("seeds", "steps", "synth_steps"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    args.every = QUICK_EVERY if args.quick else 1
    if args.quick:
        args.no_scans = True
    if args.out.suffix == ".json":
        args.json = args.out
        args.work = args.work or args.out.with_name(args.out.stem + "_work")
    else:
        args.json = args.out / "results.json"
        args.work = args.work or args.out
    if args.results is None:
        args.results = args.work / "results" if (args.quick or args.limit) else RESULTS
    args.arms = [a.strip() for a in args.arms.split(",")] if args.arms else list(ARMS)
    for a in args.arms:
        if a not in ARMS:
            ap.error(f"--arms: unknown arm {a!r}; choose from {', '.join(ARMS)}")
    args.only_pairs = None
    if args.only:
        try:
            args.only_pairs = {(int(a), int(b)) for a, b in (x.split(":") for x in args.only.split(","))}
        except ValueError:
            ap.error(f"--only: expected K:seed pairs like 10:0,10:1, got {args.only!r}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table is not None:
        try:
            table = markdown_table(json.loads(args.table.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {args.table}: not a results JSON of this experiment ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            return 1
        try:
            print(table)
        except BrokenPipeError:  # `--table ... | head`: the reader stopped, the file was fine
            sys.stderr.close()
        return 0
    try:
        result = run(args)
    except Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_json(args.json, result)
    print(json.dumps({**brief(result), "json": str(args.json)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
