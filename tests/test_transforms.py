"""MONAI transform chains: label classes, geometry (RAS, spacing, affine), patches, determinism."""

from __future__ import annotations

import copy
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform

from freetumor.config import resolve_config
from freetumor.errors import ConfigError
from freetumor.labels import get_label_map
from freetumor.phantom import write_cohort
from freetumor.tasks import class_mapping
from freetumor.transforms import (
    ConvertLabelsd,
    VolumeReader,
    infer_transforms,
    preprocess_transforms,
    train_transforms,
    val_transforms,
)

BASE_CFG = {
    "organ": "liver",
    "task": "organ3",
    "label_map": "abdomen7",
    "data": {
        "spacing": [3.0, 3.0, 3.0], "hu_window": [-175.0, 250.0], "roi_size": [48, 48, 48],
        "num_samples": 2, "pos": 1.0, "neg": 1.0, "scale_intensity": True, "shift_intensity": True,
        "flip_prob": 0.2, "rot90_prob": 0.2, "cache": False, "num_workers": None, "labelled_repeat": 1,
    },
}


def make_cfg(**data):
    cfg = copy.deepcopy(BASE_CFG)
    for key in ("organ", "task", "label_map"):
        if key in data:
            cfg[key] = data.pop(key)
    cfg["data"].update(data)
    return resolve_config(cfg, ["model.name=unet"], source="test config")


def world_centre(affine: np.ndarray, shape) -> np.ndarray:
    c = (np.asarray(shape[-3:], np.float64) - 1) / 2
    return affine[:3, :3] @ c + affine[:3, 3]


