"""Machine visual Turing test and radiomic feature distance (freetumor.evaluation.realism), on the lesion
crops and features of freetumor.lesions.features."""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from freetumor.errors import ConfigError, InputError
from freetumor.evaluation.realism import feature_distance, machine_vtt, run_realism
from freetumor.io import Volume
from freetumor.lesions.features import (
    FEATURE_NAMES,
    LesionCrop,
    crops_from_datalist,
    crops_from_synthetic_dir,
    extract_crops,
    lesion_features,
)

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("FREETUMOR_DATASETS", REPO.parent / "shared" / "datasets"))
LIDC = DATASETS / "lidc_nodule_vois"
WINDOW = (-175.0, 250.0)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real CT not available: {path}")
    return path


# ----------------------------------------------------------------------------- procedural lesions


def _blob(rng, shift=0.0, smooth=0.8, shape=(36, 36, 24), spacing=(0.8, 0.8, 1.25)):
    """A textured ellipsoidal lesion (label 2) in noisy soft tissue, anisotropic voxels."""
    sp = np.asarray(spacing)
    bg = 100 + 60 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    c = (np.asarray(shape) - 1) / 2 + rng.uniform(-2, 2, 3)
    semi = rng.uniform(4.0, 8.0, 3)
    grid = np.indices(shape).astype(float)
    r = np.sqrt(sum(((grid[a] - c[a]) * sp[a] / semi[a]) ** 2 for a in range(3)))
    mask = r <= 1.0
    tex = ndimage.gaussian_filter(rng.standard_normal(shape), smooth)
    lesion = 50 + shift + 15 * tex / tex.std()
    soft = ndimage.gaussian_filter(mask.astype(float), 0.8)
    img = bg * (1 - soft) + lesion * soft + rng.normal(0, 4, shape)
    aff = np.diag([*spacing, 1.0])
    return Volume(np.rint(img).astype(np.int16), aff), Volume(mask.astype(np.uint8) * 2, aff)


@functools.lru_cache(maxsize=None)
def _features(seed, n=40, **kw):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image, label = _blob(rng, **kw)
        crops = extract_crops(image, label, 2, "real", f"blob{i}")
        assert len(crops) == 1
        out.append(lesion_features(crops[0], window=WINDOW))
    return tuple(out)


@pytest.fixture(scope="module")
def reference():
    return _features(1)


# ----------------------------------------------------------------------------- features


def test_features_finite_and_named(abdomen_tumour_case):
    image, label = abdomen_tumour_case
    crops = extract_crops(image, label, 2, "real", "ph12", spacing=1.0)
    assert crops, "the phantom has a liver tumour"
    n_comp = ndimage.label(label.array == 2, structure=np.ones((3, 3, 3)))[1]
    assert len(crops) <= n_comp
    for crop in crops:
        assert crop.image.dtype == np.float32 and crop.mask.dtype == bool
        assert crop.image.shape == crop.mask.shape and crop.spacing == (1.0, 1.0, 1.0)
        native_ml = float((label.array == 2).sum()) * float(np.prod(image.spacing)) / 1000
        assert 0 < crop.meta["volume_ml"] <= native_ml + 1e-9
        # Isotropic resampling keeps the lesion volume (nearest-neighbour mask).
        assert crop.mask.sum() / 1000 == pytest.approx(crop.meta["volume_ml"], rel=0.1)
        f = lesion_features(crop, window=WINDOW)
        assert tuple(f) == FEATURE_NAMES
        assert all(isinstance(v, float) and math.isfinite(v) for v in f.values())
        assert f["firstorder_p10"] <= f["firstorder_median"] <= f["firstorder_p90"]
        assert 0 < f["firstorder_uniformity"] <= 1 and 0 < f["glcm_energy"] <= 1
        assert 0 < f["glcm_homogeneity"] <= 1 and -1 <= f["glcm_correlation"] <= 1
        assert f["rim_contrast"] > 0, "phantom liver tumours are hypodense"
        assert f["edge_sharpness"] > 0


