"""`freetumor evaluate`, `compare` and `realism` end to end on phantom cases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from freetumor.io import load_volume, save_volume
from freetumor.phantom import write_cohort

from conftest import run_cli as run

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A test cohort with tumours and two 'methods': A misses and shrinks lesions, B is closer to the truth."""
    root = tmp_path_factory.mktemp("evalcli")
    dl = write_cohort(root / "test", 5, seed=77, tumour_fraction=1.0)
    data = json.loads(dl.read_text())
    rng = np.random.default_rng(0)
    for method in ("a", "b"):
        (root / method).mkdir()
    from scipy.ndimage import binary_erosion

    for e in data["training"]:
        lab = load_volume(dl.parent / e["label"])
        gt = lab.array
        organ3 = np.zeros(gt.shape, np.uint8)
        organ3[(gt == 1) | (gt == 2)] = 1
        tumour = gt == 2
        # B: the true tumour slightly eroded; A: eroded twice and the smallest lesion dropped
        b = organ3.copy()
        b[binary_erosion(tumour)] = 2
        a = organ3.copy()
        from freetumor.evaluation import connected_lesions

        lab_arr, lesions = connected_lesions(tumour, lab.spacing)
        keep = binary_erosion(tumour, iterations=2)
        if len(lesions) > 1:
            smallest = min(lesions, key=lambda l: l.voxels)
            keep &= lab_arr != smallest.index
        a[keep] = 2
        a[tuple(rng.integers(0, s, 3) for s in gt.shape)] = 2  # a stray false-positive voxel
        name = Path(e["image"]).name
        save_volume(lab.with_array(a), root / "a" / name)
        save_volume(lab.with_array(b), root / "b" / name)
    return root, dl


