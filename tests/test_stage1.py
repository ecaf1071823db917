"""Stage 1: generator / discriminator steps, per-organ channels, learned synthesis, QC, checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch  # a dependency: a broken install fails here rather than skipping

from freetumor.checkpoints import load_network, save_checkpoint  # noqa: E402
from freetumor.config import QCConfig, load_config  # noqa: E402
from freetumor.errors import InputError  # noqa: E402
from freetumor.generator import (  # noqa: E402
    LearnedDifference,
    apply_difference,
    blur3d,
    difference_map,
)
from freetumor.models import build_generator, build_model  # noqa: E402
from freetumor.organs import get_organ  # noqa: E402
from freetumor.phantom import make_case, write_cohort  # noqa: E402
from freetumor.quality import QualityControl, cheap_scores, decide  # noqa: E402
from freetumor.synthesis import QCRejectedError, Synthesizer  # noqa: E402
from freetumor.training.stage1 import Stage1, train_synthesis  # noqa: E402
from freetumor.transforms import PrepareFakeTumourd  # noqa: E402
from freetumor.progress import without_progress

SCRIPT = Path(sys.executable).parent / "freetumor"
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "freetumor.cli"]
TINY_NETS = ["synth.generator={channels: [4, 8, 16], strides: [2, 2]}",
             "synth.discriminator={channels: [4, 8, 16], strides: [2, 2]}"]
FAST = ["data.roi_size=[32,32,32]", "data.num_samples=2", "data.cache=true", "synth.probe_samples=2",
        "synth.epoch_steps=2", "synth.checkpoint_every=1", "synth.log_every=1", *TINY_NETS]


def tiny_cfg(preset="liver-cpu-tiny", extra=()):
    return load_config(preset, [*FAST, *extra])


def params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    after = module.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


def fake_batch(cfg, channels=(0, 0), organ_classes=(1, 1), size=32, seed=0):
    """Patches with an organ block, a real tumour in the first one and a fake tumour in each."""
    g = torch.Generator().manual_seed(seed)
    b = len(channels)
    x = torch.rand(b, 1, size, size, size, generator=g) * 0.2 + 0.5
    label = torch.zeros(b, 1, size, size, size)
    fake = torch.zeros_like(label)
    weight = torch.zeros_like(label)
    for i, oc in enumerate(organ_classes):
        label[i, :, 4:28, 4:28, 4:28] = oc
        fake[i, :, 12:20, 12:20, 12:20] = 1
        weight[i, :, 10:22, 10:22, 10:22] = 0.5
    label[0, :, 22:26, 22:26, 22:26] = 2  # a real tumour
    return {"image": x, "label": label, "fake": fake, "weight": weight, "channel": torch.tensor(channels),
            "organ_class": torch.tensor(organ_classes)}


def stage(cfg):
    torch.manual_seed(0)
    seg = build_model(cfg)
    return Stage1(cfg, (seg, cfg), torch.device("cpu"))


# ----------------------------------------------------------------- the two steps
def test_generator_step_changes_only_generator():
    cfg = tiny_cfg()
    st = stage(cfg)
    g0, d0, s0 = params(st.generator), params(st.discriminator), params(st.seg)
    st.g_step(fake_batch(cfg))
    assert changed(g0, st.generator)
    assert not changed(d0, st.discriminator)
    assert not changed(s0, st.seg)
    # No gradient leaked into the discriminator or the segmentor (released-code defect 3).
    assert all(p.grad is None for p in st.discriminator.parameters())
    assert all(p.grad is None for p in st.seg.parameters())
    assert all(p.requires_grad for p in st.discriminator.parameters())  # unfrozen again after the step


def test_discriminator_step_changes_only_discriminator():
    cfg = tiny_cfg()
    st = stage(cfg)
    batch = fake_batch(cfg)
    with torch.no_grad():
        _, dmap = st.synthesise(batch["image"], batch["weight"], batch["channel"])
    g0, d0, s0 = params(st.generator), params(st.discriminator), params(st.seg)
    st.d_step(batch, dmap)
    assert changed(d0, st.discriminator)
    assert not changed(g0, st.generator)
    assert not changed(s0, st.seg)
    assert all(p.grad is None for p in st.generator.parameters())


def test_real_tumour_counts_for_every_organ():
    """Translated labels: liver, pancreas and kidney tumours (2, 4, 6) are all 'real' in abdomen7."""
    cfg = tiny_cfg("abdomen7-cpu-tiny")
    st = stage(cfg)
    label = torch.tensor([0, 1, 2, 3, 4, 5, 6], dtype=torch.float32).view(1, 1, 7, 1, 1)
    assert st.real_mask(label).view(-1).tolist() == [0, 0, 1, 0, 1, 0, 1]


# ----------------------------------------------------------------- per-organ channels
class _ChannelConstants(torch.nn.Module):
    """A 'generator' whose channel c is the constant (c + 1) / 10 everywhere."""

    def forward(self, x):
        b = x.shape[0]
        return torch.stack([torch.full_like(x[:, 0], (c + 1) / 10) for c in range(3)], 1).expand(b, 3, *x.shape[2:])


def test_liver_and_kidney_in_one_batch_read_their_own_channels():
    x = torch.zeros(2, 1, 16, 16, 16)
    d = difference_map(_ChannelConstants(), x, torch.tensor([0, 2]), sigma=1.0, kernel=7)
    centre = d[:, 0, 8, 8, 8]
    assert torch.allclose(centre, torch.tensor([0.1, 0.3]), atol=1e-5)
    # and gradients reach only the selected channel of each sample
    g = build_generator(tiny_cfg("abdomen7-cpu-tiny"))
    out = g(torch.rand(2, 1, 32, 32, 32)).detach().requires_grad_(True)
    from freetumor.generator import select_channel

    select_channel(out, torch.tensor([0, 2])).sum().backward()
    used = out.grad.abs().sum(dim=(2, 3, 4))
    assert used[0, 0] > 0 and used[0, 1] == 0 and used[0, 2] == 0
    assert used[1, 2] > 0 and used[1, 0] == 0 and used[1, 1] == 0


def _patch_from(case, cfg, tmp_path, name):
    from freetumor.io import save_volume
    from freetumor.transforms import train_transforms

    img, lab = case
    save_volume(img, tmp_path / f"{name}_img.nii.gz")
    save_volume(lab, tmp_path / f"{name}_lab.nii.gz")
    tf = train_transforms(cfg.replace(**{"data.neg": 0.0}), synthesis=PrepareFakeTumourd(cfg))
    tf.set_random_state(seed=3)
    return tf({"image": str(tmp_path / f"{name}_img.nii.gz"), "label": str(tmp_path / f"{name}_lab.nii.gz")})


@pytest.mark.parametrize("preset,region,organs", [
    ("abdomen7-cpu-tiny", "abdomen", {"liver": 1, "pancreas": 3, "kidney": 5}),
    ("lung-cpu-tiny", "chest", {"lung": 1}),
    ("covid-cpu-tiny", "chest", {"covid": 1}),
])
def test_fake_tumours_stay_inside_their_organ(preset, region, organs, tmp_path):
    cfg = tiny_cfg(preset, ["data.roi_size=[48,48,16]"] if region == "chest" else ["data.roi_size=[48,48,48]"])
    seen = set()
    for seed in range(3):
        case = make_case(region, seed=20 + seed, tumour=False)
        for p in _patch_from(case, cfg, tmp_path, f"{preset}{seed}"):
            fake = p["fake"][0].numpy() > 0
            if not fake.any():
                continue
            lab = np.asarray(p["label"][0])
            oc = int(p["organ_class"])
            organ = next(n for n, c in organs.items() if c == oc)
            seen.add(organ)
            assert int(p["channel"]) == get_organ(organ).generator_channel
            assert (lab[fake] == oc).all()  # every fake voxel is in the organ (not tumour, not outside)
            w = p["weight"][0].numpy()
            assert (w[lab != oc] == 0).all()
            x = torch.as_tensor(np.asarray(p["image"]))[None]
            xf = apply_difference(x, p["weight"][None], torch.ones_like(x), get_organ(organ).sign)
            moved = (xf != x)[0, 0].numpy()
            assert moved.any() and (lab[moved] == oc).all()
    assert seen, "no patch received a fake tumour"


@pytest.mark.parametrize("organ,region", [("liver", "abdomen"), ("pancreas", "abdomen"), ("kidney", "abdomen"),
                                          ("lung", "chest"), ("covid", "chest")])
def test_learned_synthesis_changes_only_organ_voxels(organ, region):
    preset = "abdomen7-cpu-tiny" if region == "abdomen" else "lung-cpu-tiny"
    cfg = tiny_cfg(preset, ["data.roi_size=[48,48,16]"] if region == "chest" else [])
    torch.manual_seed(1)
    gen = build_generator(cfg).eval()
    image, label = make_case(region, seed=31, tumour=False)
    diff = LearnedDifference((gen, cfg), context="bbox")
    out = Synthesizer(organ, size="small", difference=diff)(image, label, seed=2)
    moved = out.image.array != image.array
    organ_ids = {"liver": [1], "pancreas": [3], "kidney": [5], "lung": [1], "covid": [1]}[organ]
    assert moved.any() and np.isin(label.array[moved], organ_ids).all()
    assert out.lesions[0]["difference_source"] == "generator" and diff.calls == 1


def test_learned_difference_bbox_vs_patch_context_and_orientation():
    cfg = tiny_cfg("liver-cpu-tiny", ["data.roi_size=[48,48,48]"])
    torch.manual_seed(2)
    gen = build_generator(cfg).eval()
    image, label = make_case("abdomen", seed=32, tumour=False)
    a = Synthesizer("liver", size="small", difference=LearnedDifference((gen, cfg), context="bbox"))(
        image, label, seed=5)
    b = Synthesizer("liver", size="small", difference=LearnedDifference((gen, cfg), context="patch"))(
        image, label, seed=5)
    # same lesion, maps from different contexts: close but computed on different crops
    assert a.lesions[0]["bbox_voxel"] == b.lesions[0]["bbox_voxel"]
    m = a.masks[0].full(image.shape)
    assert np.abs(a.image.array[m].astype(float) - b.image.array[m]).mean() < 25
    # a left-right flipped file gives the mirrored result
    from freetumor.io import Volume

    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = (image.shape[0] - 1)
    fi = Volume(image.array[::-1].copy(), image.affine @ flip)
    diff = LearnedDifference((gen, cfg), context="bbox")
    d1 = diff.for_volume(image.array.astype(np.float32), a.masks[0].slices, _grid(image), get_organ("liver"))
    s = a.masks[0].slices
    s_f = (slice(image.shape[0] - s[0].stop, image.shape[0] - s[0].start), s[1], s[2])
    d2 = diff.for_volume(fi.array.astype(np.float32), s_f, _grid(fi), get_organ("liver"))
    assert np.allclose(d1, d2[::-1], atol=1e-4)


def _grid(vol):
    from freetumor.grids import Grid

    return Grid.of(vol)


def test_blur3d_preserves_constants_inside():
    x = torch.ones(1, 1, 15, 15, 15)
    assert torch.allclose(blur3d(x)[0, 0, 7, 7, 7], torch.tensor(1.0), atol=1e-6)


# ----------------------------------------------------------------- quality control
class _DarkIsTumour(torch.nn.Module):
    """A 'segmentor' (organ3 classes) that calls voxels below a windowed value tumour."""

    def __init__(self, cut):
        super().__init__()
        self.cut = cut
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        tum = (x < self.cut).float() * 10
        return torch.cat([torch.zeros_like(x), torch.ones_like(x), tum], 1) + 0 * self.dummy


def test_qc_threshold_accepts_and_rejects():
    cfg = tiny_cfg("liver-cpu-tiny", ["data.roi_size=[32,32,32]"])
    image, label = make_case("abdomen", seed=33, tumour=False)
    # the liver sits around 0.5-0.6 of the window; a strong difference puts the tumour below 0.45
    seg = (_DarkIsTumour(0.45), cfg)
    accept = QualityControl(seg, QCConfig(threshold=0.5))
    out = Synthesizer("liver", size="medium", difference=0.9, qc=accept)(image, label, seed=1)
    q = out.lesions[0]["qc"]
    assert q["accepted"] and q["recall"] > 0.5 and out.lesions[0]["qc_tries"] >= 1
    # a weak difference: the tumour does not get dark enough, recall is low, every try is rejected
    with pytest.raises(QCRejectedError, match="passed quality control in 3 tries"):
        Synthesizer("liver", size="medium", difference=0.02, qc=accept, qc_max_tries=3)(image, label, seed=1)
    # the same weak tumour passes when the threshold is below its recall
    seg_all = (_DarkIsTumour(2.0), cfg)  # everything dark enough: recall 1
    ok = Synthesizer("liver", size="medium", difference=0.02,
                     qc=QualityControl(seg_all, QCConfig(threshold=0.99, min_visible_mm3=0,
                                                        contrast_hu=(-300, 300))))(image, label, seed=1)
    assert ok.lesions[0]["qc"]["recall"] == 1.0 and ok.lesions[0]["qc_tries"] == 1


def test_qc_decisions_follow_thresholds():
    liver = get_organ("liver")
    before = np.full((24, 24, 24), 60.0, np.float32)
    organ = np.ones(before.shape, bool)
    fake = np.zeros(before.shape, bool)
    fake[10:14, 10:14, 10:14] = True
    for drop, recall, thr, ok in [(50, 0.8, 0.7, True), (50, 0.7, 0.7, False), (50, 0.69, 0.5, True),
                                  (2, 0.9, 0.7, False), (-40, 0.9, 0.7, False)]:
        after = before - drop * fake
        s = cheap_scores(before, after, fake, organ, (1.0, 1.0, 1.0))
        s["recall"] = recall
        d = decide(s, liver, QCConfig(threshold=thr))
        assert d.accepted is ok, (drop, recall, thr, d.reasons)
    outside = fake.copy()
    organ2 = organ.copy()
    organ2[10:12] = False
    s = cheap_scores(before, before - 50 * fake, outside, organ2, (1.0, 1.0, 1.0))
    assert s["inside_fraction"] == 0.5 and not decide(s, liver, QCConfig()).accepted


# ----------------------------------------------------------------- checkpoints
def test_generator_checkpoint_errors(tmp_path):
    cfg = tiny_cfg()
    gen = build_generator(cfg)
    good = tmp_path / "generator.pt"
    save_checkpoint(good, model=gen, cfg=cfg, step=3, kind="generator")
    g2, cfg2 = load_network(good, "generator")
    assert cfg2.synth.generator.channels == [4, 8, 16]
    seg = tmp_path / "seg.pt"
    save_checkpoint(seg, model=build_model(cfg), cfg=cfg, step=1)
    with pytest.raises(InputError, match="is a segmentor checkpoint, not a generator"):
        load_network(seg, "generator")
    from freetumor.checkpoints import load_model

    with pytest.raises(InputError, match="is a generator checkpoint, not a segmentor"):
        load_model(good)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(InputError, match="trunc.pt"):
        load_network(trunc, "generator")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": gen.state_dict()}, foreign)
    with pytest.raises(InputError, match="not a freetumor checkpoint"):
        load_network(foreign, "generator")
    other = tmp_path / "other.pt"
    save_checkpoint(other, model=build_generator(tiny_cfg("lung-cpu-tiny", ["data.roi_size=[32,32,16]"])),
                    cfg=cfg, step=1, kind="generator")
    with pytest.raises(InputError, match="do not fit"):
        load_network(other, "generator")


# ----------------------------------------------------------------- the trainer
@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    dl = write_cohort(root / "phantom", 4, seed=8, tumour_fraction=0.5)
    data = json.loads(dl.read_text())
    lab = [dict(e, image=str(dl.parent / e["image"]), label=str(dl.parent / e["label"]))
           for e in data["training"] if e["tumour"]]
    unl = [dict(e, image=str(dl.parent / e["image"]), label=str(dl.parent / e["label"]))
           for e in data["training"] if not e["tumour"]]
    (root / "lab.json").write_text(json.dumps({"training": lab}))
    (root / "unl.json").write_text(json.dumps({"training": unl}))
    cfg = tiny_cfg()
    torch.manual_seed(0)
    save_checkpoint(root / "seg.pt", model=build_model(cfg), cfg=cfg, step=0)
    return root


def _rows(path):
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln]


def test_train_synth_run_resume_and_refusals(pools, tmp_path):
    cfg = tiny_cfg(extra=["synth.max_steps=4"])
    ref = train_synthesis(cfg, pools / "lab.json", pools / "unl.json", pools / "seg.pt", tmp_path / "ref",
                          progress=False, log=lambda *a: None)
    assert ref["steps"] == 4
    for name in ("config.yaml", "metrics.jsonl", "epochs.jsonl", "last.pt", "generator.pt", "final.json"):
        assert (tmp_path / "ref" / name).exists(), name
    epochs = _rows(tmp_path / "ref" / "epochs.jsonl")
    assert [e["step"] for e in epochs] == [0, 2, 4] and epochs[0]["probe_recall"] is not None
    assert (ref["probe_recall_start"], ref["probe_accepted_end"]) == (epochs[0]["probe_recall"],
                                                                    epochs[-1]["probe_accepted"])
    assert len(list((tmp_path / "ref" / "samples").glob("epoch_*.png"))) == 3
    load_network(tmp_path / "ref" / "generator.pt", "generator")
    # two steps, then resume to four: the same losses as the uninterrupted run
    half = tiny_cfg(extra=["synth.max_steps=2"])
    train_synthesis(half, pools / "lab.json", pools / "unl.json", pools / "seg.pt", tmp_path / "res",
                    progress=False, log=lambda *a: None)
    train_synthesis(cfg, pools / "lab.json", pools / "unl.json", pools / "seg.pt", tmp_path / "res",
                    resume=True, progress=False, log=lambda *a: None)
    a = [[r[k] for k in ("loss_g", "loss_d")] for r in _rows(tmp_path / "ref" / "metrics.jsonl")]
    b = [[r[k] for k in ("loss_g", "loss_d")] for r in _rows(tmp_path / "res" / "metrics.jsonl")]
    assert np.allclose(a, b, rtol=1e-5, atol=1e-6)
    # no silent resume and no resume from a default path
    with pytest.raises(InputError, match="already has a checkpoint"):
        train_synthesis(cfg, pools / "lab.json", None, pools / "seg.pt", tmp_path / "ref", progress=False)
    with pytest.raises(InputError, match="no checkpoint to resume from"):
        train_synthesis(cfg, pools / "lab.json", None, pools / "seg.pt", tmp_path / "new", resume=True,
                        progress=False)


def test_train_synth_cli_errors(pools, tmp_path):
    env = dict(os.environ, COLUMNS="200")
    base = [*CLI, "train-synth", "--config", "liver-cpu-tiny", "--datalist", str(pools / "lab.json"),
            "--unlabeled", str(pools / "unl.json"), "--out", str(tmp_path / "run"), "--max-steps", "1",
            *sum((["--set", o] for o in FAST), [])]
    gen = tmp_path / "g.pt"
    save_checkpoint(gen, model=build_generator(tiny_cfg()), cfg=tiny_cfg(), step=0, kind="generator")
    r = subprocess.run([*base, "--segmentor", str(gen)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0
    assert "is a generator checkpoint, not a segmentor" in r.stderr
    r = subprocess.run([*base, "--segmentor", str(pools / "seg.pt"), "--set", "data.spacing=[2,2,2]"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "segmentor was trained with data.spacing" in r.stderr
    assert not (tmp_path / "run").exists()


def test_synthesize_cli_with_generator_and_qc(pools, tmp_path):
    cfg = tiny_cfg()
    gen = tmp_path / "generator.pt"
    save_checkpoint(gen, model=build_generator(cfg), cfg=cfg, step=0, kind="generator")
    data = json.loads((pools / "unl.json").read_text())["training"][0]
    env = dict(os.environ, COLUMNS="200")
    args = [*CLI, "synthesize", "--image", data["image"], "--label", data["label"], "--organ", "liver",
            "--generator", str(gen), "--no-png", "--seed", "1"]
    r = subprocess.run([*args, "--out", str(tmp_path / "a")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    rec = json.loads(next((tmp_path / "a").glob("*.json")).read_text())
    assert rec["generator"] == str(gen) and rec["lesions"][0]["difference_source"] == "generator"
    # QC with the (untrained) segmentor at a threshold no tumour reaches: one line, nothing written
    r = subprocess.run([*args, "--out", str(tmp_path / "b"), "--qc-segmentor", str(pools / "seg.pt"),
                        "--qc-threshold", "0.999", "--max-tries", "2"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 1 and "passed quality control in 2 tries" in r.stderr
    assert len(without_progress(r.stderr)) == 1 and not (tmp_path / "b").exists()
    # a truncated generator
    bad = tmp_path / "bad.pt"
    bad.write_bytes(gen.read_bytes()[:100])
    args[args.index("--generator") + 1] = str(bad)
    r = subprocess.run([*args, "--out", str(tmp_path / "c")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "bad.pt" in r.stderr and len(without_progress(r.stderr)) == 1


def test_train_synth_ddp_two_processes_gloo(pools, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "freetumor.cli", "train-synth", "--config", "liver-cpu-tiny", "--datalist", str(pools / "lab.json"),
           "--unlabeled", str(pools / "unl.json"), "--segmentor", str(pools / "seg.pt"), "--out", str(run),
           "--max-steps", "2", *sum((["--set", o] for o in FAST), [])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    final = json.loads((run / "final.json").read_text())
    assert final["world_size"] == 2 and final["steps"] == 2
    assert len(set(final["generator_sha256"])) == 1
