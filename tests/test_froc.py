"""FROC of tumour probability maps: candidates, matching, the threshold sweep, `freetumor froc`,
and `predict --probabilities` (the maps it reads)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from freetumor.errors import ConfigError, InputError
from freetumor.evaluation.froc import Scan, candidates, froc, label_candidates, score_scan
from freetumor.io import Volume, load_volume, save_volume

from conftest import run_cli as run

ISO = (1.0, 1.0, 1.0)


def _cube(a: np.ndarray, lo, size: int, value=True) -> None:
    a[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = value


# ----------------------------------------------------------------------------- candidates
def test_candidates_score_size_centroid_and_labels():
    prob = np.zeros((12, 12, 12))
    _cube(prob, (1, 1, 1), 3, 0.2)
    prob[2, 2, 2] = 0.95                      # one peak: the score, not a second candidate
    prob[8, 8, 8] = 0.05                      # under the threshold: no candidate
    _cube(prob, (7, 1, 1), 2, 0.5)
    labels, found = label_candidates(prob, ISO, threshold=0.1)
    assert [(c.label, c.score, c.voxels) for c in found] == [(1, 0.95, 27), (2, 0.5, 8)]
    assert found[0].centroid_voxel == (2.0, 2.0, 2.0) and found[1].centroid_voxel == (7.5, 1.5, 1.5)
    assert found[0].bbox == (slice(1, 4), slice(1, 4), slice(1, 4)) and found[0].mask.all()
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2] and int((labels == 2).sum()) == 8
    assert labels[8, 8, 8] == 0
    # the threshold is inclusive; volume is in mm^3
    assert [c.voxels for c in candidates(prob, ISO, threshold=0.5)] == [1, 8]
    assert candidates(prob, (2.0, 2.0, 2.0), threshold=0.5)[1].volume_mm3 == 64.0


def test_min_size_removes_a_one_voxel_candidate_in_mm3():
    prob = np.zeros((10, 10, 10))
    prob[1, 1, 1] = 0.9                       # 1 voxel
    _cube(prob, (5, 5, 5), 2, 0.4)            # 8 voxels
    assert [c.voxels for c in candidates(prob, ISO, min_size_mm3=0)] == [1, 8]
    kept = candidates(prob, ISO, min_size_mm3=2.0)
    assert [(c.label, c.voxels, c.score) for c in kept] == [(1, 8, 0.4)]  # renumbered from 1
    # the same voxel is 8 mm^3 on a 2 mm grid: kept
    assert [c.voxels for c in candidates(prob, (2.0, 2.0, 2.0), min_size_mm3=2.0)] == [1, 8]
    # in FROC the dropped voxel is no false positive
    gt = np.zeros(prob.shape, bool)
    _cube(gt, (5, 5, 5), 2)
    assert froc([Scan(prob, gt, ISO)])["false_positives"] == 1
    r = froc([Scan(prob, gt, ISO)], min_size_mm3=2.0)
    assert r["false_positives"] == 0 and r["sensitivity_at"]["1"] == 1.0


def test_connectivity_splits_diagonal_neighbours():
    prob = np.zeros((6, 6, 6))
    prob[1, 1, 1] = prob[2, 2, 2] = 0.5
    assert len(candidates(prob, ISO)) == 1
    assert len(candidates(prob, ISO, connectivity=1)) == 2


# ----------------------------------------------------------------------------- matching
def test_two_candidates_on_one_lesion_count_once_and_are_no_false_positive():
    gt = np.zeros((20, 20, 20), bool)
    _cube(gt, (2, 2, 2), 6)
    prob = np.zeros(gt.shape)
    _cube(prob, (2, 2, 2), 2, 0.9)            # two separate candidates inside the lesion
    _cube(prob, (6, 6, 6), 2, 0.4)
    _cube(prob, (14, 14, 14), 2, 0.6)         # a false positive
    r = froc([Scan(prob, gt, ISO, name="a")])
    assert r["lesions"] == 1 and r["false_positives"] == 1
    assert [(p["threshold"], p["sensitivity"], p["fp_per_scan"]) for p in r["curve"]] == [(0.9, 1.0, 0.0), (0.6, 1.0, 1.0)]
    assert r["per_lesion"][0]["score"] == 0.9
    assert r["per_scan"] == [{"scan": "a", "lesions": 1, "detected": 1, "candidates": 3, "false_positives": 1}]
    assert [c["false_positive"] for c in r["candidates"]] == [False, False, True]


def test_one_candidate_over_two_lesions_detects_both():
    gt = np.zeros((12, 12, 12), bool)
    _cube(gt, (1, 1, 1), 3)
    _cube(gt, (1, 6, 1), 3)
    prob = np.zeros(gt.shape)
    prob[2, 2:8, 2] = 0.7
    s = score_scan(Scan(prob, gt, ISO))
    assert [c["hits"] for c in s["candidates"]] == [[1, 2]]
    assert froc([Scan(prob, gt, ISO)])["sensitivity_at"]["1"] == 1.0


def test_a_touch_of_one_voxel_is_a_hit_and_no_touch_is_a_miss():
    gt = np.zeros((12, 12, 12), bool)
    _cube(gt, (1, 1, 1), 3)
    prob = np.zeros(gt.shape)
    _cube(prob, (3, 3, 3), 3, 0.5)            # shares voxel (3, 3, 3)
    assert score_scan(Scan(prob, gt, ISO))["lesions"][0]["hit_by"] == [1]
    prob = np.zeros(gt.shape)
    _cube(prob, (4, 4, 4), 3, 0.5)            # diagonal neighbour, no shared voxel: a false positive
    r = froc([Scan(prob, gt, ISO)])
    assert r["per_lesion"][0]["score"] is None and r["false_positives"] == 1
    assert r["sensitivity_at"] == {"1": 0.0, "2": 0.0, "4": 0.0, "8": 0.0} and r["cpm"] == 0.0


def test_region_limits_false_positives_but_not_lesions():
    gt = np.zeros((20, 20, 20), bool)
    _cube(gt, (15, 15, 15), 3)                # a lesion outside the region still counts
    prob = np.zeros(gt.shape)
    _cube(prob, (15, 15, 15), 2, 0.8)
    _cube(prob, (2, 2, 2), 2, 0.7)            # FP inside the region
    _cube(prob, (2, 15, 2), 2, 0.6)           # FP outside the region
    _cube(prob, (9, 2, 2), 3, 0.5)            # FP that straddles the region's edge: counted
    region = np.zeros(gt.shape, bool)
    region[:10, :10, :] = True
    without = froc([Scan(prob, gt, ISO)])
    within = froc([Scan(prob, gt, ISO, region=region)])
    assert without["false_positives"] == 3 and within["false_positives"] == 2
    assert within["lesions"] == 1 and within["per_lesion"][0]["score"] == 0.8
    assert [p["fp_per_scan"] for p in within["curve"]] == [0.0, 1.0, 2.0]
    assert [p["threshold"] for p in within["curve"]] == [0.8, 0.7, 0.5]   # 0.6 is ignored
    outside = [c for c in within["candidates"] if not c["in_region"]]
    assert [(c["score"], c["hits"], c["false_positive"]) for c in outside] == [(0.6, [], False), (0.8, [1], False)]


# ----------------------------------------------------------------------------- the sweep
@pytest.fixture()
def two_scans():
    """Scan a: lesions L1 (large, best candidate 0.8), L2 (small, 0.3), L3 (small, missed); false
    positives 0.9 and 0.5. Scan b: no lesion; false positives 0.7, 0.2 and 0.2 (a tie)."""
    shape = (40, 40, 20)
    gt_a = np.zeros(shape, bool)
    _cube(gt_a, (1, 1, 1), 9)                 # 729 mm^3: equivalent diameter 11.2 mm
    _cube(gt_a, (20, 1, 1), 3)                # 27 mm^3: 3.7 mm
    _cube(gt_a, (30, 30, 10), 3)
    prob_a = np.zeros(shape)
    _cube(prob_a, (3, 3, 3), 3, 0.8)
    _cube(prob_a, (20, 1, 1), 2, 0.3)
    _cube(prob_a, (1, 30, 1), 2, 0.9)
    _cube(prob_a, (30, 15, 15), 2, 0.5)
    prob_b = np.zeros(shape)
    _cube(prob_b, (1, 1, 1), 2, 0.7)
    _cube(prob_b, (10, 10, 10), 2, 0.2)
    _cube(prob_b, (20, 20, 10), 2, 0.2)
    return [Scan(prob_a, gt_a, ISO, name="a"), {"prob": prob_b, "gt": np.zeros(shape, bool), "spacing": ISO,
                                               "name": "b"}]


def test_sweep_exact_points_rates_cpm_and_small_lesions(two_scans):
    r = froc(two_scans, fp_rates=(0.25, 1, 2, 4, 8))
    assert (r["scans"], r["lesions"], r["small_lesions"], r["false_positives"]) == (2, 3, 2, 5)
    pts = [(p["threshold"], p["sensitivity"], p["fp_per_scan"]) for p in r["curve"]]
    third = pytest.approx(1 / 3)
    assert pts == [(0.9, 0.0, 0.5), (0.8, third, 0.5), (0.7, third, 1.0), (0.5, third, 1.5),
                   (0.3, pytest.approx(2 / 3), 1.5), (0.2, pytest.approx(2 / 3), 2.5)]
    assert r["sensitivity_at"] == {"0.25": 0.0, "1": third, "2": pytest.approx(2 / 3), "4": pytest.approx(2 / 3),
                                   "8": pytest.approx(2 / 3)}
    assert r["threshold_at"] == {"0.25": None, "1": 0.7, "2": 0.3, "4": 0.2, "8": 0.2}
    assert r["cpm"] == pytest.approx((0 + 1 / 3 + 3 * 2 / 3) / 5)
    assert r["sensitivity_at_small"] == {"0.25": 0.0, "1": 0.0, "2": 0.5, "4": 0.5, "8": 0.5}
    assert [(x["scan"], x["small"], x["score"]) for x in r["per_lesion"]] == [
        ("a", False, 0.8), ("a", True, 0.3), ("a", True, None)]
    assert r["per_lesion"][0]["diameter_mm"] == pytest.approx((6 * 729 / np.pi) ** (1 / 3))
    op = r["operating_point"]
    assert (op["threshold"], op["detected"], op["false_positives"], op["fp_per_scan"]) == (0.5, 1, 3, 1.5)
    assert op["sensitivity"] == third and op["sensitivity_small"] == 0.0


def test_default_rates_and_cpm_of_the_brief(two_scans):
    r = froc(two_scans)
    assert list(r["sensitivity_at"]) == ["1", "2", "4", "8"]
    assert r["cpm"] == pytest.approx((1 / 3 + 3 * 2 / 3) / 4)
    assert r["cpm_small"] == pytest.approx((0 + 3 * 0.5) / 4)
    json.dumps(r)  # the whole result is plain JSON


def test_scans_are_read_lazily_and_healthy_scans_count():
    seen = []

    def gen():
        for i in range(3):
            seen.append(i)
            prob = np.zeros((8, 8, 8))
            prob[4, 4, 4] = 0.6
            yield Scan(prob, np.zeros((8, 8, 8), bool), ISO, name=f"s{i}")

    r = froc(gen())
    assert seen == [0, 1, 2] and r["scans"] == 3 and r["lesions"] == 0
    assert r["sensitivity_at"]["1"] is None and r["cpm"] is None
    assert r["curve"] == [{"threshold": 0.6, "sensitivity": None, "fp_per_scan": 1.0}]


def test_bad_inputs_and_settings():
    prob, gt = np.zeros((8, 8, 8)), np.zeros((8, 8, 8), bool)
    with pytest.raises(InputError, match="^c1: ground truth shape"):
        froc([Scan(prob, np.zeros((8, 8, 7), bool), ISO, name="c1")])
    with pytest.raises(InputError, match="^c2: region mask shape"):
        froc([Scan(prob, gt, ISO, region=np.ones((7, 8, 8)), name="c2")])
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2, 2, 2] = 2
    with pytest.raises(InputError, match=r"probabilities must lie in 0..1, found 0..2 \(a label map\?\)"):
        froc([Scan(labels, gt, ISO)])
    with pytest.raises(InputError, match="NaN"):
        froc([Scan(np.full((8, 8, 8), np.nan), gt, ISO)])
    with pytest.raises(ConfigError, match="at least one scan"):
        froc([])
    with pytest.raises(ConfigError, match="threshold"):
        froc([Scan(prob, gt, ISO)], threshold=0)
    with pytest.raises(ConfigError, match="rates"):
        froc([Scan(prob, gt, ISO)], fp_rates=())
    with pytest.raises(ConfigError, match="size"):
        candidates(prob, ISO, min_size_mm3=-1)


# ----------------------------------------------------------------------------- freetumor froc
SPACING = (2.0, 2.0, 2.0)
AFFINE = np.diag([*SPACING, 1.0])


@pytest.fixture(scope="module")
def froc_dirs(tmp_path_factory):
    """Chest3 ground truth (1 lung, 2 lesion) of two cases, their probability maps and lung masks.

    c1: a lesion hit at 0.8, a false positive in the lung (0.6) and one outside it (0.7).
    c2: a lesion missed, a false positive in the lung at 0.3.
    """
    root = tmp_path_factory.mktemp("froc")
    for d in ("gt", "prob", "lung"):
        (root / d).mkdir()
    shape = (24, 24, 12)
    for case in ("c1", "c2"):
        lab = np.zeros(shape, np.uint8)
        lab[:12, :, :] = 1
        prob = np.zeros(shape, np.float32)
        if case == "c1":
            _cube(lab, (2, 2, 2), 3, 2)
            _cube(prob, (3, 3, 3), 2, 0.8)
            _cube(prob, (8, 16, 6), 2, 0.6)
            _cube(prob, (18, 18, 6), 2, 0.7)
        else:
            _cube(lab, (2, 12, 6), 3, 2)
            _cube(prob, (8, 2, 2), 2, 0.3)
        save_volume(Volume(lab, AFFINE), root / "gt" / f"{case}.nii.gz")
        save_volume(Volume(prob, AFFINE), root / "prob" / f"{case}_prob.nii.gz")
        save_volume(Volume((lab > 0).astype(np.uint8) * (np.arange(24) < 12)[:, None, None].astype(np.uint8), AFFINE),
                    root / "lung" / f"{case}.nii.gz")
    save_volume(Volume(np.zeros((24, 24, 12), np.float32), AFFINE), root / "prob" / "extra_prob.nii.gz")  # no gt: ignored
    return root


def test_froc_cli_report(froc_dirs, tmp_path):
    root = froc_dirs
    out = tmp_path / "rep" / "froc.json"
    r = run("froc", "--prob", root / "prob", "--gt", root / "gt", "--organ", "lung", "--out", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert (rep["scans"], rep["lesions"], rep["false_positives"]) == (2, 2, 3)
    assert rep["label_map"] == "chest3" and rep["region"] is None
    # thresholds 0.8 (1/2 lesions, 0 FP), 0.7 (1 FP), 0.6 (2 FP), 0.3 (3 FP) over 2 scans
    assert [(p["threshold"], p["fp_per_scan"]) for p in rep["curve"]] == [
        (pytest.approx(0.8), 0.0), (pytest.approx(0.7), 0.5), (pytest.approx(0.6), 1.0), (pytest.approx(0.3), 1.5)]
    assert rep["sensitivity_at"] == {"1": 0.5, "2": 0.5, "4": 0.5, "8": 0.5} and rep["cpm"] == 0.5
    assert rep["per_lesion"][0]["diameter_mm"] == pytest.approx((6 * 27 * 8 / np.pi) ** (1 / 3))  # 2 mm voxels
    assert rep["sensitivity_at_small"]["1"] == 0.5 and rep["small_lesions"] == 2
    assert rep["operating_point"]["false_positives"] == 2 and rep["operating_point"]["sensitivity"] == 0.5
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "0.500 @ 1, 0.500 @ 2, 0.500 @ 4, 0.500 @ 8 FP/scan; CPM 0.500" in lines[0]

    out2 = tmp_path / "lung.json"
    r = run("froc", "--prob", root / "prob", "--gt", root / "gt", "--organ", "lung", "--out", out2,
            "--region", root / "lung", "--threshold", 0.5)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out2.read_text())
    assert rep["false_positives"] == 1 and rep["settings"]["threshold"] == 0.5  # 0.7 outside the lung, 0.3 < 0.5
    assert [p["fp_per_scan"] for p in rep["curve"]] == [0.0, 0.5]


def test_froc_cli_reads_a_datalist_and_its_label_map(froc_dirs, tmp_path):
    root = froc_dirs
    dl = tmp_path / "datalist.json"  # cases named after their images, as `evaluate` matches them
    dl.write_text(json.dumps({"label_map": "chest3", "training": [
        {"image": f"img/{c}.nii.gz", "label": str(root / "gt" / f"{c}.nii.gz")} for c in ("c1", "c2")]}))
    out = tmp_path / "dl.json"
    r = run("froc", "--prob", root / "prob", "--gt", dl, "--organ", "lung", "--out", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["scans"] == 2 and rep["lesions"] == 2 and rep["label_map"] == "chest3"


def test_froc_cli_errors_write_nothing(froc_dirs, tmp_path):
    root = froc_dirs

    def fails(*args, names):
        out = tmp_path / "x" / "froc.json"
        r = run("froc", "--gt", root / "gt", "--organ", "lung", "--out", out, *args)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 1 and len(errors) == 1 and names in errors[0], r.stderr
        assert "Traceback" not in r.stderr and not out.exists()
        return errors[0]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no <case>_prob.nii.gz" in fails("--prob", empty, names=str(empty))
    one = tmp_path / "one"
    one.mkdir()
    (one / "c1_prob.nii.gz").write_bytes((root / "prob" / "c1_prob.nii.gz").read_bytes())
    assert "no probability map for 1 of 2 cases (first: c2_prob.nii.gz)" in fails("--prob", one, names=str(one))
    bad = tmp_path / "badgrid"
    bad.mkdir()
    (bad / "c1_prob.nii.gz").write_bytes((root / "prob" / "c1_prob.nii.gz").read_bytes())
    save_volume(Volume(np.zeros((24, 24, 11), np.float32), AFFINE), bad / "c2_prob.nii.gz")
    assert "shape (24, 24, 11) does not match" in fails("--prob", bad, names=str(bad / "c2_prob.nii.gz"))
    reg = tmp_path / "badregion"
    reg.mkdir()
    (reg / "c1.nii.gz").write_bytes((root / "lung" / "c1.nii.gz").read_bytes())
    save_volume(Volume(np.ones((12, 24, 12), np.uint8), AFFINE), reg / "c2.nii.gz")
    fails("--prob", root / "prob", "--region", reg, names=str(reg / "c2.nii.gz"))
    labels = tmp_path / "labelmaps"
    labels.mkdir()
    for c in ("c1", "c2"):  # label maps named as probability maps: not probabilities
        save_volume(load_volume(root / "gt" / f"{c}.nii.gz"), labels / f"{c}_prob.nii.gz")
    assert "probabilities must lie in 0..1" in fails("--prob", labels, names=str(labels / "c1_prob.nii.gz"))
    assert "threshold" in fails("--prob", root / "prob", "--threshold", 0, names="threshold")


# ----------------------------------------------------------------------------- predict --probabilities
def test_predict_probabilities_on_the_input_grid(tmp_path):
    """A random-weight tiny model on a coarse phantom (as tests/test_organs_cli.py): the map is
    float32 in 0..1 on the CT's grid, the class map is unchanged by the flag."""
    import torch

    from freetumor.checkpoints import save_checkpoint
    from freetumor.config import load_config
    from freetumor.inference import Predictor
    from freetumor.models import build_model
    from freetumor.phantom import make_case

    image, _ = make_case("abdomen", seed=5, tumour=True, shape=(48, 40, 24), spacing=(7.0, 7.0, 9.0))
    save_volume(image, tmp_path / "case1.nii.gz")
    cfg = load_config("abdomen7-cpu-tiny", ["data.roi_size=[32,32,32]", "val.overlap=0.25"])
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "seg.pt", model=build_model(cfg), cfg=cfg, step=0)
    out = tmp_path / "pred"
    r = run("predict", "--model", tmp_path / "seg.pt", "--image", tmp_path / "case1.nii.gz", "--out", out,
            "--device", "cpu", "--probabilities")
    assert r.returncode == 0, r.stderr
    assert "and tumour probability map(s)" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["case1.nii.gz", "case1_prob.nii.gz"]
    ct, prob, labels = load_volume(tmp_path / "case1.nii.gz"), load_volume(out / "case1_prob.nii.gz"), load_volume(out / "case1.nii.gz")
    import nibabel as nib

    assert nib.load(str(out / "case1_prob.nii.gz")).get_data_dtype() == np.float32
    assert prob.shape == ct.shape and np.allclose(prob.affine, ct.affine)
    p = prob.array
    assert p.dtype == np.float32 and p.min() >= 0.0 and p.max() <= 1.0 and p.max() > 0.0
    assert labels.array.dtype == np.uint8

    predictor = Predictor(tmp_path / "seg.pt", "cpu")
    lab2, prob2 = predictor.predict_volume_with_probability(ct)
    assert np.array_equal(lab2.array, labels.array) and np.allclose(prob2.array, p, atol=1e-6)
    assert np.array_equal(predictor.predict_volume(ct).array, labels.array)  # the flag changes no label
    # one tumour class alone is at most the sum over all three
    _, liver = predictor.predict_volume_with_probability(ct, [2])
    assert (liver.array <= p + 1e-6).all() and (liver.array < p - 1e-3).any()
    with pytest.raises(ConfigError, match="tumour classes"):
        predictor.predict_volume_with_probability(ct, [7])


def test_predict_probabilities_refuses_a_case_named_like_a_probability_map(tmp_path):
    from freetumor.inference import predict_paths

    with pytest.raises(InputError, match=r"x_prob.nii.gz: its prediction would overwrite the probability map of case x"):
        predict_paths(tmp_path / "no-model.pt", [tmp_path / "x.nii.gz", tmp_path / "x_prob.nii.gz"], tmp_path / "out",
                      probabilities=True, progress=False)
    assert not (tmp_path / "out").exists()
