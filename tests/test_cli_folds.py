"""``train-seg --folds N``: every fold trained and scored on its own validation cases (phantom, cpu-tiny)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import torch  # noqa: F401 - a dependency: a broken install fails here rather than skipping

from freetumor.config import load_config  # noqa: E402
from freetumor.errors import InputError  # noqa: E402
from freetumor.io import case_name  # noqa: E402
from freetumor.phantom import write_cohort  # noqa: E402
from freetumor.training.kfold import SUMMARY_METRICS, train_kfold  # noqa: E402

from conftest import run_cli  # noqa: E402

# The fastest settings that still train, predict and evaluate: coarse 6 mm voxels, 32^3 patches,
# no validation before the last step, no window overlap.
FAST = ["data.roi_size=[32,32,32]", "data.spacing=[6,6,6]", "data.num_samples=1", "val.overlap=0",
        "train.val_every=1000"]


def _fast():
    return sum((["--set", o] for o in FAST), [])


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("folds") / "phantom", 4, seed=5)


def _mean(values):
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def test_train_seg_folds_trains_and_scores_every_fold(phantom, tmp_path):
    out = tmp_path / "cv"
    args = ["train-seg", "--config", "liver-cpu-tiny", "--datalist", phantom, "--out", out, "--folds", "2",
            "--max-steps", "2", *_fast()]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "folds.json").read_text())
    assert res["folds"] == 2 and [f["fold"] for f in res["per_fold"]] == [0, 1]

    every = {case_name(e["image"]) for e in json.loads(phantom.read_text())["training"]}
    assert len(every) == 4
    vals = [set(f["val_cases"]) for f in res["per_fold"]]
    assert vals[0] and vals[1] and not vals[0] & vals[1], vals
    assert vals[0] | vals[1] == every
    for fold in res["per_fold"]:
        k = fold["fold"]
        run = out / f"fold_{k}"
        assert set(fold["train_cases"]) == every - set(fold["val_cases"])
        # the cases scored are the ones the trainer held out for this fold
        split = json.loads((run / "split.json").read_text())
        assert split["fold"] == k and split["folds"] == 2
        assert sorted(case_name(p) for p in split["val"]) == sorted(fold["val_cases"])
        assert json.loads((run / "final.json").read_text())["steps"] == 2
        assert (run / "best.pt").is_file() and (run / "val_eval" / "metrics.csv").is_file()
        assert sorted(p.name for p in (run / "val_pred").iterdir()) == sorted(f"{c}.nii.gz" for c in fold["val_cases"])
        assert set(fold["cases"]) == set(fold["val_cases"])
        # fold means are the means of the fold's per-case values (cases without tumour left out)
        for m in ("tumour_dice", "tumour_nsd", "organ_dice", "organ_nsd"):
            expect = _mean([fold["cases"][c][m] for c in fold["val_cases"]])
            assert (fold["means"][m] is None) == (expect is None)
            if expect is not None:
                assert math.isclose(fold["means"][m], expect, rel_tol=1e-9)
        fps = [fold["cases"][c]["false_positives"] for c in fold["val_cases"]]
        assert math.isclose(fold["means"]["false_positives_per_scan"], sum(fps) / len(fps))
        assert 0.0 <= fold["means"]["organ_dice"] <= 1.0

    # the summary is the mean (and sd) of the fold means
    assert set(res["summary"]) == set(SUMMARY_METRICS)
    for m in SUMMARY_METRICS:
        means = [f["means"][m] for f in res["per_fold"] if f["means"][m] is not None]
        s = res["summary"][m]
        assert s["n_folds"] == len(means)
        if means:
            assert math.isclose(s["mean"], float(np.mean(means)), rel_tol=1e-9, abs_tol=1e-12)
        if len(means) == 2:
            assert math.isclose(s["sd"], float(np.std(means, ddof=1)), rel_tol=1e-9, abs_tol=1e-12)
    lines = r.stdout.splitlines()
    assert any(ln.startswith("mean ± sd") for ln in lines), r.stdout
    assert sum(1 for ln in lines if ln.split()[:1] in (["0"], ["1"])) == 2, r.stdout

    # a second run into the same folder needs --resume, and writes nothing without it
    before = (out / "folds.json").read_bytes()
    r = run_cli(*args)
    assert r.returncode == 1 and "--resume" in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert (out / "folds.json").read_bytes() == before
    # --resume: both folds are already trained, so they are skipped and only scored again
    r = run_cli(*args, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("already trained") == 2, r.stdout
    again = json.loads((out / "folds.json").read_text())
    assert [f["val_cases"] for f in again["per_fold"]] == [f["val_cases"] for f in res["per_fold"]]
    assert again["summary"]["organ_dice"]["mean"] == pytest.approx(res["summary"]["organ_dice"]["mean"], abs=1e-6)


def test_train_seg_fold_and_folds_together_is_one_line_error(phantom, tmp_path):
    out = tmp_path / "cv"
    r = run_cli("train-seg", "--config", "liver-cpu-tiny", "--datalist", phantom, "--out", out, "--folds", "2",
                "--fold", "1", "--max-steps", "1")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == "error: --fold K trains one fold, --folds N trains all N; give one of them\n"
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--folds", "1"], "--folds must be at least 2, got 1"),
    (["--folds", "2", "--set", "train.fold=1"], "drop --set train.fold=1"),
    (["--folds", "5"], "fold 4 of 5 has no validation case (4 labelled cases)"),
    (["--folds", "2", "--resume"], "nothing to resume"),
])
def test_train_seg_folds_bad_input_is_one_line_and_writes_nothing(phantom, tmp_path, extra, message):
    from typer.testing import CliRunner

    from freetumor.cli import app

    out = tmp_path / "cv"
    r = CliRunner().invoke(app, ["train-seg", "--config", "liver-cpu-tiny", "--datalist", str(phantom), "--out",
                                 str(out), "--max-steps", "1", *extra])
    assert r.exit_code == 1, r.output
    assert message in r.stderr and r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    assert not out.exists()


def test_kfold_refuses_datalist_folds_outside_the_range(phantom, tmp_path):
    """With its own "fold" field, a datalist whose folds exceed --folds would leave cases never validated."""
    data = json.loads(phantom.read_text())
    for i, e in enumerate(data["training"]):
        e["fold"] = i % 3
    dl = phantom.parent / "three_folds.json"
    dl.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"\"fold\" values \[2\] are outside 0\.\.1"):
        train_kfold(load_config("liver-cpu-tiny", FAST), dl, tmp_path / "cv", 2, progress=False, log=lambda *a: None)
    assert not (tmp_path / "cv").exists()


def test_kfold_skip_bad_cases_checks_once_and_says_it_once(phantom, tmp_path):
    """--folds --skip-bad-cases: the cases are checked once before the folds; the skipped-cases line
    is said once (not once more per fold), and the bad case is in no fold."""
    import nibabel as nib

    data = json.loads(phantom.read_text())
    good = data["training"][0]
    src = nib.load(phantom.parent / good["image"])
    zeros = tmp_path / "zeros.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(src.shape, np.int16), src.affine), zeros)
    data["training"].append({"image": str(zeros), "label": str(phantom.parent / good["label"])})
    dl = phantom.parent / "one_bad.json"
    dl.write_text(json.dumps(data))
    lines: list[str] = []
    cfg = load_config("liver-cpu-tiny", [*FAST, "train.max_steps=1"])
    res = train_kfold(cfg, dl, tmp_path / "cv", 2, progress=False, log=lines.append, skip_bad_cases=True)
    said = [ln for ln in lines if ln.startswith("skipped ")]
    assert len(said) == 1, lines
    assert said[0].startswith("skipped 1 bad case(s) of 5 in one_bad.json") and "zeros.nii.gz" in said[0]
    assert all("zeros" not in c for f in res["per_fold"] for c in f["train_cases"] + f["val_cases"])
    assert sorted(c for f in res["per_fold"] for c in f["val_cases"]) == sorted(
        case_name(e["image"]) for e in data["training"][:4])
