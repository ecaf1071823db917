#!/usr/bin/env python
"""Training and prediction overhead of the pipeline, printed as one JSON object.

For each preset (``liver-cpu-tiny`` and ``liver-paper``; ``--skip-paper`` omits the second):

* ``step_s`` - median wall time of one training step exactly as the trainer runs it
  (step-indexed data from a cached phantom cohort, collate, forward, DiceCE,
  backward, AdamW, scheduler), and ``bare_step_s`` - the same network's
  forward/backward/AdamW step on a pre-made random batch of the same shape (a
  bare MONAI step, no data pipeline). ``step_ratio`` = step_s / bare_step_s
  (target <= 1.1).
* ``peak_rss_mb`` - peak resident memory of a fresh process running one
  pipeline step (and ``cuda_max_allocated_mb`` on a GPU).
* ``predict_s_per_window`` - ``Predictor.predict_volume`` on a phantom case
  (preprocessing, foreground crop, sliding windows, resampling back) divided by
  the number of windows, and ``bare_s_per_window`` - ``model(x)`` on a batch of
  ``sw_batch_size`` ROI windows divided by its size. ``predict_ratio`` (target <= 1.1).

On a CPU the paper preset runs with ``data.num_samples=1`` (one 96^3 patch per
step instead of 4) and ``val.overlap=0`` (fewer windows) so that the benchmark
finishes in minutes; the JSON's ``overrides`` say so.

Run: ``python benchmarks/bench_train.py [--repeats N] [--skip-paper]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _setup(preset: str, overrides: list[str], tmp: Path):
    import torch
    from monai.losses import DiceCELoss

    from freetumor.config import load_config
    from freetumor.data import load_datalist
    from freetumor.models import build_model
    from freetumor.phantom import write_cohort
    from freetumor.training.segmentation import StepDataset, warmup_cosine
    from freetumor.transforms import train_transforms

    cfg = load_config(preset, ["data.cache=true", *overrides])
    dl = tmp / "cohort" / "datalist.json"
    if not dl.exists():
        write_cohort(tmp / "cohort", 3, seed=0)
    entries = load_datalist(dl)
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["train"]["lr"], amsgrad=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(10, 1000))
    ds = StepDataset(entries, train_transforms(cfg), 0, cache=True)
    return cfg, model, opt, sched, ds, DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)


def _step(model, opt, sched, loss_fn, x, y):
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    sched.step()


def train_figures(preset: str, overrides: list[str], tmp: Path, repeats: int) -> dict:
    import torch

    from freetumor.training.segmentation import _collate

    cfg, model, opt, sched, ds, loss_fn = _setup(preset, overrides, tmp)
    for i in range(len(ds.entries)):  # warm the preprocessing cache (one-off, like the first epoch)
        ds[i]

    def pipeline(i: int) -> float:
        t = time.perf_counter()
        batch = _collate([ds[i]])
        _step(model, opt, sched, loss_fn, batch["image"].as_tensor(), batch["label"].as_tensor())
        return time.perf_counter() - t

    batch = _collate([ds[0]])
    x = torch.rand_like(batch["image"].as_tensor())
    y = torch.randint(0, 3, batch["label"].shape).float()

    def bare() -> float:
        t = time.perf_counter()
        _step(model, opt, sched, loss_fn, x, y)
        return time.perf_counter() - t

    pipeline(0), bare()  # warm-up
    p, b = [], []
    for i in range(repeats):  # alternate, so machine noise hits both alike
        p.append(pipeline(i + 1))
        b.append(bare())
    mp, mb = statistics.median(p), statistics.median(b)
    return {"batch_shape": list(x.shape), "step_s": round(mp, 4), "bare_step_s": round(mb, 4),
            "step_ratio": round(mp / mb, 3)}


def predict_figures(preset: str, overrides: list[str], tmp: Path, repeats: int) -> dict:
    import numpy as np
    import torch

    from freetumor.checkpoints import save_checkpoint
    from freetumor.inference import Predictor
    from freetumor.io import load_volume

    cfg, model, *_ = _setup(preset, overrides, tmp)
    ck = tmp / f"{preset}.pt"
    save_checkpoint(ck, model=model, cfg=cfg, step=0)
    pred = Predictor(ck, "cpu" if not torch.cuda.is_available() else None)
    vol = load_volume(next((tmp / "cohort" / "imagesTr").glob("*.nii.gz")))
    roi = tuple(cfg["data"]["roi_size"])
    x = pred._preprocess(vol).as_tensor()[0]
    fg = np.argwhere(np.asarray(x > 0))
    shape = tuple(int(max(r, h - l)) for r, l, h in zip(roi, fg.min(0), fg.max(0) + 1))
    windows = 1
    for size, r in zip(shape, roi):  # MONAI's sliding-window grid: interval roi * (1 - overlap)
        step = max(1, int(r * (1 - cfg["val"]["overlap"])))
        windows *= 1 if size <= r else math.ceil((size - r) / step) + 1
    sw = int(cfg["val"]["sw_batch_size"])
    xb = torch.rand(sw, 1, *roi, device=pred.device)

    def full() -> float:
        t = time.perf_counter()
        pred.predict_volume(vol)
        return time.perf_counter() - t

    def bare() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            pred.model(xb)
        return time.perf_counter() - t

    full(), bare()
    f, b = [], []
    for _ in range(repeats):
        f.append(full())
        b.append(bare())
    per_window = statistics.median(f) / windows
    bare_window = statistics.median(b) / sw
    return {"windows": windows, "predict_case_s": round(statistics.median(f), 4),
            "predict_s_per_window": round(per_window, 5), "bare_s_per_window": round(bare_window, 5),
            "predict_ratio": round(per_window / bare_window, 3)}


PEAK = r"""
import json, resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import bench_train as b
import torch
tmp = Path(tempfile.mkdtemp())
cfg, model, opt, sched, ds, loss_fn = b._setup(sys.argv[2], json.loads(sys.argv[3]), tmp)
from freetumor.training.segmentation import _collate
batch = _collate([ds[0]])
b._step(model, opt, sched, loss_fn, batch["image"].as_tensor(), batch["label"].as_tensor())
cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cuda_max_allocated_mb": cuda}))
"""


def peak_memory(preset: str, overrides: list[str]) -> dict:
    r = subprocess.run([sys.executable, "-c", PEAK, str(Path(__file__).parent), preset, json.dumps(overrides)],
                       capture_output=True, text=True, check=True)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["peak_rss_mb"] = round(out["peak_rss_mb"], 1)
    return out


def main() -> None:
    import monai
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-paper", action="store_true")
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    presets = [("liver-cpu-tiny", [])]
    if not args.skip_paper:
        presets.append(("liver-paper", [] if gpu else ["data.num_samples=1", "val.overlap=0.0"]))
    result = {"benchmark": "bench_train",
              "machine": {"cpus": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if gpu else None,
                          "torch": torch.__version__, "monai": monai.__version__,
                          "python": platform.python_version()},
              "presets": {}, "targets": {"step_ratio": 1.1, "predict_ratio": 1.1}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for preset, overrides in presets:
            reps = args.repeats if "tiny" in preset or gpu else 2
            fig = {"overrides": overrides}
            fig.update(train_figures(preset, overrides, tmp, reps))
            fig.update(peak_memory(preset, overrides))
            fig.update(predict_figures(preset, overrides, tmp, reps))
            result["presets"][preset] = fig
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
