from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from conftest import run_cli
from freetumor.errors import ConfigError, InputError
from freetumor.io import Volume, load_volume, save_volume
from freetumor.labels import get_label_map
from freetumor.organs import get_organ
from freetumor.phantom import make_case
from freetumor.shapes import OrganTooSmallError
from freetumor.synthesis import (BLUR_SIGMA_RANGE, SynthesisOptions, Synthesizer, _BLUR_TRUNCATE, build_synthesizer,
                                 synthesize_case)


def _reach(image: Volume, organ: str) -> np.ndarray:
    """Largest blur reach (voxels per axis) of the soft mask (default physical convention, axes in RAS order)."""
    t = np.asarray(get_organ(organ).voxel_mm())
    return np.ceil(_BLUR_TRUNCATE * BLUR_SIGMA_RANGE[1] * t / np.asarray(image.spacing)).astype(int)


def _check_locality(image, label, result, organ, label_map):
    lm = get_label_map(label_map, organ)
    organ_mask = lm.organ_mask(label.array, organ)
    changed = result.image.array != image.array
    assert changed.any()
    lesions = np.zeros(image.shape, bool)
    for m in result.masks:
        lesions |= m.full(image.shape)
    r = _reach(image, organ)
    struct = np.ones(tuple(2 * v + 1 for v in r), bool)
    near = binary_dilation(lesions, structure=struct)
    # Nothing changes outside the blurred tumour masks, nor outside the organ.
    assert not (changed & ~near).any()
    assert not (changed & ~organ_mask).any()
    # Labels change only inside the organ, and only to the tumour id.
    lab_changed = result.label.array != label.array
    assert not (lab_changed & ~organ_mask).any()
    assert np.all(result.label.array[lab_changed] == lm.tumour_id(organ))
    assert np.array_equal(lab_changed, lesions)


@pytest.mark.parametrize("organ", ["liver", "pancreas", "kidney"])
def test_abdomen_tumours_are_hypodense_and_local(abdomen_case, organ):
    image, label = abdomen_case
    before_img, before_lab = image.array.copy(), label.array.copy()
    res = Synthesizer(organ, size="small")(image, label, count=2, seed=3)
    assert np.array_equal(image.array, before_img) and np.array_equal(label.array, before_lab)  # not in place
    _check_locality(image, label, res, organ, None)
    for rec, m in zip(res.lesions, res.masks):
        inside = m.full(image.shape)
        assert rec["mean_hu_after"] < rec["mean_hu_before"] - 5
        assert np.all(res.image.array[inside] <= image.array[inside])
        assert rec["volume_ml"] == pytest.approx(inside.sum() * np.prod(image.spacing) / 1000, rel=1e-3)


@pytest.mark.parametrize("organ", ["lung", "covid"])
def test_chest_lesions_are_hyperdense(chest_case, organ):
    image, label = chest_case
    res = Synthesizer(organ)(image, label, count=2, seed=5)
    _check_locality(image, label, res, organ, None)
    for rec in res.lesions:
        assert rec["mean_hu_after"] > rec["mean_hu_before"] + 20
        assert rec["size_class"] in get_organ(organ).size_classes and rec["shape_convention"] == "physical"


def test_real_tumour_voxels_never_change(abdomen_tumour_case):
    image, label = abdomen_tumour_case
    real = label.array == 2
    assert real.any(), "phantom tumour case should have a liver tumour"
    res = Synthesizer("liver", size="large")(image, label, count=2, seed=1)
    assert np.array_equal(res.image.array[real], image.array[real])
    assert np.all(res.label.array[real] == 2)


def test_seeds(abdomen_case):
    image, label = abdomen_case
    s = Synthesizer("liver")
    a, b, c = s(image, label, seed=9), s(image, label, seed=9), s(image, label, seed=10)
    assert np.array_equal(a.image.array, b.image.array) and np.array_equal(a.label.array, b.label.array)
    assert a.lesions == b.lesions
    assert not np.array_equal(a.image.array, c.image.array)


def test_record_fields(abdomen_case):
    image, label = abdomen_case
    res = Synthesizer("kidney", size="tiny")(image, label, count=3, seed=2)
    assert [r["index"] for r in res.lesions] == [1, 2, 3]
    for r in res.lesions:
        for key in ("centre_voxel", "centre_mm", "semi_axes_mm", "volume_ml", "size_class",
                    "mean_hu_before", "mean_hu_after", "seed", "version"):
            assert key in r
        assert r["size_class"] == "tiny"
        assert np.allclose(r["centre_mm"], image.voxel_to_mm(r["centre_voxel"]), atol=0.01)


