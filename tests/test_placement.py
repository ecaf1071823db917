"""Training data without shortcuts: labelled crops at random offsets, host patches in the organ,
FreeTumor's eligibility rule in every region (no lesion drawn next to a real one or into padding),
a fixed labelled share per step, the copy-paste baseline, and the batch Dice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from freetumor.config import load_config
from freetumor.io import Volume, save_volume
from freetumor.placement import HOST, ROLE, VALID, RandPlaceCased, usable_region
from freetumor.training.data import SharedStepDataset, StepDataset, labelled_share
from freetumor.training.stage0 import segmentation_loss, step_dataset
from freetumor.transforms import RandTumorSynthesisd, lesion_banks, train_transforms

SPACING = (2.5, 2.5, 5.0)
CHEST = ["data.roi_size=[16,16,8]", "data.num_samples=4", "data.cache=true", "data.spacing=[2.5,2.5,5.0]",
         "data.flip_prob=0", "data.rot90_prob=0", "data.shift_intensity=false"]


def affine():
    a = np.eye(4)
    a[:3, :3] = np.diag(SPACING)
    return a


def write_case(folder, name, hu, lab):
    img_p, lab_p = folder / f"{name}_img.nii.gz", folder / f"{name}_lab.nii.gz"
    save_volume(Volume(hu.astype(np.int16), affine()), img_p)
    save_volume(Volume(lab.astype(np.uint8), affine()), lab_p)
    return {"image": str(img_p), "label": str(lab_p)}


def nodule_crop(shape=(10, 10, 4), centre=(5, 5, 2), radius=2):
    """A chest3 crop: lung (-850 HU, label 1) with a solid nodule (label 2) at ``centre``."""
    hu = np.full(shape, -850, np.int16)
    lab = np.ones(shape, np.uint8)
    g = np.indices(shape)
    ball = sum((g[i] - centre[i]) ** 2 * (SPACING[i] / SPACING[0]) ** 2 for i in range(3)) <= radius ** 2
    hu[ball], lab[ball] = 20, 2
    return hu, lab


def host_chest(shape=(40, 40, 12)):
    """A healthy host: body tissue (40 HU, label 0) with a lung block (-850 HU, label 1) in one corner."""
    hu = np.full(shape, 40, np.int16)
    lab = np.zeros(shape, np.uint8)
    hu[4:20, 4:20, 2:10], lab[4:20, 4:20, 2:10] = -850, 1
    return hu, lab


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("placement")
    return {"crop": write_case(root, "crop", *nodule_crop()), "host": write_case(root, "host", *host_chest())}


def lesion_centres(cfg, entry, n=40):
    ds = StepDataset([entry], train_transforms(cfg), seed=0, cache=True)
    out = []
    for i in range(n):
        for p in ds[i]:
            lab = np.asarray(p["label"])[0]
            if (lab == 2).any():
                out.append(tuple(np.round(ndimage.center_of_mass(lab == 2)).astype(int)))
    return out


def test_labelled_lesions_are_spread_across_the_patch(cases):
    """Random placement: the nodule of a crop smaller than the patch lands all over the patch; centre
    placement: always in the middle (the shortcut)."""
    rand = lesion_centres(load_config("lung-cpu-tiny", CHEST), cases["crop"])
    centre = lesion_centres(load_config("lung-cpu-tiny", [*CHEST, "data.crop_placement=centre"]), cases["crop"])
    assert len(set(centre)) == 1 and centre[0][:2] == (8, 8)
    xs, ys = np.array([c[0] for c in rand]), np.array([c[1] for c in rand])
    assert len(set(rand)) >= 15
    assert xs.max() - xs.min() >= 8 and ys.max() - ys.min() >= 8  # over half of the 16-voxel patch
    assert abs(xs.mean() - 8) < 3 and abs(ys.mean() - 8) < 3


def test_random_placement_pads_with_air_and_marks_padding_invalid():
    place = RandPlaceCased((16, 16, 8), "random", 1.5)
    place.set_random_state(seed=3)
    img = torch.full((1, 10, 10, 4), 0.5)
    out = place({"image": img, "label": torch.ones(1, 10, 10, 4), VALID: torch.ones(1, 10, 10, 4, dtype=torch.uint8)})
    assert tuple(out["image"].shape) == (1, 24, 24, 12)
    assert float(out["image"].sum()) == pytest.approx(float(img.sum()))  # the case, then zeros (air)
    assert torch.equal(out[VALID].bool(), out["image"] > 0)
    # a host is padded symmetrically (SpatialPadd's rule), a case as large as the patch is untouched
    host = place({"image": img, "label": torch.ones(1, 10, 10, 4), ROLE: HOST})
    assert tuple(host["image"].shape) == (1, 16, 16, 8) and float(host["image"][0, 3, 3, 2]) == 0.5
    big = torch.zeros(1, 16, 16, 8)
    assert place({"image": big, "label": big})["image"] is big


def test_host_patches_are_centred_in_the_organ(cases):
    cfg = load_config("lung-cpu-tiny", [*CHEST, "data.neg=1.0"])
    host = dict(cases["host"], role=HOST)
    hits = []
    for i in range(10):
        for p in StepDataset([host], train_transforms(cfg), seed=0, cache=True)[i]:
            hits.append((np.asarray(p["label"])[0] == 1).mean())
    assert min(hits) > 0.2  # every host patch shows lung; with host_patches any, about half would not
    anyc = load_config("lung-cpu-tiny", [*CHEST, "data.neg=1.0", "data.host_patches=any"])
    ds = StepDataset([host], train_transforms(anyc), seed=0, cache=True)
    assert min((np.asarray(p["label"])[0] == 1).mean() for i in range(10) for p in ds[i]) == 0.0


@pytest.mark.parametrize("preset,organ,tumour", [("lung-cpu-tiny", 1, 2), ("liver-cpu-tiny", 1, 2)])
def test_eligibility_is_freetumors_rule_in_every_region(preset, organ, tumour):
    """No synthetic lesion in a patch that holds a real one (chest and abdomen), none that reaches padding."""
    cfg = load_config(preset, ["data.roi_size=[32,32,16]", "data.spacing=[2.5,2.5,5.0]"])
    synth = RandTumorSynthesisd(cfg, "procedural", prob=1.0, cheap_checks=False)
    synth.set_random_state(seed=0)
    shape = (32, 32, 16)
    lab = np.full(shape, organ, np.uint8)
    img = torch.full((1, *shape), 0.3)
    valid = np.zeros(shape, np.uint8)
    valid[:, :18, :] = 1  # the right part of the patch is padding, yet labelled organ (as a crop's edge)
    with_lesion = lab.copy()
    with_lesion[2:5, 2:5, 2:5] = tumour
    d = synth({"image": img, "label": torch.from_numpy(with_lesion)[None]})
    assert d["synth_status"] == "ineligible"
    accepted = 0
    for _ in range(8):
        d = synth({"image": img, "label": torch.from_numpy(lab)[None], VALID: torch.from_numpy(valid)[None]})
        if d["synth_status"] != "accepted":
            continue
        accepted += 1
        new = np.asarray(d["label"])[0] == tumour
        near_pad = ndimage.binary_dilation(valid == 0, iterations=cfg.data.synth_margin)
        assert new.any() and not (new & near_pad).any()
    assert accepted >= 4


def test_hosts_only_synthesis_leaves_labelled_patches_alone():
    cfg = load_config("lung-cpu-tiny", ["data.roi_size=[32,32,16]", "synth.online_on=hosts"])
    synth = RandTumorSynthesisd(cfg, "procedural", prob=1.0, cheap_checks=False)
    synth.set_random_state(seed=0)
    lab = torch.ones(1, 32, 32, 16, dtype=torch.uint8)
    assert synth({"image": torch.full((1, 32, 32, 16), 0.3), "label": lab})["synth_status"] == "ineligible"
    d = synth({"image": torch.full((1, 32, 32, 16), 0.3), "label": lab, ROLE: HOST})
    assert d["synth_status"] in ("accepted", "no-room")


def test_usable_region_ignores_the_patch_border():
    d = {VALID: torch.ones(1, 6, 6, 6, dtype=torch.uint8)}
    assert usable_region(d, (6, 6, 6), 2).all()
    d[VALID][0, 0] = 0
    u = usable_region(d, (6, 6, 6), 2)
    assert not u[:3].any() and u[3:].all()
    assert usable_region({}, (6, 6, 6), 2) is None


def test_shared_share_keeps_the_labelled_patches_of_a_labelled_only_run(cases):
    """Equal real-label exposure: with one labelled and one host sample per step, the labelled patches
    of every step are those of the labelled-only run with one sample per step."""
    cfg = load_config("lung-cpu-tiny", [*CHEST, "train.batch_size=2", "data.labelled_share=0.5"])
    entries = [dict(cases["crop"], role="labelled"), dict(cases["host"], role=HOST)]
    ds = step_dataset(cfg, entries, train_transforms(cfg))
    assert isinstance(ds, SharedStepDataset) and ds.share == 0.5
    alone = StepDataset([cases["crop"]], train_transforms(cfg), seed=cfg.train.seed, cache=True)
    for step in range(3):
        shared = ds[2 * step]
        assert all(p[ROLE] == "labelled" for p in shared)
        assert all(p[ROLE] == HOST for p in ds[2 * step + 1])
        for a, b in zip(shared, alone[step]):
            assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
    batch = {"label": torch.zeros(8, 1, 2, 2, 2), ROLE: ["labelled"] * 4 + [HOST] * 4}
    assert labelled_share(batch) == (4, 8)
    # without data.labelled_share: uniform over the pooled cases
    plain = step_dataset(load_config("lung-cpu-tiny", CHEST), entries, train_transforms(cfg))
    assert type(plain) is StepDataset


def test_shared_share_needs_room_for_a_host():
    cfg = load_config("lung-cpu-tiny", [*CHEST, "data.labelled_share=0.5"])
    from freetumor.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size of at least 2"):
        step_dataset(cfg, [{"image": "a", "label": "b"}, {"image": "c", "label": "d", ROLE: HOST}], None)


def test_copy_paste_pastes_a_real_lesion_into_host_lung(cases):
    cfg = load_config("lung-cpu-tiny", CHEST)
    banks = lesion_banks(cfg, [cases["crop"]])
    assert len(banks[2]) == 1
    synth = RandTumorSynthesisd(cfg, "copy_paste", prob=1.0, cheap_checks=False, banks=banks)
    synth.set_random_state(seed=1)
    lab = torch.ones(1, 16, 16, 8, dtype=torch.uint8)
    img = torch.full((1, 16, 16, 8), 0.1)
    d = synth({"image": img, "label": lab, VALID: torch.ones(1, 16, 16, 8, dtype=torch.uint8)})
    assert d["synth_status"] == "accepted"
    new = np.asarray(d["label"])[0] == 2
    assert new.sum() == banks[2][0].voxels
    assert float(np.asarray(d["image"])[0][new].mean()) > 0.5  # the solid nodule's values, not lung
    assert torch.equal(img, torch.full((1, 16, 16, 8), 0.1))  # input untouched
    from freetumor.errors import ConfigError

    with pytest.raises(ConfigError, match="copy_paste"):
        RandTumorSynthesisd(cfg, "copy_paste", banks={})


def test_batch_dice_does_not_demand_total_silence_on_lesion_free_patches():
    """Per patch, a lesion-free patch's Dice term is ~1 unless the lesion class is driven to essentially
    zero probability everywhere in it (then ~0): a trace of lesion probability (logit -8) costs as much
    as a badly missed lesion. Over the batch, the same trace costs almost nothing."""
    y = torch.ones(2, 1, 8, 8, 8)
    y[0, 0, 2:6, 2:6, 2:6] = 2  # patch 0 has a lesion, patch 1 only organ

    def loss(batch: bool, trace: float) -> float:
        logits = torch.zeros(2, 3, 8, 8, 8)
        logits[0, 2] = -5
        logits[0, 2, 2:6, 2:6, 2:6] = 5  # the lesion found
        logits[1, 2] = trace
        cfg = load_config("lung-cpu-tiny", [f"train.dice_batch={str(batch).lower()}"])
        return float(segmentation_loss(cfg)(logits, y))

    assert loss(False, -8.0) - loss(False, -30.0) > 0.1
    assert loss(True, -8.0) - loss(True, -30.0) < 0.01


def test_host_placement_surrounds_the_crop_with_host_tissue(cases):
    """crop_placement host: a small labelled crop is pasted into a host's lung, so its patches hold
    no air padding and the nodule still lands all over the patch; without hosts it falls back to random."""
    cfg = load_config("lung-cpu-tiny", [*CHEST, "data.crop_placement=host"])
    entries = [dict(cases["crop"], role="labelled"), dict(cases["host"], role=HOST)]
    ds = step_dataset(cfg, entries, train_transforms(cfg))
    assert ds.host_context == ((16, 16, 8), 1.5)
    centres, padding = [], []
    for i in range(60):
        if ds.entries[ds.source(i)[0]][ROLE] == HOST:
            continue
        for p in ds[i]:
            img, lab = np.asarray(p["image"])[0], np.asarray(p["label"])[0]
            padding.append(float((np.asarray(p[VALID])[0] == 0).mean()))
            if (lab == 2).any():
                centres.append(tuple(np.round(ndimage.center_of_mass(lab == 2)).astype(int)))
                assert img[lab == 2].mean() > img[lab == 1].mean()  # the nodule is the crop's, not the host's
    assert len(centres) >= 10 and max(padding) == 0.0
    xs = np.array([c[0] for c in centres])
    assert xs.max() - xs.min() >= 6
    alone = step_dataset(cfg, [entries[0]], train_transforms(cfg))
    p = alone[0][0]
    assert float((np.asarray(p[VALID])[0] == 0).mean()) > 0  # random placement in air: padding in the patch


def test_share_one_reads_labelled_cases_only_with_hosts_as_context(cases):
    """data.labelled_share 1 (a labelled-only run with host placement): every sample is a labelled case,
    pasted into host lung; batch 1 is allowed."""
    cfg = load_config("lung-cpu-tiny", [*CHEST, "data.crop_placement=host", "data.labelled_share=1.0",
                                        "train.batch_size=1"])
    entries = [dict(cases["crop"], role="labelled"), dict(cases["host"], role=HOST)]
    ds = step_dataset(cfg, entries, train_transforms(cfg))
    assert isinstance(ds, SharedStepDataset) and ds.share == 1.0
    assert all(ds.entries[ds.source(i)[0]][ROLE] == "labelled" for i in range(20))
    for i in range(3):
        p = ds[i][0]
        assert float((np.asarray(p[VALID])[0] == 0).mean()) == 0.0  # host tissue around the crop, no air padding
    with pytest.raises(Exception, match=r"\(0, 1\]"):
        load_config("lung-cpu-tiny", [*CHEST, "data.labelled_share=1.5"])