def test_glcm_constant_crop():
    img = np.full((12, 12, 12), 60.0, np.float32)
    mask = np.zeros(img.shape, bool)
    mask[3:9, 2:10, 4:8] = True
    f = lesion_features(LesionCrop("synthetic", "flat", 1, img, mask, (1.0, 1.0, 1.0)), window=WINDOW)
    assert f["glcm_contrast"] == 0.0 and f["glcm_dissimilarity"] == 0.0
    assert f["glcm_homogeneity"] == 1.0 and f["glcm_idm"] == 1.0 and f["glcm_energy"] == 1.0
    assert f["glcm_joint_entropy"] == 0.0 and f["glcm_correlation"] == 1.0
    assert f["firstorder_std"] == 0.0 and f["firstorder_skewness"] == 0.0 and f["firstorder_entropy"] == 0.0
    assert f["rim_contrast"] == 0.0 and f["edge_sharpness"] == 0.0


def test_glcm_checkerboard():
    # Alternating grey levels along every axis: all 13 directions see a known pattern.
    idx = np.indices((10, 10, 10)).sum(axis=0)
    img = np.where(idx % 2 == 0, -100.0, 100.0).astype(np.float32)
    mask = np.ones(img.shape, bool)
    f = lesion_features(LesionCrop("real", "cb", 1, img, mask, (1.0, 1.0, 1.0)), window=(-200, 200))
    # Levels 8 and 24 (of 32): face neighbours differ by 16, edge neighbours are equal,
    # corner neighbours differ by 16 -> 3 + 4 of 13 directions are all-different.
    assert f["glcm_dissimilarity"] == pytest.approx(16 * 7 / 13)
    assert f["glcm_contrast"] == pytest.approx(256 * 7 / 13)


# ----------------------------------------------------------------------------- classifier + distance


def test_same_generator_is_indistinguishable(reference):
    other = _features(2)
    vtt = machine_vtt(reference, other, folds=5, seed=0)
    assert 0.25 <= vtt["auc"] <= 0.75, vtt["auc"]
    assert vtt["n_real"] == vtt["n_synthetic"] == 40 and vtt["folds"] == 5
    assert len(vtt["auc_folds"]) == 5 and len(vtt["top_features"]) == 5
    lo, hi = vtt["auc_ci95"]
    assert lo <= vtt["auc"] <= hi
    assert machine_vtt(reference, other, folds=5, seed=0) == vtt  # seeded
    dist = feature_distance(reference, other)
    assert dist["mean_abs_d"] < 0.4
    assert set(dist["per_feature"]) == set(FEATURE_NAMES)
    assert all(0 <= v["ks"] <= 1 for v in dist["per_feature"].values())
    print(f"same generator: AUC {vtt['auc']:.3f}, mean|d| {dist['mean_abs_d']:.3f}, FD {dist['frechet']:.2f}")


@pytest.mark.parametrize("kind", ["darker", "smoother"])
def test_different_lesions_are_detected(reference, kind):
    other = _features(3, shift=-60.0) if kind == "darker" else _features(4, smooth=2.5)
    vtt = machine_vtt(reference, other, folds=5, seed=0)
    assert vtt["auc"] > 0.9, vtt["auc"]
    same = feature_distance(reference, _features(2))
    dist = feature_distance(reference, other)
    assert dist["mean_abs_d"] > 2 * same["mean_abs_d"]
    assert dist["frechet"] > 3 * same["frechet"]
    names = [t["feature"] for t in vtt["top_features"]]
    if kind == "darker":
        assert dist["per_feature"]["firstorder_mean"]["cohens_d"] < -3
    else:
        assert any(n.startswith("glcm_") for n in names)
    print(f"{kind}: AUC {vtt['auc']:.3f}, mean|d| {dist['mean_abs_d']:.3f}, FD {dist['frechet']:.2f}")


