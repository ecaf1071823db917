"""Evaluation metrics: Dice / NSD / HD95 against MONAI and DeepMind's surface-distance on real
masks, lesion matching on hand-built masks, and the statistics against SciPy."""

from __future__ import annotations

import functools
import math
import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, stats
from scipy.spatial.distance import pdist

from freetumor.errors import ConfigError
from freetumor.evaluation import (
    DIAMETER_BINS,
    EARLY_MM,
    bootstrap_ci,
    case_metrics,
    connected_lesions,
    detection_summary,
    dice,
    hd95,
    kfold_summary,
    match_lesions,
    nsd,
    paired_bootstrap_ci,
    paired_tests,
    patient_level,
    wilson_ci,
)
from freetumor.evaluation import metrics as M

from conftest import DATASETS, need

# DeepMind's reference implementation: a hard dependency of these tests (test extra `surface-distance`),
# so that no comparison against it is silently left out.
import surface_distance as sdpkg  # noqa: E402
TOLERANCES = (1.0, 2.0, 5.0)


# --------------------------------------------------------------------------- real masks
@functools.lru_cache(maxsize=None)
def _load(rel: str) -> tuple[np.ndarray, tuple[float, ...]]:
    img = nib.load(str(need(DATASETS / rel)))
    return np.asarray(img.dataobj), tuple(float(z) for z in img.header.get_zooms()[:3])


def _shift(m: np.ndarray, offsets: tuple[int, ...]) -> np.ndarray:
    """Shift without wrap-around (what falls off the array is lost)."""
    out = np.zeros_like(m)
    src = tuple(slice(max(0, -o), m.shape[a] - max(0, o)) for a, o in enumerate(offsets))
    dst = tuple(slice(max(0, o), m.shape[a] - max(0, -o)) for a, o in enumerate(offsets))
    out[dst] = m[src]
    return out