def test_evaluate_writes_report_and_perfect_prediction_scores_one(study, tmp_path):
    root, dl = study
    data = json.loads(dl.read_text())
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    for e in data["training"]:
        lab = load_volume(dl.parent / e["label"])
        save_volume(lab, perfect / Path(e["image"]).name)  # abdomen7 values: read with the gt's label map
    r = run("evaluate", "--pred", perfect, "--gt", dl, "--organ", "liver", "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert s["metrics"]["tumour_dice"]["mean"] == pytest.approx(1.0)
    assert s["metrics"]["tumour_nsd"]["mean"] == pytest.approx(1.0)
    assert s["detection"]["lesion_sensitivity"]["value"] == 1.0
    assert s["detection"]["false_positives_per_scan"]["value"] == 0.0
    for f in ("metrics.csv", "lesions.csv", "summary.json", "index.html", "boxplot.png"):
        assert (tmp_path / "rep" / f).is_file()
    assert "lesion sensitivity 1.000" in r.stdout


def test_compare_paired_tests_equal_scipy(study, tmp_path):
    root, dl = study
    for m in ("a", "b"):
        r = run("evaluate", "--pred", root / m, "--gt", dl, "--organ", "liver", "--out", tmp_path / m,
                "--nsd-tolerance-mm", 1.0)
        assert r.returncode == 0, r.stderr
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    sb = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert sb["metrics"]["tumour_dice"]["mean"] > sa["metrics"]["tumour_dice"]["mean"]
    assert sb["detection"]["lesion_sensitivity"]["value"] >= sa["detection"]["lesion_sensitivity"]["value"]
    assert sa["detection"]["false_positives_per_scan"]["value"] > 0
    r = run("compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "cmp")
    assert r.returncode == 0, r.stderr
    c = json.loads((tmp_path / "cmp" / "compare.json").read_text())

    def col(rep, k):
        with open(tmp_path / rep / "metrics.csv") as fh:
            return [float(x[k]) for x in csv.DictReader(fh)]

    va, vb = col("a", "tumour_dice"), col("b", "tumour_dice")
    assert c["metrics"]["tumour_dice"]["t_test"]["p"] == pytest.approx(stats.ttest_rel(vb, va).pvalue)
    assert c["metrics"]["tumour_dice"]["wilcoxon"]["p"] == pytest.approx(stats.wilcoxon(vb, va).pvalue)
    assert c["metrics"]["tumour_dice"]["mean_diff"] == pytest.approx(np.mean(vb) - np.mean(va))
    lo, hi = c["metrics"]["tumour_dice"]["mean_diff_ci95"]
    assert lo <= np.mean(vb) - np.mean(va) <= hi
    assert (tmp_path / "cmp" / "boxplot.png").is_file() and (tmp_path / "cmp" / "index.html").is_file()


def test_evaluate_bad_inputs(study, tmp_path):
    root, dl = study
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("evaluate", "--pred", empty, "--gt", dl, "--organ", "liver", "--out", tmp_path / "x")
    assert r.returncode == 1 and "no prediction for 5 of 5 cases" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and not (tmp_path / "x").exists()
    r = run("compare", tmp_path / "nope", tmp_path / "nope2", "--out", tmp_path / "y")
    assert r.returncode == 1 and "not an evaluation report" in r.stderr and not (tmp_path / "y").exists()


@pytest.fixture(scope="module")
def realism_sets(phantom_cohorts):
    """Two phantom cohorts with tumours, a healthy one, and a folder of synthetic liver tumours (conftest's)."""
    c = phantom_cohorts
    return c.root, c.real, c.other, c.healthy


def _digest(folder: Path) -> dict:
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_realism_cli(realism_sets, tmp_path):
    root, real, _, _ = realism_sets
    r = run("realism", "--real", real, "--synthetic", root / "synthetic", "--organ", "liver", "--out", tmp_path / "rl",
            "--folds", 3)
    assert r.returncode == 0, r.stderr
    assert "AUC" in r.stdout and (tmp_path / "rl" / "realism.json").is_file()
    assert "control" not in r.stdout
    assert sorted(p.name for p in (tmp_path / "rl").iterdir()) == [
        "features.csv", "lesions.png", "realism.json", "realism.png"]


def test_realism_cli_datalist_and_control(realism_sets, tmp_path):
    root, real, other, _ = realism_sets
    before = _digest(root)
    r = run("realism", "--real", real, "--synthetic", other, "--control", other, "--organ", "liver",
            "--out", tmp_path / "rl", "--folds", 3)
    assert r.returncode == 0, r.stderr
    assert _digest(root) == before  # nothing the user gave is modified
    data = json.loads((tmp_path / "rl" / "realism.json").read_text())
    c = data["control"]
    # The synthetic set is the control set: the same classifier must give the same numbers.
    assert c["auc"] == data["summary"]["auc"] == data["summary"]["control_auc"]
    assert c["auc_ci95"] == data["summary"]["auc_ci95"] and c["machine_vtt"] == data["machine_vtt"]
    assert data["synthetic_datalist"] == str(other) and data["synthetic_dir"] is None
    assert c["counts"]["control_lesions"] == data["counts"]["synthetic_lesions"] > 0
    assert f"real-vs-control (real-vs-real floor) AUC {c['auc']:.3f}" in r.stdout
    with open(tmp_path / "rl" / "features.csv") as fh:
        sources = [row["source"] for row in csv.DictReader(fh)]
    assert sources.count("control") == sources.count("synthetic") == c["counts"]["control_lesions"]
    assert sources.count("real") == data["counts"]["real_lesions"]
    assert set(data["lesion_figure"]["shown"]) == {"real", "synthetic", "control"}
    assert (tmp_path / "rl" / "lesions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A control next to a synthesis folder.
    r = run("realism", "--real", real, "--synthetic", root / "synthetic", "--control", other, "--organ", "liver",
            "--out", tmp_path / "r2", "--folds", 3)
    assert r.returncode == 0, r.stderr
    d2 = json.loads((tmp_path / "r2" / "realism.json").read_text())
    assert d2["control"]["auc"] == c["auc"] and d2["summary"]["auc"] != c["auc"]
    assert d2["counts"]["synthetic_masks"] == {"new_voxels": d2["counts"]["synthetic_lesions"]}


@pytest.mark.parametrize("case", ["record", "not_json", "healthy_control", "missing_control", "folder_control",
                                  "unlabelled_synthetic"])
def test_realism_cli_bad_inputs(realism_sets, tmp_path, case):
    root, real, other, healthy = realism_sets
    args = {"--synthetic": root / "synthetic"}
    if case == "record":  # a synthesis record is a JSON file but not a datalist
        args["--synthetic"], match = root / "synthetic" / "syn0.json", "--synthetic takes a datalist or a folder"
    elif case == "not_json":
        args["--synthetic"], match = root / "synthetic" / "syn0_label.nii.gz", "not a folder written by"
    elif case == "healthy_control":
        args["--control"], match = healthy, "no control liver tumours"
    elif case == "missing_control":
        args["--control"], match = tmp_path / "nope.json", "control datalist not found"
    elif case == "folder_control":
        args["--control"], match = root / "synthetic", "not a control datalist file"
    else:  # a datalist without labels
        data = json.loads(other.read_text())
        for e in data["training"]:
            e["image"] = str(other.parent / e["image"])
            del e["label"]
        unl = tmp_path / "unlabelled.json"
        unl.write_text(json.dumps(data))
        args["--synthetic"], match = unl, "no synthetic liver tumours"
    before = _digest(root)
    r = run("realism", "--real", real, *[str(x) for kv in args.items() for x in kv], "--organ", "liver",
            "--out", tmp_path / "out", "--folds", 3, "--quiet")  # --quiet: no progress line before the error
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0 and match in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() and _digest(root) == before
