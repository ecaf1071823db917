#!/usr/bin/env python
"""Training-step and prediction overhead of the pipeline over bare MONAI, printed as one JSON object.

Per preset (``liver-cpu-tiny``, and ``liver-paper`` unless ``--skip-paper``), each
measured in a fresh subprocess so that its memory figures are its own:

* ``step_s`` - median wall time of one training step exactly as
  ``train_segmentation`` runs it: the next batch from the trainer's own
  ``DataLoader(StepDataset(cache=True), StepBatches, collate)`` over a small
  phantom cohort (preprocessing cached in a one-off warm-up, as after the first
  epoch), ``.to(device)``, zero_grad, forward, DiceCE, backward, AdamW step
  (through the grad scaler), scheduler step, ``float(loss)`` and the
  ``metrics.jsonl`` line. Set-up, the first (warm-up) step, validation and
  checkpoints are excluded. ``step_data_s`` is the part spent waiting for the
  batch. ``bare_step_s`` - the same network, loss and optimizer stepping on a
  pre-made random batch of the same shape (no data pipeline).
  ``step_ratio`` = step_s / bare_step_s (target <= 1.1). For the small preset,
  ``step_s_workers1`` repeats the pipeline step with ``data.num_workers=1`` (data
  prepared in a worker process, overlapping compute).
* ``step_rss_growth_mb`` - peak RSS during one steady-state training step minus
  the RSS just before it (the peak is reset through ``/proc/self/clear_refs``);
  ``first_step_rss_growth_mb`` the same for the first step (it also allocates
  the AdamW state); ``peak_rss_mb`` the process peak after training;
  ``cuda_max_allocated_mb`` (``torch.cuda.max_memory_allocated`` of one step)
  on a GPU.
* ``predict_s_per_window`` - ``Predictor.predict_volume`` on a phantom scan
  (preprocessing, foreground crop, sliding windows at the preset's ROI, overlap
  and ``sw_batch_size``, argmax, resampling back to the native grid) divided by
  the number of windows (from MONAI's scan interval on the cropped, preprocessed
  volume; ``windows_counted`` checks it); ``bare_s_per_window`` - ``model(x)``
  under ``no_grad`` on a random batch of ``sw_batch_size`` ROI windows, divided
  by that size. ``predict_ratio`` (target <= 1.1); ``predict_model_s`` is the
  time inside the network during the prediction (``predict_model_ratio`` its
  per-window ratio to the bare forward), ``predict_overhead_s`` the rest
  (preprocessing, crop, window stitching, argmax, resampling back), a fixed cost
  per scan that weighs on the tiny U-Net only. ``predict_case_e2e_s`` - one
  case end to end: load the NIfTI, predict, resample back, save.

On a CPU the paper preset uses one 96^3 patch per step (``data.num_samples=1``;
the preset takes 4) with gradient checkpointing as in the preset, 3 timed
steps of each kind and 1 timed prediction (a SwinUNETR step takes ~25 s on 2
cores; ``--paper-cpu-repeats``, ``--paper-cpu-predict-repeats``), and a small phantom
scan (170 x 170 x 140 mm, 2 x 2 x 1 windows at the preset's 0.75 overlap, i.e.
one ``sw_batch_size`` batch) for prediction; the JSON's ``overrides`` and
``predict_case`` fields say so. With CUDA every preset runs as configured.

Online synthesis (Stage 2, issue #5), ``online_synthesis`` (liver-cpu-tiny, 2 x 64^3 patches per
step, labelled + unlabelled phantom pools): the median full training step (next batch + the
trainer's ``train_step`` with CutMix) with ``RandTumorSynthesisd`` (the generator and the QC
segmentor on every eligible patch, cheap checks included) divided by the same step without
synthesis (target <= 1.25), with the data prepared in the main process (``workers0``) and in one
data-loader worker (``workers1``, overlapping the training compute). ``eligible_fraction`` is the
share of patches that got a synthesis attempt.

``online_synthesis_ratio`` (top level) is the step with synthesis at its default worker count
divided by the plain step at its own (``data.num_workers`` null: one worker when the synthesis
runs a network on the CPU, none otherwise; ``default_num_workers``); ``online_synthesis.breakdown_s`` splits the main-process step into its
parts (training, data, tumour drawing, generator, QC forwards, cheap checks), per step.

Run: ``python benchmarks/bench_train.py [--repeats N] [--paper-cpu-repeats N] [--skip-paper] [--skip-synthesis]``
(about 5 minutes on 2 CPU cores; 15 s with ``--skip-paper``);
``python benchmarks/bench_train.py --only-synthesis --quick`` (12 timed steps per mode, 0 and 1
workers; under a minute). The JSON is
printed and written to ``benchmarks/results/bench_train.json`` (``bench_train_synthesis.json``
with ``--only-synthesis``; ``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMALL_CASE_SHAPE = (85, 85, 56)  # at the phantom's default 2 x 2 x 2.5 mm: 170 x 170 x 140 mm


# ----------------------------------------------------------------------------- memory
def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the peak-RSS mark (VmHWM) to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    import resource

    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
    """Peak RSS growth over a block: peak during the block minus the RSS at its start (MB)."""

    def __enter__(self):
        self.before = _status_mb("VmRSS")
        self.exact = _reset_peak()
        self.peak_before = _peak_mb()
        return self

    def __exit__(self, *exc):
        peak = _peak_mb()
        if self.before is None or (not self.exact and peak <= self.peak_before):
            self.growth = None  # the block did not raise the process peak: unknown
        else:
            self.growth = round(peak - self.before, 1)
        return False


# ----------------------------------------------------------------------------- child: one preset
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _med(xs: list[float], nd: int = 4) -> float:
    return round(statistics.median(xs), nd)


def windows_for(shape, roi, overlap: float) -> int:
    """Sliding windows MONAI visits on an image of ``shape`` (padded up to ``roi``)."""
    from monai.data.utils import dense_patch_slices

    try:
        from monai.inferers.utils import _get_scan_interval

        size = [max(int(s), int(r)) for s, r in zip(shape, roi)]
        interval = _get_scan_interval(size, roi, len(roi), [overlap] * len(roi))
    except ImportError:  # private helper moved: MONAI's rule, re-implemented
        size = [max(int(s), int(r)) for s, r in zip(shape, roi)]
        interval = [r if r == s else max(1, int(r * (1 - overlap))) for s, r in zip(size, roi)]
    return len(dense_patch_slices(size, roi, interval))


def train_figures(cfg: dict, entries: list[dict], tmp: Path, repeats: int, workers_check: bool) -> tuple:
    import torch

    from freetumor.models import build_model
    from freetumor.training.data import StepBatches, StepDataset, collate, loader_workers
    from freetumor.training.run import autocast
    from freetumor.training.stage0 import optimiser, segmentation_loss, train_step
    from freetumor.transforms import train_transforms

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tr = cfg.train
    # --- set-up, as train_segmentation does it (not timed)
    torch.manual_seed(int(tr.seed))
    model = build_model(cfg).to(device)
    optimizer, scheduler, scaler = optimiser(model, cfg, device)
    ds = StepDataset(entries, train_transforms(cfg), int(tr.seed), cache=bool(cfg.data.cache))
    t = time.perf_counter()
    for k in range(len(entries)):  # one-off: fill the preprocessing cache (the trainer's first epoch)
        ds.prepared(k)
    cache_warm_s = time.perf_counter() - t
    loss_fn = segmentation_loss()
    metrics_path = tmp / "metrics.jsonl"
    model.train()

    def make_loader(workers: int, steps: int):
        return iter(torch.utils.data.DataLoader(
            ds, batch_sampler=StepBatches(0, steps, int(tr.batch_size), 1, 0),
            num_workers=workers, collate_fn=collate))

    state = {"step": 0}

    def pipeline_step(it) -> tuple[float, float]:
        """train_segmentation's loop body: its own train_step, plus the metrics line (world size 1)."""
        _sync(device)
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        state["step"] += 1
        lv = train_step(model, batch, loss_fn, optimizer, scaler, scheduler, cfg, device)
        lr = optimizer.param_groups[0]["lr"]
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps({"step": state["step"], "loss": lv, "lr": lr}) + "\n")
        _sync(device)
        return time.perf_counter() - t0, t1 - t0

    it = make_loader(loader_workers(cfg), 1 + repeats)
    with PeakRSS() as first_mem:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        warm_s, _ = pipeline_step(it)  # warm-up: allocates AdamW state, creates kernels
    cuda_first = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

    # the bare reference: a pre-made random batch of the pipeline's shape
    sample = collate([ds[0]])
    shape, y_dtype = tuple(sample["image"].shape), sample["label"].dtype
    ncls = cfg.num_classes
    gen = torch.Generator().manual_seed(0)
    xb = torch.rand(shape, generator=gen).to(device)
    yb = torch.randint(0, ncls, shape, generator=gen).to(y_dtype).to(device)

    def bare_step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(cfg, device):
            loss = loss_fn(model(xb), yb)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        _sync(device)
        return time.perf_counter() - t0

    p, pdata, b, growth, bgrowth, cuda_steady = [], [], [], [], [], []
    for r in range(repeats):  # alternate the order, so drift and noise hit both alike
        for kind in (("pipe", "bare") if r % 2 == 0 else ("bare", "pipe")):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with PeakRSS() as mem:
                if kind == "pipe":
                    s, d = pipeline_step(it)
                    p.append(s)
                    pdata.append(d)
                else:
                    b.append(bare_step())
            (growth if kind == "pipe" else bgrowth).append(mem.growth)
            if device.type == "cuda" and kind == "pipe":
                cuda_steady.append(torch.cuda.max_memory_allocated(device) / 2**20)
    del it
    peak_after_training = _peak_mb()
    import resource

    out = {
        "batch_shape": list(shape),
        "repeats": repeats,
        "cache_warm_s": round(cache_warm_s, 3),
        "first_step_s": round(warm_s, 4),
        "step_s": _med(p),
        "step_data_s": _med(pdata),
        "bare_step_s": _med(b),
        "step_ratio": round(statistics.median(p) / statistics.median(b), 3),
        "step_s_all": [round(v, 4) for v in p],
        "bare_step_s_all": [round(v, 4) for v in b],
        "first_step_rss_growth_mb": first_mem.growth,
        "step_rss_growth_mb": max((g for g in growth if g is not None), default=None),
        "bare_step_rss_growth_mb": max((g for g in bgrowth if g is not None), default=None),
        "peak_rss_mb": round(max(peak_after_training, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), 1),
        "cuda_max_allocated_mb": None if cuda_first is None else round(max(cuda_steady + [cuda_first]), 1),
        "cuda_first_step_max_allocated_mb": None if cuda_first is None else round(cuda_first, 1),
    }
    if workers_check:
        # Same step with one DataLoader worker preparing the next batches while the network computes.
        it = make_loader(1, 2 + repeats)
        pipeline_step(it)  # worker start-up and first batch: excluded
        w, wd = [], []
        for _ in range(repeats):
            s, d = pipeline_step(it)
            w.append(s)
            wd.append(d)
        del it
        out.update(step_s_workers1=_med(w), step_data_s_workers1=_med(wd),
                   step_ratio_workers1=round(statistics.median(w) / statistics.median(b), 3))
    from freetumor.checkpoints import save_checkpoint

    ck = tmp / "model.pt"  # the trained weights, for the Predictor
    save_checkpoint(ck, model=model, cfg=cfg, step=state["step"])
    return ck, out