def volume_ml(mask, spacing) -> float:
    return float(np.count_nonzero(np.asarray(mask))) * float(np.prod(spacing)) / 1000.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two abdominal phantoms on disk (case 1 has tumours), 2 x 2 x 2.5 mm, as (image, label) paths."""
    dl = write_cohort(tmp_path_factory.mktemp("tf") / "cohort", 2, seed=0)
    data = json.loads(dl.read_text())
    cases = [(str(dl.parent / e["image"]), str(dl.parent / e["label"])) for e in data["training"]]
    tumour = [e["tumour"] for e in data["training"]]
    assert tumour == [False, True]
    return cases


# ----------------------------------------------------------------------------- class_mapping
def test_class_mapping_organ3_on_abdomen7():
    assert class_mapping("abdomen7", "organ3", "liver") == {0: 0, 1: 1, 2: 2, 3: 0, 4: 0, 5: 0, 6: 0}
    assert class_mapping("abdomen7", "organ3", "pancreas") == {0: 0, 1: 0, 2: 0, 3: 1, 4: 2, 5: 0, 6: 0}
    assert class_mapping("abdomen7", "organ3", "kidney") == {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 2}


def test_class_mapping_abdomen7_on_totalseg():
    m = class_mapping("totalseg", "abdomen7", "liver")
    assert set(m) == set(get_label_map("totalseg").known)
    assert (m[5], m[7], m[2], m[3]) == (1, 3, 5, 5)
    assert (m[201], m[202], m[203]) == (2, 4, 6)
    special = {5, 7, 2, 3, 201, 202, 203}
    assert all(v == 0 for k, v in m.items() if k not in special)  # spleen (1), lungs, 204, ... -> 0
    assert m[1] == 0 and m[10] == 0 and m[204] == 0
    # the same map read through a LabelMap object
    assert class_mapping(get_label_map("totalseg"), "abdomen7", "kidney") == m


def test_class_mapping_chest3_and_abdomen7_identity():
    assert class_mapping("chest3", "chest3", "lung") == {0: 0, 1: 1, 2: 2}
    assert class_mapping("chest3", "chest3", "covid") == {0: 0, 1: 1, 2: 2}
    assert class_mapping("abdomen7", "abdomen7", "liver") == {i: i for i in range(7)}
    m = class_mapping("totalseg", "chest3", "lung")
    assert all(m[i] == 1 for i in range(10, 15)) and m[204] == 2 and m[5] == 0 and m[201] == 0


def test_class_mapping_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown task"):
        class_mapping("abdomen7", "organ5", "liver")
    with pytest.raises(ConfigError, match="no 'liver'"):
        class_mapping("chest3", "organ3", "liver")
    with pytest.raises(ConfigError, match="abdomen7 needs"):
        class_mapping("chest3", "abdomen7", "liver")
    with pytest.raises(ConfigError, match="lung or covid"):
        class_mapping("abdomen7", "chest3", "lung")
    # a user map whose liver tumour id is also the kidney's organ id cannot give abdomen7 classes
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"organs": {"liver": {"organ": [1], "tumor": 2}, "kidney": {"organ": [2], "tumor": 3}}}))
    with pytest.raises(ConfigError, match="value 2"):
        class_mapping(str(bad), "abdomen7", "liver")
    assert class_mapping(str(bad), "organ3", "kidney") == {0: 0, 1: 0, 2: 1, 3: 2}


# ----------------------------------------------------------------------------- ConvertLabelsd
def test_convert_labels_keeps_meta_and_maps_unknown_to_zero():
    affine = torch.tensor([[-0.8, 0, 0, 10.0], [0, -0.8, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]],
                          dtype=torch.float64)
    values = torch.tensor([0, 5, 7, 2, 3, 201, 202, 203, 1, 118, 999, 6], dtype=torch.float32)
    lab = MetaTensor(values.reshape(1, 2, 3, 2), affine=affine, meta={"filename_or_obj": "x.nii.gz"})
    t = ConvertLabelsd(keys=("label",), mapping=class_mapping("totalseg", "abdomen7", "liver"))
    out = t({"label": lab, "image": "untouched"})
    assert out["image"] == "untouched"
    res = out["label"]
    assert isinstance(res, MetaTensor) and res.dtype == torch.float32 and res.shape == lab.shape
    assert torch.equal(res.affine, affine) and res.meta["filename_or_obj"] == "x.nii.gz"
    assert res.flatten().tolist() == [0, 1, 3, 5, 5, 2, 4, 6, 0, 0, 0, 0]
    assert torch.equal(lab.as_tensor().flatten(), values)  # input untouched

    # numpy and integer inputs keep their type and dtype; float labels are rounded
    arr = np.array([[0, 1, 2, 3, 4, 5, 6, 250]], np.uint8)
    out = ConvertLabelsd(keys="label", mapping=class_mapping("abdomen7", "organ3", "pancreas"))({"label": arr})
    assert out["label"].dtype == np.uint8 and out["label"].tolist() == [[0, 0, 0, 1, 2, 0, 0, 0]]
    t = ConvertLabelsd(keys="label", mapping={0: 0, 1: 1, 2: 2})
    assert t({"label": np.array([0.2, 0.9, 2.1, -1.0, np.nan, 7.0])})["label"].tolist() == [0, 1, 2, 0, 0, 0]
    # the tensor path (used for GPU tensors) agrees with the numpy path
    x = torch.tensor([[0.0, 1.4, 1.6, 2.0, 300.0, -4.0, float("inf")]])
    assert t._convert_torch(x).tolist() == t.convert(x.numpy()).tolist() == [[0, 1, 2, 2, 0, 0, 0]]
    with pytest.raises(ConfigError):
        ConvertLabelsd(keys="label", mapping={})
    with pytest.raises(ConfigError):
        ConvertLabelsd(keys="label", mapping={-1: 0})


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")
def test_volume_reader_matches_monai_nibabel(cohort):
    image = cohort[0][0]
    ours = LoadImaged(keys="image", reader=VolumeReader())({"image": image})["image"]
    ref = LoadImaged(keys="image", reader="NibabelReader")({"image": image})["image"]
    assert torch.equal(ours.as_tensor(), ref.as_tensor())
    assert torch.allclose(ours.affine, ref.affine)
    assert ours.meta["filename_or_obj"] == image


# ----------------------------------------------------------------------------- chains on phantoms
def test_chain_order_puts_deterministic_steps_first():
    from monai.transforms import Randomizable

    cfg = make_cfg()
    steps = train_transforms(cfg).transforms
    first_random = next(i for i, t in enumerate(steps) if isinstance(t, Randomizable))
    names = [type(t).__name__ for t in steps]
    assert names[:first_random] == [type(t).__name__ for t in preprocess_transforms(cfg, valid=True, pad=False)] + [
        "FgBgToIndicesd", "HostFocusd"]
    assert names[first_random:first_random + 2] == ["RandPlaceCased", "RandCropByPosNegLabeld"]
    assert names[first_random + 2:] == ["DeleteItemsd"] + ["RandFlipd"] * 3 + [
        "RandRotate90d", "RandScaleIntensityd", "RandShiftIntensityd"]
    # data.crop_placement centre keeps the old chain: SpatialPadd in the deterministic head, no placement
    centre = [type(t).__name__ for t in train_transforms(make_cfg(crop_placement="centre")).transforms]
    assert "RandPlaceCased" not in centre and "SpatialPadd" in centre
    short = train_transforms(make_cfg(scale_intensity=False, shift_intensity=False)).transforms
    assert [type(t).__name__ for t in short][-1] == "RandRotate90d"
    assert "ConvertLabelsd" not in [type(t).__name__ for t in preprocess_transforms(cfg, with_label=False)]
    assert "CropForegroundd" not in [type(t).__name__ for t in preprocess_transforms(cfg, crop_foreground=False)]


@pytest.mark.parametrize("case", [0, 1])
def test_val_transforms_on_phantom(cohort, case):
    image_path, label_path = cohort[case]
    out = val_transforms(make_cfg())({"image": image_path, "label": label_path})
    img, lab = out["image"], out["label"]
    assert isinstance(img, MetaTensor) and img.dtype == torch.float32
    assert isinstance(lab, MetaTensor)
    assert img.ndim == 4 and img.shape[0] == 1 and lab.shape == img.shape
    assert all(s >= 48 for s in img.shape[1:])
    aff = img.affine.numpy()
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    assert np.allclose(np.linalg.norm(aff[:3, :3], axis=0), 3.0, atol=1e-3)
    assert np.allclose(lab.affine.numpy(), aff)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    values = set(torch.unique(lab).tolist())
    assert values <= {0.0, 1.0, 2.0} and 1.0 in values
    assert (2.0 in values) == (case == 1)  # case 1 has a liver tumour

    src = nib.load(label_path)
    raw = np.asarray(src.dataobj)
    zooms = src.header.get_zooms()[:3]
    for cls in (1, 2):
        want = volume_ml(raw == cls, zooms)
        if want > 20:
            assert volume_ml(lab == cls, (3, 3, 3)) == pytest.approx(want, rel=0.10)


def test_val_transforms_abdomen7_task(cohort):
    image_path, label_path = cohort[1]
    out = val_transforms(make_cfg(task="abdomen7"))({"image": image_path, "label": label_path})
    values = set(torch.unique(out["label"]).tolist())
    assert {0.0, 1.0, 3.0, 5.0} <= values <= set(map(float, range(7)))
    out = val_transforms(make_cfg(organ="kidney"))({"image": image_path, "label": label_path})
    raw = np.asarray(nib.load(label_path).dataobj)
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 2.0}
    assert volume_ml(out["label"] == 1, (3, 3, 3)) == pytest.approx(volume_ml(raw == 5, (2, 2, 2.5)), rel=0.15)


class Recorder(MapTransform):
    """A stand-in synthesis transform: records what it sees and marks the patch."""

    def __init__(self):
        super().__init__(keys=("image", "label"))
        self.calls = []

    def __call__(self, data):
        d = dict(data)
        self.calls.append((tuple(d["image"].shape), tuple(d["label"].shape)))
        d["synthesised"] = True
        return d


def test_train_transforms_patches_and_synthesis_hook(cohort):
    image_path, label_path = cohort[1]
    cfg = make_cfg(pos=1.0, neg=0.0)
    hook = Recorder()
    tf = train_transforms(cfg, synthesis=hook)
    assert tf.transforms[-1] is hook  # after every augmentation
    tf.set_random_state(seed=0)
    patches = tf({"image": image_path, "label": label_path})
    assert isinstance(patches, list) and len(patches) == 2
    assert hook.calls == [((1, 48, 48, 48), (1, 48, 48, 48))] * 2
    for p in patches:
        assert p["synthesised"] is True
        assert isinstance(p["image"], MetaTensor) and p["image"].dtype == torch.float32
        assert tuple(p["image"].shape) == tuple(p["label"].shape) == (1, 48, 48, 48)
        assert bool((p["label"] > 0).any())  # pos=1, neg=0: every patch is centred on foreground
        assert set(torch.unique(p["label"]).tolist()) <= {0.0, 1.0, 2.0}
        # flips and rotations change the axis directions but not the voxel size
        assert np.allclose(np.linalg.norm(p["image"].affine.numpy()[:3, :3], axis=0), 3.0, atol=1e-3)


def test_chains_pickle():
    """DataLoader workers (spawn) and disk caches need picklable chains."""
    import pickle

    for tf in (train_transforms(make_cfg()), val_transforms(make_cfg()), infer_transforms(make_cfg())):
        assert len(pickle.loads(pickle.dumps(tf)).transforms) == len(tf.transforms)


def test_train_transforms_reproducible(cohort):
    image_path, label_path = cohort[0]
    cfg = make_cfg(flip_prob=0.5, rot90_prob=0.5)
    item = {"image": image_path, "label": label_path}

    def run(seed):
        tf = train_transforms(cfg)
        tf.set_random_state(seed=seed)
        return tf(dict(item))

    a, b, c = run(7), run(7), run(8)
    for pa, pb in zip(a, b):
        assert torch.equal(pa["image"].as_tensor(), pb["image"].as_tensor())
        assert torch.equal(pa["label"].as_tensor(), pb["label"].as_tensor())
    assert any(not torch.equal(pa["image"].as_tensor(), pc["image"].as_tensor()) for pa, pc in zip(a, c))


def test_infer_transforms_keeps_world_position(cohort):
    image_path, _ = cohort[0]
    cfg = make_cfg()
    out = infer_transforms(cfg)({"image": image_path})
    assert set(out) == {"image"}
    img = out["image"]
    assert isinstance(img, MetaTensor) and img.dtype == torch.float32 and img.shape[0] == 1
    aff = img.affine.numpy()
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    assert np.allclose(np.linalg.norm(aff[:3, :3], axis=0), 3.0, atol=1e-3)
    src = nib.load(image_path)
    # no crop or pad: the field of view stays the input's, ~176*2/3 x 136*2/3 x 72*2.5/3 voxels
    assert [abs(n - round(m * z / 3)) <= 1 for n, m, z in zip(img.shape[1:], src.shape, src.header.get_zooms())] == [
        True] * 3
    dist = np.linalg.norm(world_centre(aff, img.shape) - world_centre(src.affine, src.shape))
    assert dist <= 3.0
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0


def test_chest_phantom_chest3(tmp_path):
    dl = write_cohort(tmp_path / "chest", 1, seed=0, region="chest", tumour_fraction=1.0)
    e = json.loads(dl.read_text())["training"][0]
    cfg = make_cfg(organ="lung", task="chest3", label_map="chest3", spacing=[2.5, 2.5, 5.0],
                   hu_window=[-1000.0, 500.0], roi_size=[64, 64, 16], num_samples=2)
    item = {"image": str(dl.parent / e["image"]), "label": str(dl.parent / e["label"])}
    out = val_transforms(cfg)(dict(item))
    assert nib.aff2axcodes(out["image"].affine.numpy()) == ("R", "A", "S")
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0, 2.0}
    tf = train_transforms(cfg)
    tf.set_random_state(seed=1)
    patches = tf(dict(item))
    assert [tuple(p["image"].shape) for p in patches] == [(1, 64, 64, 16)] * 2


# ----------------------------------------------------------------------------- real CT (LPS slab)
def test_val_transforms_real_lps_slab(totalseg):
    image = totalseg / "slab1mm_image.nii.gz"
    label = totalseg / "slab1mm_label_freetumor7.nii.gz"
    if not (image.exists() and label.exists()):
        pytest.skip("slab files not available")
    src = nib.load(str(label))
    assert nib.aff2axcodes(src.affine) == ("L", "P", "S")
    raw = np.asarray(src.dataobj)
    want = volume_ml(raw == 1, src.header.get_zooms()[:3])  # ~699 mL of liver
    cfg = make_cfg(spacing=[1.5, 1.5, 1.5], roi_size=[96, 96, 96])
    out = val_transforms(cfg)({"image": str(image), "label": str(label)})
    img, lab = out["image"], out["label"]
    aff = img.affine.numpy()
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    assert np.allclose(np.linalg.norm(aff[:3, :3], axis=0), 1.5, atol=1e-3)
    assert set(torch.unique(lab).tolist()) <= {0.0, 1.0, 2.0}
    assert volume_ml(lab == 1, (1.5, 1.5, 1.5)) == pytest.approx(want, rel=0.05)

    # the same classes straight from the TotalSegmentator ids (liver 5 -> 1, everything else -> 0)
    ts_label = totalseg / "slab1mm_label.nii.gz"
    if ts_label.exists():
        cfg = make_cfg(organ="liver", label_map="totalseg", spacing=[1.5, 1.5, 1.5], roi_size=[96, 96, 96])
        out2 = val_transforms(cfg)({"image": str(image), "label": str(ts_label)})
        assert torch.equal(out2["label"].as_tensor(), lab.as_tensor())


def test_infer_transforms_dicom_folder_matches_nifti(totalseg):
    dicom = totalseg / "dicom_slab"
    nifti = totalseg / "slab1mm_image.nii.gz"
    if not (dicom.is_dir() and nifti.exists()):
        pytest.skip("DICOM slab not available")
    tf = infer_transforms(make_cfg())
    a, b = tf({"image": str(nifti)})["image"], tf({"image": str(dicom)})["image"]
    assert a.shape == b.shape
    assert torch.allclose(a.affine, b.affine, atol=1e-3)
    assert float((a - b).abs().max()) < 1e-4
