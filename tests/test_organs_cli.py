"""`freetumor organs`: organ masks (no tumour ids) of unlabelled CT and their datalist."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from freetumor.errors import ConfigError
from freetumor.io import load_volume, save_volume
from freetumor.organ_masks import LUNGMASK_TO_CHEST3, TOTALSEG_TO_ABDOMEN7, map_labels, merge_mapping, segment_organs

from conftest import run_cli as run




@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small phantom CT (coarse grid, so that sliding-window inference is quick) and a random-weight model."""
    from freetumor.checkpoints import save_checkpoint
    from freetumor.config import load_config
    from freetumor.models import build_model
    from freetumor.phantom import make_case

    d = tmp_path_factory.mktemp("organs")
    image, _ = make_case("abdomen", seed=5, tumour=True, shape=(48, 40, 24), spacing=(7.0, 7.0, 9.0))
    save_volume(image, d / "ct.nii.gz")
    cfg = load_config("abdomen7-cpu-tiny", ["data.roi_size=[32,32,32]", "val.overlap=0.25"])
    save_checkpoint(d / "seg.pt", model=build_model(cfg), cfg=cfg, step=0)
    return d


def test_organs_freetumor_engine(case, tmp_path):
    out = tmp_path / "masks"
    r = run("organs", "--image", case / "ct.nii.gz", "--out", out, "--model", case / "seg.pt", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "wrote 1 organ mask(s)" in r.stdout
    # a generic CT name: the case is its folder's name, and the mask says it is one
    mask_name = f"{case.name}_organs.nii.gz"
    assert sorted(p.name for p in out.iterdir()) == sorted([mask_name, "datalist.json"])
    ct, mask = load_volume(case / "ct.nii.gz"), load_volume(out / mask_name)
    assert mask.shape == ct.shape and np.allclose(mask.affine, ct.affine)
    assert mask.array.dtype == np.uint8
    assert set(np.unique(mask.array).tolist()) <= {0, 1, 3, 5}  # tumour classes merged into their organs
    dl = json.loads((out / "datalist.json").read_text())
    assert dl["label_map"] == "abdomen7" and dl["engine"] == "freetumor" and dl["numTraining"] == 1
    assert dl["training"] == [{"image": str((case / "ct.nii.gz").resolve()), "label": mask_name, "tumour": False}]

    from freetumor.data import load_datalist

    entries = load_datalist(out / "datalist.json")
    assert Path(entries[0]["label"]) == out / mask_name and Path(entries[0]["image"]).is_file()


def test_merge_and_engine_mappings():
    pred = np.arange(7, dtype=np.uint8).reshape(7, 1, 1)
    mapping, lm = merge_mapping("abdomen7", "liver")
    assert lm == "abdomen7" and map_labels(pred, mapping).ravel().tolist() == [0, 1, 1, 3, 3, 5, 5]
    assert merge_mapping("chest3", "lung") == ({0: 0, 1: 1, 2: 1}, "chest3")
    assert merge_mapping("organ3", "kidney") == ({0: 0, 1: 5, 2: 5}, "abdomen7")
    assert merge_mapping("organ3", "covid") == ({0: 0, 1: 1, 2: 1}, "chest3")
    with pytest.raises(ConfigError, match="unknown task"):
        merge_mapping("organ9", "liver")
    # TotalSegmentator `total` v2: kidney_right 2, kidney_left 3, liver 5, pancreas 7; others (spleen 1, lung 10...) -> 0
    ts = np.array([[[0, 1, 2, 3, 5, 7, 10, 117]]], np.int16)
    assert map_labels(ts, TOTALSEG_TO_ABDOMEN7).ravel().tolist() == [0, 0, 5, 5, 1, 3, 0, 0]
    lungs = np.array([[[0, 1, 2, 3]]], np.uint8)
    assert map_labels(lungs, LUNGMASK_TO_CHEST3).ravel().tolist() == [0, 1, 1, 0]


def test_organs_bad_inputs(case, tmp_path):
    out = tmp_path / "masks"
    r = run("organs", "--image", case / "ct.nii.gz", "--out", out)  # engine freetumor without --model
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: engine freetumor needs --model")
    r = run("organs", "--image", case / "ct.nii.gz", "--out", out, "--engine", "nnunet")
    assert r.returncode == 2 and "nnunet" in r.stderr
    r = run("organs", "--image", tmp_path / "missing.nii.gz", "--out", out, "--model", case / "seg.pt")
    assert r.returncode == 1 and r.stderr == f"error: {tmp_path / 'missing.nii.gz'}: no such file or folder\n"
    not_a_model = tmp_path / "seg.pt"
    not_a_model.write_bytes(b"not a checkpoint")
    r = run("organs", "--image", case / "ct.nii.gz", "--out", out, "--model", not_a_model)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and str(not_a_model) in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("engine, pip_name", [("totalsegmentator", "TotalSegmentator"), ("lungmask", "lungmask")])
def test_optional_engine_missing(case, tmp_path, monkeypatch, engine, pip_name):
    out = tmp_path / "masks"
    expected = (f"engine {engine} needs the `{engine}` package (pip install {pip_name}); "
                "its weights are fetched by the user")
    monkeypatch.setitem(sys.modules, engine, None)  # import fails as if not installed
    with pytest.raises(ConfigError) as err:
        segment_organs(case / "ct.nii.gz", out, engine=engine)
    assert str(err.value) == expected and not out.exists()
    if importlib.util.find_spec(engine) is not None:
        return  # installed: the CLI would run it (and fetch weights); the API check above covers the message
    r = run("organs", "--image", case / "ct.nii.gz", "--out", out, "--engine", engine)
    assert r.returncode == 1 and r.stderr == f"error: {expected}\n" and not out.exists()


NSCLC = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "nsclc_radiomics_lung1_001"


def test_threshold_engine_matches_clinical_lung_contours(tmp_path):
    """Model-free lung masks against the radiotherapy lung contours of a real chest (Dice >= 0.95)."""
    from conftest import need

    image = need(NSCLC / "image.nii.gz")
    out = tmp_path / "masks"
    r = run("organs", "--image", image, "--out", out, "--engine", "threshold")
    assert r.returncode == 0, r.stderr
    mask = load_volume(out / "nsclc_radiomics_lung1_001_organs.nii.gz")
    ref = np.isin(load_volume(NSCLC / "label.nii.gz").array, (2, 3))  # left and right lung
    assert mask.array.dtype == np.uint8 and set(np.unique(mask.array).tolist()) == {0, 1}
    lung = mask.array == 1
    dice = 2 * np.count_nonzero(lung & ref) / (np.count_nonzero(lung) + np.count_nonzero(ref))
    assert dice >= 0.95, dice
    dl = json.loads((out / "datalist.json").read_text())
    assert dl["label_map"] == "chest3" and dl["engine"] == "threshold"


def test_threshold_engine_refuses_a_volume_without_lungs(tmp_path):
    x = np.full((40, 36, 20), -1000, np.int16)
    x[4:36, 4:32, :] = 45  # a body with no air inside it
    from freetumor.io import Volume

    save_volume(Volume(x, np.diag([4.0, 4.0, 5.0, 1.0]), None, "solid"), tmp_path / "solid.nii.gz")
    out = tmp_path / "masks"
    r = run("organs", "--image", tmp_path / "solid.nii.gz", "--out", out, "--engine", "threshold", "--quiet")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "solid.nii.gz" in r.stderr and "no lungs found" in r.stderr
    assert not out.exists()
