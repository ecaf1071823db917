"""synthesize-batch: serial and Ray give the same outputs; a killed run resumes without redoing cases;
each worker loads the generator and the QC segmentor once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from freetumor.io import load_volume, save_volume
from freetumor.phantom import write_cohort
from freetumor.synthesis import SynthesisOptions

SCRIPT = Path(sys.executable).parent / "freetumor"
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "freetumor.cli"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    write_cohort(root / "coh", 3, seed=31, tumour_fraction=0.0)
    return root / "coh" / "unlabelled.json"


def _arrays(folder: Path) -> dict:
    return {f.name: load_volume(f).array for f in sorted((folder / "cases").glob("*.nii.gz"))}


def test_ray_matches_serial(cohort, tmp_path):
    pytest.importorskip("ray")
    from freetumor.batch import synthesize_batch

    options = SynthesisOptions("liver", png=False)
    a = synthesize_batch(cohort, options, tmp_path / "serial", per_case=2, seed=5, workers=0, progress=False,
                         log=lambda *x: None)
    b = synthesize_batch(cohort, options, tmp_path / "ray", per_case=2, seed=5, workers=2, progress=False,
                         log=lambda *x: None)
    assert a["done"] == b["done"] == 6 and a["engine"] == "serial" and b["engine"] == "ray"
    sa, sb = _arrays(tmp_path / "serial"), _arrays(tmp_path / "ray")
    assert set(sa) == set(sb) and len(sa) == 12
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), k
    dl = json.loads((tmp_path / "ray" / "datalist.json").read_text())
    assert len(dl["training"]) == 6 and all((tmp_path / "ray" / e["image"]).is_file() for e in dl["training"])


def test_killed_run_resumes_without_redoing(cohort, tmp_path):
    """Kill a run half-way (SIGKILL), restart it (on Ray): only the unfinished cases run."""
    out = tmp_path / "run"
    cmd = [*CLI, "synthesize-batch", "--datalist", str(cohort), "--organ", "liver", "--out", str(out),
           "--per-case", "4", "--workers", "0", "--seed", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "done").glob("*.json"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p.name: p.stat().st_mtime_ns for p in (out / "done").glob("*.json")}
    assert 3 <= len(first) < 12, "the run should have been killed half-way"
    images = {n: (out / "cases" / n.replace(".json", "_image.nii.gz")).stat().st_mtime_ns for n in first}
    # restart on a local Ray instance (2 workers) when Ray is installed, else serially again
    import importlib.util

    if importlib.util.find_spec("ray") is not None:
        restart = [c if c != "0" or cmd[i - 1] != "--workers" else "2" for i, c in enumerate(cmd)]
    else:
        restart = cmd
    r = subprocess.run(restart, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {len(first)} of 12" in r.stdout
    done = list((out / "done").glob("*.json"))
    assert len(done) == 12
    for n, t in first.items():  # finished cases were not redone
        assert (out / "done" / n).stat().st_mtime_ns == t
        assert (out / "cases" / n.replace(".json", "_image.nii.gz")).stat().st_mtime_ns == images[n]
    assert len(json.loads((out / "datalist.json").read_text())["training"]) == 12


def test_failed_case_logs_one_line_and_run_goes_on(cohort, tmp_path):
    data = json.loads(cohort.read_text())
    entries = [dict(e, image=str(cohort.parent / e["image"]), label=str(cohort.parent / e["label"]))
               for e in data["training"]]
    bad = load_volume(entries[0]["label"])
    save_volume(bad.with_array(np.zeros_like(bad.array)), tmp_path / "noliver.nii.gz")  # no liver: cannot host
    entries[0] = dict(entries[0], label=str(tmp_path / "noliver.nii.gz"))
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"label_map": "abdomen7", "training": entries}))
    r = subprocess.run([*CLI, "synthesize-batch", "--datalist", str(dl), "--organ", "liver", "--out",
                        str(tmp_path / "o"), "--workers", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "1 case(s) failed" in r.stderr
    log = (tmp_path / "o" / "errors.log").read_text().splitlines()
    assert len(log) == 1 and "no liver" in log[0]
    assert len(list((tmp_path / "o" / "done").glob("*.json"))) == len(entries) - 1


# ----------------------------------------------------------------- networks loaded once per worker
@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """A (random) tiny generator and a segmentor that calls every voxel tumour, as checkpoint files."""
    import torch
    from freetumor.checkpoints import save_checkpoint
    from freetumor.config import load_config
    from freetumor.models import build_generator, build_model

    root = tmp_path_factory.mktemp("nets")
    cfg = load_config("liver-cpu-tiny", ["data.roi_size=[32,32,32]",
                                         "synth.generator={channels: [4, 8, 16], strides: [2, 2]}",
                                         "synth.discriminator={channels: [4, 8, 16], strides: [2, 2]}"])
    torch.manual_seed(0)
    save_checkpoint(root / "generator.pt", model=build_generator(cfg), cfg=cfg, step=1, kind="generator")
    seg = build_model(cfg)
    last_bias = [v for k, v in seg.state_dict().items() if k.endswith("bias") and v.shape == (cfg.num_classes,)][-1]
    with torch.no_grad():
        last_bias.copy_(torch.tensor([0.0, 0.0, 100.0]))  # the tumour class wins everywhere: recall 1
    save_checkpoint(root / "segmentor.pt", model=seg, cfg=cfg, step=1)
    return root / "generator.pt", root / "segmentor.pt"


def _count_loads(monkeypatch) -> list[str]:
    """Record every network load of this process (generator and QC segmentor)."""
    import freetumor.generator
    import freetumor.quality

    loads: list[str] = []
    for module in (freetumor.generator, freetumor.quality):
        real = module.load_network

        def counting(source, kind, *a, _real=real, **k):
            loads.append(kind)
            return _real(source, kind, *a, **k)

        monkeypatch.setattr(module, "load_network", counting)
    return loads


@pytest.mark.parametrize("workers", [0, 2])
def test_each_worker_loads_each_network_once(cohort, networks, tmp_path, monkeypatch, workers):
    if workers:
        pytest.importorskip("ray")
    from freetumor.batch import synthesize_batch

    generator, segmentor = networks
    loads = _count_loads(monkeypatch)
    options = SynthesisOptions("liver", size="small", generator=generator, qc_segmentor=segmentor, png=False)
    s = synthesize_batch(cohort, options, tmp_path / "out", per_case=2, seed=1, workers=workers, progress=False,
                         log=lambda *x: None)
    assert s["done"] == 6 and s["errors"] == 0
    if workers == 0:  # this process did the work: it loaded each network exactly once
        assert sorted(loads) == ["generator", "segmentor"]
    else:  # the Ray actors did (each its own process)
        assert loads == [] and 1 <= len(s["workers"]) <= workers
    assert sum(w["tasks"] for w in s["workers"].values()) == 6
    for pid, w in s["workers"].items():
        assert w["network_loads"] == {"generator": 1, "segmentor": 1}, (pid, w)
    markers = [json.loads(p.read_text()) for p in (tmp_path / "out" / "done").glob("*.json")]
    assert len(markers) == 6 and all(m["network_loads"] == {"generator": 1, "segmentor": 1} for m in markers)
    rec = json.loads((tmp_path / "out" / "cases" / Path(markers[0]["record"]).name).read_text())
    assert rec["generator"] == str(generator) and rec["quality_control"]["segmentor"] == str(segmentor)
    assert rec["lesions"][0]["difference_source"] == "generator" and rec["lesions"][0]["qc"]["recall"] == 1.0
