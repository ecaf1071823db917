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
import itertools
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from .data import datalist_entries, datalist_label_map
from .errors import ConfigError, FreeTumorError, InputError
from .io import case_name, check_output_folder, clean_staging, write_bytes_atomic
from .labels import default_label_map, get_label_map
from .synthesis import (SynthesisOptions, build_synthesizer, check_devices, check_synthesis_options,
                        networks_loaded, synthesize_case)


# Synthetic variants per input case: each is a whole synthetic CT (seconds of work, tens of MB on disk),
# so 10000 variants of one case are already hours of work and hundreds of GB; past it, --per-case is
# refused up front (10**9 would be petabytes).
MAX_PER_CASE = 10_000


def check_per_case(per_case: int) -> int:
    """``--per-case`` within 1..:data:`MAX_PER_CASE` (one-line :class:`ConfigError` with the limit and why)."""
    if isinstance(per_case, bool) or not isinstance(per_case, (int, np.integer)) or per_case < 1:
        raise ConfigError(f"--per-case must be at least 1, got {per_case!r}")
    if per_case > MAX_PER_CASE:
        raise ConfigError(f"--per-case {per_case} is above the limit of {MAX_PER_CASE} synthetic variants per case "
                          "(each is a whole synthetic CT: seconds of work and tens of MB on disk)")
    return int(per_case)


def plan_tasks(entries: list[dict], per_case: int, seed: int) -> Iterator[dict]:
    """One task per (case, k), made as they are used (lazily: memory does not grow with
    ``per_case``): a stable name and seed. Names are unique when the cases' file names are
    (checked first: ``<case>_syn<k>`` of two cases collide only when their names do)."""
    bases = [case_name(e["image"]) for e in entries]
    if len(set(bases)) != len(bases):
        raise InputError("datalist", "two cases share a file name; synthetic case names would collide")

    def tasks() -> Iterator[dict]:
        for i, (e, base) in enumerate(zip(entries, bases)):
            for k in range(per_case):
                s = int(np.random.SeedSequence([int(seed), i, k]).generate_state(1)[0])
                yield {"name": f"{base}_syn{k}", "image": str(e["image"]), "label": str(e["label"]),
                       "seed": s, "source_case": base}

    return tasks()


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
    per_case = check_per_case(per_case)
    check_devices(options)  # up front, not once per case in errors.log
    dl = Path(datalist)
    if options.label_map is None:
        options = dataclasses.replace(options, label_map=datalist_label_map(dl))
    entries = datalist_entries(dl, "cases with organ masks", keys=None, skip_bad=skip_bad_cases, log=log,
                               label_map=get_label_map(options.label_map, options.organ))
    check_synthesis_options(options)  # once, up front: a bad --generator, --qc-segmentor or --profile writes nothing
    out = Path(out)
    check_output_folder(out)
    tasks = plan_tasks(entries, per_case, seed)  # lazy; names checked now, before anything is written
    n_tasks = len(entries) * per_case
    done_dir = out / "done"
    done = {p.stem for p in done_dir.glob("*.json")} if done_dir.is_dir() else set()
    n_done = sum(1 for t in plan_tasks(entries, per_case, seed) if t["name"] in done) if done else 0
    n_todo = n_tasks - n_done
    ray_session = None
    if workers != 0 and n_todo:
        ray_session = _ray_connect(workers, ray_address)  # an unreachable cluster: one line, nothing written
    clean_staging(out / "cases")  # an interrupted run's staging folders (a restart redoes their task)
    done_dir.mkdir(parents=True, exist_ok=True)
    todo = (t for t in tasks if t["name"] not in done)
    if n_done:
        log(f"resuming: {n_done} of {n_tasks} synthetic cases already done")
    bar = None
    if progress:
        bar = tqdm(total=n_tasks, initial=n_done, desc="synthesize-batch", unit="case", dynamic_ncols=True)
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
    if ray_session is None:
        runner = _Runner(options, str(out))
        for t in todo:
            record(runner.run(t))
    else:
        engine = "ray"
        for res in _run_ray(ray_session, todo, n_todo, options, out, workers):
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
    summary = {"tasks": n_tasks, "done": len(finished), "ran": n_todo, "errors": errors,
               "seconds": round(elapsed, 2), "engine": engine,
               "cases_per_s": round(n_todo / elapsed, 3) if n_todo and elapsed > 0 else None,
               "workers": {str(pid): w for pid, w in sorted(workers_seen.items())}}
    return summary


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """A ``host:port`` (or ``ray://host:port``) address must accept a connection within ``timeout_s``
    before Ray is asked (Ray itself retries an unreachable address for a minute or more); one line
    naming ``--ray-address`` otherwise. ``local`` and ``auto`` are left to Ray.

    Example:
        >>> try:
        ...     check_ray_address("head-node:99999")
        ... except ConfigError as exc:
        ...     print(exc)
        --ray-address head-node:99999: not local, auto or HOST:PORT with a port in 1..65535
    """
    if address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--ray-address {address}: not local, auto or HOST:PORT with a port in 1..65535")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ConfigError(f"--ray-address {address}: cannot connect to a Ray cluster there ({why}); start one "
                          "with `ray start --head`, or run serially with --workers 0") from None


def _ray_connect(workers: int | None, address: str):
    """Start local Ray or connect to ``address``; the ``ray`` module. Refused in one line, naming
    ``--ray-address``, when the cluster cannot be reached."""
    check_ray_address(address)
    try:
        import ray  # deferred: optional dependency, and only the Ray path needs it
    except ImportError:
        raise ConfigError("Ray is not installed (pip install 'ray>=2.9'); or run serially with --workers 0") from None
    init = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False,
            "configure_logging": False}
    try:
        if address == "local":
            ray.init(num_cpus=max(1, workers or os.cpu_count() or 1), **init)
        else:
            ray.init(address=address, **init)
    except (ConnectionError, OSError, RuntimeError, ValueError, TimeoutError) as exc:
        ray.shutdown()
        raise ConfigError(f"--ray-address {address}: cannot connect to a Ray cluster there "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); start one with "
                          "`ray start --head`, or run serially with --workers 0") from None
    return ray


def _run_ray(ray, todo: Iterator[dict], n_todo: int, options: SynthesisOptions, out: Path, workers: int | None):
    """Yield task results as the Ray actor pool finishes them. Tasks are handed out as actors free up
    (two in flight per actor), so the driver never holds more than a few of them."""
    from ray.util import ActorPool  # deferred: as above

    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = workers or (gpus if gpus else int(ray.cluster_resources().get("CPU", 1)))
        n = max(1, min(n, n_todo))
        actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(_Runner)
        actor_options = dataclasses.replace(options, device="cuda" if gpus else options.device)
        pool = ActorPool([actor.remote(actor_options, str(out)) for _ in range(n)])
        submit = lambda t: pool.submit(lambda a, task: a.run.remote(task), t)  # noqa: E731
        for t in itertools.islice(todo, 2 * n):
            submit(t)
        while pool.has_next():
            yield pool.get_next_unordered()
            for t in itertools.islice(todo, 1):
                submit(t)
    finally:
        ray.shutdown()
