from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from freetumor.errors import InputError
from freetumor.io import Volume, load_volume
from freetumor.labels import get_label_map
from freetumor.organs import get_organ
from freetumor.shapes import OrganTooSmallError
from freetumor.synthesis import BLUR_SIGMA_RANGE, Synthesizer, _BLUR_TRUNCATE


def _reach(image: Volume, organ: str) -> np.ndarray:
    """Largest blur reach (voxels per axis) of the soft mask."""
    t = np.asarray(get_organ(organ).target_spacing)
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