def _case(name: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(pred, gt, spacing) pairs made from real masks by shifting, eroding, dilating, swapping."""
    if name.startswith("ct3mm"):  # TotalSegmentator ids, 3 mm isotropic
        lab, sp = _load("totalseg_example/ct3mm_label.nii.gz")
        liver, spleen, kidney_r, stomach = (lab == 5), (lab == 1), (lab == 2), (lab == 6)
        return {
            "ct3mm-liver-shift": (_shift(liver, (1, 0, 1)), liver, sp),
            "ct3mm-spleen-eroded": (ndimage.binary_erosion(spleen), spleen, sp),
            "ct3mm-kidney-dilated": (ndimage.binary_dilation(kidney_r), kidney_r, sp),
            "ct3mm-liver-vs-stomach": (stomach, liver, sp),
        }[name]
    if name.startswith("slab"):  # FreeTumor 7-class labels, 0.977 x 0.977 x 2 mm, 512 x 512 x 20
        lab, sp = _load("totalseg_example/slab1mm_label_freetumor7.nii.gz")
        liver, pancreas = lab == 1, lab == 3
        return {
            "slab-liver-shift": (_shift(liver, (2, -1, 1)), liver, sp),
            "slab-pancreas-dilated": (ndimage.binary_dilation(pancreas, iterations=2), pancreas, sp),
        }[name]
    if name.startswith("sts"):  # sarcoma GTV, 0.977 x 0.977 x 3.27 mm
        lab, sp = _load("sts_sarcoma_ct/STS_002_label.nii.gz")
        gt = lab > 0
        return {
            "sts-eroded": (ndimage.binary_erosion(gt, iterations=2), gt, sp),
            "sts-shift": (_shift(gt, (-2, 1, 0)), gt, sp),
        }[name]
    if name.startswith("lidc"):  # small lung nodules in tight crops (they touch the crop border)
        a, sp_a = _load("lidc_nodule_vois/labels/LIDC-IDRI-0003_R_4.nii.gz")
        b, sp_b = _load("lidc_nodule_vois/labels/LIDC-IDRI-0004_R_1.nii.gz")
        return {
            "lidc-shift": (_shift(a > 0, (1, 1, 0)), a > 0, sp_a),
            "lidc-dilated": (ndimage.binary_dilation(b > 0), b > 0, sp_b),
        }[name]
    raise KeyError(name)


CASES = [
    "ct3mm-liver-shift",
    "ct3mm-spleen-eroded",
    "ct3mm-kidney-dilated",
    "ct3mm-liver-vs-stomach",
    "slab-liver-shift",
    "slab-pancreas-dilated",
    "sts-eroded",
    "sts-shift",
    "lidc-shift",
    "lidc-dilated",
]


def _onehot(m: np.ndarray):
    import torch

    return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))


def _monai_nsd(pred: np.ndarray, gt: np.ndarray, sp, tolerances) -> list[float]:
    """MONAI's NSD for several tolerances in one call (one channel per tolerance)."""
    import torch
    from monai.metrics import compute_surface_dice

    k = len(tolerances)
    y_pred = torch.from_numpy(np.stack([~pred] + [pred] * k)[None].astype(np.float32))
    y = torch.from_numpy(np.stack([~gt] + [gt] * k)[None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compute_surface_dice(y_pred, y, list(tolerances), spacing=list(sp), use_subvoxels=False)
    return [float(v) for v in out[0]]


@pytest.mark.parametrize("name", CASES)
def test_dice_nsd_hd95_match_monai_and_surface_distance(name):
    pred, gt, sp = _case(name)
    assert pred.any() and gt.any() and pred.shape == gt.shape

    from monai.metrics import compute_dice

    d = dice(pred, gt)
    assert d == pytest.approx(float(compute_dice(_onehot(pred), _onehot(gt), include_background=False)[0, 0]), rel=1e-6)

    ours_monai = [nsd(pred, gt, sp, t, method="monai") for t in TOLERANCES]
    assert ours_monai == pytest.approx(_monai_nsd(pred, gt, sp, TOLERANCES), rel=1e-6)

    ours_sd = [nsd(pred, gt, sp, t) for t in TOLERANCES]
    assert all(0.0 <= v <= 1.0 for v in ours_sd + ours_monai)
    assert ours_sd == sorted(ours_sd)  # more tolerance, more agreement
    ref = sdpkg.compute_surface_distances(gt, pred, sp)
    assert d == pytest.approx(sdpkg.compute_dice_coefficient(gt, pred), rel=1e-12)
    assert ours_sd == pytest.approx([sdpkg.compute_surface_dice_at_tolerance(ref, t) for t in TOLERANCES], rel=1e-6)
    assert hd95(pred, gt, sp) == pytest.approx(sdpkg.compute_robust_hausdorff(ref, 95), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_nsd_on_random_blobs_matches_references_without_data(seed):
    """Irregular shapes, anisotropic spacing, sub-voxel tolerances (runs without ../shared)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(40, 36, 18)), 3.0)
    gt = field > 0.02
    pred = ndimage.gaussian_filter(field + 0.03 * rng.normal(size=field.shape), 1.0) > 0.0
    sp = (0.8, 0.7, 2.5)
    tols = (0.5, 1.0, 2.0, 5.0)
    assert [nsd(pred, gt, sp, t, method="monai") for t in tols] == pytest.approx(_monai_nsd(pred, gt, sp, tols), rel=1e-6)
    ref = sdpkg.compute_surface_distances(gt, pred, sp)
    assert [nsd(pred, gt, sp, t) for t in tols] == pytest.approx(
        [sdpkg.compute_surface_dice_at_tolerance(ref, t) for t in tols], rel=1e-6)
    assert hd95(pred, gt, sp) == pytest.approx(sdpkg.compute_robust_hausdorff(ref, 95), rel=1e-9)


def test_nsd_2d_real_slice_matches_references():
    lab, sp = _load("totalseg_example/slab1mm_label_freetumor7.nii.gz")
    gt = lab[:, :, 10] == 1
    pred = ndimage.binary_erosion(_shift(gt, (3, -2)), iterations=1)
    sp2 = sp[:2]
    got_monai = [nsd(pred, gt, sp2, t, method="monai") for t in TOLERANCES]
    import torch
    from monai.metrics import compute_surface_dice

    oh = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))  # noqa: E731
    for t, v in zip(TOLERANCES, got_monai):
        assert v == pytest.approx(float(compute_surface_dice(oh(pred), oh(gt), [t], spacing=list(sp2))[0, 0]), rel=1e-6)
    ref = sdpkg.compute_surface_distances(gt, pred, sp2)
    for t in TOLERANCES:
        assert nsd(pred, gt, sp2, t) == pytest.approx(sdpkg.compute_surface_dice_at_tolerance(ref, t), rel=1e-6)


def test_surfel_area_table_equals_surface_distance_lookup():
    """Our from-scratch marching-cubes areas equal DeepMind's table for every code."""
    lt = sdpkg.lookup_tables
    for sp in [(1.0, 1.0, 1.0), (0.977, 0.977, 2.0), (0.5, 1.3, 3.27), (2.7, 0.3, 1.1)]:
        np.testing.assert_allclose(M._surfel_area_table(sp), lt.create_table_neighbour_code_to_surface_area(sp), rtol=1e-12)
    for sp in [(1.0, 1.0), (0.7, 2.5)]:
        np.testing.assert_allclose(M._surfel_area_table(sp), lt.create_table_neighbour_code_to_contour_length(sp), rtol=1e-12)


def test_empty_and_identical_masks():
    lab, sp = _load("lidc_nodule_vois/labels/LIDC-IDRI-0003_R_4.nii.gz")
    gt = lab > 0
    empty = np.zeros_like(gt)
    for method in ("surface-distance", "monai"):
        assert nsd(empty, gt, sp, 2.0, method=method) == 0.0
        assert nsd(gt, empty, sp, 2.0, method=method) == 0.0
        assert nsd(empty, empty, sp, 2.0, method=method) == 1.0
        assert nsd(gt, gt, sp, 0.0, method=method) == 1.0
    # MONAI agrees on one empty mask (it gives nan for two empty masks, we give 1.0)
    assert _monai_nsd(empty, gt, sp, (2.0,)) == [0.0]
    assert dice(empty, gt) == 0.0 and dice(empty, empty) == 1.0 and math.isnan(dice(empty, empty, empty=math.nan))
    assert math.isnan(hd95(empty, gt, sp)) and hd95(gt, gt, sp) == 0.0
    try:  # surface-distance 0.1 uses np.Inf here, which NumPy 2 removed
        ref = sdpkg.compute_surface_dice_at_tolerance(sdpkg.compute_surface_distances(gt, empty, sp), 2.0)
    except AttributeError:
        pytest.skip("surface-distance 0.1 uses np.Inf, which NumPy 2 removed: its empty-mask reference cannot run "
                    "(every other check of this test passed)")
    assert ref == 0.0


def test_mask_filling_the_array_has_its_surface_at_the_border():
    m = np.ones((6, 5, 4), bool)
    pred = m.copy()
    pred[0] = False
    assert 0.0 < nsd(pred, m, (1, 1, 1), 0.5) < 1.0
    assert 0.0 < nsd(pred, m, (1, 1, 1), 0.5, method="monai") < 1.0
    ref = sdpkg.compute_surface_distances(m, pred, (1, 1, 1))
    assert nsd(pred, m, (1, 1, 1), 0.5) == pytest.approx(sdpkg.compute_surface_dice_at_tolerance(ref, 0.5))


def test_bad_arguments_are_one_line_config_errors():
    a, b = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 5), bool)
    with pytest.raises(ConfigError, match=r"\(4, 4, 4\).*\(4, 4, 5\)"):
        dice(a, b)
    with pytest.raises(ConfigError, match="shape"):
        nsd(a, b, (1, 1, 1))
    with pytest.raises(ConfigError, match="method"):
        nsd(a, a, (1, 1, 1), method="hausdorff")
    with pytest.raises(ConfigError, match="spacing"):
        nsd(a, a, (1, 1))
    with pytest.raises(ConfigError, match="tolerance"):
        nsd(a, a, (1, 1, 1), tolerance_mm=-1)
    with pytest.raises(ConfigError, match="connectivity"):
        connected_lesions(a, (1, 1, 1), connectivity=4)


def test_case_metrics_on_real_liver_with_a_painted_tumour():
    lab, sp = _load("totalseg_example/slab1mm_label_freetumor7.nii.gz")
    gt = lab.astype(np.uint8).copy()
    liver = np.argwhere(gt == 1)
    c = liver[len(liver) // 2]
    zz = np.indices(gt.shape, sparse=True)
    ball = sum(((z - ci) * s) ** 2 for z, ci, s in zip(zz, c, sp)) <= 12.0**2
    gt[ball & (gt == 1)] = 2  # a ~24 mm "tumour" inside the liver
    pred = gt.copy()
    pred[pred == 2] = 1
    pred[_shift(ball, (2, 0, 1)) & (gt > 0)] = 2
    m = case_metrics(pred, gt, sp, organ_ids=[1], tumour_ids=[2], tolerance_mm=2.0)
    assert set(m) == {"tumour_dice", "tumour_nsd", "organ_dice", "organ_nsd", "gt_tumour_voxels",
                      "pred_tumour_voxels", "tumour_volume_ml_gt", "tumour_volume_ml_pred"}
    assert m["tumour_dice"] == pytest.approx(dice(pred == 2, gt == 2))
    assert m["tumour_nsd"] == pytest.approx(nsd(pred == 2, gt == 2, sp, 2.0))
    assert m["organ_dice"] == pytest.approx(dice((pred == 1) | (pred == 2), (gt == 1) | (gt == 2)))
    assert m["organ_nsd"] == 1.0  # the organ including its tumour is unchanged
    assert m["gt_tumour_voxels"] == int((gt == 2).sum())
    assert m["tumour_volume_ml_gt"] == pytest.approx((gt == 2).sum() * np.prod(sp) / 1000)
    assert 0.5 < m["tumour_dice"] < 1.0

    healthy = case_metrics(pred, np.where(gt == 2, 1, gt), sp, organ_ids=1, tumour_ids=2)
    assert healthy["tumour_dice"] is None and healthy["tumour_nsd"] is None
    assert healthy["gt_tumour_voxels"] == 0 and healthy["pred_tumour_voxels"] > 0
    # other prediction ids (e.g. a model with 1 = organ, 9 = tumour)
    remapped = np.where(pred == 2, 9, pred)
    assert case_metrics(remapped, gt, sp, [1], [2], pred_organ_ids=[1], pred_tumour_ids=[9]) == m
    with pytest.raises(ConfigError, match="shape"):
        case_metrics(pred[:-1], gt, sp, [1], [2])


# --------------------------------------------------------------------------- lesions
def _ball(shape, centre, radius):
    zz = np.indices(shape, sparse=True)
    return sum((z - c) ** 2 for z, c in zip(zz, centre)) <= radius**2


def _scene():
    """gt: A r3 hit, B r7 split in two, C+D r4 merged by one blob, E r12 missed; plus one FP."""
    shape = (64, 64, 64)
    A, B, C, D, E = _ball(shape, (8, 8, 8), 3), _ball(shape, (30, 10, 12), 7), _ball(shape, (12, 40, 12), 4), \
        _ball(shape, (12, 52, 12), 4), _ball(shape, (44, 44, 44), 12)
    gt = A | B | C | D | E
    pred = A.copy()
    b_split = B.copy()
    b_split[29:32] = False  # a 3-voxel gap cuts B's prediction in two
    pred |= b_split
    pred[10:15, 38:55, 10:15] = True  # one blob over C and D
    pred |= _ball(shape, (8, 56, 56), 3)  # false positive
    return pred, gt


def test_connected_lesions_sizes_and_bins():
    _, gt = _scene()
    labels, les = connected_lesions(gt, (1.0, 1.0, 1.0))
    assert labels.max() == len(les) == 5
    radii = {(8, 8, 8): 3, (30, 10, 12): 7, (12, 40, 12): 4, (12, 52, 12): 4, (44, 44, 44): 12}
    for lesion in les:
        r = radii[tuple(round(c) for c in lesion.centroid_voxel)]
        assert lesion.diameter_mm == pytest.approx(2 * r, rel=0.06)
        assert lesion.max_axial_diameter_mm == pytest.approx(2 * r)  # centre to centre
        assert lesion.bin == {3: "<10 mm", 4: "<10 mm", 7: "10-20 mm", 12: "20-50 mm"}[r]
        assert lesion.early == (r < 10)
        assert int((labels[lesion.bbox] == lesion.index).sum()) == lesion.voxels
    # anisotropic spacing scales volume and the in-plane extent
    _, les2 = connected_lesions(gt, (0.5, 0.5, 2.0))
    assert les2[0].volume_mm3 == pytest.approx(les[0].volume_mm3 * 0.5)
    assert les2[0].max_axial_diameter_mm == pytest.approx(les[0].max_axial_diameter_mm * 0.5)


def test_connectivity_and_min_voxels():
    m = np.zeros((6, 6, 6), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # corner neighbours
    m[4:6, 4:6, 4:6] = True
    assert len(connected_lesions(m, (1, 1, 1), connectivity=3)[1]) == 2
    assert len(connected_lesions(m, (1, 1, 1), connectivity=1)[1]) == 3
    labels, les = connected_lesions(m, (1, 1, 1), connectivity=1, min_voxels=2)
    assert [x.index for x in les] == [1] and les[0].voxels == 8
    assert set(np.unique(labels)) == {0, 1} and labels[1, 1, 1] == 0


def test_max_axial_diameter_on_real_tumours_equals_brute_force():
    for rel in ("sts_sarcoma_ct/STS_002_label.nii.gz", "lidc_nodule_vois/labels/LIDC-IDRI-0001_R_1.nii.gz"):
        lab, sp = _load(rel)
        _, les = connected_lesions(lab > 0, sp)
        big = max(les, key=lambda x: x.voxels)
        comp = lab[big.bbox] > 0
        best = 0.0
        for k in range(comp.shape[2]):
            pts = np.argwhere(comp[:, :, k]) * np.asarray(sp[:2])
            if len(pts) > 1:
                best = max(best, float(pdist(pts).max()))
        assert big.max_axial_diameter_mm == pytest.approx(best, rel=1e-12)


def test_match_lesions_hit_split_merged_missed_false_positive():
    pred, gt = _scene()
    m = match_lesions(pred, gt, (1.0, 1.0, 1.0))
    assert (m.n_gt, m.n_pred) == (5, 5)
    assert (m.tp, m.fn, m.fp, m.split, m.merged) == (4, 1, 1, 1, 1)
    by_centre = {tuple(round(c) for c in g["centroid_voxel"]): g for g in m.gt}
    assert by_centre[(44, 44, 44)]["detected"] is False and by_centre[(44, 44, 44)]["matched_pred"] == []
    assert len(by_centre[(30, 10, 12)]["matched_pred"]) == 2
    merged = [p for p in m.pred if len(p["matched_gt"]) == 2]
    assert len(merged) == 1 and merged[0]["true_positive"]
    assert sum(not p["true_positive"] for p in m.pred) == 1
    assert m.by_bin() == {"<10 mm": (3, 3), "10-20 mm": (1, 1), "20-50 mm": (0, 1), ">=50 mm": (0, 0)}
    # the gt / pred indices refer to each other's labels
    g_lab, _ = connected_lesions(gt, (1, 1, 1))
    p_lab, _ = connected_lesions(pred, (1, 1, 1))
    for g in m.gt:
        for j in g["matched_pred"]:
            assert np.any((g_lab == g["index"]) & (p_lab == j))


def test_min_overlap_turns_a_graze_into_miss_and_false_positive():
    gt = _ball((20, 20, 20), (10, 10, 10), 4)
    pred = np.zeros_like(gt)
    pred[14, 8:13, 10] = True  # touches the lesion's edge
    pred[15:17, 8:13, 10] = True
    overlap = int((pred & gt).sum())
    assert 0 < overlap < 5
    assert match_lesions(pred, gt, (1, 1, 1)).tp == 1
    m = match_lesions(pred, gt, (1, 1, 1), min_overlap_voxels=5)
    assert (m.tp, m.fn, m.fp) == (0, 1, 1)


def test_detection_summary_bins_early_fp_and_patients():
    pred, gt = _scene()
    scan1 = match_lesions(pred, gt, (1.0, 1.0, 1.0))
    big = _ball((64, 64, 64), (32, 32, 32), 27)  # ~54 mm: the >=50 mm bin
    scan2 = match_lesions(big & ~_ball((64, 64, 64), (32, 32, 32), 5), big, (1.0, 1.0, 1.0))
    healthy = match_lesions(np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8), bool), (1, 1, 1))
    s = detection_summary([scan1, scan2, healthy])
    assert s["scans"] == 3 and s["lesions"] == 6
    ls = s["lesion_sensitivity"]
    assert (ls["k"], ls["n"]) == (5, 6) and ls["value"] == pytest.approx(5 / 6)
    assert ls["ci95"] == pytest.approx(wilson_ci(5, 6))
    assert {k: (v["k"], v["n"]) for k, v in s["per_bin"].items()} == {
        "<10 mm": (3, 3), "10-20 mm": (1, 1), "20-50 mm": (0, 1), ">=50 mm": (1, 1)}
    assert [b[0] for b in DIAMETER_BINS] == list(s["per_bin"])
    assert (s["early_sensitivity"]["k"], s["early_sensitivity"]["n"]) == (4, 4) and EARLY_MM == 20.0
    fps = s["false_positives_per_scan"]
    assert (fps["k"], fps["n"], fps["value"]) == (1, 3, pytest.approx(1 / 3))
    assert fps["ci95"][0] < 1 / 3 < fps["ci95"][1]
    assert (s["patient_sensitivity"]["k"], s["patient_sensitivity"]["n"]) == (2, 2)
    assert (s["patient_specificity"]["k"], s["patient_specificity"]["n"]) == (1, 1)
    s2 = detection_summary([scan1], patients=[(True, True), (True, False), (False, False), (False, True)])
    assert s2["patient_sensitivity"]["value"] == 0.5 and s2["patient_specificity"]["value"] == 0.5
    assert s2["per_bin"][">=50 mm"] == {"k": 0, "n": 0, "value": None, "ci95": None}
    assert [patient_level(p, g) for p, g in [(1, 1), (0, 1), (1, 0), (0, 0)]] == ["TP", "FN", "FP", "TN"]


# --------------------------------------------------------------------------- statistics
def test_paired_tests_equal_scipy():
    rng = np.random.default_rng(5)
    a = rng.uniform(0.5, 0.9, 25)
    b = a + rng.normal(0.02, 0.03, 25)
    a_list = list(a) + [None, 0.7]
    b_list = list(b) + [0.8, float("nan")]
    r = paired_tests(a_list, b_list)
    t, w = stats.ttest_rel(b, a), stats.wilcoxon(b, a)
    assert (r["n"], r["dropped"]) == (25, 2)
    assert r["mean_diff"] == pytest.approx(np.mean(b - a)) and r["mean_a"] == pytest.approx(a.mean())
    assert r["t_test"]["statistic"] == pytest.approx(t.statistic) and r["t_test"]["p"] == pytest.approx(t.pvalue)
    assert r["wilcoxon"]["statistic"] == pytest.approx(w.statistic) and r["wilcoxon"]["p"] == pytest.approx(w.pvalue)
    same = paired_tests(a, a)
    assert same["wilcoxon"] == {"statistic": 0.0, "p": 1.0} and same["mean_diff"] == 0.0
    one = paired_tests([0.5, None], [0.6, 0.7])
    assert one["n"] == 1 and one["t_test"] is None and one["wilcoxon"] is None and "fewer than 2" in one["note"]
    with pytest.raises(ConfigError, match="length"):
        paired_tests([1, 2], [1, 2, 3])


def test_bootstrap_intervals():
    rng = np.random.default_rng(7)
    x = rng.normal(0.8, 0.05, 40)
    lo, hi = bootstrap_ci(x, n_boot=5000, seed=3)
    assert lo < x.mean() < hi and hi - lo < 0.05
    assert bootstrap_ci(x, n_boot=5000, seed=3) == (lo, hi)
    assert bootstrap_ci(x, n_boot=5000, seed=4) != (lo, hi)
    assert bootstrap_ci(list(x) + [None, float("nan")], n_boot=5000, seed=3) == (lo, hi)
    mlo, mhi = bootstrap_ci(x, stat="median", n_boot=2000)
    assert mlo <= np.median(x) <= mhi
    # the interval is close to the normal approximation of the mean
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.01) and hi == pytest.approx(x.mean() + 1.96 * se, abs=0.01)
    y = x + rng.normal(0.03, 0.01, 40)
    plo, phi = paired_bootstrap_ci(x, y, n_boot=4000, seed=1)
    assert plo < np.mean(y - x) < phi and plo > 0
    assert (plo, phi) == bootstrap_ci(y - x, n_boot=4000, seed=1)
    assert all(math.isnan(v) for v in bootstrap_ci([None]))


def test_wilson_ci_known_values():
    lo, hi = wilson_ci(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_ci(0, 20)[0] == 0.0 and wilson_ci(20, 20)[1] == 1.0
    assert wilson_ci(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert all(math.isnan(v) for v in wilson_ci(0, 0))
    with pytest.raises(ConfigError):
        wilson_ci(5, 3)


def test_kfold_summary():
    s = kfold_summary({"fold0": [0.8, 0.9, None], "fold1": [0.7], "fold2": [float("nan")]})
    assert s["folds"]["fold0"] == {"mean": pytest.approx(0.85), "n": 2}
    assert s["folds"]["fold2"] == {"mean": None, "n": 0}
    assert s["n_folds"] == 2 and s["mean"] == pytest.approx(0.775)
    assert s["sd"] == pytest.approx(np.std([0.85, 0.7], ddof=1))
    assert kfold_summary({0: [0.5]})["sd"] is None
