"""Segmentation training and prediction on the phantom (cpu-tiny presets)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import torch  # a dependency: a broken install fails here rather than skipping

from freetumor.checkpoints import save_checkpoint  # noqa: E402
from freetumor.config import load_config  # noqa: E402
from freetumor.errors import InputError  # noqa: E402
from freetumor.models import build_generator  # noqa: E402
from freetumor.phantom import write_cohort  # noqa: E402
from freetumor.training.data import kfold_split  # noqa: E402
from freetumor.training.stage0 import train_segmentation, warmup_cosine  # noqa: E402

from conftest import need  # noqa: E402

SCRIPT = Path(sys.executable).parent / "freetumor"
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "freetumor.cli"]
FAST = ["data.roi_size=[48,48,48]", "data.num_samples=2", "train.val_every=1000", "train.log_every=1"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    dl = write_cohort(root / "phantom", 4, seed=5)
    return dl


def _single_case_datalist(cohort: Path, tmp: Path) -> Path:
    data = json.loads(cohort.read_text())
    case = next(e for e in data["training"] if e["tumour"])
    img, lab = str(cohort.parent / case["image"]), str(cohort.parent / case["label"])
    p = tmp / "single.json"
    p.write_text(json.dumps({"allow_duplicates": True, "training": [{"image": img, "label": lab, "fold": 1},
                                          {"image": img, "label": lab, "fold": 0}]}))
    return p


@pytest.mark.slow
def test_overfit_single_phantom_case(tmp_path):
    """A cpu-tiny U-Net learns one phantom case (trained and validated on it): tumour Dice > 0.8."""
    from freetumor.io import save_volume
    from freetumor.phantom import make_case

    img, lab = make_case("abdomen", seed=12, tumour=True, shape=(112, 96, 48))
    assert (lab.array == 2).sum() > 1000
    save_volume(img, tmp_path / "img.nii.gz")
    save_volume(lab, tmp_path / "lab.nii.gz")
    dl = tmp_path / "single.json"
    case = {"image": "img.nii.gz", "label": "lab.nii.gz"}
    dl.write_text(json.dumps({"training": [dict(case, fold=1), dict(case, fold=0)]}))
    cfg = load_config("liver-cpu-tiny", [
        "data.roi_size=[48,48,48]", "data.num_samples=4", "data.pos=3.0", "data.neg=1.0",
        "data.flip_prob=0.0", "data.rot90_prob=0.0", "data.scale_intensity=false", "data.shift_intensity=false",
        "data.cache=true", "train.max_steps=100", "train.lr=5e-3", "train.warmup_steps=5",
        "train.val_every=20", "train.checkpoint_every=50", "val.overlap=0.25",
    ])
    summary = train_segmentation(cfg, dl, tmp_path / "run", progress=False, log=lambda *a: None)
    vals = [json.loads(x) for x in (tmp_path / "run" / "val.jsonl").read_text().splitlines()]
    assert vals[-1]["tumour_cases"] == 1
    assert vals[0]["tumour_dice"] < 0.5  # it had to learn
    assert summary["best_score"] > 0.8, vals
    for name in ("best.pt", "last.pt", "config.yaml", "split.json", "metrics.jsonl", "final.json"):
        assert (tmp_path / "run" / name).exists()
    assert list((tmp_path / "run" / "tb").iterdir())
    # predict (native grid) agrees with the validation score (resampled grid).
    from freetumor.inference import Predictor

    pred = Predictor(tmp_path / "run" / "best.pt").predict_volume(img).array
    t, p = lab.array == 2, pred == 2
    assert 2 * (t & p).sum() / (t.sum() + p.sum()) > 0.75


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_kill_reproduces_losses(cohort, tmp_path):
    steps = 8
    args = ["train-seg", "--config", "liver-cpu-tiny", "--datalist", str(cohort), "--max-steps", str(steps),
            "--set", "train.checkpoint_every=1", *sum((["--set", o] for o in FAST), [])]
    ref = subprocess.run([*CLI, *args, "--out", str(tmp_path / "ref")], capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen([*CLI, *args, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        m = run / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(_losses(run))
    assert 4 <= done < steps, "the run should have been killed part-way"
    res = subprocess.run([*CLI, *args, "--out", str(run), "--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "resuming after step" in res.stdout
    assert np.allclose(_losses(run), _losses(tmp_path / "ref"), rtol=1e-5, atol=1e-6)
    assert len(_losses(run)) == steps


def test_ddp_two_processes_gloo(cohort, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "freetumor.cli", "train-seg", "--config", "liver-cpu-tiny", "--datalist", str(cohort),
           "--out", str(run), "--max-steps", "3", *sum((["--set", o] for o in FAST), [])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    final = json.loads((run / "final.json").read_text())
    assert final["world_size"] == 2 and final["steps"] == 3
    assert len(set(final["weights_sha256"])) == 1


def test_predict_native_grid_any_orientation(totalseg, tmp_path, cohort):
    run = tmp_path / "run"
    cfg = load_config("liver-cpu-tiny", ["train.max_steps=2", *FAST])
    train_segmentation(cfg, cohort, run, progress=False, log=lambda *a: None)
    src = need(totalseg / "ct3mm_image.nii.gz")
    img = nib.load(str(src))
    flipped = nib.Nifti1Image(np.asarray(img.dataobj)[::-1, :, ::-1].copy(),
                              img.affine @ np.array([[-1, 0, 0, img.shape[0] - 1], [0, 1, 0, 0],
                                                     [0, 0, -1, img.shape[2] - 1], [0, 0, 0, 1]]))
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(img, inputs / "a.nii.gz")
    nib.save(flipped, inputs / "b_flipped.nii.gz")
    r = subprocess.run([*CLI, "predict", "--model", str(run / "best.pt"), "--image", str(inputs),
                        "--out", str(tmp_path / "pred")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for name, ref in (("a", img), ("b_flipped", flipped)):
        out = nib.load(str(tmp_path / "pred" / f"{name}.nii.gz"))
        assert out.shape == ref.shape
        assert np.allclose(out.affine, ref.affine)
    a = np.asarray(nib.load(str(tmp_path / "pred" / "a.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "pred" / "b_flipped.nii.gz")).dataobj)
    assert np.array_equal(a, b[::-1, :, ::-1])  # same anatomy -> same prediction


def test_bad_checkpoint_and_datalist(tmp_path, cohort):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = subprocess.run([*CLI, "predict", "--model", str(bad), "--image", str(cohort.parent / "imagesTr"),
                        "--out", str(tmp_path / "p")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "bad.pt" in r.stderr and not (tmp_path / "p").exists()
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [{"image": "nope.nii.gz", "label": "nope_l.nii.gz"}]}))
    r = subprocess.run([*CLI, "train-seg", "--config", "liver-cpu-tiny", "--datalist", str(dl),
                        "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert r.returncode == 1 and "nope.nii.gz" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    dl.write_text("{broken")
    r = subprocess.run([*CLI, "train-seg", "--config", "liver-cpu-tiny", "--datalist", str(dl),
                        "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert r.returncode == 1 and "dl.json" in r.stderr


def test_kfold_split_deterministic_and_disjoint():
    entries = [{"image": f"/x/{i:02d}.nii.gz", "label": f"/y/{i}"} for i in range(11)]
    seen = []
    for k in range(5):
        tr, va = kfold_split(entries, 5, k)
        assert not {e["image"] for e in tr} & {e["image"] for e in va}
        assert len(tr) + len(va) == 11
        seen += [e["image"] for e in va]
        assert kfold_split(list(reversed(entries)), 5, k)[1] == va
    assert sorted(seen) == sorted(e["image"] for e in entries)
    with_fold = [dict(e, fold=i % 2) for i, e in enumerate(entries)]
    assert all(e["fold"] == 1 for e in kfold_split(with_fold, 5, 1)[1])


def test_warmup_cosine():
    f = warmup_cosine(10, 110)
    assert f(0) == 0 and f(5) == 0.5 and f(10) == 1.0 and abs(f(60) - 0.5) < 1e-9 and f(110) == 0.0


def test_resume_refusals(tmp_path, cohort):
    cfg = load_config("liver-cpu-tiny", ["train.max_steps=1", *FAST])
    with pytest.raises(InputError, match="no checkpoint to resume"):
        train_segmentation(cfg, cohort, tmp_path / "r", resume=True, progress=False, log=lambda *a: None)
    train_segmentation(cfg, cohort, tmp_path / "r2", progress=False, log=lambda *a: None)
    with pytest.raises(InputError, match="already has a checkpoint"):
        train_segmentation(cfg, cohort, tmp_path / "r2", progress=False, log=lambda *a: None)
    # last.pt must hold a segmentor run: a generator checkpoint there is refused in one line
    save_checkpoint(tmp_path / "r2" / "last.pt", model=build_generator(cfg), cfg=cfg, step=1, kind="generator")
    with pytest.raises(InputError, match="is a generator checkpoint, not a segmentor"):
        train_segmentation(cfg, cohort, tmp_path / "r2", resume=True, progress=False, log=lambda *a: None)


def test_resume_trims_validation_log(tmp_path, cohort):
    """A validation logged after the last checkpoint (then a kill) is not left twice after --resume."""
    quiet = dict(progress=False, log=lambda *a: None)
    base = ["data.roi_size=[48,48,48]", "data.num_samples=2", "train.log_every=1", "train.val_every=2",
            "train.checkpoint_every=2"]
    train_segmentation(load_config("liver-cpu-tiny", ["train.max_steps=2", *base]), cohort, tmp_path / "r", **quiet)
    val = tmp_path / "r" / "val.jsonl"
    with open(val, "a") as fh:  # as if step 3 had validated, then the process died before its checkpoint
        fh.write(json.dumps({"step": 3, "score": 0.5}) + "\n")
    train_segmentation(load_config("liver-cpu-tiny", ["train.max_steps=4", *base]), cohort, tmp_path / "r",
                       resume=True, **quiet)
    steps = [json.loads(x)["step"] for x in val.read_text().splitlines()]
    assert steps == [2, 4]


def test_resume_after_a_death_between_validation_and_checkpoint(tmp_path, cohort, monkeypatch):
    """The reported ``val.jsonl`` of [5, 10, 15, 15, 20]: step 15 validated and logged, the process
    killed before the next checkpoint (last.pt at 10), resumed. Here the trainer's own validation
    logs step 3 and the run dies before the step-4 checkpoint; the resumed run validates step 3
    again. Each log holds each step once (the cause was val.jsonl bypassing the resume trim)."""
    from freetumor.training import stage0

    class Killed(Exception):
        pass

    real_round = stage0.validation_round

    def dies_after_step_3(run, *args):
        score = real_round(run, *args)
        if run.step == 3:
            raise Killed  # after the line was written, before any checkpoint of step 3
        return score

    quiet = dict(progress=False, log=lambda *a: None)
    base = ["data.roi_size=[32,32,32]", "data.spacing=[6,6,6]", "data.num_samples=1", "val.overlap=0",
            "train.val_every=1", "train.checkpoint_every=2"]
    monkeypatch.setattr(stage0, "validation_round", dies_after_step_3)
    with pytest.raises(Killed):
        train_segmentation(load_config("liver-cpu-tiny", ["train.max_steps=6", *base]), cohort, tmp_path / "r",
                           **quiet)
    val, metrics = tmp_path / "r" / "val.jsonl", tmp_path / "r" / "metrics.jsonl"
    assert [json.loads(x)["step"] for x in val.read_text().splitlines()] == [1, 2, 3]
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=False)["step"] == 2
    monkeypatch.setattr(stage0, "validation_round", real_round)
    train_segmentation(load_config("liver-cpu-tiny", ["train.max_steps=4", *base]), cohort, tmp_path / "r",
                       resume=True, **quiet)
    assert [json.loads(x)["step"] for x in val.read_text().splitlines()] == [1, 2, 3, 4]
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1, 2, 3, 4]
