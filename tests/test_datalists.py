"""Datalists: paths inside them, their label_map included, resolve against the datalist's folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freetumor.data import check_datalist, datalist_label_map, load_datalist
from freetumor.errors import ConfigError
from freetumor.labels import get_label_map
from freetumor.phantom import write_cohort

from conftest import run_cli as run

SITE_MAP = {"name": "site", "organs": {"liver": {"organ": [1], "tumor": 2}, "pancreas": {"organ": [3], "tumor": 4},
                                       "kidney": {"organ": [5], "tumor": 6}}, "labels": [0, 1, 2, 3, 4, 5, 6]}


def _with_relative_map(dl: Path) -> Path:
    """The cohort's datalist, now naming a user label map next to it by a relative path."""
    (dl.parent / "maps").mkdir()
    (dl.parent / "maps" / "site.json").write_text(json.dumps(SITE_MAP))
    data = json.loads(dl.read_text())
    data["label_map"] = "maps/site.json"
    dl.write_text(json.dumps(data))
    return dl


def test_relative_label_map_resolves_against_datalist(tmp_path, monkeypatch):
    dl = tmp_path / "cohort" / "dl.json"
    dl.parent.mkdir()
    (dl.parent / "site.json").write_text(json.dumps(SITE_MAP))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for declared, expected in [
        ("site.json", str((dl.parent / "site.json").resolve())),
        ("./site.json", str((dl.parent / "site.json").resolve())),
        ("abdomen7", "abdomen7"),  # a preset stays a preset
        (str(dl.parent / "site.json"), str(dl.parent / "site.json")),  # absolute as written
    ]:
        dl.write_text(json.dumps({"label_map": declared, "training": [{"image": "a.nii.gz"}]}))
        got = datalist_label_map(dl)
        assert (Path(got) == Path(expected)) if expected.endswith(".json") else (got == expected)
        assert get_label_map(got, "liver").tumour_id("liver") == 2
    dl.write_text(json.dumps({"training": [{"image": "a.nii.gz"}]}))
    assert datalist_label_map(dl) is None
    # The relative form is given relative to the datalist, not to the working directory.
    dl.write_text(json.dumps({"label_map": "site.json", "training": [{"image": "a.nii.gz"}]}))
    monkeypatch.chdir(dl.parent)
    assert Path(datalist_label_map("dl.json")) == (dl.parent / "site.json").resolve()


def test_datalist_with_relative_map_works_from_another_directory(tmp_path):
    dl = _with_relative_map(write_cohort(tmp_path / "cohort", 2, seed=1, tumour_fraction=0.5))
    checks = check_datalist(dl)
    assert checks and all(c.ok for c in checks), [c.problems for c in checks]
    assert all(Path(e["image"]).is_file() for e in load_datalist(dl))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run("data", "check", dl.resolve(), cwd=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 ok, 0 failed" in r.stdout
    # A map that does not exist next to the datalist is named in a one-line error.
    data = json.loads(dl.read_text())
    data["label_map"] = "maps/missing.json"
    dl.write_text(json.dumps(data))
    r = run("data", "check", dl.resolve(), cwd=elsewhere)
    assert r.returncode == 1 and "missing.json" in r.stderr and "label map file not found" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_patient_split_is_patient_disjoint(tmp_path):
    from freetumor.data import patient_id, patient_split, write_datalist

    entries = [{"image": f"/d/LIDC-IDRI-{p:04d}_R_{k}.nii.gz", "label": f"/l/LIDC-IDRI-{p:04d}_R_{k}.nii.gz"}
               for p in range(1, 21) for k in range(1, 1 + p % 4 + 1)]
    entries.append({"image": "/d/other.nii.gz", "label": "/l/other.nii.gz", "patient": "LIDC-IDRI-0001"})
    a, b = patient_split(entries, 0.5, seed=3)
    pa, pb = {patient_id(e) for e in a}, {patient_id(e) for e in b}
    assert not pa & pb and len(a) + len(b) == len(entries) and len(pa) + len(pb) == 20
    assert abs(len(a) - len(entries) / 2) <= 4  # whole patients of at most 4 crops each
    # The explicit patient field groups the odd file name with LIDC-IDRI-0001's crops.
    holder = a if "LIDC-IDRI-0001" in pa else b
    assert {"/d/other.nii.gz", "/d/LIDC-IDRI-0001_R_1.nii.gz"} <= {e["image"] for e in holder}
    assert patient_split(entries, 0.5, seed=3) == (a, b)  # seeded
    assert patient_split(entries, 0.5, seed=4) != (a, b)
    a3, _ = patient_split(entries, 0.25, seed=0)
    assert len(entries) / 4 <= len(a3) < len(entries) / 4 + 4
    with pytest.raises(ConfigError, match="at least 2 patients"):
        patient_split(entries[:2], 0.5)
    with pytest.raises(ConfigError, match="fraction"):
        patient_split(entries, 1.0)
    # Written and read back: absolute paths, the label map relative to the datalist.
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "nodules.json").write_text(json.dumps({"organs": {"lung": {"tumor": 1}}}))
    out = write_datalist(tmp_path / "lists" / "a.json", a, label_map=tmp_path / "maps" / "nodules.json")
    data = json.loads(out.read_text())
    assert data["label_map"] == "../maps/nodules.json" and len(data["training"]) == len(a)
    assert [e["image"] for e in load_datalist(out)] == [e["image"] for e in a]
    assert Path(datalist_label_map(out)) == (tmp_path / "maps" / "nodules.json").resolve()
