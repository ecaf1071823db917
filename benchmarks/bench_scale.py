#!/usr/bin/env python
"""Batch-synthesis throughput with 1 and 2 Ray workers (and the serial path), printed as JSON.

A healthy phantom cohort (``--cases``, default 12) gets ``--per-case`` (2) synthetic liver
variants per case through ``freetumor.batch.synthesize_batch``: serially in this process
(``workers=0``), then on a local Ray instance with 1 and with 2 actors. Figures per run:
``cases_per_s`` over the whole call (Ray start-up included), and ``steady_cases_per_s`` over
the tasks after the first result of each worker (start-up excluded), from the completion
markers' times; ``speedup_2_vs_1`` compares the two Ray runs. The outputs of the three runs are
checked to be identical.

Rule-based synthesis only; with a generator and a QC segmentor (network loads per worker,
before/after building the synthesizer once per worker) see ``benchmarks/bench_batch_models.py``.

Run: ``python benchmarks/bench_scale.py [--cases N] [--per-case K]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def steady_rate(out: Path, workers: int) -> float | None:
    """Tasks per second between the first ``workers`` completions and the last one."""
    times = sorted(p.stat().st_mtime for p in (out / "done").glob("*.json"))
    if len(times) <= workers + 1:
        return None
    span = times[-1] - times[workers - 1]
    return round((len(times) - workers) / span, 3) if span > 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--per-case", type=int, default=2)
    args = ap.parse_args()

    from freetumor.batch import synthesize_batch
    from freetumor.io import load_volume
    from freetumor.phantom import write_cohort
    from freetumor.synthesis import SynthesisOptions

    result = {"benchmark": "bench_scale", "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                      "platform": platform.platform()},
              "cases": args.cases, "per_case": args.per_case, "runs": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_cohort(tmp / "coh", args.cases, seed=0, tumour_fraction=0.0)
        dl = tmp / "coh" / "unlabelled.json"
        for name, workers in (("serial", 0), ("ray_1_worker", 1), ("ray_2_workers", 2)):
            out = tmp / name
            t = time.perf_counter()
            s = synthesize_batch(dl, SynthesisOptions("liver", png=False), out, per_case=args.per_case, seed=0,
                                 workers=workers, progress=False, log=lambda *a: None)
            wall = time.perf_counter() - t
            result["runs"][name] = {"tasks": s["tasks"], "errors": s["errors"], "wall_s": round(wall, 2),
                                    "cases_per_s": round(s["tasks"] / wall, 3),
                                    "steady_cases_per_s": steady_rate(out, max(1, workers))}
        ref = {f.name: load_volume(f).array for f in (tmp / "serial" / "cases").glob("*.nii.gz")}
        same = all(np.array_equal(ref[f.name], load_volume(f).array)
                   for run in ("ray_1_worker", "ray_2_workers") for f in (tmp / run / "cases").glob("*.nii.gz"))
        result["outputs_identical"] = bool(same and len(ref) == 2 * args.cases * args.per_case)
    r = result["runs"]
    result["speedup_2_vs_1"] = round(r["ray_2_workers"]["cases_per_s"] / r["ray_1_worker"]["cases_per_s"], 2)
    if r["ray_2_workers"]["steady_cases_per_s"] and r["ray_1_worker"]["steady_cases_per_s"]:
        result["steady_speedup_2_vs_1"] = round(r["ray_2_workers"]["steady_cases_per_s"]
                                                / r["ray_1_worker"]["steady_cases_per_s"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
