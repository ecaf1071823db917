"""Nothing partial (issue 25, item 3): every run-level option — generator, QC segmentor, lesion
profile, realism data, the checkpoint to resume — is checked before the run folder is made or
touched. A refused command leaves no run folder behind, and a refused ``--resume`` leaves every
file of the earlier run byte-identical (its config.yaml above all: the record of that run)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from freetumor.checkpoints import save_checkpoint  # noqa: E402
from freetumor.config import load_config  # noqa: E402
from freetumor.errors import FreeTumorError, InputError  # noqa: E402
from freetumor.models import build_generator, build_model  # noqa: E402
from freetumor.phantom import write_cohort  # noqa: E402
from freetumor.synthesis import SynthesisOptions  # noqa: E402
from freetumor.training.stage0 import train_segmentation  # noqa: E402

QUIET = dict(progress=False, log=lambda *a: None)
FAST = ["data.roi_size=[32,32,32]", "data.spacing=[6,6,6]", "data.num_samples=1", "val.overlap=0",
        "train.val_every=1", "train.checkpoint_every=1", "train.max_steps=1"]


def digests(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``, hidden ones too: SHA-256 of each file's bytes."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial")
    dl = write_cohort(root / "phantom", 4, seed=5)
    cfg = load_config("liver-cpu-tiny", FAST)
    torch.manual_seed(0)
    save_checkpoint(root / "generator.pt", model=build_generator(cfg), cfg=cfg, step=1, kind="generator")
    save_checkpoint(root / "segmentor.pt", model=build_model(cfg), cfg=cfg, step=1)
    (root / "bad_profile.json").write_text("{not json")
    train_segmentation(cfg, dl, root / "run", **QUIET)  # an earlier run, one step: config.yaml, split.json, tb/, ...
    return {"root": root, "dl": dl, "cfg": cfg}


@pytest.mark.parametrize("options,names", [
    (dict(synthesis="generator", generator="missing.pt"), "missing.pt"),
    (dict(synthesis="generator", generator="segmentor.pt"), "segmentor.pt"),
    (dict(synthesis="procedural", qc_segmentor="generator.pt"), "generator.pt"),
    (dict(synthesis="profile", profile="bad_profile.json"), "bad_profile.json"),
    (dict(synthesis="profile", profile="builtin:lung"), "builtin:lung"),
], ids=["generator missing", "generator is a segmentor", "qc segmentor is a generator", "profile not JSON",
        "profile of another organ"])
def test_train_seg_refuses_a_bad_run_option_before_making_the_run_folder(kit, tmp_path, options, names):
    """Rule: a bad --generator / --qc-segmentor / --profile is refused and no run folder exists
    (before, config.yaml, split.json and tb/ were written first)."""
    given = {k: v if v.startswith("builtin:") or k == "synthesis" else str(kit["root"] / v)
             for k, v in options.items()}
    out = tmp_path / "run"
    synthesis = given.pop("synthesis")
    with pytest.raises(FreeTumorError, match=names):
        train_segmentation(kit["cfg"], kit["dl"], out, synthesis=synthesis,
                           options=SynthesisOptions(kit["cfg"].organ, **given), **QUIET)
    assert not out.exists()


@pytest.mark.parametrize("last", ["generator checkpoint", "weights of another model", "truncated"])
def test_refused_resume_leaves_every_file_byte_identical(kit, tmp_path, last):
    """Rule: a refused last.pt changes nothing, although the resumed config differs (--set train.lr):
    before the fix config.yaml was rewritten with the new values first."""
    run = tmp_path / "run"
    shutil.copytree(kit["root"] / "run", run)
    cfg = kit["cfg"]
    if last == "generator checkpoint":
        save_checkpoint(run / "last.pt", model=build_generator(cfg), cfg=cfg, step=1, kind="generator")
    elif last == "weights of another model":
        other = load_config("liver-cpu-tiny", [*FAST, "model.channels=[4, 8, 16, 32]"])
        save_checkpoint(run / "last.pt", model=build_model(other), cfg=other, step=1)
    else:
        (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:1000])
    before = digests(run)
    changed = load_config("liver-cpu-tiny", [*FAST, "train.lr=0.5", "train.max_steps=3"])
    with pytest.raises(InputError, match="last.pt"):
        train_segmentation(changed, kit["dl"], run, resume=True, **QUIET)
    assert digests(run) == before


def test_train_synth_without_realism_lesions_leaves_nothing(kit, tmp_path):
    """Rule: --realism-real whose datalist holds fewer than 5 lesions is refused with no run folder
    (before: config.yaml and samples/ were left)."""
    from freetumor.training.stage1 import train_synthesis

    data = json.loads(Path(kit["dl"]).read_text())
    base = Path(kit["dl"]).parent
    entries = [dict(e, image=str(base / e["image"]), label=str(base / e["label"])) for e in data["training"]]
    lab, healthy = tmp_path / "lab.json", tmp_path / "healthy.json"
    lab.write_text(json.dumps({"training": [e for e in entries if e["tumour"]]}))
    healthy.write_text(json.dumps({"training": [e for e in entries if not e["tumour"]]}))
    cfg = load_config("liver-cpu-tiny", [*FAST, "synth.probe_samples=1", "synth.realism_samples=5",
                                         "synth.generator={channels: [4, 8, 16], strides: [2, 2]}",
                                         "synth.discriminator={channels: [4, 8, 16], strides: [2, 2]}"])
    out = tmp_path / "run"
    with pytest.raises(InputError, match="healthy.json: 0 real liver lesion"):
        train_synthesis(cfg, lab, None, kit["root"] / "segmentor.pt", out, realism_real=healthy, **QUIET)
    assert not out.exists()


@pytest.mark.parametrize("option,value,names", [
    ("generator", "missing.pt", "missing.pt"),
    ("generator", "segmentor.pt", "is a segmentor checkpoint, not a generator"),
    ("qc_segmentor", "generator.pt", "is a generator checkpoint, not a segmentor"),
    ("profile", "bad_profile.json", "bad_profile.json"),
    ("profile", "builtin:lung", "lesion profile is for lung, not liver"),
])
def test_synthesize_batch_checks_run_options_once_before_any_output(kit, tmp_path, option, value, names):
    """Rule: synthesize-batch refuses a bad --generator / --qc-segmentor / --profile up front, in
    one error, with no done/, errors.log or datalist.json (before: one error line per case)."""
    from freetumor.batch import synthesize_batch
    from freetumor.synthesis import SynthesisOptions

    given = value if value.startswith("builtin:") else str(kit["root"] / value)
    out = tmp_path / "batch"
    with pytest.raises(FreeTumorError, match=names):
        synthesize_batch(kit["dl"], SynthesisOptions("liver", **{option: given}), out, workers=0, **QUIET)
    assert not out.exists()