def test_too_few_lesions(reference):
    with pytest.raises(ConfigError, match="at least 3 real and 3 synthetic") as exc:
        machine_vtt(reference, reference[:2])
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError):
        machine_vtt(reference, reference, folds=1)
    # Folds shrink to the smaller class.
    assert machine_vtt(reference[:10], reference[10:14], folds=5)["folds"] == 4


def _sphere_scan(spacing, radius_mm=6.0, extent_mm=(60.0, 60.0, 36.0)):
    """A -500 HU scan with a 100 HU sphere at its centre and a 300 HU marker 12 mm to the patient's right."""
    sp = np.asarray(spacing, float)
    shape = tuple(int(round(e / s)) for e, s in zip(extent_mm, sp))
    mm = [(np.arange(n) + 0.5) * s - e / 2 for n, s, e in zip(shape, sp, extent_mm)]
    x, y, z = np.meshgrid(*mm, indexing="ij")
    img = np.full(shape, -500.0)
    sphere = x ** 2 + y ** 2 + z ** 2 <= radius_mm ** 2
    img[sphere] = 100.0
    img[(np.abs(x - 12) <= 2) & (np.abs(y) <= 2) & (np.abs(z) <= 3)] = 300.0  # RAS: +x is the patient's right
    aff = np.diag([*sp, 1.0])
    return Volume(img.astype(np.int16), aff), Volume(sphere.astype(np.uint8), aff)


def test_gallery_views_share_one_physical_scale(tmp_path):
    from freetumor.evaluation.realism.gallery import axial_view, lesion_gallery_png, pick_lesions
    from freetumor.io import save_volume

    areas = []
    for k, spacing in enumerate([(0.5, 0.5, 1.0), (1.5, 1.5, 3.0)]):
        image, label = _sphere_scan(spacing)
        (crop,) = extract_crops(image, label, 1, "real", f"s{k}")
        view = axial_view(crop, image, fov_mm=40.0, pixels=160)  # 0.25 mm per pixel
        assert view.shape == (160, 160) and np.isfinite(view).all()
        areas.append(float((view > -200).sum() - (view > 200).sum()))
        marker = np.argwhere(view > 200)
        assert marker.size and marker[:, 1].mean() < 80 - 30, "patient right is on the viewer's left"
        assert abs(marker[:, 0].mean() - 79.5) < 4
        save_volume(image, tmp_path / f"s{k}.nii.gz")
        crop.meta["image"] = str(tmp_path / f"s{k}.nii.gz")
    disc = np.pi * (6.0 / 0.25) ** 2
    assert all(abs(a - disc) / disc < 0.1 for a in areas), (areas, disc)  # the same size at any native spacing
    crops = [extract_crops(*_sphere_scan((0.5, 0.5, 1.0), r), 1, "real", f"r{r}")[0] for r in (3.0, 5.0, 9.0, 4.0)]
    assert [c.case for c in pick_lesions(crops, 3)] == ["r3.0", "r5.0", "r9.0"]  # smallest, middle, largest
    for c in crops:
        c.meta["image"] = str(tmp_path / "s0.nii.gz")
    info = lesion_gallery_png([("real", crops), ("synthetic", crops[:2])], WINDOW, tmp_path / "g.png")
    assert info["fov_mm"] == 40.0 and info["mm_per_pixel"] == 0.25  # 2 x the 18 mm sphere, rounded up
    assert info["shown"]["synthetic"] == ["r3.0#1", "r5.0#1"] and len(info["shown"]["real"]) == 4
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- real data


