"""Segmentation training: the Stage-0 baseline (real labels only), resumable, DDP-ready.

Design points:

* **Step-indexed data.** Sample ``i`` of a run is case ``perm_epoch[i mod n]``
  with its random transforms seeded from ``(seed, i)``. What a step sees depends
  only on the step number, so a resumed run, or a run with more data-loader
  workers, sees exactly the same patches as an uninterrupted one.
* **Resume.** ``last.pt`` (model, optimizer, scheduler, grad scaler, RNG state,
  step) is written atomically every ``train.checkpoint_every`` steps;
  ``resume=True`` continues after the last completed checkpointed step and
  rewrites the per-step log from there, so the loss sequence is reproduced.
* **DDP.** Under ``torchrun`` each rank trains on its own step-indexed samples
  (NCCL on GPUs, gloo on CPUs); rank 0 validates, logs and writes checkpoints.
* **Validation** is sliding-window inference on whole validation volumes; the
  tumour Dice is computed per case and averaged over the cases that have tumour,
  as FreeTumor does; the best checkpoint is chosen by it.

Run folder: ``config.yaml`` (resolved), ``split.json``, ``metrics.jsonl`` (one
line per step), ``val.jsonl``, ``last.pt``, ``best.pt``, ``final.json``, ``tb/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..checkpoints import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..config import Config, save_config
from ..data import datalist_entries  # noqa: F401 (re-exported for the trainers)
from ..errors import ConfigError, InputError
from ..models import build_model

SPLIT_SEED = 0  # the k-fold split is the same for every method and seed, so comparisons are paired


# ----------------------------------------------------------------------------- splits
def kfold_split(entries: list[dict], folds: int, fold: int) -> tuple[list[dict], list[dict]]:
    """Train/validation entries of one fold: the datalist's ``fold`` field if every entry has
    one, else a deterministic shuffle of the sorted image paths dealt into ``folds`` folds."""
    if not 0 <= fold < folds:
        raise ConfigError(f"fold {fold} is outside 0..{folds - 1}")
    if entries and all("fold" in e for e in entries):
        val = [e for e in entries if int(e["fold"]) == fold]
        train = [e for e in entries if int(e["fold"]) != fold]
    else:
        order = sorted(entries, key=lambda e: e["image"])
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(order))
        assign = {int(p): k % folds for k, p in enumerate(perm)}
        val = [e for i, e in enumerate(order) if assign[i] == fold]
        train = [e for i, e in enumerate(order) if assign[i] != fold]
    if not train:
        raise ConfigError(f"fold {fold} leaves no training cases ({len(entries)} labelled cases in all)")
    return train, val


# ----------------------------------------------------------------------------- data
class StepDataset(torch.utils.data.Dataset):
    """Index ``i`` -> the patches of global sample ``i`` (deterministic in ``i``)."""

    def __init__(self, entries: list[dict], transform, seed: int, cache: bool = False):
        from monai.transforms import Compose, Randomizable

        self.entries = entries
        steps = list(transform.transforms)
        first = next((k for k, t in enumerate(steps) if isinstance(t, Randomizable)), len(steps))
        self.pre = Compose(steps[:first])
        self.rand = Compose(steps[first:])
        self.seed = int(seed)
        self.cache: dict[int, dict] | None = {} if cache else None

    def __len__(self) -> int:
        return 1 << 40

    def _case(self, k: int) -> dict:
        if self.cache is not None and k in self.cache:
            return self.cache[k]
        d = self.pre({key: v for key, v in self.entries[k].items() if key in ("image", "label")})
        if self.cache is not None:
            self.cache[k] = d
        return d

    def case_index(self, i: int) -> int:
        """The entry global sample ``i`` reads: each epoch is a seeded permutation of the entries."""
        n = len(self.entries)
        epoch, pos = divmod(int(i), n)
        return int(np.random.default_rng([self.seed, epoch]).permutation(n)[pos])

    def __getitem__(self, i: int):
        case = self._case(self.case_index(i))
        self.rand.set_random_state(seed=int(np.random.SeedSequence([self.seed, int(i)]).generate_state(1)[0]))
        out = self.rand(dict(case))
        return out if isinstance(out, list) else [out]


class StepBatches(torch.utils.data.Sampler):
    """Batches of global sample indices for steps ``start..stop-1`` of one rank."""

    def __init__(self, start: int, stop: int, batch: int, world: int, rank: int):
        self.start, self.stop, self.batch, self.world, self.rank = start, stop, batch, world, rank

    def __iter__(self):
        for step in range(self.start, self.stop):
            base = (step * self.world + self.rank) * self.batch
            yield list(range(base, base + self.batch))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _collate(batch):
    from monai.data import list_data_collate

    flat = [patch for sample in batch for patch in sample]
    return list_data_collate(flat)


# ----------------------------------------------------------------------------- schedule
def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Per-step factor: linear warm-up from 0, then cosine to 0 at ``total`` (as the paper)."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return step / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


# ----------------------------------------------------------------------------- metrics
def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    inter = np.logical_and(pred, gt).sum()
    denom = pred.sum() + gt.sum()
    return float(2.0 * inter / denom) if denom else 1.0


@torch.no_grad()
def validate(model, cfg: Config, entries: list[dict], device) -> dict:
    """Sliding-window validation; tumour Dice averaged over cases with tumour (paper)."""
    from monai.inferers import sliding_window_inference

    from ..transforms import val_transforms

    if not entries:
        return {"cases": 0}
    tf = val_transforms(cfg)
    tum = cfg.tumour_classes
    model.eval()
    tumour_dices, organ_dices = [], []
    for e in entries:
        d = tf({"image": e["image"], "label": e["label"]})
        img = torch.as_tensor(d["image"])[None].to(device)
        with _autocast(cfg, device):
            logits = sliding_window_inference(
                img, tuple(cfg.data.roi_size), cfg.val.sw_batch_size, model,
                overlap=cfg.val.overlap,
            )
        pred = logits.argmax(1)[0].cpu().numpy()
        gt = np.asarray(d["label"])[0]
        gt_t, pr_t = np.isin(gt, tum), np.isin(pred, tum)
        if gt_t.any():
            tumour_dices.append(dice(pr_t, gt_t))
        organ_dices.append(dice(pred > 0, gt > 0))
    model.train()
    return {
        "cases": len(entries),
        "tumour_cases": len(tumour_dices),
        "tumour_dice": float(np.mean(tumour_dices)) if tumour_dices else None,
        "foreground_dice": float(np.mean(organ_dices)),
    }


def _autocast(cfg: Config, device):
    if device.type == "cuda" and cfg.train.amp:
        return torch.autocast("cuda", dtype=torch.float16)
    import contextlib

    return contextlib.nullcontext()


def batch_tensors(batch: dict, device, keys=("image", "label")) -> list[torch.Tensor]:
    """Plain tensors (not MetaTensors) of a collated batch, on ``device``."""
    out = []
    for k in keys:
        v = batch[k].to(device)
        out.append(v.as_tensor() if hasattr(v, "as_tensor") else v)
    return out


def spatial_cutmix(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, beta: float = 0.2):
    """FreeTumor's spatial CutMix (METHOD §6): sample i keeps its first lambda slices along a random
    in-plane axis (H or W) and takes the rest from sample pi(i), pi a random permutation of the batch,
    lambda = floor(Beta(beta, beta) * size). Image and label get the identical operation.

    Example:
        >>> x = torch.arange(2.0).view(2, 1, 1, 1, 1).expand(2, 1, 4, 4, 2).clone()
        >>> xm, ym = spatial_cutmix(x, x.clone(), torch.Generator().manual_seed(0))
        >>> bool(torch.equal(xm, ym)), sorted(torch.unique(xm).tolist()) == [0.0, 1.0]
        (True, True)
    """
    n = x.shape[0]
    if n < 2:
        return x, y
    lam_frac = float(np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen))).beta(beta, beta))
    axis = 2 + int(torch.randint(0, 2, (1,), generator=gen))
    size = x.shape[axis]
    lam = int(math.floor(lam_frac * size))
    perm = torch.randperm(n, generator=gen).to(x.device)
    if lam >= size:
        return x, y
    idx = [slice(None)] * x.dim()
    idx[axis] = slice(lam, size)
    idx = tuple(idx)
    x, y = x.clone(), y.clone()
    x[idx] = x[perm][idx]
    y[idx] = y[perm][idx]
    return x, y


def train_step(model, batch: dict, loss_fn, optimizer, scaler, scheduler, cfg: Config, device,
               mix: torch.Generator | None = None) -> float:
    """One optimiser step of segmentation training on a collated batch; returns the loss.

    The trainer's loop body (also timed by ``benchmarks/bench_train.py``). With ``mix`` (a seeded
    generator) and ``train.cutmix`` on, the patches are spatially CutMixed first.
    """
    x, y = batch_tensors(batch, device)
    if mix is not None and cfg.train.cutmix:
        x, y = spatial_cutmix(x, y, mix, cfg.train.cutmix_beta)
    optimizer.zero_grad(set_to_none=True)
    with _autocast(cfg, device):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return float(loss.detach())


# ----------------------------------------------------------------------------- distributed
def _dist_setup():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0, 0
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))


def check_run_folder(out: Path, resume: bool) -> Path:
    """``out/last.pt``, after refusing a silent overwrite or a resume without a checkpoint."""
    last = out / "last.pt"
    if last.exists() and not resume:
        raise InputError(out, "run folder already has a checkpoint; pass --resume or choose another --out")
    if resume and not last.exists():
        raise InputError(last, "no checkpoint to resume from")
    return last


def reset_logs(paths, start: int, resume: bool) -> None:
    """Start JSON-lines logs afresh, or (resume) keep their lines up to step ``start``."""
    for path in paths:
        kept = []
        if resume and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start]
        path.write_text("".join(ln + "\n" for ln in kept))


def gather_digests(model, world: int) -> list[str]:
    """Every rank's weight hash (identical after a correct DDP run)."""
    digest = weights_sha256(model)
    if world <= 1:
        return [digest]
    digests = [None] * world
    torch.distributed.all_gather_object(digests, digest)
    return digests


