"""Rules that the rest of the suite exercised without stating them (issue 25, item 6: the surviving
mutants). Each test names its rule and checks it where a wrong rule would show: exactly at a
boundary, or with the one input the rule is about."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from freetumor.config import QCConfig
from freetumor.errors import CaseErrors, InputError
from freetumor.io import save_volume
from freetumor.lesions.features import LesionCrop
from freetumor.lesions.measure import measure_crop
from freetumor.organs import get_organ
from freetumor.phantom import make_case


def _ball(radius: float, half: int = 14) -> np.ndarray:
    z, y, x = np.mgrid[-half:half + 1, -half:half + 1, -half:half + 1]
    return x ** 2 + y ** 2 + z ** 2 <= radius ** 2


# ----------------------------------------------------------------------------- lesion measurements
def test_lesion_diameter_is_that_of_the_ball_of_equal_volume():
    """Rule: diameter_mm = (6 V / pi)^(1/3), the diameter of the ball of the lesion's volume V
    (V = pi d^3 / 6): a lesion of 523.6 mm^3 is 10 mm across, one of 4188.8 mm^3 is 20 mm."""
    ball = _ball(6.0)
    img = np.where(ball, 0.0, -850.0).astype(np.float32)
    for d in (10.0, 20.0):
        volume_ml = math.pi * d ** 3 / 6.0 / 1000.0
        m = measure_crop(LesionCrop("real", "toy", 1, img, ball, (1.0, 1.0, 1.0), {"volume_ml": volume_ml}))
        assert m["diameter_mm"] == pytest.approx(d, rel=1e-9)


def test_host_is_the_tissue_around_the_lesion_never_another_lesion():
    """Rule: the host HU (and so the contrast) comes from the 3-8 mm shell outside the lesion with
    other lesions left out. Here another lesion (+200 HU) fills most of that shell, in lung (-850 HU):
    the host stays -850 HU and the contrast of a 0 HU lesion 850 HU."""
    ball = _ball(6.0)
    z, y, x = np.mgrid[-14:15, -14:15, -14:15]
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    other = (r > 9.0) & (r <= 12.5)  # most of the 3-8 mm shell (radii 9..14)
    shell = (r > 9.0) & (r <= 14.0)
    assert np.count_nonzero(other & shell) > np.count_nonzero(shell & ~other)  # the median would be the other's
    img = np.full(ball.shape, -850.0, np.float32)
    img[ball] = 0.0
    img[other] = 200.0
    crop = LesionCrop("real", "toy", 1, img, ball, (1.0, 1.0, 1.0), {"volume_ml": ball.sum() / 1000}, other=other)
    assert measure_crop(crop)["contrast_hu"] == pytest.approx(850.0)


def test_a_lesion_that_fills_its_image_is_refused_not_measured_against_host_hu_0():
    """Rule: a measurement needs host tissue: fewer than 8 voxels outside every lesion is an error
    naming the case, never a row with host HU 0."""
    ball = np.ones((9, 9, 9), bool)
    crop = LesionCrop("real", "nodule7", 1, np.full(ball.shape, 40.0, np.float32), ball, (1.0, 1.0, 1.0),
                      {"volume_ml": ball.sum() / 1000})
    with pytest.raises(InputError, match=r"^nodule7: lesion 1 fills its image"):
        measure_crop(crop)
    ball[0, 0, :8] = False  # 8 voxels of host: measured
    img = np.where(ball, 40.0, -700.0).astype(np.float32)
    crop = LesionCrop("real", "nodule7", 1, img, ball, (1.0, 1.0, 1.0), {"volume_ml": ball.sum() / 1000})
    assert measure_crop(crop)["contrast_hu"] == pytest.approx(740.0)


# ----------------------------------------------------------------------------- quality control
def test_qc_keeps_a_tumour_only_when_recall_is_strictly_above_the_threshold():
    """Rule (the paper's filter): keep when MORE than qc.threshold of the tumour is found; recall
    exactly at the threshold is rejected, the next float above it is kept."""
    pytest.importorskip("torch")
    from freetumor.quality import decide

    scores = {"voxels": 64, "inside_fraction": 1.0, "visible_mm3": 64.0, "contrast_hu": -50.0}
    for t in (0.7, 0.5, 0.25):
        settings = QCConfig(threshold=t)
        at = decide(dict(scores, recall=t), get_organ("liver"), settings)
        above = decide(dict(scores, recall=float(np.nextafter(t, 1.0))), get_organ("liver"), settings)
        assert (at.accepted, at.kinds) == (False, ["recall"])
        assert above.accepted and above.kinds == []


# ----------------------------------------------------------------------------- k-fold validation ids
def test_kfold_refuses_two_validation_cases_of_one_name(tmp_path, monkeypatch):
    """Rule: a fold's validation case ids (image file names) are unique: two of one name are
    refused before any fold is trained (their predictions would overwrite each other)."""
    pytest.importorskip("torch")
    from freetumor.config import load_config
    from freetumor.training import kfold

    def trained(*a, **k):
        raise AssertionError("a fold was trained although two validation cases share a name")

    monkeypatch.setattr(kfold, "train_segmentation", trained)
    image, label = make_case("abdomen", seed=3, shape=(56, 48, 24))
    entries = []
    for folder, fold in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / folder).mkdir()
        save_volume(image, tmp_path / folder / "case.nii.gz")
        save_volume(label, tmp_path / folder / "case_label.nii.gz")
        entries.append({"image": f"{folder}/case.nii.gz", "label": f"{folder}/case_label.nii.gz", "fold": fold})
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"label_map": "abdomen7", "training": entries}))
    with pytest.raises(InputError, match="fold 0 validates two cases named 'case'"):
        kfold.train_kfold(load_config("liver-cpu-tiny"), dl, tmp_path / "folds", 2, progress=False,
                          log=lambda *a: None)
    assert not (tmp_path / "folds").exists()


# ----------------------------------------------------------------------------- the case-check cache
def test_case_check_cache_is_keyed_by_the_label_too(tmp_path):
    """Rule: a case check is reused only for the same image AND label (unchanged): the same image
    with another, bad label is checked afresh and refused."""
    from freetumor.data import check_cases

    image, label = make_case("abdomen", seed=4, shape=(56, 48, 24))
    save_volume(image, tmp_path / "ct.nii.gz")
    save_volume(label, tmp_path / "good.nii.gz")
    bad = label.with_array(label.array.astype(np.float32) * 0.75)  # non-integer label values
    save_volume(bad, tmp_path / "bad.nii.gz")
    good_entry = {"image": str(tmp_path / "ct.nii.gz"), "label": str(tmp_path / "good.nii.gz")}
    bad_entry = {"image": str(tmp_path / "ct.nii.gz"), "label": str(tmp_path / "bad.nii.gz")}
    assert check_cases([good_entry], "abdomen7", tmp_path / "dl.json") == [good_entry]
    with pytest.raises(CaseErrors, match="bad.nii.gz"):
        check_cases([bad_entry], "abdomen7", tmp_path / "dl.json")
    assert check_cases([good_entry], "abdomen7", tmp_path / "dl.json") == [good_entry]
    assert Path(bad_entry["label"]).exists()


# ----------------------------------------------------------------------------- duplicate cases
def test_a_datalist_listing_one_image_twice_is_refused_unless_allowed(tmp_path):
    """Rule: one image listed twice (one list or two) is an error naming the datalist; a datalist
    that means it says "allow_duplicates": true and is read as written."""
    from freetumor.data import load_datalist

    case = {"image": "a.nii.gz", "label": "a_label.nii.gz"}
    for body in ({"training": [case, case]}, {"training": [case], "validation": [case]}):
        dl = tmp_path / "dl.json"
        dl.write_text(json.dumps(body))
        with pytest.raises(InputError, match=r"dl.json: lists .*a.nii.gz twice"):
            load_datalist(dl)
        dl.write_text(json.dumps({**body, "allow_duplicates": True}))
        assert len(load_datalist(dl)) == 2
    dl.write_text(json.dumps({"training": [case, {"image": "b.nii.gz"}]}))
    assert len(load_datalist(dl)) == 2
