"""Stage 2: the online synthesis transform, CutMix and segmentation training with synthesis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch  # a dependency: a broken install fails here rather than skipping

from freetumor.checkpoints import save_checkpoint  # noqa: E402
from freetumor.config import load_config  # noqa: E402
from freetumor.errors import ConfigError  # noqa: E402
from freetumor.models import build_generator  # noqa: E402
from freetumor.io import save_volume  # noqa: E402
from freetumor.models import build_model  # noqa: E402
from freetumor.phantom import make_case, write_cohort  # noqa: E402
from freetumor.training.stage0 import spatial_cutmix  # noqa: E402
from freetumor.transforms import RandTumorSynthesisd, train_transforms  # noqa: E402

SCRIPT = Path(sys.executable).parent / "freetumor"
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "freetumor.cli"]
TINY = ["data.roi_size=[32,32,32]", "data.num_samples=4", "data.cache=true",
        "synth.generator={channels: [4, 8, 16], strides: [2, 2]}",
        "synth.discriminator={channels: [4, 8, 16], strides: [2, 2]}"]


def cfg_for(preset="liver-cpu-tiny", extra=()):
    return load_config(preset, [*TINY, *extra])


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    """Training patches (after augmentation) from a healthy and a tumour phantom, liver task."""
    root = tmp_path_factory.mktemp("stage2")
    cfg = cfg_for(extra=["data.neg=0.0", "data.num_samples=8"])
    out = {}
    for name, tumour, seed in (("healthy", False, 41), ("tumour", True, 42)):
        img, lab = make_case("abdomen", seed=seed, tumour=tumour)
        save_volume(img, root / f"{name}_img.nii.gz")
        save_volume(lab, root / f"{name}_lab.nii.gz")
        tf = train_transforms(cfg)
        tf.set_random_state(seed=seed)
        out[name] = tf({"image": str(root / f"{name}_img.nii.gz"), "label": str(root / f"{name}_lab.nii.gz")})
    return cfg, out


def _run(tf, patch):
    p = {"image": patch["image"].clone(), "label": patch["label"].clone()}
    return tf(p)


def test_patch_with_tumour_is_never_changed(patches):
    cfg, data = patches
    tf = RandTumorSynthesisd(cfg, "procedural", cheap_checks=False)
    tf.set_random_state(seed=0)
    with_tumour = [p for p in data["tumour"] if (np.asarray(p["label"]) == 2).any()]
    assert with_tumour
    for p in with_tumour:
        out = _run(tf, p)
        assert out["synth_status"] == "ineligible"
        assert torch.equal(out["image"], p["image"]) and torch.equal(out["label"], p["label"])


def test_tumour_only_inside_the_organ_and_reproducible(patches):
    cfg, data = patches
    tf = RandTumorSynthesisd(cfg, "procedural", cheap_checks=False)
    tf.set_random_state(seed=1)
    accepted = 0
    for p in data["healthy"]:
        out = _run(tf, p)
        before = np.asarray(p["label"])[0]
        after = np.asarray(out["label"])[0]
        changed_img = (np.asarray(out["image"]) != np.asarray(p["image"]))[0]
        if out["synth_status"] == "accepted":
            accepted += 1
            new_tumour = (after == 2) & (before != 2)
            assert new_tumour.any() and (before[new_tumour] == 1).all()  # tumour only on liver voxels
            assert (before[changed_img] == 1).all()  # intensities change only inside the liver
            assert ((after != before) <= new_tumour).all()
        else:
            assert not changed_img.any() and (after == before).all()
    assert accepted >= 1
    # the same seed gives the same patches
    a, b = RandTumorSynthesisd(cfg, "procedural"), RandTumorSynthesisd(cfg, "procedural")
    a.set_random_state(seed=5)
    b.set_random_state(seed=5)
    for p in data["healthy"][:3]:
        assert torch.equal(_run(a, p)["image"], _run(b, p)["image"])


def test_fraction_of_patches_with_tumour_follows_prob(patches):
    cfg, data = patches
    eligible = [p for p in data["healthy"] if (np.asarray(p["label"]) == 1).sum() > 2000]
    assert len(eligible) >= 3
    base = np.mean([(np.asarray(p["label"]) == 2).any() for p in eligible])
    for prob in (0.3, 0.8):
        tf = RandTumorSynthesisd(cfg, "procedural", prob=prob, cheap_checks=False)
        tf.set_random_state(seed=2)
        n = 0
        with_t = 0
        for _ in range(12):
            for p in eligible:
                out = _run(tf, p)
                n += 1
                with_t += bool((np.asarray(out["label"]) == 2).any())
        frac = with_t / n
        assert base == 0.0
        assert abs(frac - prob) < 0.17, (prob, frac, tf.counts)


class _NeverTumour(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), torch.ones_like(x), torch.zeros_like(x)], 1) + 0 * self.p


def test_rejected_tumour_leaves_patch_unchanged_and_generator_mode(patches):
    cfg, data = patches
    tf = RandTumorSynthesisd(cfg, "procedural", qc_segmentor=(_NeverTumour(), cfg), max_tries=2)
    tf.set_random_state(seed=3)
    for p in data["healthy"][:4]:
        out = _run(tf, p)
        assert out["synth_status"] in ("rejected", "no-room", "ineligible")
        assert torch.equal(out["image"], p["image"]) and torch.equal(out["label"], p["label"])
        if out["synth_status"] == "rejected":  # a judge that never sees a tumour: every try fails on recall
            assert out["synth_rejects"].split().count("recall") == 2
    assert tf.counts.get("rejected", 0) >= 1
    gen = build_generator(cfg).eval()
    tg = RandTumorSynthesisd(cfg, "generator", generator=(gen, cfg), cheap_checks=False)
    tg.set_random_state(seed=4)
    statuses = [_run(tg, p)["synth_status"] for p in data["healthy"]]
    assert "accepted" in statuses
    with pytest.raises(ConfigError, match="needs a generator"):
        RandTumorSynthesisd(cfg, "generator")
    other = cfg_for(extra=["data.spacing=[2.0,2.0,2.0]"])
    with pytest.raises(ConfigError, match="generator was trained with data.spacing"):
        RandTumorSynthesisd(other, "generator", generator=(gen, cfg))


def test_transform_takes_a_built_synthesizers_networks(patches, tmp_path):
    """RandTumorSynthesisd with a built synthesizer's generator and QC (loaded once) = with the checkpoint paths."""
    from freetumor.synthesis import SynthesisOptions, build_synthesizer

    cfg, data = patches
    torch.manual_seed(5)
    save_checkpoint(tmp_path / "generator.pt", model=build_generator(cfg), cfg=cfg, step=1, kind="generator")
    save_checkpoint(tmp_path / "segmentor.pt", model=build_model(cfg), cfg=cfg, step=1)
    built = build_synthesizer(SynthesisOptions("liver", generator=tmp_path / "generator.pt",
                                               qc_segmentor=tmp_path / "segmentor.pt"))
    shared = RandTumorSynthesisd(cfg, "generator", generator=built.difference, qc_segmentor=built.qc, max_tries=2)
    assert shared.generator is built.difference and shared.qc is built.qc
    own = RandTumorSynthesisd(cfg, "generator", generator=tmp_path / "generator.pt",
                              qc_segmentor=tmp_path / "segmentor.pt", max_tries=2)
    shared.set_random_state(seed=6)
    own.set_random_state(seed=6)
    for p in data["healthy"][:4]:
        a, b = _run(shared, p), _run(own, p)
        assert a["synth_status"] == b["synth_status"] and a["synth_tries"] == b["synth_tries"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert shared.counts == own.counts and sum(shared.counts.values()) == 4


def test_spatial_cutmix_mixes_image_and_label_alike():
    x = torch.rand(4, 1, 8, 8, 4)
    y = (x > 0.5).float()
    xm, ym = spatial_cutmix(x, y, torch.Generator().manual_seed(3))
    assert torch.equal((xm > 0.5).float(), ym)  # the same operation on both
    xm2, _ = spatial_cutmix(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(xm, xm2)
    # every output slice along the mixed axis comes from some input sample at that slice
    for i in range(4):
        for k in range(8):
            assert any(torch.equal(xm[i, :, k], x[j, :, k]) or torch.equal(xm[i, :, :, k], x[j, :, :, k])
                       for j in range(4))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2cohort")
    dl = write_cohort(root / "phantom", 4, seed=9, tumour_fraction=0.5)
    cfg = cfg_for()
    save_checkpoint(root / "seg.pt", model=build_model(cfg), cfg=cfg, step=0)
    save_checkpoint(root / "gen.pt", model=build_generator(cfg), cfg=cfg, step=0, kind="generator")
    return dl.parent, root


def test_train_seg_with_online_synthesis_cli(cohort, tmp_path):
    ph, root = cohort
    env = dict(os.environ, COLUMNS="200")
    base = [*CLI, "train-seg", "--config", "liver-cpu-tiny", "--datalist", str(ph / "labelled.json"),
            "--unlabeled", str(ph / "unlabelled.json"), "--max-steps", "3",
            *sum((["--set", o] for o in TINY + ["train.val_every=3"]), [])]
    r = subprocess.run([*base, "--out", str(tmp_path / "gen"), "--synthesis", "generator", "--generator",
                        str(root / "gen.pt"), "--qc-segmentor", str(root / "seg.pt")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(ln) for ln in (tmp_path / "gen" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("synth" in row and sum(row["synth"].values()) == 4 for row in rows)
    assert json.loads((tmp_path / "gen" / "final.json").read_text())["synthesis"] == "generator"
    r = subprocess.run([*base, "--out", str(tmp_path / "bad"), "--synthesis", "generator"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "needs --generator" in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "bad").exists()
    # Stage 2 with lesions drawn from a profile
    from freetumor.lesions.profile import LesionProfile

    row = [10.0, 0.85, 0.75, 0.95, -45.0, 0.3, 0.5, 12.0, 8.0, 2.0, 0.0]
    LesionProfile.from_rows("liver", [row, [14.0, *row[1:]]], {"test": True}).save(tmp_path / "liver.json")
    r = subprocess.run([*base, "--out", str(tmp_path / "prof"), "--synthesis", "profile", "--profile",
                        str(tmp_path / "liver.json")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(ln) for ln in (tmp_path / "prof" / "metrics.jsonl").read_text().splitlines()]
    assert sum(row["synth"].get("accepted", 0) for row in rows) >= 1
    for args, message in ((["--synthesis", "profile"], "needs --profile"),
                          (["--profile", str(tmp_path / "liver.json")], "--profile needs --synthesis profile")):
        r = subprocess.run([*base, "--out", str(tmp_path / "bad2"), *args], capture_output=True, text=True, env=env,
                           timeout=300)
        assert r.returncode == 1 and message in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
        assert not (tmp_path / "bad2").exists()


def test_profile_mode_draws_real_lesions_inside_the_organ(patches):
    """mode="profile": a lesion of the profile rendered in HU on the patch; only organ voxels change."""
    from freetumor.lesions.profile import LesionProfile

    cfg, data = patches
    row = [10.0, 0.85, 0.75, 0.95, -45.0, 0.3, 0.5, 12.0, 8.0, 2.0, 0.0]  # a hypodense liver lesion
    prof = LesionProfile.from_rows("liver", [row, [12.0, *row[1:]]], {"test": True})
    tf = RandTumorSynthesisd(cfg, "profile", profile=prof, cheap_checks=False)
    tf.set_random_state(seed=2)
    accepted = 0
    lo, hi = cfg.data.hu_window
    for p in data["healthy"]:
        out = _run(tf, p)
        before, after = np.asarray(p["label"])[0], np.asarray(out["label"])[0]
        changed = (np.asarray(out["image"]) != np.asarray(p["image"]))[0]
        if out["synth_status"] == "accepted":
            accepted += 1
            new = (after == 2) & (before != 2)
            assert new.any() and (before[new] == 1).all() and (before[changed] == 1).all()
            delta_hu = (np.asarray(out["image"])[0] - np.asarray(p["image"])[0])[new].mean() * (hi - lo)
            assert delta_hu < -15  # darker than the liver, as the profile says
    assert accepted >= 1
    with pytest.raises(ConfigError, match="needs a lesion profile"):
        RandTumorSynthesisd(cfg, "profile")


def test_default_worker_gives_the_main_process_run(cohort, tmp_path):
    """Issue 14: with networks in the online synthesis a run prepares its batches in one data-loader
    worker by default; its metrics.jsonl (synthesis counts, losses) is the main process's."""
    from freetumor.synthesis import SynthesisOptions
    from freetumor.training.stage0 import train_segmentation

    ph, root = cohort
    rows, logs = {}, {"auto": [], "main": []}
    for name, extra in (("auto", []), ("main", ["data.num_workers=0"])):
        cfg = cfg_for(extra=["train.max_steps=3", "train.val_every=3", *extra])
        train_segmentation(cfg, ph / "labelled.json", tmp_path / name, unlabelled=ph / "unlabelled.json",
                           synthesis="generator", progress=False, log=logs[name].append,
                           options=SynthesisOptions("liver", generator=root / "gen.pt", qc_segmentor=root / "seg.pt"))
        rows[name] = [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert cfg_for().data.num_workers is None
    assert any("1 data-loader worker" in m for m in logs["auto"]) and not any("worker" in m for m in logs["main"])
    assert [r["synth"] for r in rows["auto"]] == [r["synth"] for r in rows["main"]]
    assert sum(sum(r["synth"].values()) for r in rows["auto"]) == 12
    assert [r["loss"] for r in rows["auto"]] == pytest.approx([r["loss"] for r in rows["main"]], rel=1e-4)


def test_step_row_counts_the_failed_checks_of_rejected_tries():
    """metrics.jsonl says why online lesions were rejected (a weak judge vs implausible lesions)."""
    from freetumor.training.stage0 import step_row

    batch = {"label": torch.zeros(3, 1, 2, 2, 2), "synth_status": ["rejected", "accepted", "ineligible"],
             "synth_tries": torch.tensor([2, 2, 0]), "synth_rejects": ["recall recall contrast", "recall", ""]}
    row = step_row(5, 0.1, 1e-3, batch, synthesis=True)
    assert row["synth"] == {"accepted": 1, "ineligible": 1, "rejected": 1} and row["synth_tries"] == 4
    assert row["synth_rejects"] == {"contrast": 1, "recall": 3}
    batch["synth_rejects"] = ["", "", ""]
    assert "synth_rejects" not in step_row(5, 0.1, 1e-3, batch, synthesis=True)


def test_stage2_takes_the_synthesis_options_of_synthesize():
    """train-seg --synthesis reads the SynthesisOptions of `synthesize`: the profile without its calcified rows
    with exclude_calcified; fields Stage 2 does not use, another organ or a profile-less exclusion are refused."""
    from freetumor.lesions.profile import CALCIFIED_HU, FEATURE_ORDER, load_profile
    from freetumor.synthesis import SynthesisOptions
    from freetumor.training.stage0 import check_synthesis, stage2_config, synthesis_transform

    cfg = load_config("lung-cpu-tiny")
    full = load_profile("builtin:lung", "lung")
    j = FEATURE_ORDER.index("contrast_hu")
    kept = synthesis_transform(cfg, "profile", SynthesisOptions("lung", profile="builtin:lung", exclude_calcified=True))
    assert len(kept.profile.rows) == len(full.without_calcified().rows) < len(full.rows)
    assert max(r[j] for r in kept.profile.rows) <= CALCIFIED_HU < max(r[j] for r in full.rows)
    assert synthesis_transform(cfg, "profile", SynthesisOptions("lung", profile="builtin:lung")).profile == full
    assert synthesis_transform(cfg, "none", SynthesisOptions("lung")) is None
    for synthesis, options, match in (
            ("profile", SynthesisOptions("lung", profile="builtin:lung", size="small"), "does not read SynthesisOptions.size"),
            ("procedural", SynthesisOptions("lung", qc_threshold=0.3), "does not read SynthesisOptions.qc_threshold"),
            ("procedural", SynthesisOptions("liver"), "options are for 'liver', the training config for 'lung'"),
            ("procedural", SynthesisOptions("lung", exclude_calcified=True), "give the profile too"),
            ("none", SynthesisOptions("lung", qc_segmentor="seg.pt"), "need --synthesis procedural or generator"),
            ("generator", SynthesisOptions("lung"), "needs --generator")):
        with pytest.raises(ConfigError, match=match):
            check_synthesis(synthesis, options, cfg)
    check_synthesis("procedural", None, cfg)  # Stage 2 without options: the rule-based tumours
    assert stage2_config(cfg, SynthesisOptions("lung", qc_device="cpu")).qc.device == "cpu"
    assert stage2_config(cfg, None) is cfg