def test_lidc_random_halves_are_indistinguishable():
    root = need(LIDC / "images").parent
    names = sorted(p.name for p in (root / "images").glob("*.nii.gz"))
    if len(names) < 80:
        pytest.skip("fewer than 80 LIDC nodules")
    from freetumor.io import load_volume

    rng = np.random.default_rng(0)
    feats = []
    for k in rng.choice(len(names), 80, replace=False):
        image = load_volume(root / "images" / names[k])
        label = load_volume(root / "labels" / names[k])
        crops = extract_crops(image, label, 1, "real", names[k])
        assert crops, names[k]
        crop = max(crops, key=lambda c: c.meta["voxels"])  # the annotated nodule
        f = lesion_features(crop, window=(-1000.0, 500.0))
        assert all(math.isfinite(v) for v in f.values())
        feats.append(f)
    order = rng.permutation(len(feats))
    half = len(feats) // 2
    a, b = [feats[i] for i in order[:half]], [feats[i] for i in order[half:]]
    vtt = machine_vtt(a, b, folds=5, seed=0)
    assert 0.3 <= vtt["auc"] <= 0.7, vtt["auc"]
    dist = feature_distance(a, b)
    assert dist["mean_abs_d"] < 0.4
    print(f"LIDC halves: AUC {vtt['auc']:.3f} CI {vtt['auc_ci95']}, mean|d| {dist['mean_abs_d']:.3f}")


def test_lidc_patient_halves_control(tmp_path):
    """Real-vs-real floor on real CT: two patient-disjoint samples of LIDC nodule crops, via the CLI.

    The datalists name a tumour-only label map by a path relative to themselves, and the CLI runs
    from another directory. --synthetic and --control are the same half, so both AUCs must agree.
    """
    from freetumor.data import patient_id, patient_split, write_datalist

    from conftest import run_cli

    root = need(LIDC / "images").parent
    entries = [{"image": str(p), "label": str(root / "labels" / p.name)}
               for p in sorted((root / "images").glob("*.nii.gz"))]
    if len(entries) < 200:
        pytest.skip("fewer than 200 LIDC nodules")
    a, b = patient_split(entries, 0.5, seed=0)
    rng = np.random.default_rng(0)
    a, b = ([half[i] for i in sorted(rng.choice(len(half), 80, replace=False))] for half in (a, b))
    assert not {patient_id(e) for e in a} & {patient_id(e) for e in b}
    (tmp_path / "nodules.json").write_text(json.dumps({"name": "nodules", "organs": {"lung": {"tumor": 1}},
                                                       "labels": [0, 1]}))
    write_datalist(tmp_path / "lidc_a.json", a, label_map=tmp_path / "nodules.json")
    write_datalist(tmp_path / "lidc_b.json", b, label_map=tmp_path / "nodules.json")
    assert json.loads((tmp_path / "lidc_a.json").read_text())["label_map"] == "nodules.json"
    (tmp_path / "cwd").mkdir()
    r = run_cli("realism", "--real", "../lidc_a.json", "--synthetic", "../lidc_b.json", "--control", "../lidc_b.json",
                "--organ", "lung", "--out", "../rep", cwd=tmp_path / "cwd")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "rep" / "realism.json").read_text())
    c = data["control"]
    assert data["label_map"] == c["label_map"] == data["synthetic_label_map"] == "nodules"
    assert c["counts"]["real_lesions"] >= 75 and c["counts"]["control_lesions"] >= 75
    assert c["auc"] == data["summary"]["auc"] == data["summary"]["control_auc"]
    assert c["auc"] < 0.75, c["auc"]  # two real samples: near chance, far from a separable 1.0
    assert c["mean_abs_d"] < 0.4
    assert (tmp_path / "rep" / "lesions.png").is_file()
    print(f"LIDC patient-disjoint 80 vs 80: control AUC {c['auc']:.3f} CI {c['auc_ci95']}, "
          f"mean|d| {c['mean_abs_d']:.3f}")


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def phantom_setup(phantom_cohorts):
    """(folder with synthetic/, datalist of phantoms with tumours): the shared cohort of conftest."""
    return phantom_cohorts.root, phantom_cohorts.real


