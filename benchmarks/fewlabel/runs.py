"""Resuming across machines: the signature of the recipe that makes runs comparable, the run files of a
results folder, the step budget (chosen once, stored), and ``git commit`` of each file as it is written."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from .arms import HOST_RECIPE, SYNTH_RECIPE, best_val, geometry, stage0_recipe, train_stage0
from .base import REPO, write_json
from .evaluate import MIN_CANDIDATE_MM3
from .testsets import WINDOW_MM


BUDGETS = (350, 1000, 2000)
PLATEAU = 0.01


def choose_budget(data: dict, seed: int, work: Path, log: list, stored: Path | None, signature: str,
                  hosts_dl: Path, placement: str = "random") -> dict:
    """The step budget: the smallest of BUDGETS whose stage0 best validation Dice (K = 10, seed 0) is within
    PLATEAU of the best of them. Stored (``stored``) and reused while the signature matches."""
    if stored is not None and stored.exists():
        b = json.loads(stored.read_text())
        if b.get("signature") == signature:
            return b
    d = work / "runs" / "k10" / f"s{seed}"
    vals = {}
    for n in BUDGETS:
        vals[n] = best_val(train_stage0(d, data, hosts_dl, seed, n, log, placement).parent)
    top = max(v for v in vals.values() if v is not None)
    steps = next(n for n in BUDGETS if vals[n] is not None and vals[n] >= top - PLATEAU)
    out = {"signature": signature, "steps": steps, "validation_dice": {str(n): v for n, v in vals.items()},
           "rule": f"smallest budget whose stage0 best validation tumour Dice is within {PLATEAU} of the best "
                   f"(K = 10, seed {seed}, validation crops only)"}
    if stored is not None:
        write_json(stored, out)
    return out


def commit_file(path: Path, message: str) -> None:
    """``git add`` + ``git commit`` of one file (only it), retried while another git command holds the lock."""
    for attempt in range(10):
        a = subprocess.run(["git", "-C", str(REPO), "add", "--", str(path)], capture_output=True, text=True)
        c = subprocess.run(["git", "-C", str(REPO), "commit", "-q", "-m", message, "--", str(path)],
                           capture_output=True, text=True) if a.returncode == 0 else a
        if c.returncode == 0 or "nothing" in (c.stdout + c.stderr):
            return
        time.sleep(2 + 3 * attempt)
    print(f"warning: could not commit {path}: {(c.stderr or c.stdout).strip()[:200]}", file=sys.stderr)


def signature(args, split: dict, tests: list[dict], steps: int | None) -> str:
    """What makes runs comparable: recipes, budgets, split, test sets (names and sizes)."""
    key = {"geometry": geometry(args.placement), "stage0": stage0_recipe(args.placement), "host": HOST_RECIPE, "stage1": SYNTH_RECIPE,
           "steps": steps, "synth_steps": args.synth_steps, "config": "lung-cpu-tiny",
           "split": {p: split[p]["crops"] for p in ("pool", "val", "test")}, "window_mm": WINDOW_MM,
           "tests": sorted((t["name"], t["n_crops"], t["n_scans"]) for t in tests),
           "limit": args.limit, "hosts": args.hosts, "froc_min_mm3": MIN_CANDIDATE_MM3}
    if args.every != 1:
        key["every"] = args.every
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_runs(folder: Path, sig: str, judge: str = "stage0") -> dict:
    """(K, seed, arm) -> result of every run file in ``folder`` with the signature ``sig`` (generator runs:
    and the QC ``judge``)."""
    out = {}
    for p in sorted(folder.glob("k*_s*_*.json")) if folder.is_dir() else []:
        try:
            r = json.loads(p.read_text())
        except ValueError:
            continue
        if r.get("signature") == sig and (r["arm"] != "generator" or r.get("judge", "stage0") == judge):
            out[(int(r["k"]), int(r["seed"]), r["arm"])] = r
    return out
