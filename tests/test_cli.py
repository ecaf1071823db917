"""The command line, run in a subprocess as a user would (exit codes, stderr, files)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from freetumor.io import load_volume
from freetumor.progress import without_progress

from conftest import need

# The installed console script when there is one (what users run), else the module.
_SCRIPT = Path(sys.executable).parent / "freetumor"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "freetumor.cli"]


def run(*args, cwd=None):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "phantom"
    r = run("phantom", "--out", out, "--cases", 2, "--seed", 3)
    assert r.returncode == 0, r.stderr
    return out


def _entries(cohort):
    return json.loads((cohort / "datalist.json").read_text())["training"]


def test_phantom_and_synthesize_on_phantom(cohort, tmp_path):
    healthy = [e for e in _entries(cohort) if not e["tumour"]][0]
    out = tmp_path / "syn"
    r = run("synthesize", "--image", cohort / healthy["image"], "--label", cohort / healthy["label"],
            "--organ", "liver", "--out", out, "--count", 2, "--size", "small", "--seed", 4)
    assert r.returncode == 0, r.stderr
    case = Path(healthy["image"]).name.replace(".nii.gz", "")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{case}_image.nii.gz", f"{case}_label.nii.gz", f"{case}.json", f"{case}.png"])
    rec = json.loads((out / f"{case}.json").read_text())
    assert len(rec["lesions"]) == 2 and rec["seed"] == 4 and rec["freetumor_version"]
    assert all(lesion["size_class"] == "small" for lesion in rec["lesions"])
    lab = load_volume(out / f"{case}_label.nii.gz").array
    assert (lab == 2).sum() > 0
    assert (out / f"{case}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("organ, ids, tumour", [("liver", (5,), 201), ("pancreas", (7,), 202), ("kidney", (2, 3), 203)])
def test_synthesize_real_ct_totalseg(totalseg, tmp_path, organ, ids, tumour):
    img, lab = totalseg / "ct3mm_image.nii.gz", totalseg / "ct3mm_label.nii.gz"
    out = tmp_path / "out"
    r = run("synthesize", "--image", img, "--label", lab, "--organ", organ, "--out", out,
            "--label-map", "totalseg", "--size", "small", "--seed", 1)
    assert r.returncode == 0, r.stderr
    new_img = nib.load(str(out / "ct3mm_image_image.nii.gz"))
    old_img = nib.load(str(img))
    assert np.array_equal(new_img.affine, old_img.affine)
    assert new_img.get_data_dtype() == old_img.get_data_dtype()
    new_lab = np.asarray(nib.load(str(out / "ct3mm_image_label.nii.gz")).dataobj)
    old_lab = np.asarray(nib.load(str(lab)).dataobj)
    changed = new_lab != old_lab
    assert changed.any() and np.all(np.isin(old_lab[changed], ids)) and np.all(new_lab[changed] == tumour)
    rec = json.loads((out / "ct3mm_image.json").read_text())
    assert rec["label_map"] == "totalseg" and rec["tumour_id"] == tumour


def test_synthesize_dicom_folder(totalseg, tmp_path):
    out = tmp_path / "out"
    r = run("synthesize", "--image", need(totalseg / "dicom_slab"), "--label",
            totalseg / "slab1mm_label_freetumor7.nii.gz", "--organ", "liver", "--out", out, "--seed", 2,
            "--size", "tiny", "--no-png")
    assert r.returncode == 0, r.stderr
    vol = load_volume(out / "dicom_slab_image.nii.gz")
    ref = load_volume(totalseg / "slab1mm_image.nii.gz")
    assert np.allclose(vol.affine, ref.affine, atol=1e-4) and vol.shape == ref.shape
    assert (vol.array != ref.array).any()


def _bad_cases(src: Path, tmp: Path):
    """(name, image, label, extra args, expected message) for each kind of bad input."""
    img, lab = src / "img.nii.gz", src / "lab.nii.gz"
    im = nib.load(str(img))
    a = np.asarray(im.dataobj)
    la = np.asarray(nib.load(str(lab)).dataobj)

    def save(name, arr, affine=None, dtype=None):
        p = tmp / name
        nib.save(nib.Nifti1Image(arr.astype(dtype or arr.dtype), im.affine if affine is None else affine), p)
        return p

    trunc = tmp / "trunc.nii.gz"
    trunc.write_bytes(img.read_bytes()[:2000])
    nan = a.astype(np.float32)
    nan[3, 3, 3] = np.nan
    no_liver = la.copy()
    no_liver[no_liver == 1] = 0
    unknown = la.copy()
    unknown[0, 0, 0] = 42
    tiny_kidney = np.where(la == 5, 0, la)
    k = np.argwhere(la == 5)[:20]
    tiny_kidney[tuple(k.T)] = 5
    shifted = im.affine.copy()
    shifted[0, 3] += 7
    return [
        ("truncated", trunc, lab, [], "trunc.nii.gz: header claims"),
        ("shape", img, save("short.nii.gz", la[:-2]), [], "short.nii.gz: shape"),
        ("affine", img, save("shifted.nii.gz", la, shifted), [], "shifted.nii.gz: affine"),
        ("organ absent", img, save("noliver.nii.gz", no_liver), [], "noliver.nii.gz: no liver"),
        ("too small", img, save("tinykidney.nii.gz", tiny_kidney), ["--organ", "kidney", "--size", "large"],
         "tinykidney.nii.gz: kidney"),
        ("nan", save("nan.nii.gz", nan), lab, [], "nan.nii.gz: contains 1 NaN"),
        ("unknown labels", img, save("unknown.nii.gz", unknown), [], "unknown.nii.gz: label values 42"),
        ("not CT", save("mr.nii.gz", (a.astype(np.int32) + 1024).clip(0)), lab, [], "mr.nii.gz: no value below 0"),
        ("normalised", save("norm.nii.gz", ((a + 1024) / 4096.0).astype(np.float32)), lab, [], "norm.nii.gz:"),
        # the QC threshold is validated once, by the qc config section, whichever way it arrives
        ("qc threshold", img, lab, ["--qc-threshold", "1.5"], "'qc.threshold' in option --qc-threshold must be in [0, 1)"),
    ]


def test_bad_inputs_one_line_nonzero_nothing_written(cohort, tmp_path):
    healthy = [e for e in _entries(cohort) if not e["tumour"]][0]
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(cohort / healthy["image"], src / "img.nii.gz")
    shutil.copy(cohort / healthy["label"], src / "lab.nii.gz")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    for name, img, lab, extra, message in _bad_cases(src, tmp_path):
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        args = ["synthesize", "--image", img, "--label", lab, "--organ", "liver", "--out", out, *extra]
        r = run(*args)
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        # progress lines ("[N s] phase ...", off with --quiet) may come first; the error is one line
        lines = without_progress(r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, r.stderr)
        assert message in lines[0], (name, lines[0])
        assert "Traceback" not in r.stderr
        assert not out.exists(), name
    # Inputs are never modified.
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_usage_errors_exit_2(tmp_path):
    r = run("synthesize", "--image", "x", "--label", "y", "--organ", "brain", "--out", tmp_path / "o")
    assert r.returncode == 2 and "brain" in r.stderr


def test_data_check(cohort, tmp_path):
    r = run("data", "check", cohort / "datalist.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 ok, 0 failed" in r.stdout
    bad = json.loads((cohort / "datalist.json").read_text())
    bad["training"].append({"image": str(cohort / bad["training"][0]["image"]), "label": str(tmp_path / "missing.nii.gz")})
    wrong_vals = np.asarray(nib.load(str(cohort / bad["training"][0]["label"])).dataobj).copy()
    wrong_vals[0, 0, 0] = 77
    nib.save(nib.Nifti1Image(wrong_vals, nib.load(str(cohort / bad["training"][0]["label"])).affine),
             tmp_path / "vals.nii.gz")
    bad["training"].append({"image": str(cohort / bad["training"][0]["image"]), "label": str(tmp_path / "vals.nii.gz")})
    for e in bad["training"][:2]:
        e["image"], e["label"] = str(cohort / e["image"]), str(cohort / e["label"])
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    r = run("data", "check", p)
    assert r.returncode == 1
    assert "2 ok, 2 failed" in r.stdout
    assert "missing.nii.gz: no such file" in r.stderr and "label values 77" in r.stderr


@pytest.mark.slow
def test_demo(tmp_path):
    out = tmp_path / "demo"
    # training quality is tested in test_training and test_stage1; here the pieces are wired together
    # a relative --out, as `make demo` passes it
    r = run("demo", "--out", "demo", "--train-steps", 20, "--synth-steps", 4, "--stage2-steps", 4, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    page = (out / "index.html").read_text()
    pngs = sorted((out / "synthetic").glob("*.png"))
    assert len(pngs) >= 5
    for p in pngs:
        assert f"synthetic/{p.name}" in page
    assert "Lesion records" in page
    assert "baseline-pred/prediction.png" in page and (out / "baseline-run" / "best.pt").exists()
    assert "stage1-run/rule_vs_learned.png" in page and (out / "stage1-run" / "generator.pt").exists()
    assert "Stage 1: learned difference maps" in page
    assert "Stage 2: segmentation with online synthesis" in page and "compare/boxplot.png" in page
    assert (out / "compare" / "compare.json").exists()
    # Stage 2's default recipe: the labelled cases + 6 healthy unlabelled phantoms, procedural tumours, no QC
    pool = json.loads((out / "stage2-unlabelled.json").read_text())["training"]
    assert len(pool) == 6 and all(Path(e["image"]).exists() for e in pool)
    s2 = json.loads((out / "stage2-run" / "final.json").read_text())
    assert s2["synthesis"] == "procedural"
    assert "6 healthy unlabelled phantoms" in page and "without segmentor quality control" in page
    assert (out / "turing-study" / "study.json").exists() and "/r/" in r.stdout
    # the Stage-2 summary line states both figures it compares, as compare.json has them, in the terminal and page
    dice = json.loads((out / "compare" / "compare.json").read_text())["metrics"]["tumour_dice"]
    base, stage2 = f"{dice['mean_a']:.3f}", f"{dice['mean_b']:.3f}"
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("stage 2 vs baseline"))
    from freetumor.demo import significance, signed

    diff = float(stage2) - float(base)
    assert f"tumour Dice baseline {base}, stage 2 {stage2} (difference {signed(diff)}, " in line
    assert significance(diff, dice["t_test"]["p"]) in line  # the words follow compare.json's p-value
    no_gain = f"This short CPU run shows no gain from synthesis: Stage 2 {stage2} is not above the baseline {base}."
    assert (no_gain in line) == (float(stage2) <= float(base))
    ahead = diff > 0 and dice["t_test"]["p"] < 0.05
    assert ("Stage 2 is ahead" in line) <= ahead  # never "ahead" without a significant gain
    assert f"tumour Dice baseline {base}, stage 2 {stage2}" in page and (no_gain in page) == (no_gain in line)
    # an honest page: phantoms are not called real, a trained generator is not denied, no raw dicts or long numbers
    text = re.sub(r"<[^>]+>", " ", page)
    assert "real labels" not in text and "no trained generator" not in text and "not on real CT" in text
    assert "{'" not in text and "{&#x27;" not in page and not re.search(r"\d\.\d{5,}", text)
    # the stored results of the longer experiments (real CT first, then phantoms), read from benchmarks/results
    assert "Real CT, the few-label lung experiment" in r.stdout and "Stored results of the longer experiments" in page
    assert r.stdout.index("Real CT, the few-label") < r.stdout.index("Phantom experiment")
    assert "tumour Dice per arm" in r.stdout
