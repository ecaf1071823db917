"""nnU-Net v2 raw-dataset export: layout, label classes, dataset.json, failures that write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from freetumor.errors import CaseErrors, ConfigError
from freetumor.export import export_nnunet, safe_case_names

from conftest import run_cli as run



@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from freetumor.phantom import write_cohort

    dl = write_cohort(tmp_path_factory.mktemp("cohort") / "ph", 3, seed=1)
    data = json.loads(dl.read_text())
    data["reference"] = "https://example.org/phantom"
    data["licence"] = "CC0"
    data["test"] = [{"image": data["training"][0]["image"]}]  # unlabelled: skipped and counted
    data["allow_duplicates"] = True  # that test image is a training image on purpose
    dl.write_text(json.dumps(data))
    return dl


@pytest.fixture(scope="module")
def organ3(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("raw") / "nnUNet_raw" / "Dataset501_LiverPhantom"
    r = run("export-nnunet", "--datalist", cohort, "--out", out, "--organ", "liver")
    assert r.returncode == 0, r.stderr
    assert "wrote 3 case(s)" in r.stdout and "skipped 1 unlabelled" in r.stdout
    return out


def _pairs(cohort):
    data = json.loads(cohort.read_text())
    return [(cohort.parent / e["image"], cohort.parent / e["label"]) for e in data["training"]]


def test_organ3_layout_and_classes(cohort, organ3):
    names = [Path(img).name[: -len(".nii.gz")] for img, _ in _pairs(cohort)]
    assert sorted(p.name for p in (organ3 / "imagesTr").iterdir()) == [f"{n}_0000.nii.gz" for n in names]
    assert sorted(p.name for p in (organ3 / "labelsTr").iterdir()) == [f"{n}.nii.gz" for n in names]
    seen = set()
    for (img_src, lab_src), n in zip(_pairs(cohort), names):
        img = nib.load(organ3 / "imagesTr" / f"{n}_0000.nii.gz")
        lab = nib.load(organ3 / "labelsTr" / f"{n}.nii.gz")
        # the CT is copied as it is
        assert (organ3 / "imagesTr" / f"{n}_0000.nii.gz").read_bytes() == img_src.read_bytes()
        assert img.shape == lab.shape and np.allclose(img.affine, lab.affine, atol=1e-6)
        assert lab.get_data_dtype() == np.uint8
        src = np.asarray(nib.load(lab_src).dataobj)
        out = np.asarray(lab.dataobj)
        assert set(np.unique(out)) <= {0, 1, 2}
        assert np.array_equal(out == 1, src == 1) and np.array_equal(out == 2, src == 2)  # liver, liver tumour
        assert not out[np.isin(src, (3, 4, 5, 6))].any()  # pancreas and kidney -> background
        seen |= set(np.unique(out).tolist())
    assert seen == {0, 1, 2}  # the cohort has liver tumours
    ds = json.loads((organ3 / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"}
    assert ds["labels"] == {"background": 0, "liver": 1, "liver tumour": 2}
    assert ds["numTraining"] == 3 and ds["file_ending"] == ".nii.gz"
    assert ds["name"] == "freetumor-phantom" and ds["description"]
    assert ds["reference"] == "https://example.org/phantom" and ds["licence"] == "CC0"
    assert ds["freetumor_version"]


def test_abdomen7_api(cohort, tmp_path):
    out = tmp_path / "Dataset502_Abdomen7"
    r = export_nnunet(cohort, out, task="abdomen7")
    assert r["numTraining"] == 3 and r["skipped_unlabelled"] == 1 and r["task"] == "abdomen7"
    assert r["labels"] == {"background": 0, "liver": 1, "liver tumour": 2, "pancreas": 3, "pancreas tumour": 4,
                           "kidney": 5, "kidney tumour": 6}
    for img_src, lab_src in _pairs(cohort):
        n = img_src.name[: -len(".nii.gz")]
        src = nib.load(lab_src)
        lab = nib.load(out / "labelsTr" / f"{n}.nii.gz")
        assert np.array_equal(np.asarray(lab.dataobj), np.asarray(src.dataobj))  # identity for abdomen7 input
        assert np.allclose(lab.affine, nib.load(img_src).affine)


def test_nii_input_is_gzipped_and_names_made_safe(tmp_path):
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    ct = np.full((6, 5, 4), -100, np.int16)
    ct[0] = -1000  # air: a CT in HU passes the up-front check
    lab = np.zeros((6, 5, 4), np.uint8)
    lab[1:4, 1:4, 1:3] = 5
    lab[2, 2, 2] = 6
    for name in ("scan one_0000.nii", "scan-one_0000.nii"):
        nib.save(nib.Nifti1Image(ct, affine), tmp_path / name)
    nib.save(nib.Nifti1Image(lab, affine), tmp_path / "lab.nii.gz")
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [{"image": "scan one_0000.nii", "label": "lab.nii.gz"},
                                           {"image": "scan-one_0000.nii", "label": "lab.nii.gz"}]}))
    r = export_nnunet(dl, tmp_path / "Dataset003_Kid", organ="kidney")
    assert sorted(r["cases"]) == ["scan-one", "scan_one"]
    img = nib.load(tmp_path / "Dataset003_Kid" / "imagesTr" / "scan_one_0000.nii.gz")
    assert np.array_equal(np.asarray(img.dataobj), ct) and np.allclose(img.affine, affine)
    out = np.asarray(nib.load(tmp_path / "Dataset003_Kid" / "labelsTr" / "scan_one.nii.gz").dataobj)
    assert out.sum() == (lab == 5).sum() + 2 and out[2, 2, 2] == 2
    assert safe_case_names(["a.nii.gz", "a.nii", "b_0000_0000", "!!"]) == ["a", "a_2", "b", "case"]


def test_api_errors_write_nothing(cohort, tmp_path):
    with pytest.raises(ConfigError, match="DatasetNNN_Name"):
        export_nnunet(cohort, tmp_path / "Liver", organ="liver")
    with pytest.raises(ConfigError, match="organ3 needs an organ"):
        export_nnunet(cohort, tmp_path / "Dataset001_X", task="organ3")
    img_src, lab_src = _pairs(cohort)[0]
    shifted = tmp_path / "shifted.nii.gz"
    src = nib.load(lab_src)
    aff = src.affine.copy()
    aff[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), aff), shifted)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"label_map": "abdomen7", "allow_duplicates": True, "training": [
        {"image": str(img_src), "label": str(lab_src)}, {"image": str(img_src), "label": str(shifted)}]}))
    with pytest.raises(CaseErrors, match="shifted.nii.gz: affine does not match"):
        export_nnunet(bad, tmp_path / "Dataset002_Bad")
    unknown = tmp_path / "unknown.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj) * 0 + 9, src.affine), unknown)
    bad.write_text(json.dumps({"label_map": "abdomen7", "training": [{"image": str(img_src), "label": str(unknown)}]}))
    with pytest.raises(CaseErrors, match="label values 9 are not in label map 'abdomen7'"):
        export_nnunet(bad, tmp_path / "Dataset002_Bad")
    corrupt = tmp_path / "corrupt.nii.gz"  # the second case: refused by the check before any write
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    bad.write_text(json.dumps({"label_map": "abdomen7", "allow_duplicates": True, "training": [
        {"image": str(img_src), "label": str(lab_src)}, {"image": str(img_src), "label": str(corrupt)}]}))
    with pytest.raises(CaseErrors, match="corrupt.nii.gz: cannot read NIfTI"):
        export_nnunet(bad, tmp_path / "Dataset002_Bad")
    assert not (tmp_path / "Dataset002_Bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".Dataset002_Bad")]  # no staging left over
    assert not (tmp_path / "Liver").exists() and not (tmp_path / "Dataset001_X").exists()


def test_cli_bad_inputs_one_line(cohort, tmp_path):
    r = run("export-nnunet", "--datalist", cohort, "--out", tmp_path / "Dataset12_Short", "--organ", "liver")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "DatasetNNN_Name" in r.stderr and not (tmp_path / "Dataset12_Short").exists()

    data = json.loads(cohort.read_text())
    data["training"][1]["label"] = "labelsTr/missing.nii.gz"
    data = {k: v for k, v in data.items() if k != "test"}
    for e in data["training"]:
        for k in ("image", "label"):
            e[k] = str(cohort.parent / e[k])
    dl = tmp_path / "missing.json"
    dl.write_text(json.dumps(data))
    out = tmp_path / "nnUNet_raw" / "Dataset007_Missing"
    r = run("export-nnunet", "--datalist", dl, "--out", out, "--organ", "liver")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: {cohort.parent / 'labelsTr' / 'missing.nii.gz'}: no such file")
    assert not out.exists()

    r = run("export-nnunet", "--datalist", tmp_path / "nope.json", "--out", out)
    assert r.returncode == 1 and "datalist not found" in r.stderr and not out.exists()
    r = run("export-nnunet", "--datalist", cohort, "--out", out, "--task", "organ9")
    assert r.returncode == 2 and not out.exists()


def test_nnunet_verify_dataset_integrity(organ3, capfd):
    try:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    except ImportError as exc:
        pytest.skip(f"nnunetv2 is not installed (optional; `pip install nnunetv2` to run nnU-Net's own check): {exc}")
    verify_dataset_integrity(str(organ3), num_processes=1)  # raises on a broken dataset
    text = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in text
    assert "Error:" not in text and "Warning:" not in text and "mismatch" not in text, text
