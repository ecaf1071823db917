"""Model factory and checkpoint files (tiny networks, CPU)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from freetumor.checkpoints import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_model,
    load_weights_into,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from freetumor.config import load_config
from freetumor.errors import ConfigError, InputError
from freetumor.models import MODEL_NAMES, build_model

TINY = ["data.roi_size=[16,16,16]"]


def tiny_cfg(*extra: str, preset: str = "liver-cpu-tiny") -> dict:
    return load_config(preset, [*TINY, *extra])


def one_line(exc: BaseException, path) -> str:
    msg = str(exc)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


# --------------------------------------------------------------------------- models


def test_model_names():
    assert MODEL_NAMES == ("swinunetr", "unet", "dynunet")


@pytest.mark.parametrize("name, extra, preset", [
    ("unet", [], "liver-cpu-tiny"),
    ("unet", [], "abdomen7-cpu-tiny"),
    ("dynunet", ["model.filters=[8,16,32,64]"], "liver-cpu-tiny"),
    ("dynunet", ["model.filters=[8,16,32,64]"], "abdomen7-cpu-tiny"),
    ("swinunetr", ["model.feature_size=12", "model.use_checkpoint=false"], "abdomen7-cpu-tiny"),
])
def test_build_each_model(name, extra, preset):
    roi = [64, 32, 32] if name == "swinunetr" else [32, 32, 32]  # SwinUNETR: multiples of 32, not all 32
    cfg = load_config(preset, [f"model.name={name}", f"data.roi_size={roi}", *extra])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 1, *roi))
    assert tuple(y.shape) == (1, cfg.num_classes, *roi)


def test_dynunet_anisotropic_chest_roi():
    cfg = load_config("covid-cpu-tiny", ["model.name=dynunet", "model.filters=[4,8,16,32]"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 1, *cfg.data.roi_size))
    assert tuple(y.shape) == (1, 3, 96, 96, 16)


def test_swinunetr_paper_settings(monkeypatch):
    import freetumor.models

    monkeypatch.setattr(freetumor.models, "_need_einops", lambda: None)  # construction only
    model = build_model(load_config("liver-paper"))
    assert type(model).__name__ == "SwinUNETR"
    assert sum(p.numel() for p in model.parameters()) > 50_000_000  # feature size 48, v2


def test_swinunetr_without_einops_is_a_clean_error(monkeypatch):
    # einops is a dependency, so its absence is simulated: find_spec answers None for it alone
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "einops" else real(name, *a))
    with pytest.raises(ConfigError, match="einops") as ei:
        build_model(load_config("liver-paper"))
    assert "\n" not in str(ei.value)


def test_unknown_model_name():
    cfg = tiny_cfg()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name="vnet"))  # unchecked on purpose
    with pytest.raises(ConfigError, match="vnet"):
        build_model(cfg)


def test_import_does_not_load_torch():
    code = ("import sys, freetumor, freetumor.config; freetumor.config.load_config('liver-paper'); "
            "bad = [m for m in ('torch', 'monai') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture()
def trained(tmp_path):
    """A tiny UNet after two optimiser steps, with its optimiser, scheduler and a checkpoint."""
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, amsgrad=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    for _ in range(2):
        opt.zero_grad()
        model(torch.rand(1, 1, 16, 16, 16)).mean().backward()
        opt.step()
        sched.step()
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, model=model, cfg=cfg, step=2, optimizer=opt, scheduler=sched,
                    extra={"best": 0.5, "rng": rng_state(), "arr": np.arange(3), "np_gen": np.random.default_rng(3).bit_generator.state})
    return cfg, model, opt, sched, path


def test_round_trip(trained):
    cfg, model, opt, sched, path = trained
    ck = load_checkpoint(path)
    assert ck["format"] == CHECKPOINT_FORMAT and ck["format_version"] == 1 and ck["step"] == 2
    assert ck["config"] == cfg.to_dict()  # stored as a plain dict, the file format of before
    assert ck["extra"]["best"] == 0.5
    assert torch.equal(ck["extra"]["arr"], torch.arange(3))
    assert ck["extra"]["np_gen"] == np.random.default_rng(3).bit_generator.state
    loaded, cfg2 = load_model(path)
    assert cfg2 == cfg and not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # every stored object is a plain type or tensor: weights_only loading succeeds directly
    torch.load(path, weights_only=True)


def test_optimizer_and_scheduler_round_trip(trained):
    cfg, model, opt, sched, path = trained
    ck = load_checkpoint(path)
    model2 = build_model(cfg)
    model2.load_state_dict(ck["model"])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, amsgrad=True)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: min(1.0, (s + 1) / 10))
    opt2.load_state_dict(ck["optimizer"])
    sched2.load_state_dict(ck["scheduler"])
    assert sched2.last_epoch == sched.last_epoch == 2
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert torch.equal(s1[k][name], s2[k][name])
    # one more identical step gives identical weights
    x = torch.rand(1, 1, 16, 16, 16)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.allclose(a, b)


def test_rng_state_round_trip(tmp_path):
    cfg = tiny_cfg()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.normal(), torch.rand(3)  # move away from the seeds
    path = tmp_path / "rng.pt"
    save_checkpoint(path, model=build_model(cfg), cfg=cfg, step=0, extra={"rng": rng_state()})
    first = (random.random(), np.random.rand(4).tolist(), np.random.normal(), torch.rand(4).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(path)["extra"]["rng"])
    again = (random.random(), np.random.rand(4).tolist(), np.random.normal(), torch.rand(4).tolist())
    assert first == again
    set_rng_state({})  # nothing to restore: no error
    set_rng_state(None)


def test_ddp_prefix_stripped(tmp_path):
    cfg = tiny_cfg()
    model = build_model(cfg)

    class Wrapper(torch.nn.Module):  # what DistributedDataParallel looks like from outside
        def __init__(self, m):
            super().__init__()
            self.module = m

    path = tmp_path / "ddp.pt"
    save_checkpoint(path, model=Wrapper(model), cfg=cfg, step=1)
    keys = list(load_checkpoint(path)["model"])
    assert keys == list(model.state_dict()) and not any(k.startswith("module.") for k in keys)
    load_weights_into(Wrapper(build_model(cfg)), path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(InputError) as ei:
        load_checkpoint(path)
    assert "not found" in one_line(ei.value, path)
    with pytest.raises(InputError):
        load_model(path)
    with pytest.raises(InputError):
        load_checkpoint(tmp_path)


def test_truncated(trained):
    path = trained[-1]
    data = path.read_bytes()
    cut = path.with_name("cut.pt")
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as ei:
        load_checkpoint(cut)
    one_line(ei.value, cut)
    with pytest.raises(InputError):
        load_model(cut)
    empty = path.with_name("empty.pt")
    empty.write_bytes(b"")
    with pytest.raises(InputError) as ei:
        load_checkpoint(empty)
    one_line(ei.value, empty)


@pytest.mark.parametrize("content", [b"hello world\n", os.urandom(2000), b"PK\x03\x04" + os.urandom(500)])
def test_garbage(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(InputError) as ei:
        load_checkpoint(path)
    one_line(ei.value, path)


def test_not_ours(tmp_path):
    for obj, name in (({"a": 1}, "dict.pt"), (torch.nn.Linear(2, 2).state_dict(), "sd.pt"), ([1, 2], "list.pt"),
                      ({"format": "other"}, "other.pt")):
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(InputError) as ei:
            load_checkpoint(path)
        assert "not a freetumor checkpoint" in one_line(ei.value, path)
    path = tmp_path / "pickle.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(InputError) as ei:
        load_checkpoint(path)
    one_line(ei.value, path)


def test_arbitrary_objects_refused(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "state": np.random.get_state(), "obj": ConfigError("x")}, path)
    with pytest.raises(InputError) as ei:
        load_checkpoint(path)
    assert "holds pickled Python code or objects" in one_line(ei.value, path)
    assert "refused" in str(ei.value)


def test_code_payload_refused_and_not_run(tmp_path):
    """A checkpoint whose pickle would run a command: refused in plain words, the command never runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name, write in (("torch.pt", lambda p: torch.save({"format": CHECKPOINT_FORMAT, "x": Payload()}, p)),
                        ("bare.pkl", lambda p: p.write_bytes(pickle.dumps(Payload())))):
        path = tmp_path / name
        write(path)
        with pytest.raises(InputError) as ei:
            load_checkpoint(path)
        msg = one_line(ei.value, path)
        assert "holds pickled Python code" in msg and "refused, nothing in it was run" in msg
        assert "corrupt" not in msg
    assert not marker.exists()


