"""Visual Turing Test: building a blinded study and scoring readers."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from freetumor.io import Volume
from freetumor.turing import db
from freetumor.turing.build import COLS, ROWS, SLICES, stack_around
from freetumor.turing.score import score_study

from conftest import run_cli as run

@pytest.fixture(scope="module")
def sources(phantom_cohorts):
    """(folder with syn/, datalist of phantoms with tumours): the shared cohort of conftest."""
    return phantom_cohorts.root, phantom_cohorts.real


def test_build_is_balanced_and_blinded(sources, tmp_path):
    root, real = sources
    r = run("turing", "build", "--real", real, "--synthetic", root / "synthetic", "--out", tmp_path / "study",
            "--per-type", 3, "--seed", 1)
    assert r.returncode == 0, r.stderr
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    key = json.loads((tmp_path / "study" / "key.json").read_text())["cases"]
    assert len(study["cases"]) == 6 and set(c["id"] for c in study["cases"]) == set(key)
    assert sorted(v["truth"] for v in key.values()) == ["real"] * 3 + ["synthetic"] * 3
    sizes = {(tmp_path / "study" / "cases" / f"{c['id']}.bin").stat().st_size for c in study["cases"]}
    assert sizes == {SLICES * ROWS * COLS * 2}
    assert all(re.fullmatch(r"[0-9a-f]{16}", c["id"]) for c in study["cases"])
    text = (tmp_path / "study" / "study.json").read_text()
    for word in ("real", "synthetic", "phantom", "nii", "truth", str(root)):
        assert word not in text.replace("freetumor-turing-study", "").replace("Visual Turing", ""), word
    # the stacks hold CT around a lesion (liver HU at the centre, air at most at the edges)
    v = np.fromfile(tmp_path / "study" / "cases" / f"{study['cases'][0]['id']}.bin", "<i2").reshape(SLICES, ROWS, COLS)
    assert -200 < v[SLICES // 2, ROWS // 2 - 8:ROWS // 2 + 8, COLS // 2 - 8:COLS // 2 + 8].mean() < 250


def test_stack_orientation_is_radiological_and_file_order_free():
    arr = np.zeros((40, 40, 20), np.int16)
    arr[30, 28, 10] = 1000  # +x (patient's right, RAS) and +y (anterior) of the centre (20, 20, 10)
    ras = Volume(arr, np.diag([1.0, 1.0, 2.0, 1.0]))
    s = stack_around(ras, ras.voxel_to_mm([20, 20, 10]))
    k, r, c = np.unravel_index(np.argmax(s), s.shape)
    assert k == SLICES // 2 - 0 or abs(k - (SLICES - 1) / 2) <= 0.5
    assert c < COLS // 2 and r < ROWS // 2  # right -> left of the image, anterior -> top
    flip = np.diag([-1.0, -1.0, 2.0, 1.0])
    flip[:2, 3] = [39.0, 39.0]
    lps = Volume(arr[::-1, ::-1].copy(), flip)  # the same patient stored L->R, P->A
    assert np.array_equal(stack_around(lps, ras.voxel_to_mm([20, 20, 10])), s)


def test_score_per_reader_pooled_and_passed(sources, tmp_path):
    root, real = sources
    from freetumor.turing.build import build_study

    build_study(real, root / "synthetic", tmp_path / "study", per_type=3, seed=2)
    study = tmp_path / "study"
    key = json.loads((study / "key.json").read_text())["cases"]
    syn = sorted(c for c, v in key.items() if v["truth"] == "synthetic")
    rea = sorted(c for c, v in key.items() if v["truth"] == "real")
    a, b = db.add_reader(study, "ann"), db.add_reader(study, "bob")
    ra, rb = db.reader_for_token(study, a)["id"], db.reader_for_token(study, b)["id"]
    # ann: calls every case synthetic; bob: all correct except syn[0] called real; syn[0] also real for ann? no
    for c in syn + rea:
        db.save_answer(study, ra, c, "synthetic", 3)
    for c in syn:
        db.save_answer(study, rb, c, "real" if c == syn[0] else "synthetic", 5)
    for c in rea[:2]:  # bob leaves one real case unanswered
        db.save_answer(study, rb, c, "real", 4)
    r = run("turing", "score", study, "--out", tmp_path / "score")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "score" / "score.json").read_text())
    ann, bob, pooled = s["readers"]["ann"], s["readers"]["bob"], s["pooled"]
    assert (ann["sensitivity"]["k"], ann["sensitivity"]["n"]) == (3, 3)
    assert (ann["specificity"]["k"], ann["specificity"]["n"]) == (0, 3)
    assert (bob["sensitivity"]["k"], bob["sensitivity"]["n"]) == (2, 3)
    assert (bob["specificity"]["k"], bob["specificity"]["n"]) == (2, 2) and bob["unanswered"] == 1
    assert (pooled["accuracy"]["k"], pooled["accuracy"]["n"]) == (3 + 4, 6 + 5)
    lo, hi = pooled["accuracy"]["ci95"]
    assert lo < 7 / 11 < hi
    assert s["by_type"]["liver"]["reads"] == 11
    assert s["passed"] == []  # syn[0]: 1 of 2 readers said real: a tie does not pass
    db.save_answer(study, ra, syn[0], "real", 2)
    s2 = score_study(study, tmp_path / "score2")
    assert [p["case"] for p in s2["passed"]] == [syn[0]]
    for f in ("score.csv", "passed.csv", "score.png"):
        assert (tmp_path / "score" / f).is_file()
    assert "pooled" in r.stdout and "sensitivity" in r.stdout


def test_readers_cli_and_bad_inputs(sources, tmp_path):
    root, real = sources
    r = run("turing", "build", "--real", real, "--synthetic", tmp_path / "missing", "--out", tmp_path / "s")
    assert r.returncode == 1 and "missing" in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "s").exists()
    r = run("turing", "readers", "add", "ann", "--study", tmp_path)
    assert r.returncode == 1 and "not a study folder" in r.stderr
    from freetumor.turing.build import build_study

    build_study(real, root / "synthetic", tmp_path / "study", per_type=1)
    r = run("turing", "readers", "add", "ann", "--study", tmp_path / "study")
    assert r.returncode == 0 and re.search(r"http://127\.0\.0\.1:8000/r/\S+", r.stdout)
    token = r.stdout.strip().rsplit("/r/", 1)[1]
    assert db.reader_for_token(tmp_path / "study", token)["name"] == "ann"
    r = run("turing", "readers", "add", "ann", "--study", tmp_path / "study")
    assert r.returncode == 1 and "already exists" in r.stderr
    # tokens are stored hashed
    assert token.encode() not in (tmp_path / "study" / "readers.sqlite").read_bytes()
