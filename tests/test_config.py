"""Training config: presets, merging, overrides, validation, save/load."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from freetumor.config import (
    CONFIG_DIR,
    DEFAULTS,
    QCConfig,
    list_presets,
    load_config,
    save_config,
)
from freetumor.errors import ConfigError, FreeTumorError, InputError
from freetumor.organs import get_organ
from freetumor.tasks import num_classes

PAPER = ["liver", "pancreas", "kidney", "abdomen7", "lung", "covid"]
REPO = Path(__file__).resolve().parents[1]


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def write(tmp_path: Path, text: str, name: str = "my.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --------------------------------------------------------------------------- presets


def test_presets_listed():
    names = list_presets()
    for base in PAPER:
        assert f"{base}-paper" in names
        assert f"{base}-cpu-tiny" in names


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads(name):
    cfg = load_config(name)
    assert cfg.name == name
    tree = cfg.to_dict()
    assert set(tree) == set(DEFAULTS)
    for section in ("data", "model", "train", "val", "synth", "qc"):
        assert set(tree[section]) == set(DEFAULTS[section])
        assert type(getattr(cfg, section)).__name__.endswith("Config")
    assert cfg.data.spacing is not None and cfg.data.roi_size is not None
    assert cfg.data.hu_window is not None
    assert load_config(name + ".yaml") == cfg
    assert load_config(CONFIG_DIR / f"{name}.yaml") == cfg


def test_repo_configs_symlink():
    link = REPO / "configs"
    assert link.is_symlink() and link.resolve() == CONFIG_DIR.resolve()
    assert load_config(str(link / "liver-cpu-tiny.yaml")).name == "liver-cpu-tiny"


def test_liver_paper_values():
    cfg = load_config("liver-paper")
    assert cfg.organ == "liver" and cfg.task == "organ3" and cfg.num_classes == 3
    m = cfg.model
    assert (m.name, m.feature_size, m.use_v2, m.use_checkpoint) == ("swinunetr", 48, True, True)
    d = cfg.data
    assert d.roi_size == [96, 96, 96] and d.spacing == [1.5, 1.5, 1.5]
    assert d.hu_window == [-175.0, 250.0] and d.num_samples == 4
    assert d.scale_intensity and d.shift_intensity
    t = cfg.train
    assert t.lr == pytest.approx(3e-4) and t.amsgrad and t.amp
    assert cfg.val.overlap == 0.75


def test_chest_paper_values():
    for name in ("covid-paper", "lung-paper"):
        cfg = load_config(name)
        assert cfg.task == "chest3" and cfg.num_classes == 3
        assert tuple(cfg.data.roi_size) == (192, 192, 32)
        assert tuple(cfg.data.spacing) == (1.25, 1.25, 5.0)
        assert cfg.data.hu_window == [-1000.0, 500.0]
        assert cfg.data.num_samples == 2 and cfg.data.scale_intensity is False
        assert cfg.model.name == "swinunetr"


def test_abdomen7_preset():
    cfg = load_config("abdomen7-paper")
    assert cfg.organ == "liver" and cfg.task == "abdomen7" and cfg.num_classes == 7
    assert load_config("abdomen7-cpu-tiny").task == "abdomen7"


@pytest.mark.parametrize("base", PAPER)
def test_cpu_tiny_values(base):
    cfg = load_config(f"{base}-cpu-tiny")
    paper = load_config(f"{base}-paper")
    assert (cfg.organ, cfg.task) == (paper.organ, paper.task)
    m, d, t = cfg.model, cfg.data, cfg.train
    assert m.name == "unet" and m.channels == [8, 16, 32, 64] and m.strides == [2, 2, 2]
    assert m.num_res_units == 1 and d.num_samples == 2
    chest = get_organ(cfg.organ).region == "chest"
    assert d.roi_size == ([96, 96, 16] if chest else [64, 64, 64])
    assert d.spacing == ([2.5, 2.5, 5.0] if chest else [3.0, 3.0, 3.0])
    assert (t.max_steps, t.warmup_steps, t.val_every, t.checkpoint_every, t.amp) == (
        200, 10, 50, 10, False)


# --------------------------------------------------------------------------- merging and filling


def test_null_fields_filled_from_registry(tmp_path):
    p = write(tmp_path, "organ: kidney\n", "kid.yaml")
    cfg = load_config(p)
    kidney = get_organ("kidney")
    assert cfg.name == "kid"
    assert cfg.data.spacing == list(kidney.target_spacing)
    assert cfg.data.hu_window == list(kidney.hu_window)
    assert cfg.data.roi_size == list(kidney.roi_size)
    assert cfg.label_map is None
    # everything else is the default
    rest = cfg.to_dict()
    expect = copy.deepcopy(DEFAULTS)
    for k in ("spacing", "hu_window", "roi_size"):
        rest["data"].pop(k)
        expect["data"].pop(k)
    rest.pop("name"), expect.pop("name"), rest.pop("organ"), expect.pop("organ")
    assert rest == expect

    chest = load_config(write(tmp_path, "organ: covid\ntask: chest3\n", "c.yaml"))
    assert chest.data.spacing == [1.25, 1.25, 5.0] and chest.data.roi_size == [192, 192, 32]


def test_deep_merge_keeps_sibling_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1e-3\n  max_steps: 5\ndata:\n"))
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 5
    assert cfg.train.batch_size == DEFAULTS["train"]["batch_size"]
    assert cfg.data.num_samples == DEFAULTS["data"]["num_samples"]


def test_explicit_name_kept(tmp_path):
    assert load_config(write(tmp_path, "name: run-a\n")).name == "run-a"


def test_float_accepts_int(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_defaults_not_mutated():
    before = copy.deepcopy(DEFAULTS)
    cfg = load_config("liver-cpu-tiny", ["model.channels=[4,8]", "model.strides=[2]"])
    cfg.model.channels.append(99)
    assert DEFAULTS == before


# --------------------------------------------------------------------------- overrides


def test_overrides_typed():
    cfg = load_config("liver-cpu-tiny", [
        "train.lr=1e-3", "data.roi_size=[32,32,32]", "model.name=dynunet", "train.amp=true",
        "train.fold=3", "data.spacing=[2, 2, 2]", "name=x"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.data.roi_size == [32, 32, 32]
    assert cfg.model.name == "dynunet"
    assert cfg.train.amp is True and cfg.train.fold == 3
    assert cfg.data.spacing == [2.0, 2.0, 2.0]
    assert cfg.name == "x"


def test_override_can_change_organ_and_refill():
    cfg = load_config("liver-cpu-tiny", ["organ=pancreas"])
    assert cfg.organ == "pancreas" and cfg.data.hu_window == [-175.0, 250.0]


def test_later_override_wins():
    assert load_config("liver-cpu-tiny", ["train.seed=1", "train.seed=2"]).train.seed == 2


@pytest.mark.parametrize("bad", [
    "train.lr", "=3", "train..lr=3", "train.lr=[1,", " =1", "train lr=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError) as ei:
        load_config("liver-cpu-tiny", [bad])
    one_line(ei.value)


def test_override_unknown_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.max_stepz'.*train\.max_steps") as ei:
        load_config("liver-cpu-tiny", ["train.max_stepz=3"])
    one_line(ei.value)
    with pytest.raises(ConfigError, match="'train.lr.x'"):
        load_config("liver-cpu-tiny", ["train.lr.x=3"])


def test_override_bad_type():
    for ov in ("train.max_steps=abc", "train.max_steps=1.5", "train.amp=3", "data.num_samples=true",
               "model.name=5", "model.channels=8", "train=3"):
        with pytest.raises(ConfigError) as ei:
            load_config("liver-cpu-tiny", [ov])
        one_line(ei.value)


# --------------------------------------------------------------------------- errors


def test_unknown_key_in_file_names_path(tmp_path):
    p = write(tmp_path, "train:\n  max_stepz: 3\n", "liver.yaml")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = one_line(ei.value)
    assert "unknown config key 'train.max_stepz'" in msg and "liver.yaml" in msg
    with pytest.raises(ConfigError, match="'foo'"):
        load_config(write(tmp_path, "foo: 1\n"))
    with pytest.raises(ConfigError, match="'data.spacing'"):
        load_config(write(tmp_path, "data:\n  spacing:\n    x: 1\n"))


@pytest.mark.parametrize("text", [
    "train:\n  max_steps: ten\n",
    "train:\n  amp: 1\n",
    "train:\n  max_steps: 2.5\n",
    "model:\n  channels: 3\n",
    "data: 3\n",
    "task: 3\n",
    "data:\n  spacing: [1, 2]\n",
    "data:\n  spacing: [1, 0, 1]\n",
    "data:\n  roi_size: [64, 64, 6.5]\n",
    "data:\n  hu_window: [200, -100]\n",
    "data:\n  flip_prob: 1.5\n",
    "train:\n  lr: -1.0\n",
    "train:\n  fold: 5\n",
    "train:\n  fold: -1\n",
    "model:\n  name: vnet\n",
    "model:\n  feature_size: 20\n",
    "val:\n  overlap: 1.0\n",
    "model:\n  name: unet\n  channels: [8, 16]\n  strides: [2, 2]\n",
    "data:\n  roi_size: [96, 96, 16]\n",  # swinunetr needs multiples of 32
    "data:\n  roi_size: [32, 32, 32]\n",  # ... and a bottleneck larger than 1 voxel
    "model:\n  name: unet\n  strides: [2, 2, 2]\ndata:\n  roi_size: [60, 60, 60]\n",
    "- a\n- b\n",
])
def test_bad_values(tmp_path, text):
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, text))
    one_line(ei.value)


@pytest.mark.parametrize("text, word", [
    ("organ: spleen\n", "spleen"),
    ("task: organ4\n", "organ4"),
    ("organ: lung\ntask: abdomen7\n", "abdomen7"),
    ("organ: liver\ntask: chest3\n", "chest3"),
    ("organ: covid\ntask: abdomen7\n", "abdomen7"),
    ("organ: kidney\nlabel_map: chest3\n", "chest3"),
    ("label_map: nonsense\n", "nonsense"),
])
def test_bad_organ_task_combos(tmp_path, text, word):
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, text))
    assert word in one_line(ei.value)


def test_organ3_allowed_for_chest(tmp_path):
    assert load_config(write(tmp_path, "organ: lung\ntask: organ3\n")).num_classes == 3


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found") as ei:
        load_config("no-such-preset")
    one_line(ei.value)
    with pytest.raises(FreeTumorError) as ei:
        load_config(tmp_path / "nope.yaml")
    one_line(ei.value)
    bad = write(tmp_path, "train: [unclosed\n", "bad.yaml")
    with pytest.raises(InputError) as ei:
        load_config(bad)
    assert str(bad) in one_line(ei.value)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n", "~\n"])
def test_empty_file_is_refused(tmp_path, text):
    """An empty config would silently train the full paper network on defaults: refused, naming the file."""
    path = write(tmp_path, text, "empty.yaml")
    with pytest.raises(InputError, match="config is empty") as ei:
        load_config(path)
    assert str(ei.value).startswith(str(path)) and "liver-cpu-tiny" in str(ei.value)


def test_one_setting_fills_the_rest_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "organ: liver\n", "minimal.yaml"))
    assert cfg.name == "minimal" and cfg.organ == "liver" and cfg.model.name == "swinunetr"


@pytest.mark.parametrize("seed", [-1, 2**32, 2**63, 1.5])
def test_train_seed_out_of_range_is_refused(seed):
    with pytest.raises(ConfigError, match="train.seed"):
        load_config("liver-cpu-tiny", [f"train.seed={seed}"])


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("name", ["liver-paper", "covid-cpu-tiny"])
def test_save_load_round_trip(tmp_path, name):
    cfg = load_config(name, ["train.lr=1e-5", "model.dropout=0.1"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg
    assert not [p for p in out.parent.iterdir() if p.name != "config.yaml"]  # no temp files


def test_num_classes():
    assert load_config("liver-cpu-tiny").num_classes == 3
    assert load_config("lung-cpu-tiny").num_classes == 3
    assert load_config("abdomen7-cpu-tiny").num_classes == 7
    assert load_config("abdomen7-cpu-tiny").tumour_classes == (2, 4, 6)
    with pytest.raises(ConfigError):
        num_classes("x")


def test_replace_is_validated():
    cfg = load_config("liver-cpu-tiny")
    assert cfg.replace(**{"data.neg": 0.0, "train.seed": 3}).data.neg == 0.0
    with pytest.raises(ConfigError, match="data.flip_prob"):
        cfg.replace(**{"data.flip_prob": 2.0})
    with pytest.raises(ConfigError, match="unknown config key"):
        cfg.replace(**{"data.nope": 1})


def test_qc_section_checked_once_for_overrides():
    qc = QCConfig()
    assert dataclasses.replace(qc, threshold=0.5).checked("test").threshold == 0.5
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="qc.threshold"):
            dataclasses.replace(qc, threshold=bad).checked("option --qc-threshold")
