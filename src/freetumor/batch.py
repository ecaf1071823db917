"""``freetumor synthesize-batch``: synthetic tumours for a whole cohort, on Ray or serially.

Every (case, k) pair of the datalist, ``k < per_case``, is one task with its own seed derived
from ``(seed, case index, k)``, so the outputs do not depend on how the work is spread: a Ray
run with any number of workers writes the same files as the serial path (``workers=0``).

Work is streamed through a pool of Ray actors (local Ray by default, a cluster with
``ray_address``); each actor (and the serial path) builds one synthesizer from the run's
:class:`~freetumor.synthesis.SynthesisOptions` (:func:`~freetumor.synthesis.build_synthesizer`:
the generator and the QC segmentor are loaded once, on a GPU when the cluster has GPUs: one GPU
per actor) and runs :func:`~freetumor.synthesis.synthesize_case` with it for each of its tasks.
Each completion marker records the worker (process id) and how many networks it has loaded; the
run's summary gathers them per worker (``workers``). A
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

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from .data import datalist_entries, datalist_label_map
from .errors import ConfigError, FreeTumorError, InputError
from .io import case_name, check_output_folder, clean_staging, write_bytes_atomic
from .labels import default_label_map, get_label_map
from .synthesis import (SynthesisOptions, build_synthesizer, check_synthesis_options, networks_loaded,
                        synthesize_case)


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


def _error_text(exc: Exception) -> str:
    """One line for ``errors.log``: a domain error's message, or the type and the start of anything else."""
    if isinstance(exc, FreeTumorError):
        return str(exc)
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


class _Runner:
    """Runs tasks with one synthesizer, built once (the body of a Ray actor, or the serial path).

    The run-level options are checked once before any output (:func:`~freetumor.synthesis.check_synthesis_options`);
    a synthesizer that still cannot be built in a worker fails every task with that error, as a
    failing case does: the run goes on and ``errors.log`` says why.
    """

    def __init__(self, options: SynthesisOptions, out: str):
        self._loads_before = networks_loaded()
        self.options, self.out = options, Path(out)
        self.synthesizer, self.build_error = None, None
        try:
            self.synthesizer = build_synthesizer(options)
        except Exception as exc:  # reported per task by run()
            self.build_error = _error_text(exc)

    def network_loads(self) -> dict[str, int]:
        """Networks loaded in this process since this runner started: one of each kind it uses."""
        now = networks_loaded()
        return {kind: n - self._loads_before[kind] for kind, n in now.items()}

    def run(self, task: dict) -> dict:
        t0 = time.perf_counter()
        if self.build_error is not None:
            return {"name": task["name"], "error": self.build_error}
        try:
            rec = synthesize_case(self.synthesizer, task["image"], task["label"], self.out / "cases",
                                  seed=task["seed"], count=self.options.count, case=task["name"],
                                  png=self.options.png)
        except Exception as exc:  # one bad case must not stop the run
            return {"name": task["name"], "error": _error_text(exc)}
        summary = {"name": task["name"], "image": f"cases/{rec['outputs']['image']}",
                   "label": f"cases/{rec['outputs']['label']}", "record": f"cases/{rec['outputs']['record']}",
                   "source_case": task["source_case"], "seed": task["seed"], "lesions": len(rec["lesions"]),
                   "seconds": round(time.perf_counter() - t0, 3), "worker": os.getpid(),
                   "network_loads": self.network_loads()}
        # The completion marker is written last, atomically: a restart skips this task.
        write_bytes_atomic(self.out / "done" / f"{task['name']}.json", (json.dumps(summary) + "\n").encode())
        return summary