def predict_figures(cfg: dict, ck: Path, case: Path, tmp: Path, repeats: int, light_warmup: bool) -> dict:
    import numpy as np
    import torch

    from freetumor.inference import Predictor
    from freetumor.io import load_volume, save_volume

    pred = Predictor(ck)
    device = pred.device
    net = pred.model
    roi = tuple(int(r) for r in cfg.data.roi_size)
    sw = int(cfg.val.sw_batch_size)
    overlap = float(cfg.val.overlap)
    amp = device.type == "cuda" and bool(cfg.train.amp)

    class Counted(torch.nn.Module):
        """The network, counting the windows it sees and the time spent in it."""

        def __init__(self, m):
            super().__init__()
            self.m, self.windows, self.seconds = m, 0, 0.0

        def forward(self, x):
            _sync(device)
            t0 = time.perf_counter()
            y = self.m(x)
            _sync(device)
            self.seconds += time.perf_counter() - t0
            self.windows += int(x.shape[0])
            return y

    counted = Counted(net).eval()
    pred.model = counted

    vol = load_volume(case)
    x = pred._preprocess(vol).as_tensor()[0]
    fg = np.argwhere(np.asarray(x > 0))
    crop = [int(v) for v in (fg.max(0) + 1 - fg.min(0))] if len(fg) else list(x.shape)
    windows = windows_for(crop, roi, overlap)
    batches = -(-windows // sw)
    xb = torch.rand((sw, 1, *roi), generator=torch.Generator().manual_seed(0)).to(device)

    def bare() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            net(xb)
        _sync(device)
        return time.perf_counter() - t0

    def end_to_end() -> dict:
        counted.windows, counted.seconds = 0, 0.0
        _sync(device)
        t0 = time.perf_counter()
        v = load_volume(case)
        t1 = time.perf_counter()
        out = pred.predict_volume(v)
        t2 = time.perf_counter()
        save_volume(out, tmp / "prediction.nii.gz")
        t3 = time.perf_counter()
        return {"load": t1 - t0, "predict": t2 - t1, "save": t3 - t2, "e2e": t3 - t0,
                "model": counted.seconds, "windows": counted.windows}

    with torch.no_grad():  # warm-up
        net(xb[:1] if light_warmup else xb)
    if not light_warmup:
        end_to_end()
    runs, b = [], []
    for r in range(repeats):
        if r % 2 == 0:
            b.append(bare())
        with PeakRSS() as mem:
            runs.append(end_to_end())
        if r % 2 == 1:
            b.append(bare())
    med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    per_window = med["predict"] / windows
    bare_window = statistics.median(b) / sw
    return {
        "predict_case_shape": list(vol.shape),
        "predict_case_spacing": [round(float(s), 3) for s in vol.spacing],
        "predict_crop_shape": crop,
        "roi_size": list(roi),
        "overlap": overlap,
        "sw_batch_size": sw,
        "windows": windows,
        "windows_counted": runs[0]["windows"],
        "window_batches": batches,
        "predict_repeats": repeats,
        "predict_volume_s": round(med["predict"], 4),
        "predict_model_s": round(med["model"], 4),
        "predict_overhead_s": round(med["predict"] - med["model"], 4),
        "predict_s_per_window": round(per_window, 5),
        "bare_s_per_window": round(bare_window, 5),
        "predict_ratio": round(per_window / bare_window, 3),
        "predict_model_ratio": round(med["model"] / windows / bare_window, 3),
        "predict_case_e2e_s": round(med["e2e"], 4),
        "predict_load_s": round(med["load"], 4),
        "predict_save_s": round(med["save"], 4),
        "predict_rss_growth_mb": mem.growth,
    }


def child(args) -> None:
    import torch

    from freetumor.config import load_config
    from freetumor.data import load_datalist

    overrides = json.loads(args.overrides)
    cfg = load_config(args.preset, ["data.cache=true", *overrides])
    tmp = Path(tempfile.mkdtemp(dir=args.tmp))
    entries = [e for e in load_datalist(Path(args.cohort) / "datalist.json", keys=("training",)) if e.get("label")]
    ck, fig = train_figures(cfg, entries, tmp, args.repeats, args.workers_check)
    gc.collect()  # the training objects are gone; free their memory before predicting
    fig.update(predict_figures(cfg, ck, Path(args.case), tmp, args.predict_repeats, args.light_warmup))
    fig = {"overrides": overrides, "model": cfg.model.name, "device": str(
        torch.device("cuda" if torch.cuda.is_available() else "cpu")), "torch_threads": torch.get_num_threads(), **fig}
    print(json.dumps(fig))


# ----------------------------------------------------------------------------- online synthesis
class _Clock:
    """Seconds spent in wrapped callables, by name (the online-synthesis breakdown)."""

    def __init__(self):
        self.s: dict[str, float] = {}

    def wrap(self, name: str, fn):
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.s[name] = self.s.get(name, 0.0) + time.perf_counter() - t
        return timed


def synthesis_step_figures(cohort: Path, repeats: int, workers_list=(0, 1)) -> dict:
    """Training step with online synthesis + QC vs without, cpu-tiny preset, same data and recipe.

    In the main process (``workers0``) the synthesis is timed by component (``breakdown_s``, per
    step): drawing the tumours (shape, place, texture), the generator, the QC segmentor's
    forwards, the cheap checks; ``data_s`` is the rest of fetching the batch and ``train_s`` the
    trainer's step on it.
    """
    import torch

    import freetumor.transforms as tf_module
    from freetumor.config import load_config
    from freetumor.data import load_datalist
    from freetumor.models import build_generator
    from freetumor.models import build_model
    from freetumor.training.data import StepBatches, StepDataset, collate, loader_workers
    from freetumor.training.stage0 import segmentation_loss, train_step, warmup_cosine
    from freetumor.transforms import RandTumorSynthesisd, train_transforms

    cfg = load_config("liver-cpu-tiny", ["data.cache=true"])
    entries = load_datalist(cohort / "labelled.json") + load_datalist(cohort / "unlabelled.json")
    torch.manual_seed(0)
    seg, gen = build_model(cfg).eval(), build_generator(cfg).eval()
    # the workers each run would get by default (data.num_workers null: automatic)
    default_workers = {"none": loader_workers(cfg), "generator+qc": loader_workers(
        cfg, RandTumorSynthesisd(cfg, "generator", generator=(gen, cfg), qc_segmentor=(seg, cfg)))}
    out: dict = {"preset": "liver-cpu-tiny", "patches_per_step": cfg.data.num_samples, "cases": len(entries),
                 "default_num_workers": default_workers, "qc_batch_size": cfg.qc.batch_size, "timed_steps": repeats}
    judge = tf_module.judge_patch
    for workers in workers_list:
        statuses: list = []
        for mode in ("none", "generator+qc"):
            synth = None if mode == "none" else RandTumorSynthesisd(cfg, "generator", generator=(gen, cfg),
                                                                     qc_segmentor=(seg, cfg))
            clock = _Clock()
            if synth is not None and workers == 0:
                synth.synthesize_many = clock.wrap("synthesis", synth.synthesize_many)
                synth.generator.run = clock.wrap("generator", synth.generator.run)
                synth.qc.predict_many = clock.wrap("qc_forward", synth.qc.predict_many)
                synth._prepare = clock.wrap("draw", synth._prepare)
                tf_module.judge_patch = clock.wrap("cheap_checks", judge)
            ds = StepDataset(entries, train_transforms(cfg, synthesis=synth), 0, cache=True)
            for k in range(len(entries)):
                ds.prepared(k)  # the preprocessing cache, as after the first epoch
            torch.manual_seed(0)
            model = build_model(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(1, 1000))
            scaler = torch.amp.GradScaler("cuda", enabled=False)
            loss_fn = segmentation_loss()
            it = iter(torch.utils.data.DataLoader(ds, batch_sampler=StepBatches(0, repeats + 2, 1, 1, 0),
                                                  num_workers=workers, collate_fn=collate))
            ts, fetch, train = [], [], []
            for step in range(repeats + 2):
                if step == 2:
                    clock.s.clear()  # warm-up steps excluded
                t = time.perf_counter()
                batch = next(it)
                t1 = time.perf_counter()
                train_step(model, batch, loss_fn, opt, scaler, sched, cfg, torch.device("cpu"),
                           mix=torch.Generator().manual_seed(step))
                if step >= 2:
                    ts.append(time.perf_counter() - t)
                    fetch.append(t1 - t)
                    train.append(time.perf_counter() - t1)
                statuses += list(batch.get("synth_status", []))
            tf_module.judge_patch = judge
            del it
            out[f"workers{workers}_{mode}_step_s"] = _med(ts)
            if workers == 0:
                n = len(ts)
                c = {k: v / n for k, v in clock.s.items()}
                fig = {"train_s": round(statistics.mean(train), 4),
                       "data_s": round(statistics.mean(fetch) - c.get("synthesis", 0.0), 4)}
                if synth is not None:
                    fig.update(draw_s=round(c["draw"], 4),
                               generator_s=round(c["generator"], 4), qc_forward_s=round(c["qc_forward"], 4),
                               cheap_checks_s=round(c["cheap_checks"], 4),
                               synthesis_other_s=round(c["synthesis"] - c["draw"] - c["generator"] - c["qc_forward"]
                                                       - c["cheap_checks"], 4),
                               qc_forwards_per_step=round(synth.qc.forwards / (repeats + 2), 2))
                out.setdefault("breakdown_s", {})[mode] = fig
        out[f"workers{workers}_ratio"] = round(out[f"workers{workers}_generator+qc_step_s"]
                                               / out[f"workers{workers}_none_step_s"], 3)
        if statuses:
            out["eligible_fraction"] = round(sum(s != "ineligible" for s in statuses) / len(statuses), 3)
    keys = [f"workers{default_workers[m]}_{m}_step_s" for m in ("generator+qc", "none")]
    if all(k in out for k in keys):  # each step at its own default worker count
        out["online_synthesis_ratio"] = round(out[keys[0]] / out[keys[1]], 3)
    out["target_ratio"] = 1.25
    return out


# ----------------------------------------------------------------------------- parent
def run_preset(preset: str, overrides: list[str], cohort: Path, case: Path, tmp: Path, repeats: int,
               predict_repeats: int, workers_check: bool, light_warmup: bool) -> dict:
    cmd = [sys.executable, __file__, "--_child", "--preset", preset, "--overrides", json.dumps(overrides),
           "--cohort", str(cohort), "--case", str(case), "--tmp", str(tmp), "--repeats", str(repeats),
           "--predict-repeats", str(predict_repeats)]
    cmd += ["--workers-check"] if workers_check else []
    cmd += ["--light-warmup"] if light_warmup else []
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-4000:])
        raise SystemExit(f"{preset}: benchmark subprocess failed (exit {r.returncode})")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.perf_counter() - t, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed steps / predictions per preset (default 5)")
    ap.add_argument("--paper-cpu-repeats", type=int, default=3,
                    help="timed training steps of the paper preset without CUDA (default 3: a step takes ~25 s)")
    ap.add_argument("--paper-cpu-predict-repeats", type=int, default=1,
                    help="timed predictions of the paper preset without CUDA (default 1: ~35 s each)")
    ap.add_argument("--skip-paper", action="store_true", help="only liver-cpu-tiny")
    ap.add_argument("--skip-synthesis", action="store_true", help="skip the online-synthesis step figures")
    ap.add_argument("--only-synthesis", action="store_true", help="only the online-synthesis step figures")
    ap.add_argument("--cases", type=int, default=3, help="phantom cohort size (default 3)")
    ap.add_argument("--quick", action="store_true", help="fewer timed steps (online synthesis: 6, default worker "
                                                         "count only); with --only-synthesis about 2 minutes")
    ap.add_argument("--out", type=Path, help="where the JSON goes too (default benchmarks/results/bench_train.json, "
                                             "bench_train_synthesis.json with --only-synthesis)")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--preset", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    ap.add_argument("--cohort", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--predict-repeats", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--workers-check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--light-warmup", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        child(args)
        return

    import monai
    import torch

    from freetumor.io import save_volume
    from freetumor.phantom import make_case, write_cohort

    gpu = torch.cuda.is_available()
    t_start = time.perf_counter()
    result = {
        "benchmark": "bench_train",
        "machine": {
            "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if gpu else "cpu",
            "torch": torch.__version__,
            "monai": monai.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "presets": {},
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cohort = tmp / "cohort"
        write_cohort(cohort, args.cases, seed=0)
        full_case = next((cohort / "imagesTr").glob("*.nii.gz"))
        small_case = tmp / "small_case.nii.gz"
        save_volume(make_case("abdomen", seed=0, shape=SMALL_CASE_SHAPE)[0], small_case)
        if not args.skip_synthesis:
            print("[bench_train] online synthesis ...", file=sys.stderr, flush=True)
            if args.quick:
                fig = synthesis_step_figures(cohort, 12, (0, 1))
            else:
                fig = synthesis_step_figures(cohort, max(args.repeats, 8))
            result["online_synthesis"] = fig
            result["online_synthesis_ratio"] = fig.get("online_synthesis_ratio")
        plan = [] if args.only_synthesis else [("liver-cpu-tiny", [], full_case, args.repeats, args.repeats,
                                                 True, False)]
        if not args.skip_paper and not args.only_synthesis:
            if gpu:
                plan.append(("liver-paper", [], full_case, args.repeats, args.repeats, False, False))
            else:
                plan.append(("liver-paper", ["data.num_samples=1"], small_case, args.paper_cpu_repeats,
                             args.paper_cpu_predict_repeats, False, True))
        for preset, overrides, case, reps, preps, workers, light in plan:
            print(f"[bench_train] {preset} ...", file=sys.stderr, flush=True)
            fig = run_preset(preset, overrides, cohort, case, tmp, reps, preps, workers, light)
            fig["predict_case"] = ("phantom cohort case" if case == full_case
                                   else f"small phantom {SMALL_CASE_SHAPE} at 2x2x2.5 mm")
            result["presets"][preset] = fig
    result["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    result["targets"] = {"step_ratio": 1.1, "predict_ratio": 1.1, "online_synthesis_ratio": 1.25}
    result["command"] = "python benchmarks/bench_train.py " + " ".join(sys.argv[1:])
    text = json.dumps(result, indent=2)
    results = Path(__file__).resolve().parent / "results"
    target = args.out or results / ("bench_train_synthesis.json" if args.only_synthesis else "bench_train.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
