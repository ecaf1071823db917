"""Segmentation training: the Stage-0 baseline (real labels only) and Stage 2 (the same recipe
plus online tumour synthesis), resumable, DDP-ready.

Design points:

* **Step-indexed data** (:mod:`freetumor.training.data`): a resumed run, or one with more
  data-loader workers, sees exactly the same patches as an uninterrupted one.
* **Resume** (:class:`~freetumor.training.run.Run`): ``last.pt`` is written atomically every
  ``train.checkpoint_every`` steps; ``resume=True`` continues after the last checkpointed step
  and rewrites the per-step log from there, so the loss sequence is reproduced.
* **DDP.** Under ``torchrun`` each rank trains on its own step-indexed samples; rank 0
  validates, logs and writes checkpoints.
* **Validation** is sliding-window inference on whole validation volumes; the tumour Dice is
  computed per case and averaged over the cases that have tumour, as FreeTumor does; the best
  checkpoint is chosen by it (by the foreground Dice when no validation case has tumour).
* **Stage 2** is Stage 0 with :class:`~freetumor.transforms.RandTumorSynthesisd` in the
  training transforms and unlabelled cases in the pool; nothing else differs, so runs that
  differ only in ``synthesis`` are a fair comparison.

Run folder: ``config.yaml`` (resolved), ``split.json``, ``metrics.jsonl`` (one line per
step), ``val.jsonl``, ``last.pt``, ``best.pt``, ``final.json``, ``tb/``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss

from ..config import Config
from ..errors import InputError
from ..evaluation.metrics import dice
from ..lesions.profile import load_profile
from ..models import build_model, class_argmax
from ..synthesis import SynthesisOptions
from ..transforms import RandTumorSynthesisd, lesion_banks, train_transforms, val_transforms
from ..placement import HOST, LABELLED, ROLE
from .checks import check_synthesis, checked_pool
from .data import (SPLIT_SEED, SharedStepDataset, StepDataset, batch_tensors, kfold_split, labelled_share,
                   loader_workers, with_role)
from .run import Run, autocast


# ----------------------------------------------------------------------------- schedule, optimiser
def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Per-step factor: linear warm-up from 0, then cosine to 0 at ``total`` (as the paper).

    >>> f = warmup_cosine(2, 10)
    >>> [round(f(s), 3) for s in (0, 1, 2, 6, 10)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return step / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def optimiser(model: torch.nn.Module, cfg: Config, device: torch.device):
    """``(optimizer, scheduler, scaler)`` of segmentation training: AdamW, per-step warm-up +
    cosine over ``train.max_steps``, a grad scaler enabled with ``train.amp`` on a GPU."""
    tr = cfg.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(tr.lr), weight_decay=float(tr.weight_decay),
                                  amsgrad=bool(tr.amsgrad))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(int(tr.warmup_steps), int(tr.max_steps)))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and bool(tr.amp))
    return optimizer, scheduler, scaler


def segmentation_loss(cfg: Config | None = None) -> torch.nn.Module:
    """Dice + cross-entropy on softmax outputs, background excluded from the Dice; with
    ``train.dice_batch`` the Dice is over the whole batch (nnU-Net's batch Dice).

    Per patch (the paper's default), a patch without any lesion still has a lesion Dice term
    (smoothing 1e-5): about 1 (its worst) whenever the model leaves any trace of lesion probability
    in that patch, and about 0 only when it drives the lesion class to essentially zero everywhere
    in it. A trace (logit -8) costs such a patch 0.25 of loss, as much as a badly missed lesion
    (``tests/test_placement.py``): with many lesion-free host patches the loss rewards silence far
    more than it rewards finding the few labelled lesions. Over the batch, the lesion Dice is one
    term over all patches and the same trace costs under 0.001.
    """
    batch = bool(cfg.train.dice_batch) if cfg is not None else False
    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=batch)


# ----------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model, cfg: Config, entries: list[dict], device) -> dict:
    """Sliding-window validation; tumour Dice averaged over cases with tumour (paper)."""
    if not entries:
        return {"cases": 0}
    tf = val_transforms(cfg)
    tum = cfg.tumour_classes
    model.eval()
    tumour_dices, organ_dices = [], []
    for e in entries:
        d = tf({"image": e["image"], "label": e["label"]})
        img = torch.as_tensor(d["image"])[None].to(device)
        with autocast(cfg, device):
            logits = sliding_window_inference(
                img, tuple(cfg.data.roi_size), cfg.val.sw_batch_size, model,
                overlap=cfg.val.overlap,
            )
        pred = class_argmax(logits)[0].cpu().numpy()
        gt = np.asarray(d["label"])[0]
        gt_t, pr_t = np.isin(gt, tum), np.isin(pred, tum)
        if gt_t.any():
            tumour_dices.append(dice(pr_t, gt_t))
        organ_dices.append(dice(pred > 0, gt > 0))  # 1.0 when neither has foreground
    model.train()
    return {
        "cases": len(entries),
        "tumour_cases": len(tumour_dices),
        "tumour_dice": float(np.mean(tumour_dices)) if tumour_dices else None,
        "foreground_dice": float(np.mean(organ_dices)),
    }


# ----------------------------------------------------------------------------- one step
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
    with autocast(cfg, device):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return float(loss.detach())


def cutmix_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CutMix random stream of one rank's step (a resumed run draws the same)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), step, rank]).generate_state(1)[0]))


# ----------------------------------------------------------------------------- run pieces
def stage2_config(cfg: Config, options: SynthesisOptions | None) -> Config:
    """``cfg`` with the options' QC device (``qc.device``) when they set one that the config does not have."""
    if options is not None and options.qc_device is not None and options.qc_device != cfg.qc.device:
        return cfg.replace(**{"qc.device": options.qc_device})
    return cfg


def synthesis_transform(cfg: Config, synthesis: str, options: SynthesisOptions | None = None,
                        labelled: list[dict] | None = None) -> RandTumorSynthesisd | None:
    """The Stage-2 online synthesis transform; ``None`` for Stage 0 (``synthesis="none"``).
    ``options``: the generator, QC segmentor and lesion profile (its calcified lesions left out with
    ``exclude_calcified``); ``copy_paste`` pastes the real lesions of the ``labelled`` training entries."""
    if synthesis == "none":
        return None
    options = options or SynthesisOptions(cfg.organ)
    profile = options.profile
    if profile is not None and options.exclude_calcified:
        profile = load_profile(profile, cfg.organ).without_calcified()
    banks = lesion_banks(cfg, labelled or []) if synthesis == "copy_paste" else None
    return RandTumorSynthesisd(cfg, synthesis, generator=options.generator, qc_segmentor=options.qc_segmentor,
                               prob=cfg.synth.online_prob, max_tries=cfg.synth.online_max_tries, profile=profile,
                               banks=banks)


def training_pool(cfg: Config, datalist, unlabelled, skip_bad: bool = False,
                  log: Callable[[str], None] | None = None,
                  checked: tuple[list[dict], list[dict]] | None = None) -> tuple[list[dict], list[dict]]:
    """(training entries, validation entries): the fold's labelled training cases, repeated
    ``data.labelled_repeat`` times, plus the ``unlabelled`` cases (Stage 2) when given.

    The cases come from :func:`checked_pool`, or are ``checked``, its result made before
    (``--folds`` checks them once for all folds)."""
    entries, extra = checked if checked is not None else checked_pool(cfg, datalist, unlabelled, skip_bad, log)
    train, val = kfold_split(entries, int(cfg.train.folds), int(cfg.train.fold))
    return with_role(train, LABELLED) * max(1, cfg.data.labelled_repeat) + with_role(extra, HOST), val


def step_dataset(cfg: Config, entries: list[dict], transform) -> StepDataset:
    """The run's step-indexed data: with hosts and ``data.labelled_share`` a fixed labelled share per
    step (:class:`~freetumor.training.data.SharedStepDataset`), else uniform over the entries; with
    ``data.crop_placement: host`` small labelled cases are pasted into host context."""
    hosts = [e for e in entries if e.get(ROLE) == HOST]
    context = (tuple(cfg.data.roi_size), float(cfg.data.canvas_scale)) if cfg.data.crop_placement == "host" else None
    if hosts and cfg.data.labelled_share is not None:
        labelled = [e for e in entries if e.get(ROLE) != HOST]
        return SharedStepDataset(labelled, hosts, transform, int(cfg.train.seed), float(cfg.data.labelled_share),
                                 int(cfg.train.batch_size), cache=cfg.data.cache, host_context=context)
    return StepDataset(entries, transform, int(cfg.train.seed), cache=cfg.data.cache, host_context=context)


def split_writer(train: list[dict], val: list[dict], cfg: Config, resume: bool) -> Callable[[Path], None]:
    """Writes ``split.json``; a resumed run must validate on the same cases."""
    split = {"fold": cfg.train.fold, "folds": cfg.train.folds, "split_seed": SPLIT_SEED,
             "train": sorted({e["image"] for e in train}), "val": [e["image"] for e in val]}

    def write(out: Path) -> None:
        path = out / "split.json"
        if resume and path.exists() and json.loads(path.read_text())["val"] != split["val"]:
            raise InputError(path, "the datalist or fold differs from the run being resumed")
        path.write_text(json.dumps(split, indent=1))

    return write


def step_row(step: int, loss: float, lr: float, batch: dict, synthesis: bool) -> dict:
    """The ``metrics.jsonl`` line of one step: loss, learning rate, labelled patches of the step's
    patches (``labelled``: [k, n]), and the synthesis outcomes per patch in Stage 2 (``synth``), with
    the checks that failed on rejected tries (``synth_rejects``: kind -> count, see
    :attr:`~freetumor.quality.QCDecision.kinds`)."""
    row = {"step": step, "loss": loss, "lr": lr, "labelled": list(labelled_share(batch))}
    if synthesis:
        status = list(batch.get("synth_status", []))
        row["synth"] = {k: status.count(k) for k in sorted(set(status))}
        row["synth_tries"] = int(torch.as_tensor(batch["synth_tries"]).sum())
        kinds = " ".join(batch.get("synth_rejects", [])).split()
        if kinds:
            row["synth_rejects"] = {k: kinds.count(k) for k in sorted(set(kinds))}
    return row


def logged_share(metrics_path: Path) -> float | None:
    """The share of labelled patches over all steps of ``metrics.jsonl`` (``None`` before any step)."""
    k = n = 0
    try:
        with open(metrics_path) as fh:
            for line in fh:
                row = json.loads(line)
                if "labelled" in row:
                    k, n = k + row["labelled"][0], n + row["labelled"][1]
    except (OSError, ValueError):
        return None
    return round(k / n, 4) if n else None


def validation_round(run: Run, model, val_entries: list[dict], val_log: Path) -> float:
    """Validate at the current step, log it; returns the score (tumour Dice, else foreground Dice)."""
    res = validate(model, run.cfg, val_entries, run.device)
    score = res.get("tumour_dice")
    score = res.get("foreground_dice", -1.0) if score is None else score
    res.update(step=run.step, score=score)
    run.append(val_log, res)
    run.scalars("val", {k: res.get(k) for k in ("tumour_dice", "foreground_dice")}, run.step)
    return score


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
    options: SynthesisOptions | None = None,
    skip_bad_cases: bool = False,
    checked: tuple[list[dict], list[dict]] | None = None,
) -> dict:
    """Train a segmentor; returns the final summary (also written to ``final.json``).

    Stage 0 is ``synthesis="none"`` on labelled data. Stage 2 adds ``unlabelled`` cases (CT with
    organ masks only) and synthesises tumours online on eligible patches: ``procedural``,
    ``generator``, ``profile`` or ``copy_paste``. ``options`` is the
    :class:`~freetumor.synthesis.SynthesisOptions` of ``synthesize``: the Stage-1 ``generator``, the
    ``qc_segmentor`` for quality control (on ``qc_device``), the lesion ``profile`` (without its
    calcified lesions with ``exclude_calcified``); the other settings are the config's
    (:func:`check_synthesis`). ``checked``: the (labelled, unlabelled) entries of ``datalist`` and
    ``unlabelled`` as :func:`checked_pool` returned them, not checked again (``--folds``).
    """
    check_synthesis(synthesis, options, cfg)
    cfg = stage2_config(cfg, options)
    tr = cfg.train
    train_entries, val_entries = training_pool(cfg, datalist, unlabelled, skip_bad_cases, log, checked)
    run = Run(out, cfg, resume=resume, log=log)

    torch.manual_seed(int(tr.seed))
    model = build_model(cfg).to(run.device)
    optimizer, scheduler, scaler = optimiser(model, cfg, run.device)
    extra = run.restore(model, "segmentor", optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    best = float(extra.get("best", -1.0))
    train_model = run.parallel(model)
    synth_tf = synthesis_transform(cfg, synthesis, options,
                                   labelled=[e for e in train_entries if e.get(ROLE) != HOST])
    # Only now, with the checkpoint to resume and every network and profile accepted, is the run
    # folder made or touched (a refusal above leaves it as it was).
    run.create(split_writer(train_entries, val_entries, cfg, resume))
    metrics_path, val_log = run.open_logs("metrics.jsonl", "val.jsonl")
    ds = step_dataset(cfg, train_entries, train_transforms(cfg, synthesis=synth_tf))
    workers = loader_workers(cfg, synth_tf)
    if cfg.data.num_workers is None and workers and run.main:
        run.log(f"online synthesis in {workers} data-loader worker (data.num_workers null: networks on the CPU)")
    loader = run.loader(ds, int(tr.max_steps), workers)
    loss_fn = segmentation_loss(cfg)
    if progress:
        run.progress("train-seg")

    def checkpoint(path: Path) -> None:
        run.save(path, model, {"best": best}, optimizer=optimizer, scheduler=scheduler,
                 scaler=scaler if scaler.is_enabled() else None)

    model.train()
    for step, batch in run.steps(loader):
        mix = cutmix_generator(tr.seed, step, run.rank)
        lv = train_step(train_model, batch, loss_fn, optimizer, scaler, scheduler, cfg, run.device, mix=mix)
        lv = run.mean({"loss": lv}, torch.float32)["loss"]
        if run.main:
            lr = optimizer.param_groups[0]["lr"]
            run.append(metrics_path, step_row(step, lv, lr, batch, synth_tf is not None))
            if run.due(tr.log_every):
                run.scalars("train", {"loss": lv, "lr": lr}, step)
            run.tick(loss=f"{lv:.4f}")
            if run.due(tr.val_every):
                score = validation_round(run, model, val_entries, val_log)
                if score > best:
                    best = score
                    checkpoint(run.out / "best.pt")
            if run.due(tr.checkpoint_every):
                checkpoint(run.last)

    summary = {"steps": run.step, "best_score": best, "world_size": run.world, "weights_sha256": run.digests(model),
               "device": str(run.device), "synthesis": synthesis, "labelled_share": logged_share(metrics_path)}
    if run.main and not (run.out / "best.pt").exists():
        checkpoint(run.out / "best.pt")
    return run.finish(summary)
