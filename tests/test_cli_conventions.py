"""CLI conventions (issue 24): --version, help that wraps at 80 columns, case ids of generic file
names, organ masks named as masks, progress on stderr with --quiet, --exclude-calcified."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import freetumor
from freetumor.io import case_name, load_volume
from freetumor.progress import PROGRESS_LINE

from conftest import run_cli as run



def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout == f"freetumor {freetumor.__version__}\n" and r.stderr == ""


def _commands(cmd, path=()):
    yield path, cmd
    if hasattr(cmd, "commands"):  # a group
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))


def test_help_wraps_at_80_columns_without_cutting(monkeypatch):
    """Every command's --help at COLUMNS=80: no line wider than 80, no '…', every option's help whole."""
    import typer.main
    from typer.testing import CliRunner

    from freetumor.cli import app

    monkeypatch.setenv("COLUMNS", "80")
    runner = CliRunner()
    squash = lambda t: "".join(t.split())  # noqa: E731  (Click may break a line after a hyphen)
    seen = 0
    for path, cmd in _commands(typer.main.get_command(app)):
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert r.exit_code == 0, (path, r.output)
        assert "…" not in r.output, (path, r.output)
        assert max(len(ln) for ln in r.output.splitlines()) <= 80, (path, r.output)
        for p in getattr(cmd, "params", []):
            if getattr(p, "help", None):
                assert squash(p.help) in squash(r.output), (path, p.name, r.output)
        for name, sub in getattr(cmd, "commands", {}).items():  # a group lists each command's whole summary
            assert squash((sub.help or "").split("\n\n")[0]) in squash(r.output), (path, name, r.output)
        seen += 1
    assert seen >= 25


def test_case_name_of_generic_file_names(tmp_path):
    assert case_name("/d/LUNG1-001/image.nii.gz") == "LUNG1-001"
    assert case_name("/d/LUNG1-001/CT.nii") == "LUNG1-001"
    assert case_name("/d/p7/Scan.nii.gz") == "p7" and case_name("/d/p7/volume.nii.gz") == "p7"
    assert case_name("/d/p7/img.nii.gz") == "p7" and case_name("/d/p7/data.nii.gz") == "p7"
    assert case_name("/d/lung_007.nii.gz") == "lung_007" and case_name("/d/imaged.nii.gz") == "imaged"
    assert case_name(tmp_path / "series") == "series"  # a DICOM folder keeps its own name
    os.chdir(tmp_path)  # a relative generic name: the folder it is in
    assert case_name("image.nii.gz") == tmp_path.name


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    """One small chest phantom stored as <case>/image.nii.gz + <case>/label.nii.gz."""
    from freetumor.io import save_volume
    from freetumor.phantom import make_case

    d = tmp_path_factory.mktemp("cases") / "LUNG1-001"
    d.mkdir()
    image, label = make_case("chest", seed=3, tumour=False, shape=(118, 96, 38),
                             spacing=(3.0, 3.0, 7.4))  # the same body on a coarser grid: fast
    save_volume(image, d / "image.nii.gz")
    save_volume(label, d / "label.nii.gz")
    return d


def _split(stderr: str) -> tuple[list[str], list[str]]:
    lines = stderr.splitlines()
    return [ln for ln in lines if PROGRESS_LINE.match(ln)], [ln for ln in lines if not PROGRESS_LINE.match(ln)]


def test_synthesize_progress_on_stderr_and_quiet(chest, tmp_path):
    args = ["synthesize", "--image", chest / "image.nii.gz", "--label", chest / "label.nii.gz", "--organ", "lung",
            "--no-png", "--seed", "4"]
    r = run(*args, "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    progress, other = _split(r.stderr)
    assert other == [], r.stderr
    assert any("reading LUNG1-001" in ln for ln in progress) and any("placing 1 lung" in ln for ln in progress)
    assert progress[-1].endswith(" done")
    q = run(*args, "--out", tmp_path / "b", "--quiet")
    assert q.returncode == 0 and q.stderr == ""
    assert q.stdout == r.stdout.replace(str(tmp_path / "a"), str(tmp_path / "b"))
    # the case id is the folder's name, not "image"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["LUNG1-001.json", "LUNG1-001_image.nii.gz",
                                                                   "LUNG1-001_label.nii.gz"]
    for name in ("LUNG1-001_image.nii.gz", "LUNG1-001_label.nii.gz"):
        assert np.array_equal(load_volume(tmp_path / "a" / name).array, load_volume(tmp_path / "b" / name).array)


def test_organs_names_the_mask_and_shows_progress(chest, tmp_path):
    r = run("organs", "--image", chest / "image.nii.gz", "--out", tmp_path / "a", "--engine", "threshold")
    assert r.returncode == 0, r.stderr
    progress, other = _split(r.stderr)
    assert other == [] and any("LUNG1-001: threshold on" in ln for ln in progress), r.stderr
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["LUNG1-001_organs.nii.gz", "datalist.json"]
    dl = json.loads((tmp_path / "a" / "datalist.json").read_text())
    assert dl["training"][0]["label"] == "LUNG1-001_organs.nii.gz"
    q = run("organs", "--image", chest / "image.nii.gz", "--out", tmp_path / "b", "--engine", "threshold", "-q")
    assert q.returncode == 0 and q.stderr == ""
    assert np.array_equal(load_volume(tmp_path / "a" / "LUNG1-001_organs.nii.gz").array,
                          load_volume(tmp_path / "b" / "LUNG1-001_organs.nii.gz").array)


def test_profile_without_calcified_rows():
    from freetumor.lesions.profile import CALCIFIED_HU, FEATURE_ORDER, builtin_profile

    lung = builtin_profile("lung")
    j = FEATURE_ORDER.index("contrast_hu")
    calcified = [r for r in lung.rows if r[j] > CALCIFIED_HU]
    assert len(lung.rows) == 738 and len(calcified) == 63  # 8.5 %, as docs/concepts/lesion-profiles.md says
    kept = lung.without_calcified()
    assert len(kept.rows) == 738 - 63 and all(r[j] <= CALCIFIED_HU for r in kept.rows)
    rng = np.random.default_rng(0)
    assert max(kept.sample(rng)["contrast_hu"] for _ in range(2000)) <= CALCIFIED_HU
    assert max(lung.sample(rng)["contrast_hu"] for _ in range(2000)) > CALCIFIED_HU  # the option matters


def test_synthesize_exclude_calcified(chest, tmp_path):
    r = run("synthesize", "--image", chest / "image.nii.gz", "--label", chest / "label.nii.gz", "--organ", "lung",
            "--profile", "builtin:lung", "--exclude-calcified", "--count", "2", "--no-png", "--out", tmp_path, "-q")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "LUNG1-001.json").read_text())
    assert rec["profile_source"]["calcified_rows_left_out"] == 63
    assert len(rec["lesions"]) == 2
    assert all(les["rendering"]["drawn"]["contrast_hu"] <= 1200 for les in rec["lesions"])
    # without a profile the option has nothing to leave out: one line, exit 1, nothing written
    r = run("synthesize", "--image", chest / "image.nii.gz", "--label", chest / "label.nii.gz", "--organ", "lung",
            "--exclude-calcified", "--out", tmp_path / "none")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "--profile" in r.stderr and not (tmp_path / "none").exists()
