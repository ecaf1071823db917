"""``freetumor synthesize-batch``: synthetic tumours for a whole cohort, on Ray or serially.

Every (case, k) pair of the datalist, ``k < per_case``, is one task with its own seed derived
from ``(seed, case index, k)``, so the outputs do not depend on how the work is spread: a Ray
run with any number of workers writes the same files as the serial path (``workers=0``).

Work is streamed through a pool of Ray actors (local Ray by default, a cluster with
``ray_address``); each actor loads the generator and the QC segmentor once (on a GPU when the
cluster has GPUs: one GPU per actor) and runs :func:`freetumor.synthesis.synthesize_files`. A
task that finishes writes ``done/<task>.json`` last, atomically; a restarted run skips those
tasks, so finished cases are never redone. A failing case writes one line to ``errors.log``
and the run goes on. At the end ``datalist.json`` lists every synthetic case (images and
labels in ``cases/``).

How the work splits: tasks are independent, so throughput scales with actors until storage
or the driver becomes the limit; on a multi-GPU node use one actor per GPU; on a cluster
start Ray on every node (``ray start``) and pass ``--ray-address auto`` (or the head's
address): the outputs must be on storage every node can write (a shared file system).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ConfigError, FreeTumorError, InputError
from .io import case_name, write_bytes_atomic


def plan_tasks(entries: list[dict], per_case: int, seed: int) -> list[dict]:
    """One task per (case, k): a stable name and seed."""
    tasks = []
    for i, e in enumerate(entries):
        base = case_name(e["image"])
        for k in range(per_case):
            s = int(np.random.SeedSequence([int(seed), i, k]).generate_state(1)[0])
            tasks.append({"name": f"{base}_syn{k}", "image": str(e["image"]), "label": str(e["label"]),
                          "seed": s, "source_case": base})
    names = [t["name"] for t in tasks]
    if len(set(names)) != len(names):
        raise InputError("datalist", "two cases share a file name; synthetic case names would collide")
    return tasks


class _Runner:
    """Runs tasks with models loaded once (the body of a Ray actor, or the serial path)."""

    def __init__(self, organ: str, out: str, opts: dict):
        from .synthesis import synthesize_files

        self.organ, self.out, self.opts = organ, Path(out), dict(opts)
        self._synth = synthesize_files

    def run(self, task: dict) -> dict:
        t0 = time.perf_counter()
        try:
            rec = self._synth(task["image"], task["label"], self.organ, self.out / "cases", case=task["name"],
                              seed=task["seed"], **self.opts)
        except FreeTumorError as exc:
            return {"name": task["name"], "error": str(exc)}
        except Exception as exc:  # one bad case must not stop the run
            return {"name": task["name"], "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"}
        summary = {"name": task["name"], "image": f"cases/{rec['outputs']['image']}",
                   "label": f"cases/{rec['outputs']['label']}", "record": f"cases/{rec['outputs']['record']}",
                   "source_case": task["source_case"], "seed": task["seed"], "lesions": len(rec["lesions"]),
                   "seconds": round(time.perf_counter() - t0, 3)}
        # The completion marker is written last, atomically: a restart skips this task.
        write_bytes_atomic(self.out / "done" / f"{task['name']}.json", (json.dumps(summary) + "\n").encode())
        return summary


def synthesize_batch(
    datalist: str | os.PathLike,
    organ: str,
    out: str | os.PathLike,
    *,
    per_case: int = 1,
    count: int = 1,
    size: str = "mix",
    seed: int = 0,
    generator: str | os.PathLike | None = None,
    qc_segmentor: str | os.PathLike | None = None,
    qc_threshold: float | None = None,
    label_map: str | None = None,
    workers: int | None = None,
    ray_address: str = "local",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Synthesise ``per_case`` variants of every case; returns counts (and writes ``datalist.json``).

    ``workers=0`` runs serially in this process (no Ray); otherwise a Ray actor pool of
    ``workers`` actors (default: the cluster's CPUs, or GPUs when it has them).
    """
    from .data import datalist_entries, datalist_label_map

    if per_case < 1:
        raise ConfigError(f"--per-case must be at least 1, got {per_case}")
    dl = Path(datalist)
    entries = datalist_entries(dl, "cases with organ masks", keys=None)
    dl_map = datalist_label_map(dl)
    out = Path(out)
    (out / "done").mkdir(parents=True, exist_ok=True)
    tasks = plan_tasks(entries, per_case, seed)
    done = {p.stem for p in (out / "done").glob("*.json")}
    todo = [t for t in tasks if t["name"] not in done]
    if done:
        log(f"resuming: {len(done)} of {len(tasks)} synthetic cases already done")
    opts = {"count": count, "size": size, "label_map": label_map or dl_map, "png": False,
            "generator": None if generator is None else str(generator),
            "qc_segmentor": None if qc_segmentor is None else str(qc_segmentor), "qc_threshold": qc_threshold}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="synthesize-batch", unit="case",
                   dynamic_ncols=True)
    errors = 0
    t0 = time.perf_counter()

    def record(res: dict) -> None:
        nonlocal errors
        if "error" in res:
            errors += 1
            with open(out / "errors.log", "a") as fh:
                fh.write(f"{res['name']}: {res['error']}\n")
            log(f"error: {res['name']}: {res['error']}")
        if bar is not None:
            bar.update(1)

    engine = "serial"
    if workers == 0 or not todo:
        runner = _Runner(organ, str(out), opts)
        for t in todo:
            record(runner.run(t))
    else:
        engine = "ray"
        for res in _run_ray(todo, organ, out, opts, workers, ray_address):
            record(res)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    finished = [json.loads(p.read_text()) for p in sorted((out / "done").glob("*.json"))]
    datalist_out = {"name": "freetumor-synthetic", "organ": organ, "label_map": opts["label_map"] or
                    ("abdomen7" if organ in ("liver", "pancreas", "kidney") else "chest3"),
                    "source_datalist": str(dl), "seed": seed, "per_case": per_case,
                    "training": [{"image": f["image"], "label": f["label"], "tumour": True,
                                  "source_case": f["source_case"], "record": f["record"]} for f in finished]}
    write_bytes_atomic(out / "datalist.json", (json.dumps(datalist_out, indent=1) + "\n").encode())
    summary = {"tasks": len(tasks), "done": len(finished), "ran": len(todo), "errors": errors,
               "seconds": round(elapsed, 2), "engine": engine,
               "cases_per_s": round(len(todo) / elapsed, 3) if todo and elapsed > 0 else None}
    return summary


def _run_ray(todo: list[dict], organ: str, out: Path, opts: dict, workers: int | None, address: str):
    """Yield task results as the Ray actor pool finishes them."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise ConfigError("Ray is not installed (pip install 'ray>=2.9'); or run serially with --workers 0") from None
    init = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False,
            "configure_logging": False}
    if address == "local":
        ray.init(num_cpus=max(1, workers or os.cpu_count() or 1), **init)
    else:
        ray.init(address=address, **init)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = workers or (gpus if gpus else int(ray.cluster_resources().get("CPU", 1)))
        n = max(1, min(n, len(todo)))
        actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(_Runner)
        actor_opts = dict(opts, device="cuda" if gpus else None)
        pool = ActorPool([actor.remote(organ, str(out), actor_opts) for _ in range(n)])
        yield from pool.map_unordered(lambda a, t: a.run.remote(t), todo)
    finally:
        ray.shutdown()