def test_newer_format_version(trained, tmp_path):
    ck = load_checkpoint(trained[-1])
    ck.pop("config")
    ck["format_version"] = 99
    path = tmp_path / "future.pt"
    torch.save(ck, path)
    with pytest.raises(InputError, match="version") as ei:
        load_checkpoint(path)
    one_line(ei.value, path)


def test_architecture_mismatch(trained, tmp_path):
    cfg, model, _, _, path = trained
    ck = load_checkpoint(path)
    ck.pop("config")
    # the stored config edited to another model: keys do not fit
    other = dict(cfg.to_dict(), model=dict(cfg.to_dict()["model"], name="dynunet", filters=[8, 16, 32, 64]))
    ck["config_json"] = __import__("json").dumps(other)
    edited = tmp_path / "edited.pt"
    torch.save(ck, edited)
    with pytest.raises(InputError) as ei:
        load_model(edited)
    msg = one_line(ei.value, edited)
    assert "weights do not fit the dynunet architecture" in msg and "missing" in msg and "unexpected" in msg
    # same architecture, other widths: shape mismatch
    wider = dict(cfg.to_dict(), model=dict(cfg.to_dict()["model"], channels=[16, 16, 32, 64]))
    ck["config_json"] = __import__("json").dumps(wider)
    torch.save(ck, edited)
    with pytest.raises(InputError) as ei:
        load_model(edited)
    assert "weights do not fit the unet architecture: shape mismatch at" in one_line(ei.value, edited)
    # load_weights_into an existing model of another architecture
    target = build_model(load_config("liver-cpu-tiny", ["model.name=dynunet", "model.filters=[4,8,16,32]", *TINY]))
    with pytest.raises(InputError) as ei:
        load_weights_into(target, path)
    assert "do not fit the dynunet architecture" in one_line(ei.value, path)
    # a fitting model loads
    fresh = build_model(cfg)
    assert load_weights_into(fresh, path)["step"] == 2
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_save_is_atomic(trained, monkeypatch):
    cfg, model, _, _, path = trained
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        f.write(b"partial bytes" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, cfg=cfg, step=3)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["step"] == 2
    # an ordinary overwrite replaces the file
    save_checkpoint(path, model=model, cfg=cfg, step=3)
    assert load_checkpoint(path)["step"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_file_permissions_follow_umask(trained):
    mode = trained[-1].stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_unstorable_extra(tmp_path):
    cfg = tiny_cfg()
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "x.pt", model=build_model(cfg), cfg=cfg, step=0, extra={"f": object()})
    assert not list(tmp_path.iterdir())
