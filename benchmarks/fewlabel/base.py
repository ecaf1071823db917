"""Plumbing of the few-label experiment: where the repository, the datasets and the stored results are,
the one-line :class:`Failure`, running the ``freetumor`` CLI (:func:`sh`, logged with its wall and CPU
time), and writing datalists and JSON files."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
DATASETS = Path(os.environ.get("FREETUMOR_DATASETS", REPO.parent / "shared" / "datasets"))
SPLIT_FILE = REPO / "benchmarks" / "results" / "fewlabel_lung_split.json"
RESULTS = REPO / "benchmarks" / "results" / "fewlabel_lung"
CLI = [str(Path(sys.executable).parent / "freetumor")]
if not Path(CLI[0]).exists():
    CLI = [sys.executable, "-m", "freetumor.cli"]


class Failure(Exception):
    """A one-line error: the file and the problem."""


def sh(args: list, log: list, quiet: bool = True) -> str:
    """Run ``freetumor ARGS``; logs the command, its wall time and its CPU time (user + system)."""
    cmd = [*CLI, *map(str, args)]
    t, c = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.append({"cmd": "freetumor " + " ".join(map(str, args)), "rc": r.returncode,
                "seconds": round(time.perf_counter() - t, 1),
                "cpu_seconds": round(c1.ru_utime - c.ru_utime + c1.ru_stime - c.ru_stime, 1)})
    if not quiet:
        print(f"[{log[-1]['seconds']:6.1f} s] {log[-1]['cmd'][:160]}", file=sys.stderr, flush=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-3000:])
        raise Failure(f"freetumor {args[0]}: failed (exit {r.returncode}): {' '.join(map(str, args))[:300]}")
    return r.stdout


def sets(opts: list[str]) -> list[str]:
    return [x for o in opts for x in ("--set", o)]


def write_datalist(path: Path, entries: list[dict], label_map: str, keep=("image", "label", "fold")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: e[k] for k in keep if k in e} for e in entries]
    path.write_text(json.dumps({"label_map": label_map, "training": rows}, indent=1) + "\n")
    return path


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    tmp.replace(path)


def rel(p) -> str:
    """A path as it may be stored: relative to the repository or to the datasets folder, else its name."""
    p = Path(p)
    for root, tag in ((REPO, ""), (DATASETS, "datasets/")):
        try:
            return tag + str(p.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return p.name