def test_crops_from_cohorts(phantom_setup):
    root, real = phantom_setup
    syn = crops_from_synthetic_dir(root / "synthetic", "liver")
    assert sorted((c.case, c.index) for c in syn) == [("syn0", 1), ("syn0", 2), ("syn1", 1), ("syn1", 2)]
    for c in syn:
        rec = json.loads((root / "synthetic" / f"{c.case}.json").read_text())
        lesion = rec["lesions"][c.index - 1]
        assert c.meta["voxels"] == lesion["voxels"] and c.meta["mask"] == "new_voxels"
        assert c.meta["hu_window"] == [-175.0, 250.0] and c.source == "synthetic"
    crops = crops_from_datalist(real, "liver")
    assert len(crops) >= 4 and all(c.source == "real" for c in crops)
    with pytest.raises(InputError, match="no pancreas synthesis records"):
        crops_from_synthetic_dir(root / "synthetic", "pancreas")


def _bbox(mask):
    idx = np.nonzero(mask)
    return [[int(i.min()), int(i.max()) + 1] for i in idx]


def _touching_case(folder: Path, second: bool = False, instances: bool = False, input_label: bool = True):
    """A hand-made synthesis output: synthetic lesion 1 touches a real tumour (and, with ``second``,
    synthetic lesion 2 touches lesion 1 and reaches into its box). Returns (lesion masks, real tumour)."""
    from freetumor.io import save_volume

    folder.mkdir(parents=True, exist_ok=True)
    shape = (40, 40, 20)
    rng = np.random.default_rng(7)
    real = np.zeros(shape, bool)
    real[8:20, 10:20, 5:15] = True  # 1200 voxels of real tumour
    syn1 = np.zeros(shape, bool)
    syn1[20:26, 12:18, 7:13] = True  # touches the real tumour's face at x = 20
    syn1[24:26, 16:18, 7:13] = False  # a notch: 216 - 24 = 192 voxels
    lesions = [syn1]
    if second:
        syn2 = np.zeros(shape, bool)
        syn2[24:30, 16:22, 7:13] = True  # fills lesion 1's notch, inside lesion 1's box
        lesions.append(syn2 & ~syn1)
    before = np.where(real, 2, 1).astype(np.uint8)
    after = before.copy()
    img = rng.normal(60, 8, shape) - 40 * real
    for k, m in enumerate(lesions):
        after[m] = 2
        img[m] -= 30 + 5 * k
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    save_volume(Volume(np.rint(img).astype(np.int16), aff), folder / "c_image.nii.gz")
    save_volume(Volume(after, aff), folder / "c_label.nii.gz")
    if input_label:
        save_volume(Volume(before, aff), folder / "input_label.nii.gz")
    rec = {"case": "c", "organ": "liver", "tumour_id": 2, "label": str(folder / "input_label.nii.gz"),
           "lesions": [{"index": k + 1, "bbox_voxel": _bbox(m), "voxels": int(m.sum())} for k, m in enumerate(lesions)],
           "outputs": {"image": "c_image.nii.gz", "label": "c_label.nii.gz"}}
    if instances:
        inst = np.zeros(shape, np.uint8)
        for k, m in enumerate(lesions):
            inst[m] = k + 1
        save_volume(Volume(inst, aff), folder / "c_lesions.nii.gz")
        rec["outputs"]["lesions"] = "c_lesions.nii.gz"
    (folder / "c.json").write_text(json.dumps(rec))
    return lesions, real


