#!/usr/bin/env python
"""``synthesize-batch --generator G --qc-segmentor S``: cases per second and network loads, before/after.

Runs the command line (``freetumor synthesize-batch``, a fresh ``--out`` each run) on a healthy
phantom cohort with a Stage-1 generator and a QC segmentor, once per source tree (``--before-src``,
e.g. a checkout of the commit before "build once, run per case", and ``--after-src``, default this
checkout's ``src``) and per worker count (``--workers``, default 1 and 2 Ray actors), ``--repeats``
times, the versions alternating so that both see the same machine load. Figures per run:

* ``wall_s``: the whole command (Python start, Ray start, all cases), and ``cases_per_s`` over it;
* ``reported_cases_per_s``: the rate the command prints (inside ``synthesize_batch``, Ray start
  included);
* ``done`` / ``failed``: cases written / rejected by quality control after ``--max-tries``
  (the short-trained segmentor finds few tumours, hence the low default ``--qc-threshold``);
* ``checkpoint_loads``: how often a process of the run (the driver or a Ray worker) opened the
  generator or the segmentor checkpoint, counted by a Python audit hook (``sitecustomize`` on
  ``PYTHONPATH``, so Ray's worker processes count too): independent of the code under test.

The command-line figures include Ray's start-up and whatever else the machine is doing; the
script therefore also measures, in one process with ``--after-src`` (``in_process``): the time to
build a synthesizer (load both networks) against the time to synthesise and write one case with a
built one, over the cohort's cases, interleaved (the old code paid both per case; the new pays the
first once per worker), and the time to load paper-size networks (``liver-paper``: SwinUNETR-48 v2
QC segmentor and the 64-512 U-Net generator, random weights: the load cost does not depend on them).

Without ``--generator``/``--segmentor`` the script makes them first with the ``--before-src`` CLI
(a 30-step cpu-tiny segmentor and a 10-step cpu-tiny generator: the figure is about loading, not
model quality). Results are printed as JSON and written to ``--json``.

Run: ``python benchmarks/bench_batch_models.py --before-src /path/to/old/src [--cases 12]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FREETUMOR = Path(sys.executable).parent / "freetumor"

# Installed as sitecustomize.py: every Python process of a run appends "<pid> <path>" to
# $BENCH_LOADS_LOG when it opens one of the checkpoints listed in $BENCH_LOADS_WATCH.
SITECUSTOMIZE = r'''
import os, sys
_watch = set(filter(None, os.environ.get("BENCH_LOADS_WATCH", "").split(os.pathsep)))
_log = os.environ.get("BENCH_LOADS_LOG")
if _watch and _log:
    def _hook(event, args):
        if event == "open" and isinstance(args[0], (str, os.PathLike)):
            path = os.path.realpath(os.fspath(args[0]))
            if path in _watch:
                fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, f"{os.getpid()} {path}\n".encode())
                finally:
                    os.close(fd)
    sys.addaudithook(_hook)
'''


def cli(src: Path, *args, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(FREETUMOR)] if FREETUMOR.exists() else [sys.executable, "-m", "freetumor.cli"]
    e = {**os.environ, "PYTHONPATH": str(src), **(env or {})}
    r = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=e)
    if check and r.returncode != 0:
        raise SystemExit(f"freetumor {' '.join(map(str, args[:1]))} failed:\n{r.stderr[-2000:]}")
    return r


def make_models(src: Path, work: Path) -> tuple[Path, Path]:
    """A short cpu-tiny segmentor and generator, with the CLI of ``src``."""
    cli(src, "phantom", "--out", work / "train-cohort", "--cases", 16, "--seed", 0)
    cli(src, "train-seg", "--config", "liver-cpu-tiny", "--datalist", work / "train-cohort" / "labelled.json",
        "--out", work / "seg", "--max-steps", 30, "--set", "train.val_every=30", "--set", "train.checkpoint_every=30")
    cli(src, "train-synth", "--config", "liver-cpu-tiny", "--datalist", work / "train-cohort" / "labelled.json",
        "--unlabeled", work / "train-cohort" / "unlabelled.json", "--segmentor", work / "seg" / "best.pt",
        "--out", work / "gen", "--max-steps", 10, "--set", "synth.epoch_steps=10",
        "--set", "synth.checkpoint_every=10", "--set", "synth.probe_samples=2")
    return work / "gen" / "generator.pt", work / "seg" / "best.pt"


def run_batch(src: Path, datalist: Path, out: Path, workers: int, generator: Path, segmentor: Path,
              qc_threshold: float, hook_dir: Path) -> dict:
    log = out.parent / f"{out.name}.loads"
    env = {"PYTHONPATH": f"{hook_dir}{os.pathsep}{src}",
           "BENCH_LOADS_WATCH": os.pathsep.join(os.path.realpath(p) for p in (generator, segmentor)),
           "BENCH_LOADS_LOG": str(log)}
    t = time.perf_counter()
    r = cli(src, "synthesize-batch", "--datalist", datalist, "--organ", "liver", "--out", out,
            "--generator", generator, "--qc-segmentor", segmentor, "--qc-threshold", qc_threshold,
            "--workers", workers, env=env, check=False)
    wall = time.perf_counter() - t
    if r.returncode not in (0, 1) or "synthetic cases done" not in r.stdout:
        raise SystemExit(f"synthesize-batch failed ({src}):\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    done = len(list((out / "done").glob("*.json")))
    rate = re.search(r"([0-9.]+) cases/s", r.stdout)
    lines = log.read_text().split("\n") if log.exists() else []
    per_process = Counter(ln.split()[0] for ln in lines if ln)
    kinds = Counter("generator" if ln.split()[1] == os.path.realpath(generator) else "segmentor"
                    for ln in lines if ln)
    failed = len((out / "errors.log").read_text().splitlines()) if (out / "errors.log").exists() else 0
    return {"done": done, "failed": failed, "wall_s": round(wall, 2), "cases_per_s": round(done / wall, 3),
            "reported_cases_per_s": float(rate.group(1)) if rate else None,
            "checkpoint_loads": sum(kinds.values()), "loads_by_kind": dict(sorted(kinds.items())),
            "processes_loading": len(per_process)}


# Run with --after-src on PYTHONPATH: argv = generator, segmentor, qc threshold, datalist, work folder.
IN_PROCESS = r'''
import json, statistics, sys, time
from pathlib import Path
from freetumor.checkpoints import save_checkpoint
from freetumor.config import load_config
from freetumor.data import datalist_entries
from freetumor.models import build_generator, build_model
from freetumor.synthesis import SynthesisOptions, build_synthesizer, synthesize_case

generator, segmentor, threshold, datalist, work = sys.argv[1:6]
options = SynthesisOptions("liver", generator=generator, qc_segmentor=segmentor, qc_threshold=float(threshold),
                           png=False)
entries = datalist_entries(Path(datalist), "cases", keys=None)
synth = build_synthesizer(options)  # warm: imports, first allocations
build, case = [], []
for k, e in enumerate(entries):
    t = time.perf_counter(); build_synthesizer(options); build.append(time.perf_counter() - t)
    t = time.perf_counter()
    try:
        synthesize_case(synth, e["image"], e["label"], Path(work) / "cases", seed=k, case=f"c{k}", png=False)
    except Exception as exc:  # a QC rejection still cost the work
        print(f"case {k}: {exc}", file=sys.stderr)
    case.append(time.perf_counter() - t)
cfg = load_config("liver-paper")
paper = Path(work) / "paper"
paper.mkdir(parents=True, exist_ok=True)
save_checkpoint(paper / "generator.pt", model=build_generator(cfg), cfg=cfg, step=0, kind="generator")
save_checkpoint(paper / "segmentor.pt", model=build_model(cfg), cfg=cfg, step=0)
big = SynthesisOptions("liver", generator=paper / "generator.pt", qc_segmentor=paper / "segmentor.pt", png=False)
paper_build = []
for _ in range(3):
    t = time.perf_counter(); build_synthesizer(big); paper_build.append(time.perf_counter() - t)
sizes = {k: round((paper / f"{k}.pt").stat().st_size / 2**20, 1) for k in ("generator", "segmentor")}
med = statistics.median
print(json.dumps({"cases": len(entries), "load_both_networks_s": round(med(build), 3),
                  "synthesize_case_s": round(med(case), 3),
                  "load_share_of_a_case_old": round(med(build) / (med(build) + med(case)), 3),
                  "paper_size_load_both_networks_s": round(med(paper_build), 3),
                  "paper_size_checkpoint_mib": sizes}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before-src", type=Path, required=True, help="src folder of the code before the change")
    ap.add_argument("--after-src", type=Path, default=ROOT / "src")
    ap.add_argument("--generator", type=Path)
    ap.add_argument("--segmentor", type=Path)
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--qc-threshold", type=float, default=0.05,
                    help="QC recall threshold (low: the short-trained segmentor finds few tumours)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed at the end)")
    ap.add_argument("--note", default="", help="a remark stored with the results (e.g. the machine's load)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_batch_models.json")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_batch_models-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.generator and args.segmentor:
            generator, segmentor = args.generator, args.segmentor
        else:
            generator, segmentor = make_models(args.before_src, work / "models")
        cohort = work / "cohort"
        if not (cohort / "unlabelled.json").exists():
            cli(args.after_src, "phantom", "--out", cohort, "--cases", args.cases, "--seed", 1,
                "--tumour-fraction", 0)
        hook_dir = work / "hook"
        hook_dir.mkdir(exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        versions = {"before": args.before_src.resolve(), "after": args.after_src.resolve()}
        runs: dict = {v: {str(w): [] for w in args.workers} for v in versions}
        for rep in range(args.repeats):
            for w in args.workers:
                for v, src in versions.items():  # alternate: both versions see the same load
                    out = work / "runs" / f"{v}-w{w}-r{rep}"
                    shutil.rmtree(out, ignore_errors=True)
                    res = run_batch(src, cohort / "unlabelled.json", out, w, generator, segmentor, args.qc_threshold,
                                    hook_dir)
                    runs[v][str(w)].append(res)
                    print(f"{v} workers={w} repeat={rep}: {res}", file=sys.stderr)
        r = subprocess.run([sys.executable, "-c", IN_PROCESS, str(generator), str(segmentor), str(args.qc_threshold),
                            str(cohort / "unlabelled.json"), str(work / "in-process")], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(args.after_src)})
        if r.returncode != 0:
            raise SystemExit(f"in-process measurement failed:\n{r.stderr[-2000:]}")
        in_process = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"in process: {in_process}", file=sys.stderr)
        summary = {}
        for w in args.workers:
            row = {}
            for v in versions:
                rs = runs[v][str(w)]
                row[v] = {"median_cases_per_s": round(statistics.median(r["cases_per_s"] for r in rs), 3),
                          "median_reported_cases_per_s": round(statistics.median(
                              r["reported_cases_per_s"] for r in rs), 3),
                          "checkpoint_loads": sorted({r["checkpoint_loads"] for r in rs})}
            row["speedup"] = round(row["after"]["median_cases_per_s"] / row["before"]["median_cases_per_s"], 2)
            summary[f"workers_{w}"] = row
        result = {
            "benchmark": "bench_batch_models",
            "command": "freetumor synthesize-batch --datalist COHORT/unlabelled.json --organ liver --out OUT "
                       f"--generator G --qc-segmentor S --qc-threshold {args.qc_threshold} --workers W",
            "data": {"cohort": f"procedural healthy abdomen phantom (freetumor phantom --cases {args.cases} --seed 1 "
                               "--tumour-fraction 0)", "cases": args.cases, "per_case": 1,
                     "models": "liver-cpu-tiny segmentor (30 steps) and generator (10 steps)"},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(),
                        "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
            "note": args.note, "repeats": args.repeats, "summary": summary, "in_process": in_process, "runs": runs,
        }
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
