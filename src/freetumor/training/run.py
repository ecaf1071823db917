"""The scaffolding of a training run, shared by the Stage-0/2 and Stage-1 trainers.

A :class:`Run` holds what is not the method itself:

* **Processes.** Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group (NCCL on
  GPUs, gloo on CPUs) and picks the local rank's GPU; rank 0 writes every file, the other
  ranks only train. :meth:`Run.mean` averages per-step numbers over the ranks.
* **The run folder.** An existing ``last.pt`` is never overwritten silently and ``resume``
  needs one; ``config.yaml`` is the resolved config.
* **Resume.** ``last.pt`` holds the model, optimizer, scheduler, grad scaler, RNG state and
  step; :meth:`Run.restore` puts them back and the JSON-lines logs keep their lines up to
  that step, so a resumed run rewrites exactly what the interrupted one would have.
* **Logs.** JSON lines (one object a line, with a ``step``), TensorBoard under ``tb/``
  (purged after the resumed step) and a progress bar.
* **The end.** Every rank's weight digest (identical after a correct DDP run),
  ``final.json``, the process group left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from tqdm import tqdm

from ..checkpoints import check_kind, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..config import Config, save_config
from ..errors import InputError
from .data import StepBatches, collate, loader_workers


def dist_setup() -> tuple[int, int, int]:
    """``(world size, rank, local rank)``; joins the process group under ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0, 0
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    return torch.distributed.get_world_size(), torch.distributed.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))


def autocast(cfg: Config, device: torch.device):
    """float16 autocast on a GPU when ``train.amp`` is on; otherwise a no-op context."""
    if device.type == "cuda" and cfg.train.amp:
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def check_run_folder(out: Path, resume: bool) -> Path:
    """``out/last.pt``, after refusing a silent overwrite or a resume without a checkpoint."""
    last = out / "last.pt"
    if last.exists() and not resume:
        raise InputError(out, "run folder already has a checkpoint; pass --resume or choose another --out")
    if resume and not last.exists():
        raise InputError(last, "no checkpoint to resume from")
    return last


