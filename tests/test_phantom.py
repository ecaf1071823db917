"""The procedural CT phantom: anatomy, intensities, tumours, determinism, cohort files.

Orientation convention (nibabel, "Coordinate systems and affines"): world
coordinates are RAS+, i.e. +x points to the patient's Right, +y Anterior,
+z Superior; ``nib.aff2axcodes`` names the direction each voxel axis increases
toward. (DICOM's LPS is the opposite in x and y, which is why io.py flips them.)
So an anatomically correct phantom has its liver at world x > 0.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion

import freetumor.phantom as phantom
from freetumor.data import check_datalist, load_datalist
from freetumor.errors import ConfigError
from freetumor.io import load_volume
from freetumor.labels import get_label_map, label_values
from freetumor.phantom import LABEL_NAMES, make_case, write_cohort

LIVER, LIVER_T, PANC, PANC_T, KIDNEY, KIDNEY_T = 1, 2, 3, 4, 5, 6
LUNG, LESION = 1, 2


def ml(mask: np.ndarray, vol) -> float:
    return float(mask.sum()) * float(np.prod(vol.spacing)) / 1000.0


def centroid_mm(mask: np.ndarray, vol) -> np.ndarray:
    return vol.voxel_to_mm(np.argwhere(mask).mean(axis=0))


def interior(mask: np.ndarray, it: int = 2) -> np.ndarray:
    return binary_erosion(mask, iterations=it)


@pytest.fixture(scope="module")
def chest_tumour_case():
    return make_case("chest", seed=13, tumour=True)


@pytest.fixture(scope="module")
def abdomen_healthy_12():
    """Same seed as the conftest tumour case, without tumours."""
    return make_case("abdomen", seed=12, tumour=False)


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("region, shape, spacing", [
    ("abdomen", (176, 136, 72), (2.0, 2.0, 2.5)),
    ("chest", (176, 144, 56), (2.0, 2.0, 5.0)),
])
def test_defaults_geometry_and_dtypes(request, region, shape, spacing):
    image, label = request.getfixturevalue(f"{region}_case")
    assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
    assert image.shape == label.shape == shape
    assert image.spacing == label.spacing == spacing
    assert np.array_equal(image.affine, label.affine)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert np.allclose(image.affine[:3, :3], np.diag(spacing))
    centre = image.voxel_to_mm((np.asarray(shape) - 1) / 2.0)
    assert np.allclose(centre, 0.0, atol=1e-6)
    assert image.array.min() >= -1024 and image.array.max() <= 3071


def test_shape_and_spacing_overrides_keep_the_anatomy_in_mm():
    image, label = make_case("abdomen", seed=1, shape=(48, 40, 24), spacing=(3.0, 3.0, 3.0))
    assert image.shape == (48, 40, 24) and image.spacing == (3.0, 3.0, 3.0)
    assert np.allclose(image.voxel_to_mm([23.5, 19.5, 11.5]), 0.0)
    # Same patient on a coarser grid covering the same field of view: same organs in mm.
    fine_img, fine_lab = make_case("abdomen", seed=1)
    coarse_img, coarse_lab = make_case("abdomen", seed=1, shape=(117, 91, 60), spacing=(3.0, 3.0, 3.0))
    for organ in (LIVER, PANC, KIDNEY):
        v_fine, v_coarse = ml(fine_lab.array == organ, fine_img), ml(coarse_lab.array == organ, coarse_img)
        assert v_coarse == pytest.approx(v_fine, rel=0.12), organ
    c_fine = centroid_mm(fine_lab.array == LIVER, fine_img)
    c_coarse = centroid_mm(coarse_lab.array == LIVER, coarse_img)
    assert np.abs(c_fine - c_coarse).max() < 4.0


# ----------------------------------------------------------------------------- abdomen


def test_abdomen_labels_and_organ_volumes(abdomen_case):
    image, label = abdomen_case
    values = label_values(label.array)
    assert get_label_map("abdomen7").unknown_values(values) == []
    assert set(values) == {0, LIVER, PANC, KIDNEY}  # healthy: no tumour ids
    assert 1000 <= ml(label.array == LIVER, image) <= 3000
    assert 20 <= ml(label.array == PANC, image) <= 200
    assert 150 <= ml(label.array == KIDNEY, image) <= 800


def test_abdomen_intensities(abdomen_case):
    image, label = abdomen_case
    a, lab = image.array.astype(np.float64), label.array
    assert 80 <= a[lab == LIVER].mean() <= 150
    assert 120 <= a[lab == KIDNEY].mean() <= 250
    assert 60 <= a[lab == PANC].mean() <= 130
    # Air around the body (the corners of every slice).
    corners = np.concatenate([a[:6, :6].ravel(), a[-6:, :6].ravel(), a[:6, -6:].ravel(), a[-6:, -6:].ravel()])
    assert -1010 <= corners.mean() <= -990
    # Bone, fat and the lung bases.
    assert (a > 300).sum() > 2000 and a.max() > 500
    body = a > -500
    assert ((a > -150) & (a < -60)).sum() > 0.1 * body.sum()  # subcutaneous and visceral fat
    top = a[40:-40, 30:-30, -4:]
    assert (top < -700).sum() > 200  # lung bases inside the body in the top slices
    # Noise: the liver interior is not flat but not noisier than a CT either.
    assert 6 <= a[interior(lab == LIVER, 3)].std() <= 35


def test_abdomen_anatomy_sides_and_order(abdomen_case):
    image, label = abdomen_case
    lab = label.array
    liver = centroid_mm(lab == LIVER, image)
    assert liver[0] > 20  # RAS+: x > 0 is the patient's right, where the liver belongs
    kid = np.argwhere(lab == KIDNEY)
    x_mm = image.voxel_to_mm(kid)[:, 0]
    assert (x_mm > 30).sum() > 1000 and (x_mm < -30).sum() > 1000  # two kidneys, one each side
    kidneys, pancreas = centroid_mm(lab == KIDNEY, image), centroid_mm(lab == PANC, image)
    assert liver[2] > kidneys[2]  # liver superior to the kidneys
    assert pancreas[1] > kidneys[1]  # pancreas anterior to the kidneys


def test_abdomen_tumours_replace_organ_and_are_hypodense(abdomen_tumour_case, abdomen_healthy_12):
    image, label = abdomen_tumour_case
    h_image, h_label = abdomen_healthy_12
    lab, h_lab = label.array, h_label.array
    assert (lab == LIVER_T).any(), "the first tumour is always in the liver"
    assert get_label_map("abdomen7").unknown_values(label_values(lab)) == []
    changed = lab != h_lab
    # Same seed, same anatomy and noise: labels change only where a tumour replaced its organ.
    assert np.array_equal(changed, np.isin(lab, [LIVER_T, PANC_T, KIDNEY_T]))
    a = image.array.astype(np.float64)
    for tumour, organ in ((LIVER_T, LIVER), (PANC_T, PANC), (KIDNEY_T, KIDNEY)):
        t = lab == tumour
        if not t.any():
            continue
        assert np.all(h_lab[t] == organ)  # inside the organ
        assert (binary_dilation(t) & (lab == organ)).any()  # and adjacent to what is left of it
        assert a[t].mean() < a[lab == organ].mean() - 15
    # The image changes only in and right around the organs that got tumours (the
    # partial-volume blur reaches 2 voxels along each axis).
    hosts = np.isin(h_lab, [o for t, o in ((2, 1), (4, 3), (6, 5)) if (lab == t).any()])
    diff = image.array != h_image.array
    assert diff.any() and not (diff & ~binary_dilation(hosts, structure=np.ones((5, 5, 5), bool))).any()


def test_tumour_false_has_no_tumours(abdomen_case, chest_case):
    assert not np.isin(abdomen_case[1].array, [LIVER_T, PANC_T, KIDNEY_T]).any()
    assert not (chest_case[1].array == LESION).any()


def test_abdomen_tumour_sites_vary_with_seed():
    sites = set()
    for seed in range(12):
        _, label = make_case("abdomen", seed=seed, tumour=True, shape=(112, 96, 56), spacing=(3.0, 3.0, 3.0))
        values = set(label_values(label.array))
        assert LIVER_T in values
        sites |= values & {PANC_T, KIDNEY_T}
        if len(sites) == 2:
            break
    assert sites == {PANC_T, KIDNEY_T}


# ----------------------------------------------------------------------------- chest


def test_chest_labels_volumes_and_intensities(chest_case):
    image, label = chest_case
    a, lab = image.array.astype(np.float64), label.array
    assert set(label_values(lab)) == {0, LUNG}
    lungs = lab == LUNG
    assert 1500 <= ml(lungs, image) <= 9000
    x_mm = image.voxel_to_mm(np.argwhere(lungs))[:, 0]
    vox_ml = float(np.prod(image.spacing)) / 1000
    assert (x_mm > 0).sum() * vox_ml > 700 and (x_mm < 0).sum() * vox_ml > 700  # two lungs
    assert -900 <= a[lungs].mean() <= -700
    # Faint vessels: some lung voxels are much brighter than the parenchyma.
    assert (a[lungs] > -500).mean() > 0.002
    corners = np.concatenate([a[:6, :6].ravel(), a[-6:, -6:].ravel()])
    assert -1010 <= corners.mean() <= -990
    assert (a > 300).sum() > 1000
    # Mediastinum / heart: soft tissue between the lungs at mid height.
    k = image.shape[2] // 2 - 6
    mid = a[image.shape[0] // 2 - 5: image.shape[0] // 2 + 5, :, k]
    assert ((mid > 0) & (mid < 100)).sum() > 50


def test_chest_lesions_are_hyperdense_and_inside_the_lung(chest_tumour_case, chest_case):
    image, label = chest_tumour_case
    lab, h_lab = label.array, chest_case[1].array
    lesion = lab == LESION
    assert lesion.any()
    assert np.all(h_lab[lesion] == LUNG)
    assert np.array_equal(lab != h_lab, lesion)
    a = image.array.astype(np.float64)
    assert a[lesion].mean() > a[lab == LUNG].mean() + 200


# ----------------------------------------------------------------------------- seeds


def test_same_seed_same_arrays_different_seed_different():
    kw = dict(shape=(64, 56, 24))
    a1, l1 = make_case("chest", seed=5, tumour=True, **kw)
    a2, l2 = make_case("chest", seed=5, tumour=True, **kw)
    b1, m1 = make_case("chest", seed=6, tumour=True, **kw)
    assert np.array_equal(a1.array, a2.array) and np.array_equal(l1.array, l2.array)
    assert not np.array_equal(a1.array, b1.array) and not np.array_equal(l1.array, m1.array)
    g1, _ = make_case("abdomen", seed=np.random.default_rng(7), **kw)
    g2, _ = make_case("abdomen", seed=np.random.default_rng(7), **kw)
    g3, _ = make_case("abdomen", seed=np.random.default_rng(8), **kw)
    assert np.array_equal(g1.array, g2.array) and not np.array_equal(g1.array, g3.array)


def test_no_global_random_state_used():
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    make_case("chest", seed=2, tumour=True, shape=(40, 40, 16))
    assert np.array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize("kwargs", [
    dict(region="pelvis"), dict(shape=(0, 10, 10)), dict(shape=(10, 10)), dict(shape=(10.5, 10, 10)),
    dict(spacing=(1.0, -1.0, 1.0)), dict(spacing=(1.0, float("nan"), 1.0)), dict(seed=-1), dict(seed=1.5),
])
def test_make_case_rejects_bad_arguments(kwargs):
    with pytest.raises(ConfigError) as err:
        make_case(**kwargs)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- cohort


def test_write_cohort_files_datalist_and_round_trip(tmp_path):
    out = tmp_path / "cohort"
    dl = write_cohort(out, 3, seed=4, region="abdomen", tumour_fraction=0.5)
    assert dl == out / "datalist.json"
    data = json.loads(dl.read_text())
    assert data["name"] == "freetumor-phantom" and data["region"] == "abdomen"
    assert data["label_map"] == "abdomen7" and data["description"]
    assert data["labels"] == {str(k): v for k, v in LABEL_NAMES["abdomen7"].items()}
    assert data["labels"]["1"] == "liver" and data["labels"]["0"] == "background"
    entries = data["training"]
    assert [e["image"] for e in entries] == [f"imagesTr/phantom_{i:03d}.nii.gz" for i in range(3)]
    assert [e["label"] for e in entries] == [f"labelsTr/phantom_{i:03d}.nii.gz" for i in range(3)]
    assert sum(e["tumour"] for e in entries) == round(3 * 0.5)
    assert sorted(os.listdir(out)) == ["datalist.json", "imagesTr", "labelled.json", "labelsTr", "unlabelled.json"]
    pools = [json.loads((out / n).read_text())["training"] for n in ("labelled.json", "unlabelled.json")]
    assert pools[0] == [e for e in entries if e["tumour"]] and pools[1] == [e for e in entries if not e["tumour"]]
    assert not [p for p in os.listdir(tmp_path) if p != "cohort"]  # no staging leftovers
    for i, e in enumerate(entries):
        img, lab = load_volume(out / e["image"]), load_volume(out / e["label"])
        exp_img, exp_lab = make_case("abdomen", seed=np.random.default_rng(np.random.SeedSequence([4, i])),
                                     tumour=e["tumour"])
        assert img.array.dtype == np.int16 and lab.array.dtype == np.uint8
        assert np.array_equal(img.array, exp_img.array) and np.array_equal(lab.array, exp_lab.array)
        assert np.allclose(img.affine, exp_img.affine) and np.allclose(lab.affine, exp_img.affine)
        assert bool(np.isin(lab.array, [2, 4, 6]).any()) == e["tumour"]
    # The package's own datalist reader and checker accept it.
    assert len(load_datalist(dl)) == 3
    assert all(c.ok for c in check_datalist(dl))


def test_write_cohort_chest_all_tumours(tmp_path):
    dl = write_cohort(tmp_path / "c", 2, seed=1, region="chest", tumour_fraction=1.0)
    data = json.loads(dl.read_text())
    assert data["label_map"] == "chest3" and data["labels"] == {"0": "background", "1": "lung", "2": "lesion"}
    assert [e["tumour"] for e in data["training"]] == [True, True]
    for e in data["training"]:
        assert (load_volume(dl.parent / e["label"]).array == LESION).any()


@pytest.mark.parametrize("cases, fraction", [(1, 0.5), (2, 0.5), (3, 0.5), (4, 0.5), (5, 0.5), (7, 0.3),
                                             (10, 0.25), (6, 1.0), (6, 0.0), (9, 0.9)])
def test_tumour_cases_count_and_spread(cases, fraction):
    chosen = phantom._tumour_cases(cases, fraction)
    assert len(chosen) == round(cases * fraction)
    assert all(0 <= i < cases for i in chosen)
    if len(chosen) >= 2:  # spread out, not bunched at the start
        gaps = np.diff(sorted(chosen))
        assert gaps.min() >= int(cases // len(chosen))


def test_four_case_cohort_alternates():
    assert sorted(phantom._tumour_cases(4, 0.5)) == [1, 3]


@pytest.mark.parametrize("kwargs", [
    dict(cases=0), dict(cases=-2), dict(cases=1.5), dict(cases=True), dict(region="head"),
    dict(tumour_fraction=-0.1), dict(tumour_fraction=1.5), dict(tumour_fraction="half"), dict(seed=-3),
])
def test_write_cohort_bad_arguments_write_nothing(tmp_path, kwargs):
    args = dict(cases=2, region="chest")
    args.update(kwargs)
    with pytest.raises(ConfigError) as err:
        write_cohort(tmp_path / "out", args.pop("cases"), **args)
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []


def test_write_cohort_failure_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_save(vol, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(vol, path)

    real_save = phantom.save_volume
    monkeypatch.setattr(phantom, "save_volume", failing_save)
    with pytest.raises(OSError):
        write_cohort(tmp_path / "out", 2, region="chest")
    assert os.listdir(tmp_path) == []


def test_tumour_radius_option_makes_early_tumours():
    from freetumor.evaluation import connected_lesions
    from freetumor.errors import ConfigError

    for seed in range(3):
        _, lab = make_case("abdomen", seed=seed, tumour=True, tumour_radius_mm=(3.0, 6.0))
        _, lesions = connected_lesions(np.isin(lab.array, [2, 4, 6]), lab.spacing)
        assert lesions and all(les.diameter_mm < 20 for les in lesions)
    for bad in ((5.0, 2.0), (1.0, 1e6), (0.5, 2.0), (float("nan"), 3.0), (2.0, float("inf"))):
        with pytest.raises(ConfigError, match=r"--tumour-radius-mm must be MIN MAX with 1 <= MIN <= MAX <= 50 mm"):
            make_case("abdomen", seed=0, tumour=True, tumour_radius_mm=bad)
    _, lab = make_case("abdomen", seed=0, tumour=True, tumour_radius_mm=(1.0, 50.0))  # the bounds themselves