def finish_run(out: Path, summary: dict, writer, rank: int, world: int) -> dict:
    """Close the TensorBoard writer, write ``final.json`` (rank 0) and leave the process group."""
    if rank == 0:
        writer.close()
        (out / "final.json").write_text(json.dumps(summary, indent=1) + "\n")
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary


def weights_sha256(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- trainer
def train_segmentation(
    cfg: Config,
    datalist: str | os.PathLike,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
    unlabelled: str | os.PathLike | None = None,
    synthesis: str = "none",
    generator: str | os.PathLike | None = None,
    qc_segmentor: str | os.PathLike | None = None,
) -> dict:
    """Train a segmentor; returns the final summary (also written to ``final.json``).

    Stage 0 is ``synthesis="none"`` on labelled data. Stage 2 adds ``unlabelled`` cases (CT
    with organ masks only) to the training pool and synthesises tumours online on eligible
    patches (:class:`~freetumor.transforms.RandTumorSynthesisd`): ``procedural`` (rule-based
    difference) or ``generator`` (a Stage-1 ``generator``), with quality control by
    ``qc_segmentor`` when given. Everything else (data, CutMix, loss, schedule) is identical,
    so runs that differ only in ``synthesis`` are a fair comparison.
    """
    from monai.losses import DiceCELoss

    from ..transforms import SYNTHESIS_MODES, RandTumorSynthesisd, train_transforms

    if synthesis not in SYNTHESIS_MODES:
        raise ConfigError(f"unknown synthesis {synthesis!r}; choose one of {', '.join(SYNTHESIS_MODES)}")
    if synthesis == "generator" and generator is None:
        raise ConfigError("--synthesis generator needs --generator RUNDIR/generator.pt")
    if synthesis == "none" and (generator is not None or qc_segmentor is not None):
        raise ConfigError("--generator and --qc-segmentor need --synthesis procedural or generator")

    out = Path(out)
    world, rank, local_rank = _dist_setup()
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    tr = cfg.train
    max_steps = int(tr.max_steps)

    entries = datalist_entries(datalist)
    train_entries, val_entries = kfold_split(entries, int(tr.folds), int(tr.fold))
    train_entries = train_entries * max(1, cfg.data.labelled_repeat)
    if unlabelled is not None:
        train_entries = train_entries + datalist_entries(unlabelled, "unlabelled cases with organ masks")

    last = out / "last.pt"
    if rank == 0:
        check_run_folder(out, resume)
        out.mkdir(parents=True, exist_ok=True)
        split = {"fold": tr.fold, "folds": tr.folds, "split_seed": SPLIT_SEED,
                 "train": sorted({e["image"] for e in train_entries}), "val": [e["image"] for e in val_entries]}
        split_path = out / "split.json"
        if resume and split_path.exists() and json.loads(split_path.read_text())["val"] != split["val"]:
            raise InputError(split_path, "the datalist or fold differs from the run being resumed")
        split_path.write_text(json.dumps(split, indent=1))
        save_config(cfg, out / "config.yaml")
    if world > 1:
        torch.distributed.barrier()

    torch.manual_seed(int(tr.seed))
    model = build_model(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(tr.lr), weight_decay=float(tr.weight_decay),
                                  amsgrad=bool(tr.amsgrad))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(int(tr.warmup_steps), max_steps))
    use_amp = device.type == "cuda" and bool(tr.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start, best = 0, -1.0
    if resume:
        ck = load_checkpoint(last)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        extra = ck.get("extra") or {}
        set_rng_state(extra.get("rng", {}))
        start, best = int(ck["step"]), float(extra.get("best", -1.0))
        log(f"resuming after step {start}")
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)

    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        reset_logs([metrics_path], start, resume)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=start + 1 if resume else None)

    synth_tf = None
    if synthesis != "none":
        synth_tf = RandTumorSynthesisd(cfg, synthesis, generator=generator, qc_segmentor=qc_segmentor,
                                       prob=cfg.synth.online_prob,
                                       max_tries=cfg.synth.online_max_tries)
    ds = StepDataset(train_entries, train_transforms(cfg, synthesis=synth_tf), int(tr.seed),
                     cache=cfg.data.cache)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=StepBatches(start, max_steps, int(tr.batch_size), world, rank),
        num_workers=cfg.data.num_workers, collate_fn=_collate,
    )
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=max_steps, initial=start, desc="train-seg", unit="step", dynamic_ncols=True)

    def checkpoint(path: Path, step: int) -> None:
        save_checkpoint(path, model=model, cfg=cfg, step=step, optimizer=optimizer, scheduler=scheduler,
                        scaler=scaler if use_amp else None, extra={"best": best, "rng": rng_state()})

    val_log = out / "val.jsonl"
    model.train()
    step = start
    for batch in loader:
        step += 1
        mix = torch.Generator().manual_seed(int(np.random.SeedSequence([int(tr.seed), step, rank]).generate_state(1)[0]))
        lv = train_step(train_model, batch, loss_fn, optimizer, scaler, scheduler, cfg, device, mix=mix)
        status = list(batch.get("synth_status", []))
        if world > 1:
            t = torch.tensor([lv], device=device)
            torch.distributed.all_reduce(t)
            lv = float(t) / world
        if rank == 0:
            lr = optimizer.param_groups[0]["lr"]
            with open(metrics_path, "a") as fh:
                row = {"step": step, "loss": lv, "lr": lr}
                if synth_tf is not None:
                    row["synth"] = {k: status.count(k) for k in sorted(set(status))}
                    row["synth_tries"] = int(torch.as_tensor(batch["synth_tries"]).sum())
                fh.write(json.dumps(row) + "\n")
            if step % int(tr.log_every) == 0 or step == max_steps:
                writer.add_scalar("train/loss", lv, step)
                writer.add_scalar("train/lr", lr, step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.4f}")
            if step % int(tr.val_every) == 0 or step == max_steps:
                res = validate(model, cfg, val_entries, device)
                score = res.get("tumour_dice")
                score = res.get("foreground_dice", -1.0) if score is None else score
                res.update(step=step, score=score)
                with open(val_log, "a") as fh:
                    fh.write(json.dumps(res) + "\n")
                for k in ("tumour_dice", "foreground_dice"):
                    if res.get(k) is not None:
                        writer.add_scalar(f"val/{k}", res[k], step)
                if score > best:
                    best = score
                    checkpoint(out / "best.pt", step)
            if step % int(tr.checkpoint_every) == 0 or step == max_steps:
                checkpoint(last, step)
        if world > 1:
            torch.distributed.barrier()
    if bar is not None:
        bar.close()

    digests = gather_digests(model, world)
    summary = {"steps": step, "best_score": best, "world_size": world, "weights_sha256": digests,
               "device": str(device), "synthesis": synthesis}
    if rank == 0 and not (out / "best.pt").exists():
        checkpoint(out / "best.pt", step)
    return finish_run(out, summary, writer, rank, world)
