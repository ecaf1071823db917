"""Stage 1 with profile lesions: the residual generator starts from the profile's render, each epoch
logs the realism AUC against held-aside real lesions and best_realism.pt keeps the most realistic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch  # a dependency: a broken install fails here rather than skipping

from freetumor.checkpoints import load_network, save_checkpoint  # noqa: E402
from freetumor.config import load_config  # noqa: E402
from freetumor.errors import ConfigError, InputError  # noqa: E402
from freetumor.models import ResidualGenerator, build_generator, build_model  # noqa: E402
from freetumor.phantom import write_cohort  # noqa: E402
from freetumor.training.data import collate  # noqa: E402
from freetumor.training.stage1 import GENERATOR_OPTIONAL, Stage1, _batch_to, train_synthesis  # noqa: E402
from freetumor.transforms import PrepareProfileTumourd, train_transforms  # noqa: E402

SCRIPT = Path(sys.executable).parent / "freetumor"
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "freetumor.cli"]
FAST = ["data.roi_size=[32,32,16]", "data.num_samples=2", "data.cache=true", "synth.probe_samples=1",
        "synth.epoch_steps=2", "synth.checkpoint_every=2", "synth.log_every=1", "synth.realism_samples=8",
        "synth.generator={channels: [4, 8, 16], strides: [2, 2]}",
        "synth.discriminator={channels: [4, 8, 16], strides: [2, 2]}"]
PROFILE = "builtin:lung"


def tiny_cfg(extra=()):
    return load_config("lung-cpu-tiny", [*FAST, "data.spacing=[1.5,1.5,2.5]", *extra])


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1p")
    dl = write_cohort(root / "phantom", 4, seed=3, region="chest", tumour_fraction=0.5)
    data = json.loads(dl.read_text())
    entries = [dict(e, image=str(dl.parent / e["image"]), label=str(dl.parent / e["label"])) for e in data["training"]]
    lab = [e for e in entries if e["tumour"]]
    (root / "lab.json").write_text(json.dumps({"training": lab}))
    (root / "unl.json").write_text(json.dumps({"training": [e for e in entries if not e["tumour"]]}))
    # the held-aside "real" lesions: the labelled phantoms' tumours, three copies of each (the AUC needs 5)
    real = []
    for k in range(3):
        for i, e in enumerate(lab):
            img, seg = root / f"real{k}_{i}_img.nii.gz", root / f"real{k}_{i}_seg.nii.gz"
            shutil.copy(e["image"], img)
            shutil.copy(e["label"], seg)
            real.append({"image": str(img), "label": str(seg)})
    (root / "real.json").write_text(json.dumps({"label_map": "chest3", "training": real}))
    cfg = tiny_cfg()
    torch.manual_seed(0)
    save_checkpoint(root / "seg.pt", model=build_model(cfg), cfg=cfg, step=0)
    return root


def test_residual_generator_starts_at_the_profile_render(pools):
    cfg = tiny_cfg(["synth.lesions=profile"])
    gen = build_generator(cfg)
    assert isinstance(gen, ResidualGenerator)
    prep = PrepareProfileTumourd(cfg, PROFILE)
    transform = train_transforms(cfg.replace(**{"data.pos": 1.0, "data.neg": 0.0}), synthesis=prep)
    transform.set_random_state(seed=1)
    entry = json.loads((pools / "unl.json").read_text())["training"][0]
    patches = [p for p in transform(entry) if float(p["fake"].sum()) > 0]
    assert patches, "no profile lesion drawn on the phantom's lung"
    b = _batch_to(collate([patches]), torch.device("cpu"))
    assert not torch.equal(b["profile"], b["image"])  # the render changed the patch
    torch.manual_seed(0)
    st = Stage1(cfg, (build_model(cfg), cfg), torch.device("cpu"))
    xf, dmap = st.synthesise(st.source(b), b["weight"], b["channel"], generator=st.generator)
    assert float(dmap.detach().abs().max()) == 0.0
    assert torch.equal(xf, b["profile"])
    # one G step moves it away from the render, within the bound
    st.g_step(b)
    _, dmap = st.synthesise(st.source(b), b["weight"], b["channel"], generator=st.generator)
    lo, hi = cfg.data.hu_window
    assert 0 < float(dmap.detach().abs().max()) <= cfg.synth.residual_hu / (hi - lo) + 1e-6


def test_train_synth_profile_logs_realism_and_keeps_best(pools, tmp_path):
    cfg = tiny_cfg(["synth.max_steps=4"])
    out = tmp_path / "run"
    lines = []
    summary = train_synthesis(cfg, pools / "lab.json", pools / "unl.json", pools / "seg.pt", out, progress=False,
                              log=lines.append, profile=PROFILE, realism_real=pools / "real.json")
    # the measured verdict, once per run: a generator is optional
    assert lines.count(GENERATOR_OPTIONAL) == 1 and "generator is optional" in GENERATOR_OPTIONAL
    page = Path(__file__).parents[1] / "docs" / "benchmarks" / "realism-lung.md"
    assert "docs/benchmarks/realism-lung.md" in GENERATOR_OPTIONAL and "## A generator that learns" in page.read_text()
    epochs = [json.loads(ln) for ln in (out / "epochs.jsonl").read_text().splitlines() if ln]
    assert [e["step"] for e in epochs] == [0, 2, 4]
    aucs = [e["realism_auc"] for e in epochs]
    assert all(a is not None and 0.0 <= a <= 1.0 for a in aucs), epochs
    best = summary["best_realism"]
    assert best["realism_auc"] == min(aucs) and best["step"] == epochs[aucs.index(min(aucs))]["step"]
    assert json.loads((out / "final.json").read_text())["best_realism"] == best
    for name in ("generator.pt", "best_realism.pt", "last.pt"):
        model, gcfg = load_network(out / name, "generator") if name != "last.pt" else (None, None)
        if model is not None:
            assert isinstance(model, ResidualGenerator) and gcfg.synth.lesions == "profile"


def test_train_synth_profile_needs_its_profile(pools, tmp_path):
    cfg = tiny_cfg(["synth.lesions=profile"])
    with pytest.raises(ConfigError, match="--profile"):
        train_synthesis(cfg, pools / "lab.json", None, pools / "seg.pt", tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_train_synth_cli_wrong_organ_profile(pools, tmp_path):
    liver = tmp_path / "liver.json"
    prof = json.loads((Path(__file__).parents[1] / "src/freetumor/lesion_profiles/lung.json").read_text())
    prof["organ"] = "liver"
    liver.write_text(json.dumps(prof))
    out = tmp_path / "run"
    r = subprocess.run([*CLI, "train-synth", "--config", "lung-cpu-tiny", "--datalist", str(pools / "lab.json"),
                        "--segmentor", str(pools / "seg.pt"), "--out", str(out), "--max-steps", "1",
                        "--profile", str(liver), *sum((["--set", o] for o in FAST), [])],
                       capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"), timeout=120)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "lesion profile is for liver, not lung" in r.stderr
    assert "generator is optional" not in r.stdout + r.stderr  # a refused run says only why
    assert not out.exists()


def test_synthesizer_with_residual_generator_needs_profile_and_starts_at_it():
    from freetumor.generator import LearnedDifference
    from freetumor.phantom import make_case
    from freetumor.synthesis import Synthesizer

    cfg = tiny_cfg(["synth.lesions=profile"])
    torch.manual_seed(0)
    gen = LearnedDifference((build_generator(cfg), cfg))
    assert gen.residual
    with pytest.raises(ConfigError, match="--profile"):
        Synthesizer("lung", difference=gen)
    image, label = make_case("chest", seed=5)
    plain = Synthesizer("lung", profile=PROFILE)(image, label, seed=2)
    learned = Synthesizer("lung", profile=PROFILE, difference=gen)(image, label, seed=2)
    assert gen.calls == 1 and learned.lesions[0]["difference_source"] == "profile+generator"
    assert np.array_equal(plain.image.array, learned.image.array)  # an untrained residual changes nothing
    # a generator that was not trained on a profile does not combine with one
    rules = tiny_cfg()
    with pytest.raises(ConfigError, match="train-synth --profile"):
        Synthesizer("lung", profile=PROFILE, difference=LearnedDifference((build_generator(rules), rules)))


@pytest.mark.parametrize("override, match", [("synth.lesions=shapes", "synth.lesions"),
                                             ("synth.residual_hu=0", "synth.residual_hu"),
                                             ("synth.realism_samples=2", "synth.realism_samples"),
                                             ("synth.d_context=bbox", "synth.d_context")])
def test_profile_stage1_config_is_checked(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("lung-cpu-tiny", [override])
    assert load_config("lung-cpu-tiny", []).synth.d_context == "lesion_box"  # one geometry unless asked otherwise