def test_fixed_and_callable_difference(abdomen_case):
    image, label = abdomen_case
    weak = Synthesizer("liver", size="medium", difference=0.05)(image, label, seed=4)
    strong = Synthesizer("liver", size="medium", difference=0.6)(image, label, seed=4)
    dw = weak.lesions[0]["mean_hu_before"] - weak.lesions[0]["mean_hu_after"]
    ds = strong.lesions[0]["mean_hu_before"] - strong.lesions[0]["mean_hu_after"]
    assert 0 < dw < ds
    seen = {}

    def gen(crop, mask, organ):
        seen["shape"], seen["organ"] = crop.shape, organ.name
        return np.full(crop.shape, 0.6, np.float32)

    g = Synthesizer("liver", size="medium", difference=gen)(image, label, seed=4)
    assert seen["organ"] == "liver" and g.lesions[0]["difference_source"] == "generator"
    assert np.array_equal(g.image.array, strong.image.array)


# ----------------------------------------------------------------- bad input
def _vol(arr, like: Volume, name: str) -> Volume:
    return Volume(arr, like.affine.copy(), None, name)


def test_errors(abdomen_case):
    image, label = abdomen_case
    s = Synthesizer("liver")
    no_liver = label.array.copy()
    no_liver[no_liver == 1] = 0
    with pytest.raises(InputError, match=r"lab.nii.gz: no liver"):
        s(image, _vol(no_liver, label, "lab.nii.gz"))
    nan = image.array.astype(np.float32)
    nan[5, 5, 5] = np.nan
    with pytest.raises(InputError, match=r"img.nii.gz: contains 1 NaN"):
        s(_vol(nan, image, "img.nii.gz"), label)
    odd = label.array.copy()
    odd[0, 0, 0] = 9
    with pytest.raises(InputError, match=r"lab.nii.gz: label values 9 are not in label map 'abdomen7'"):
        s(image, _vol(odd, label, "lab.nii.gz"))
    norm = ((image.array.astype(np.float32) + 1024) / 4095).astype(np.float32)
    with pytest.raises(InputError, match=r"img.nii.gz: .*too narrow"):
        s(_vol(norm, image, "img.nii.gz"), label)
    mr = (image.array.astype(np.int32) + 1024).astype(np.int16)
    with pytest.raises(InputError, match=r"img.nii.gz: no value below 0"):
        s(_vol(mr, image, "img.nii.gz"), label)
    with pytest.raises(InputError, match=r"lab.nii.gz: shape"):
        s(image, _vol(label.array[:-1], label, "lab.nii.gz"))
    shifted = Volume(label.array, label.affine + np.diag([0, 0, 0, 0.0]) + _shift(5.0), None, "lab.nii.gz")
    with pytest.raises(InputError, match=r"lab.nii.gz: affine"):
        s(image, shifted)


def _shift(mm):
    m = np.zeros((4, 4))
    m[0, 3] = mm
    return m


def test_organ_too_small(abdomen_case):
    image, label = abdomen_case
    small = label.array.copy()
    small[small == 5] = 0
    idx = np.argwhere(label.array == 5)[:30]
    small[tuple(idx.T)] = 5
    with pytest.raises(OrganTooSmallError, match=r"lab.nii.gz: kidney .* too small for a large tumour"):
        Synthesizer("kidney", size="large")(image, _vol(small, label, "lab.nii.gz"))


# ----------------------------------------------------------------- real CT
@pytest.mark.parametrize("organ", ["liver", "pancreas", "kidney"])
def test_real_ct_totalseg(totalseg, organ):
    image = load_volume(totalseg / "ct3mm_image.nii.gz")
    label = load_volume(totalseg / "ct3mm_label.nii.gz")
    res = Synthesizer(organ, label_map="totalseg", size="small")(image, label, count=1, seed=0)
    _check_locality(image, label, res, organ, "totalseg")
    assert res.lesions[0]["mean_hu_after"] < res.lesions[0]["mean_hu_before"]


def test_real_ct_native_slab_lps(totalseg):
    image = load_volume(totalseg / "slab1mm_image.nii.gz")
    label = load_volume(totalseg / "slab1mm_label_freetumor7.nii.gz")
    res = Synthesizer("liver", size="small")(image, label, count=1, seed=0)
    _check_locality(image, label, res, "liver", None)
    r = res.lesions[0]
    # Physical size: semi-axes are 9-15 mm whatever the 0.98 x 0.98 x 2 mm grid.
    assert all(9 - 1e-6 <= a <= 15 + 1e-6 for a in r["semi_axes_mm"])


