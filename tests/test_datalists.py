"""Datalists: paths inside them, their label_map included, resolve against the datalist's folder."""

from __future__ import annotations

import json
from pathlib import Path

from freetumor.data import check_datalist, datalist_label_map, load_datalist
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
