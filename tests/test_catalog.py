"""Dataset catalog: entries validate, fake source trees are indexed and converted, pools are merged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from freetumor.cli import app
from freetumor.data import load_datalist
from freetumor.data.catalog import (
    TARGETS, convert_label, get_source, index_source, load_catalog, merge_datalists, validate_entry,
)
from freetumor.errors import ConfigError, InputError
from freetumor.phantom import make_case

SHAPE, SPACING = (40, 32, 16), (6.0, 6.0, 10.0)
EXPECTED = ["msd-task03-liver", "msd-task07-pancreas", "msd-task09-spleen", "msd-task10-colon", "lits", "kits23",
            "btcv", "flare22", "flare23", "amos", "word", "chaos", "abdomenct-1k", "abdomenatlas",
            "totalsegmentator", "panorama", "tcia-pancreas-ct", "covid-19-20", "lidc-idri", "stoic", "mela"]


def _save(arr, affine, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(arr), affine), str(path))


def _phantom(seed, tumour=False):
    im, lab = make_case("abdomen", seed=seed, tumour=tumour, shape=SHAPE, spacing=SPACING)
    return im.array, lab.array, im.affine


def _read(path):
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("sources")
    # MSD Task03: 0 bg, 1 liver, 2 cancer.
    msd = base / "Task03_Liver"
    for i, tumour in enumerate([True, False, False, False, False]):
        img, lab, aff = _phantom(10 + i, tumour)
        src = np.where(lab == 1, 1, np.where(lab == 2, 2, 0)).astype(np.uint8)
        _save(img, aff, msd / "imagesTr" / f"liver_{i}.nii.gz")
        if i == 3:  # shape mismatch
            src = src[:-2]
        if i == 4:  # an id Task03 does not define
            src[0, 0, 0] = 7
        _save(src, aff, msd / "labelsTr" / f"liver_{i}.nii.gz")
    data = (msd / "imagesTr" / "liver_2.nii.gz").read_bytes()
    (msd / "imagesTr" / "liver_2.nii.gz").write_bytes(data[: len(data) // 3])  # truncated
    (msd / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\0" * 100)  # macOS resource fork: ignored
    # KiTS23: 1 kidney, 2 tumour, 3 cyst.
    kits = base / "kits23" / "dataset"
    for i in range(2):
        img, lab, aff = _phantom(20 + i)
        seg = np.where(lab == 5, 1, 0).astype(np.uint8)
        kid = np.argwhere(seg == 1)
        seg[tuple(kid[: len(kid) // 4].T)] = 2 if i == 0 else 1
        seg[tuple(kid[-len(kid) // 6:].T)] = 3
        _save(img, aff, kits / f"case_{i:05d}" / "imaging.nii.gz")
        _save(seg, aff, kits / f"case_{i:05d}" / "segmentation.nii.gz")
    # TotalSegmentator: one binary mask per structure.
    ts = base / "Totalsegmentator_dataset_v201"
    img, lab, aff = _phantom(30)
    _save(img, aff, ts / "s0001" / "ct.nii.gz")
    kidney = lab == 5
    left = kidney.copy()
    left[: SHAPE[0] // 2] = False
    masks = {"liver": lab == 1, "pancreas": lab == 3, "kidney_left": left, "kidney_right": kidney & ~left,
             "spleen": np.zeros(SHAPE, bool)}
    for name, m in masks.items():
        _save(m.astype(np.uint8), aff, ts / "s0001" / "segmentations" / f"{name}.nii.gz")
    (ts / "meta.csv").write_text("image_id\ns0001\n")
    return {"msd": msd, "kits": kits, "ts": ts, "lab_ts": lab, "base": base}


@pytest.fixture(scope="module")
def indexed(trees, tmp_path_factory):
    out = tmp_path_factory.mktemp("indexed")
    logs = []
    dls = {
        "msd": index_source(trees["msd"], "msd-task03-liver", out / "msd.json", log=logs.append),
        "kits": index_source(trees["kits"], "kits23", out / "kits.json", workers=2),
        "ts": index_source(trees["ts"], "totalsegmentator", out / "ts.json"),
    }
    return out, dls, logs


def test_catalog_entries_validate():
    cat = load_catalog()
    assert set(EXPECTED) <= set(cat)
    for src in cat.values():
        assert src.title and src.description and src.obtain and src.licence and src.modality and src.region
        assert src.status in ("tumour", "mixed", "healthy", "unlabelled")
        valid = TARGETS[src.target]["ids"]
        assert all(v == "by_organ" or v in valid for v in src.mapping.values()), src.name
        assert all(v in valid for v in src.structures.values()), src.name
        assert set(src.tumour_ids) <= set(src.mapping) or src.kind != "file"
        images, labels = src.layout_globs()
        assert "{" not in images and (labels is None) == (src.kind == "none")
        json.dumps(src.to_dict())
    assert get_source("KiTS").name == "kits23" and get_source("task03").name == "msd-task03-liver"
    with pytest.raises(ConfigError, match="catalogued: .*kits23"):
        get_source("kits19")
    # Known published definitions.
    assert dict(cat["msd-task03-liver"].mapping) == {0: 0, 1: 1, 2: 2}
    assert dict(cat["msd-task07-pancreas"].mapping) == {0: 0, 1: 3, 2: 4}
    btcv = cat["btcv"].mapping
    assert (btcv[6], btcv[11], btcv[2], btcv[3]) == (1, 3, 5, 5)
    assert cat["covid-19-20"].target == "chest3" and cat["covid-19-20"].mapping[1] == 2


def test_invalid_entries_are_rejected():
    good = {"title": "t", "description": "d", "obtain": "o", "licence": "see source", "modality": "CT",
            "region": "abdomen", "target": "abdomen7", "status": "tumour", "tumour_ids": [2],
            "layout": {"images": "imagesTr/{case}.nii.gz", "labels": "labelsTr/{case}.nii.gz", "kind": "file"},
            "labels": {0: "bg", 1: "liver", 2: "tumour"}, "mapping": {0: 0, 1: 1, 2: 2}}
    assert validate_entry("x", good).mapping[2] == 2
    for bad in ({"mapping": {0: 0, 1: 1, 2: 9}}, {"target": "abdomen9"}, {"status": "maybe"},
                {"licence": ""}, {"mapping": {0: 0, 1: 2, 2: 1}}, {"labels": {0: "bg", 1: "liver"}}):
        with pytest.raises(ConfigError):
            validate_entry("x", {**good, **bad})


def test_convert_label_mappings():
    kits = get_source("kits23")
    out, unknown = convert_label(np.array([0, 1, 2, 3], np.uint8).reshape(1, 1, 4), kits)
    assert unknown == [] and out.ravel().tolist() == [0, 5, 6, 5]
    assert convert_label(np.array([0, 4], np.uint8).reshape(1, 1, 2), kits) == (None, [4])
    # FLARE23's single lesion class takes the tumour id of the organ it touches.
    lab = np.zeros((12, 12, 12), np.uint8)
    lab[:6] = 1                 # liver
    lab[8:] = 4                 # pancreas
    lab[2:4, 2:4, 2:4] = 14     # lesion in the liver
    lab[9:11, 5:7, 5:7] = 14    # lesion in the pancreas
    lab[6:8, 0, 0] = 14         # touches the liver only
    out, _ = convert_label(lab, "flare23")
    assert out[3, 3, 3] == 2 and out[10, 6, 6] == 4 and out[7, 0, 0] == 2 and out[0, 0, 0] == 1
    assert set(np.unique(out)) == {0, 1, 2, 3, 4}


def test_index_msd_reports_bad_cases(indexed, trees):
    out, dls, logs = indexed
    dl = dls["msd"]
    assert dl["label_map"] == "abdomen7" and dl["source"] == "msd-task03-liver"
    assert [e["case"] for e in dl["training"]] == ["liver_0", "liver_1"]
    assert dl["training"][0]["tumour"] is True and dl["training"][1]["tumour"] is False
    assert dl["training"][0]["organs"] == ["liver"] and dl["training"][0]["tumour_organs"] == ["liver"]
    problems = {p["case"]: p["problem"] for p in dl["problems"]}
    assert set(problems) == {"liver_2", "liver_3", "liver_4"}
    assert "truncated" in problems["liver_2"] or "cannot read" in problems["liver_2"]
    assert "shape" in problems["liver_3"]
    assert "label values 7" in problems["liver_4"]
    assert len(logs) == 3 and all("\n" not in line for line in logs)
    assert dl["counts"]["found"] == 5 and dl["counts"]["problems"] == 3 and dl["counts"]["tumour"] == 1
    # Labels converted next to the datalist; the user's files untouched; datalist loads and checks.
    src = _read(trees["msd"] / "labelsTr" / "liver_0.nii.gz")
    conv = _read(out / "msd_labels" / "liver_0.nii.gz")
    assert np.array_equal(src, conv) and set(np.unique(conv)) == {0, 1, 2}
    assert dl["training"][0]["label"] == "msd_labels/liver_0.nii.gz"
    from freetumor.data import check_datalist
    assert all(r.ok for r in check_datalist(out / "msd.json"))
    assert len(load_datalist(out / "msd.json")) == 2


def test_index_kits_and_totalseg(indexed, trees):
    out, dls, _ = indexed
    kits = dls["kits"]
    assert [e["case"] for e in kits["training"]] == ["case_00000", "case_00001"] and not kits["problems"]
    for e in kits["training"]:
        case = e["case"]
        src = _read(trees["kits"] / case / "segmentation.nii.gz")
        conv = _read(out / e["label"])
        assert np.array_equal(conv == 5, (src == 1) | (src == 3))  # cyst -> kidney
        assert np.array_equal(conv == 6, src == 2)
    assert [e["tumour"] for e in kits["training"]] == [True, False]
    ts = dls["ts"]
    assert len(ts["training"]) == 1 and not ts["problems"]
    conv = _read(out / ts["training"][0]["label"])
    lab = trees["lab_ts"]
    assert np.array_equal(conv == 1, lab == 1) and np.array_equal(conv == 3, lab == 3)
    assert np.array_equal(conv == 5, lab == 5) and set(np.unique(conv)) <= {0, 1, 3, 5}
    assert ts["training"][0]["organs"] == ["liver", "pancreas", "kidney"] and not ts["training"][0]["tumour"]


def test_index_nothing_matches_writes_nothing(trees, tmp_path):
    out = tmp_path / "o" / "dl.json"
    with pytest.raises(InputError, match="no files match the kits23 layout"):
        index_source(trees["msd"], "kits23", out)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    r = subprocess.run([sys.executable, "-m", "freetumor.cli", "data", "index", str(trees["msd"]), "--source",
                        "kits23", "--out", str(out)], capture_output=True, text=True,
                       env=dict(os.environ, COLUMNS="200"))
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ") and "kits23" in r.stderr
    assert not out.exists() and not out.with_name("dl_labels").exists()
    r = CliRunner().invoke(app, ["data", "index", str(trees["msd"]), "--source", "kits19", "--out", str(out)])
    assert r.exit_code == 1 and "catalogued:" in r.output


def test_cli_index_and_merge(trees, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["data", "index", str(trees["msd"]), "--source", "msd-task03-liver",
                            "--out", str(tmp_path / "msd.json"), "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "5 cases found; 2 labelled (1 with tumours, 1 without)" in r.output and "3 problems" in r.output
    assert sum(line.startswith("problem: liver_") for line in r.output.splitlines()) == 3
    for name, src, root in (("kits", "kits23", trees["kits"]), ("ts", "totalsegmentator", trees["ts"])):
        r = runner.invoke(app, ["data", "index", str(root), "--source", src, "--out", str(tmp_path / f"{name}.json")])
        assert r.exit_code == 0, r.output
    dls = [tmp_path / f"{n}.json" for n in ("msd", "kits", "ts")]
    r = runner.invoke(app, ["data", "merge", *map(str, dls), str(dls[0]), "--labelled", str(tmp_path / "L.json"),
                            "--unlabelled", str(tmp_path / "U.json")])
    assert r.exit_code == 0, r.output
    assert "msd-task03-liver" in r.output and "totalsegmentator" in r.output and "duplicate" in r.output
    lab = json.loads((tmp_path / "L.json").read_text())
    unl = json.loads((tmp_path / "U.json").read_text())
    assert lab["label_map"] == unl["label_map"] == "abdomen7"
    assert sorted(e["case"] for e in lab["training"]) == ["case_00000", "liver_0"]
    assert sorted(e["case"] for e in unl["training"]) == ["case_00001", "liver_1", "s0001"]
    c = lab["counts"]
    assert c == unl["counts"] and c["duplicates"] == 2
    assert c["sources"]["kits23"] == {"labelled": 1, "unlabelled": 1, "skipped": 0}
    assert c["organs"]["liver"] == {"labelled": 1, "unlabelled": 2}
    assert c["organs"]["kidney"] == {"labelled": 1, "unlabelled": 2}
    assert c["organs"]["pancreas"] == {"labelled": 0, "unlabelled": 1}
    for e in load_datalist(tmp_path / "L.json") + load_datalist(tmp_path / "U.json"):
        assert Path(e["image"]).is_file() and Path(e["label"]).is_file()


def test_merge_rejects_mixed_conventions(indexed, tmp_path):
    out, _, _ = indexed
    chest = tmp_path / "chest.json"
    chest.write_text(json.dumps({"label_map": "chest3", "training": [{"image": "a.nii.gz", "label": "b.nii.gz",
                                                                       "tumour": True, "organs": ["lung"]}]}))
    with pytest.raises(ConfigError, match="mix label conventions"):
        merge_datalists([out / "msd.json", chest], tmp_path / "L.json", tmp_path / "U.json")
    assert not (tmp_path / "L.json").exists() and not (tmp_path / "U.json").exists()
    r = CliRunner().invoke(app, ["data", "merge", str(out / "msd.json"), str(chest), "--labelled",
                                 str(tmp_path / "L.json"), "--unlabelled", str(tmp_path / "U.json")])
    assert r.exit_code == 1 and "abdomen7" in r.output and "chest3" in r.output


def test_merge_computes_flags_for_plain_datalists(tmp_path):
    from freetumor.phantom import write_cohort

    dl = write_cohort(tmp_path / "ph", 2, region="chest")
    data = json.loads(dl.read_text())
    for e in data["training"]:
        del e["tumour"]
    dl.write_text(json.dumps(data))
    r = merge_datalists([dl], tmp_path / "L.json", tmp_path / "U.json")
    assert r["label_map"] == "chest3"
    assert r["counts"]["labelled"] == 1 and r["counts"]["unlabelled"] == 1
    assert r["counts"]["sources"] == {"datalist": {"labelled": 1, "unlabelled": 1, "skipped": 0}}