# ------------------------------------------------------------ physical shapes
def _lung_block(spacing, *, lps: bool = False):
    """A chest3 (image, label) pair: a 70 mm lung cube (-850 HU) in soft tissue, 84 mm across, centred at 0 mm.

    ``lps`` stores the same volume flipped along x and y with an LPS affine (the same organ in mm).
    """
    n = [int(round(84 / s)) for s in spacing]
    coords = [(np.arange(k) - (k - 1) / 2) * s for k, s in zip(n, spacing)]
    inside = np.ones(n, bool)
    for ax, c in enumerate(coords):
        inside &= (np.abs(c) < 35).reshape([-1 if k == ax else 1 for k in range(3)])
    image = np.where(inside, -850, 40).astype(np.int16)
    label = inside.astype(np.uint8)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-c[-1] for c in coords]
    if lps:
        image, label = image[::-1, ::-1].copy(), label[::-1, ::-1].copy()
        affine[:2] *= -1
    return Volume(image, affine, None, "img.nii.gz"), Volume(label, affine.copy(), None, "lab.nii.gz")


def _extent_mm(mask_slices, image: Volume) -> np.ndarray:
    """Physical extent (mm) of a box along R-L, A-P, S-I (the test volumes are axis-aligned)."""
    return np.array([(s.stop - s.start) * sp for s, sp in zip(mask_slices, image.spacing)])


def _margins_mm(image: Volume, result) -> np.ndarray:
    """How far (mm) the changed intensities reach beyond the lesion box, per axis (the blur's reach)."""
    changed = np.argwhere(result.image.array != image.array)
    lo, hi = changed.min(axis=0), changed.max(axis=0) + 1
    box = result.masks[0].slices
    return np.array([(b.start - a + c - b.stop) / 2 * sp for a, c, b, sp in zip(lo, hi, box, image.spacing)])


@pytest.mark.parametrize("size", ["small", "large"])
def test_lesion_same_in_mm_at_0p7_and_5mm_slices_and_in_an_lps_copy(size):
    volumes = {name: _lung_block(sp, lps=lps) for name, sp, lps in
               [("0.7 mm", (0.7, 0.7, 0.7), False), ("5 mm slices", (0.7, 0.7, 5.0), False),
                ("LPS 5 mm slices", (0.7, 0.7, 5.0), True)]}
    compared = 0
    for seed in range(8):
        out = {name: Synthesizer("lung", size=size)(img, lab, count=1, seed=seed) for name, (img, lab) in volumes.items()}
        recs = {name: r.lesions[0] for name, r in out.items()}
        # The same lesion is drawn whatever the grid (only the centre voxel depends on it).
        assert len({tuple(r["semi_axes_mm"]) for r in recs.values()}) == 1
        semi = recs["0.7 mm"]["semi_axes_mm"]
        assert max(semi) / min(semi) <= 1.25 / 0.75 + 1e-3, semi  # one class radius in mm on every axis
        if any(r["inside_fraction"] < 1.0 for r in recs.values()):
            continue  # clipped by the organ differently at different centres
        compared += 1
        img0 = volumes["0.7 mm"][0]
        ref_ext, ref_ml = _extent_mm(out["0.7 mm"].masks[0].slices, img0), recs["0.7 mm"]["volume_ml"]
        assert 0.5 < ref_ext[2] / ref_ext[:2].mean() < 2.0, ref_ext  # round in mm
        margins = _margins_mm(img0, out["0.7 mm"])
        assert margins[2] < 1.5 * margins[:2].mean() + 0.7, margins  # the blur reaches as far head-foot as across
        for name in ("5 mm slices", "LPS 5 mm slices"):
            img = volumes[name][0]
            ext = _extent_mm(out[name].masks[0].slices, img)
            assert np.all(np.abs(ext - ref_ext) <= np.asarray(img.spacing) + 0.7 + 1e-6), (name, ext, ref_ext)
            if np.all(ref_ext >= 4 * np.asarray(img.spacing)):
                assert recs[name]["volume_ml"] == pytest.approx(ref_ml, rel=0.1), name
        # The LPS copy is the same volume: the lesion is the mirror image, voxel for voxel.
        assert recs["LPS 5 mm slices"]["voxels"] == recs["5 mm slices"]["voxels"]
        assert all(r.get("shape_convention") == "physical" for r in recs.values())
    assert compared >= 2