def test_synthetic_lesion_scored_on_its_own_voxels(tmp_path):
    # (b) new voxels: tumour after synthesis and not before, inside the lesion's box.
    (syn1,), real = _touching_case(tmp_path / "b")
    (crop,) = crops_from_synthetic_dir(tmp_path / "b", "liver", spacing=1.0)
    assert crop.meta["mask"] == "new_voxels"
    assert crop.meta["voxels"] == int(syn1.sum()) == 192 and crop.meta["volume_ml"] == pytest.approx(0.192)
    assert crop.other is not None and crop.other.sum() > 0  # the touching real tumour stays out of the rim
    # A relative input-label path is also looked up next to the record.
    rec = json.loads((tmp_path / "b" / "c.json").read_text())
    (tmp_path / "b" / "c.json").write_text(json.dumps({**rec, "label": "input_label.nii.gz"}))
    (again,) = crops_from_synthetic_dir(tmp_path / "b", "liver", spacing=1.0)
    assert again.meta["mask"] == "new_voxels" and again.meta["voxels"] == 192
    # (c) without the input label: the old tumour component, merged with the real tumour it touches
    # (as far as the crop, the box plus 5 mm, reaches).
    (tmp_path / "b" / "input_label.nii.gz").unlink()
    (old,) = crops_from_synthetic_dir(tmp_path / "b", "liver", spacing=1.0)
    assert old.meta["mask"] == "component"
    assert old.meta["voxels"] == int(syn1.sum() + real[15:31, 7:23, 2:18].sum()) == 192 + 500
    # (a) an instance map wins over the input label, even where (b) would take a neighbour's voxels.
    (syn1, syn2), real = _touching_case(tmp_path / "a", second=True, instances=True)
    crops = crops_from_synthetic_dir(tmp_path / "a", "liver", spacing=1.0)
    assert [(c.index, c.meta["mask"], c.meta["voxels"]) for c in crops] == [
        (1, "instances", int(syn1.sum())), (2, "instances", int(syn2.sum()))]
    # The same folder without the instance map: lesion 1's box also holds part of lesion 2.
    rec = json.loads((tmp_path / "a" / "c.json").read_text())
    del rec["outputs"]["lesions"]
    (tmp_path / "a" / "c.json").write_text(json.dumps(rec))
    by_index = {c.index: c.meta for c in crops_from_synthetic_dir(tmp_path / "a", "liver", spacing=1.0)}
    assert by_index[1]["mask"] == "new_voxels" and by_index[1]["voxels"] == int(syn1.sum()) + 24
    assert by_index[2]["voxels"] == int(syn2.sum())


def test_instance_map_must_match_the_label(tmp_path):
    from freetumor.io import save_volume

    _touching_case(tmp_path / "a", instances=True)
    save_volume(Volume(np.zeros((4, 4, 4), np.uint8), np.eye(4)), tmp_path / "a" / "c_lesions.nii.gz")
    with pytest.raises(InputError, match="lesion instance map shape") as exc:
        crops_from_synthetic_dir(tmp_path / "a", "liver")
    assert "c_lesions.nii.gz" in str(exc.value)


def test_run_realism_end_to_end(phantom_setup, tmp_path):
    root, real = phantom_setup
    out = tmp_path / "out"
    res = run_realism(real, root / "synthetic", out, "liver", folds=5, seed=0)
    assert sorted(p.name for p in out.iterdir()) == ["features.csv", "lesions.png", "realism.json", "realism.png"]
    data = json.loads((out / "realism.json").read_text())
    assert data == json.loads(json.dumps(res))
    assert 0.0 <= data["machine_vtt"]["auc"] <= 1.0
    assert data["summary"]["auc"] == data["machine_vtt"]["auc"]
    assert data["counts"]["synthetic_lesions"] == 4 and data["counts"]["real_lesions"] >= 4
    assert data["features"] == list(FEATURE_NAMES) and data["label_map"] == "abdomen7"
    assert data["distance"]["frechet"] >= 0
    rows = (out / "features.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["source", "case", "index", "volume_ml"]
    assert len(rows) == 1 + data["counts"]["real_lesions"] + data["counts"]["synthetic_lesions"]
    assert (out / "realism.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_realism_bad_inputs(phantom_setup, tmp_path):
    root, real = phantom_setup
    out = tmp_path / "out"
    with pytest.raises(InputError, match="synthetic folder not found") as exc:
        run_realism(real, root / "missing", out, "liver")
    assert "\n" not in str(exc.value) and "missing" in str(exc.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="no.*synthesis records"):
        run_realism(real, root / "real", out, "liver")  # a folder without records
    with pytest.raises(InputError, match="datalist not found"):
        run_realism(tmp_path / "nope.json", root / "synthetic", out, "liver")
    assert not out.exists()