def synthesize_batch(
    datalist: str | os.PathLike,
    options: SynthesisOptions,
    out: str | os.PathLike,
    *,
    per_case: int = 1,
    seed: int = 0,
    workers: int | None = None,
    ray_address: str = "local",
    progress: bool = True,
    log: Callable[[str], None] = print,
    skip_bad_cases: bool = False,
) -> dict:
    """Synthesise ``per_case`` variants of every case with ``options``; returns counts (and writes ``datalist.json``).

    The label map defaults to the datalist's. ``workers=0`` runs serially in this process (no
    Ray); otherwise a Ray actor pool of ``workers`` actors (default: the cluster's CPUs, or GPUs
    when it has them). Every worker builds one synthesizer; the summary's ``workers`` gives, per
    worker process of this run, its tasks and the networks it loaded.
    """
    if per_case < 1:
        raise ConfigError(f"--per-case must be at least 1, got {per_case}")
    dl = Path(datalist)
    if options.label_map is None:
        options = dataclasses.replace(options, label_map=datalist_label_map(dl))
    entries = datalist_entries(dl, "cases with organ masks", keys=None, skip_bad=skip_bad_cases, log=log,
                               label_map=get_label_map(options.label_map, options.organ))
    check_synthesis_options(options)  # once, up front: a bad --generator, --qc-segmentor or --profile writes nothing
    out = Path(out)
    check_output_folder(out)
    clean_staging(out / "cases")  # an interrupted run's staging folders (a restart redoes their task)
    (out / "done").mkdir(parents=True, exist_ok=True)
    tasks = plan_tasks(entries, per_case, seed)
    done = {p.stem for p in (out / "done").glob("*.json")}
    todo = [t for t in tasks if t["name"] not in done]
    if done:
        log(f"resuming: {len(done)} of {len(tasks)} synthetic cases already done")
    bar = None
    if progress:
        bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="synthesize-batch", unit="case",
                   dynamic_ncols=True)
    errors = 0
    workers_seen: dict[int, dict] = {}
    t0 = time.perf_counter()

    def record(res: dict) -> None:
        nonlocal errors
        if "error" in res:
            errors += 1
            with open(out / "errors.log", "a") as fh:
                fh.write(f"{res['name']}: {res['error']}\n")
            log(f"error: {res['name']}: {res['error']}")
        else:
            w = workers_seen.setdefault(res["worker"], {"tasks": 0})
            w["tasks"] += 1
            w["network_loads"] = res["network_loads"]  # the count after its latest task
        if bar is not None:
            bar.update(1)

    engine = "serial"
    if workers == 0 or not todo:
        runner = _Runner(options, str(out))
        for t in todo:
            record(runner.run(t))
    else:
        engine = "ray"
        for res in _run_ray(todo, options, out, workers, ray_address):
            record(res)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    finished = [json.loads(p.read_text()) for p in sorted((out / "done").glob("*.json"))]
    label_map = default_label_map(options.organ) if options.label_map is None else str(options.label_map)
    datalist_out = {"name": "freetumor-synthetic", "organ": options.organ, "label_map": label_map,
                    "source_datalist": str(dl), "seed": seed, "per_case": per_case,
                    "training": [{"image": f["image"], "label": f["label"], "tumour": True,
                                  "source_case": f["source_case"], "record": f["record"]} for f in finished]}
    write_bytes_atomic(out / "datalist.json", (json.dumps(datalist_out, indent=1) + "\n").encode())
    summary = {"tasks": len(tasks), "done": len(finished), "ran": len(todo), "errors": errors,
               "seconds": round(elapsed, 2), "engine": engine,
               "cases_per_s": round(len(todo) / elapsed, 3) if todo and elapsed > 0 else None,
               "workers": {str(pid): w for pid, w in sorted(workers_seen.items())}}
    return summary


def _run_ray(todo: list[dict], options: SynthesisOptions, out: Path, workers: int | None, address: str):
    """Yield task results as the Ray actor pool finishes them."""
    try:
        import ray  # deferred: optional dependency, and only the Ray path needs it
        from ray.util import ActorPool  # deferred: as above
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
        actor_options = dataclasses.replace(options, device="cuda" if gpus else options.device)
        pool = ActorPool([actor.remote(actor_options, str(out)) for _ in range(n)])
        yield from pool.map_unordered(lambda a, t: a.run.remote(t), todo)
    finally:
        ray.shutdown()