def test_released_shape_convention_stretches_chest_lesions_head_foot():
    image, label = _lung_block((0.7, 0.7, 0.7))
    rel = Synthesizer("lung", size="tiny", shape_convention="released")(image, label, count=1, seed=1)
    phys = Synthesizer("lung", size="tiny")(image, label, count=1, seed=1)
    assert rel.lesions[0]["shape_convention"] == "released" and phys.lesions[0]["shape_convention"] == "physical"
    ext_rel, ext_phys = (_extent_mm(r.masks[0].slices, image) for r in (rel, phys))
    assert ext_rel[2] / ext_rel[:2].mean() > 2.5 and ext_phys[2] / ext_phys[:2].mean() < 2.0
    # Released: tiny is 4 voxels at 1.25 x 1.25 x 5 mm; physical: 2.2 voxels of 1.25 mm on every axis.
    assert 15.0 <= rel.lesions[0]["semi_axes_mm"][2] <= 25.0 and max(phys.lesions[0]["semi_axes_mm"]) <= 3.5
    margins = _margins_mm(image, rel)
    assert margins[2] > 2 * margins[:2].mean()  # the released blur is 4x longer head-foot
    with pytest.raises(ConfigError, match="unknown shape convention 'voxel'; choose one of physical, released"):
        Synthesizer("lung", shape_convention="voxel")


# ------------------------------------------------------------ reruns into one --out
@pytest.fixture()
def small_case(tmp_path):
    """A small abdominal phantom saved as ct/ct.nii.gz and ct/ct_seg.nii.gz (case ``ct``: a generic file
    name takes its folder's name)."""
    image, label = make_case("abdomen", seed=21, shape=(96, 80, 48))
    src = tmp_path / "ct"
    src.mkdir()
    save_volume(image, src / "ct.nii.gz")
    save_volume(label, src / "ct_seg.nii.gz")
    return src / "ct.nii.gz", src / "ct_seg.nii.gz"


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_synthesize_refuses_an_earlier_run_unless_overwrite(small_case, tmp_path):
    image, label = small_case
    out = tmp_path / "out"
    args = ["synthesize", "--image", image, "--label", label, "--organ", "liver", "--out", out, "--size", "small"]
    first = run_cli(*args, "--seed", 1)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ct.json", "ct.png", "ct_image.nii.gz", "ct_label.nii.gz"]
    before = _snapshot(out)
    again = run_cli(*args, "--seed", 2, "--no-png")
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in again.stderr, again.stderr
    assert "already holds case 'ct'" in lines[0] and "--overwrite" in lines[0]
    assert _snapshot(out) == before  # nothing written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # --overwrite replaces the case and leaves no stale file of it (the old figure, with --no-png).
    other = out / "other.json"
    other.write_text("{}")
    replaced = run_cli(*args, "--seed", 2, "--no-png", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ct.json", "ct_image.nii.gz", "ct_label.nii.gz", "other.json"]
    rec = json.loads((out / "ct.json").read_text())
    assert rec["seed"] == 2 and "figure" not in rec["outputs"] and rec["shape_convention"] == "physical"
    assert (out / "ct_image.nii.gz").read_bytes() != before["ct_image.nii.gz"]
    assert other.read_text() == "{}"  # another case's file is not touched


def test_synthesize_never_writes_over_its_inputs(small_case, tmp_path):
    image, label = small_case
    src = image.parent
    shutil.move(label, src / "ct_label.nii.gz")  # the name the output label would have, in the same folder
    label = src / "ct_label.nii.gz"
    before = _snapshot(src)
    r = run_cli("synthesize", "--image", image, "--label", label, "--organ", "liver", "--out", src, "--overwrite")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "ct_label.nii.gz: is also the output ct_label.nii.gz of case 'ct'" in lines[0]
    assert _snapshot(src) == before


def test_synthesize_case_overwrite_flag(small_case, tmp_path):
    image, label = small_case
    synthesizer = build_synthesizer(SynthesisOptions("liver", size="tiny"))
    out = tmp_path / "lib"
    rec = synthesize_case(synthesizer, image, label, out, seed=0, png=False)
    assert rec["outputs"] == {"image": "ct_image.nii.gz", "label": "ct_label.nii.gz", "record": "ct.json"}
    with pytest.raises(InputError, match=r"lib: already holds case 'ct' \(ct_image.nii.gz, ct_label.nii.gz, ct.json\)"):
        synthesize_case(synthesizer, image, label, out, seed=1, png=False, overwrite=False)
    # The library default replaces (synthesize-batch and the demo rerun into their folders).
    assert synthesize_case(synthesizer, image, label, out, seed=1, png=False)["seed"] == 1