def reset_logs(paths: Iterable[Path], start: int, resume: bool) -> None:
    """Start JSON-lines logs afresh, or (resume) keep their lines up to step ``start``: one line
    per step, the latest, in step order (a log never shows a step twice after a resume)."""
    for path in paths:
        kept: dict[int, str] = {}
        if resume and path.exists():
            for ln in filter(None, path.read_text().splitlines()):
                step = int(json.loads(ln)["step"])
                if step <= start:
                    kept[step] = ln
        path.write_text("".join(kept[s] + "\n" for s in sorted(kept)))


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the sorted state dict (names and raw bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Run:
    """One training run: processes, device, run folder, resume state, logs.

    Args:
        out: the run folder.
        cfg: the resolved config (saved as ``config.yaml``; ``train.batch_size`` and
            ``data.num_workers`` for the loader).
        resume: continue from ``out/last.pt``.
        log: where one-line messages go (rank 0).

    Constructing it joins the process group, picks the device and (rank 0) refuses an
    existing checkpoint without ``resume`` or ``resume`` without one; nothing is written yet.
    A trainer calls :meth:`restore` and loads every network it needs before :meth:`create`, so
    that a refused checkpoint or option leaves the run folder exactly as it was.
    """

    def __init__(self, out: str | os.PathLike, cfg: Config, *, resume: bool = False,
                 log: Callable[[str], None] = print):
        self.out = Path(out)
        self.cfg, self.resume, self.log = cfg, resume, log
        self.world, self.rank, self.local_rank = dist_setup()
        self.device = torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        self.last = self.out / "last.pt"
        self.start = self.step = self.total = 0
        self.writer = None
        self.bar = None
        if self.main:
            check_run_folder(self.out, resume)

    @property
    def main(self) -> bool:
        """Rank 0: the process that validates and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def create(self, setup: Callable[[Path], None] | None = None) -> None:
        """Rank 0 makes the folder, runs ``setup(folder)`` (a stage's own files) and writes
        ``config.yaml``; every rank waits for it."""
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if setup is not None:
                setup(self.out)
            save_config(self.cfg, self.out / "config.yaml")
        self.barrier()

    def restore(self, model: torch.nn.Module, kind: str, **states) -> dict:
        """On resume, load ``last.pt`` (a ``kind`` checkpoint) into ``model`` and the named
        ``states`` (``optimizer``, ``scheduler``, ``scaler``: objects with ``load_state_dict``;
        ``None`` skips one), restore the RNG state and set :attr:`start`. Returns the
        checkpoint's ``extra`` (``{}`` when not resuming)."""
        if not self.resume:
            return {}
        ck = load_checkpoint(self.last)
        check_kind(ck, self.last, kind)
        try:
            model.load_state_dict(ck["model"])
            for key, obj in states.items():
                if obj is not None and ck.get(key):
                    obj.load_state_dict(ck[key])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            first = " ".join(str(exc).split())[:160]
            raise InputError(self.last, "does not fit this run (was a model or optimiser setting changed with "
                                        f"--set?): {type(exc).__name__}: {first}") from None
        extra = ck.get("extra") or {}
        set_rng_state(extra.get("rng", {}))
        self.start = self.step = int(ck["step"])
        self.log(f"resuming after step {self.start}")
        return extra

    def save(self, path: Path, model: torch.nn.Module, extra: dict | None = None, **kw) -> None:
        """Checkpoint at the current step, with the RNG state added to ``extra``."""
        save_checkpoint(path, model=model, cfg=self.cfg, step=self.step,
                        extra=None if extra is None else {**extra, "rng": rng_state()}, **kw)

    def parallel(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` wrapped for DistributedDataParallel when there are several processes."""
        if self.world <= 1:
            return module
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def open_logs(self, *names: str) -> list[Path]:
        """Rank 0: reset the JSON-lines logs ``names`` (kept up to :attr:`start` on resume) and
        open the TensorBoard writer. Returns their paths."""
        paths = [self.out / n for n in names]
        if self.main:
            reset_logs(paths, self.start, self.resume)
            from torch.utils.tensorboard import SummaryWriter  # deferred: tensorboard is slow to import

            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=self.start + 1 if self.resume else None)
        return paths

    def append(self, path: Path, row: dict) -> None:
        """One JSON line (rank 0)."""
        if self.main:
            with open(path, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        """TensorBoard scalars ``prefix/key`` (rank 0); ``None`` values are left out."""
        if self.writer is not None:
            for k, v in values.items():
                if v is not None:
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def loader(self, dataset: torch.utils.data.Dataset, total: int, workers: int | None = None
               ) -> torch.utils.data.DataLoader:
        """This rank's batches for steps :attr:`start` + 1 .. ``total``, prepared by ``workers``
        data-loader processes (default: :func:`~freetumor.training.data.loader_workers` without
        online synthesis)."""
        self.total = int(total)
        sampler = StepBatches(self.start, self.total, int(self.cfg.train.batch_size), self.world, self.rank)
        if workers is None:
            workers = loader_workers(self.cfg)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate)

    def progress(self, desc: str) -> None:
        """A progress bar on rank 0, advanced by :meth:`tick`."""
        if self.main:
            self.bar = tqdm(total=self.total, initial=self.start, desc=desc, unit="step", dynamic_ncols=True)

    def tick(self, **postfix: str) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(**postfix)

    def steps(self, loader: Iterable) -> Iterator[tuple[int, dict]]:
        """``(step, batch)`` for every batch of ``loader`` (:attr:`step` follows); the ranks
        meet after each step, and the progress bar closes at the end."""
        for batch in loader:
            self.step += 1
            yield self.step, batch
            self.barrier()
        if self.bar is not None:
            self.bar.close()

    def due(self, every: int) -> bool:
        """Whether the current step is a multiple of ``every`` or the last one."""
        return self.step % int(every) == 0 or self.step == self.total

    def mean(self, values: dict[str, float], dtype: torch.dtype = torch.float64) -> dict[str, float]:
        """``values`` averaged over the ranks (summed in ``dtype``); NaN stays NaN."""
        if self.world <= 1:
            return values
        t = torch.tensor(list(values.values()), device=self.device, dtype=dtype)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(values, t.tolist())}

    def digests(self, model: torch.nn.Module) -> list[str]:
        """Every rank's :func:`weights_sha256` of ``model``."""
        digest = weights_sha256(model)
        if self.world <= 1:
            return [digest]
        digests = [None] * self.world
        torch.distributed.all_gather_object(digests, digest)
        return digests

    def finish(self, summary: dict) -> dict:
        """Close the TensorBoard writer, write ``final.json`` (rank 0), leave the process group."""
        if self.main:
            self.writer.close()
            (self.out / "final.json").write_text(json.dumps(summary, indent=1) + "\n")
        if self.world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        return summary


def nan_to_none(values: dict[str, float]) -> dict[str, float | None]:
    """NaN (no value this step) as ``None``, which JSON and :meth:`Run.scalars` leave out.

    >>> nan_to_none({"a": 1.0, "b": float("nan")})
    {'a': 1.0, 'b': None}
    """
    return {k: None if math.isnan(v) else v for k, v in values.items()}
