"""Issue 15, in-process: the data type of scaled integer CT is kept, an interrupted batch's staging
folders are removed on restart, resumed logs hold one line per step, output paths and cases are
checked before any work."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from freetumor.batch import synthesize_batch
from freetumor.data import check_cases
from freetumor.errors import CaseErrors, InputError
from freetumor.io import check_output_file, check_output_folder, clean_staging, save_volume
from freetumor.phantom import make_case
from freetumor.synthesis import SynthesisOptions, build_synthesizer, synthesize_case
from freetumor.training.run import reset_logs

SHAPE = (96, 80, 48)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("case")
    image, label = make_case("abdomen", seed=2, shape=SHAPE)
    save_volume(image, root / "a_image.nii.gz")
    save_volume(label, root / "a_label.nii.gz")
    return root, image, label


def test_synthesize_keeps_uint16_with_intercept(case, tmp_path):
    """A uint16 scan with scl_inter -1100 comes out uint16 with the same slope and intercept, and
    every voxel away from the lesions (their soft edge included) is unchanged (it was float64 before)."""
    root, image, label = case
    raw = (image.array.astype(np.int32) + 1100).astype(np.uint16)
    img = nib.Nifti1Image(raw, image.affine)
    img.header.set_slope_inter(1.0, -1100.0)
    nib.save(img, tmp_path / "u16.nii.gz")
    rec = synthesize_case(build_synthesizer(SynthesisOptions("liver", png=False)), tmp_path / "u16.nii.gz",
                          root / "a_label.nii.gz", tmp_path / "out", seed=1)
    out = nib.load(tmp_path / "out" / rec["outputs"]["image"])
    assert out.get_data_dtype() == np.uint16
    assert (out.dataobj.slope, out.dataobj.inter) == (1.0, -1100.0)
    values = np.asanyarray(out.dataobj)
    lesion = np.asanyarray(nib.load(tmp_path / "out" / rec["outputs"]["label"]).dataobj) == 2
    assert lesion.any()
    near = binary_dilation(lesion, iterations=8)
    np.testing.assert_array_equal(values[~near], image.array[~near])
    assert np.abs(values[lesion] - image.array[lesion]).max() > 10  # the tumour is there


def test_synthesize_batch_restart_removes_staging_leftovers(case, tmp_path):
    root, _, _ = case
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"label_map": "abdomen7", "training": [
        {"image": str(root / "a_image.nii.gz"), "label": str(root / "a_label.nii.gz")}]}))
    out = tmp_path / "batch"
    leftover = out / ".cases.tmp-killed1"  # what a serial run killed mid-case leaves
    leftover.mkdir(parents=True)
    (leftover / "a_syn0_image.nii.gz").write_bytes(b"")
    other = out / ".other.tmp-keep"  # not a staging folder of cases/: left alone
    other.mkdir()
    s = synthesize_batch(dl, SynthesisOptions("liver", png=False), out, workers=0, progress=False, log=lambda m: None)
    assert s["done"] == 1 and s["errors"] == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".other.tmp-keep"]


def test_clean_staging_counts_and_touches_only_its_own(tmp_path):
    for name in (".out.tmp-1", ".out.tmp-2", ".outer.tmp-3"):
        (tmp_path / name).mkdir()
    (tmp_path / ".out.tmp-file").write_text("a file, not a staging folder")
    assert clean_staging(tmp_path / "out") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp-file", ".outer.tmp-3"]


def test_resumed_logs_hold_one_line_per_step(tmp_path):
    """A log with a step twice (and steps past the checkpoint) is cut to one line per step, in order."""
    log = tmp_path / "val.jsonl"
    log.write_text("".join(json.dumps({"step": s, "v": v}) + "\n" for s, v in
                           [(5, 0), (10, 0), (15, 1), (15, 2), (20, 0)]))
    reset_logs([log], start=15, resume=True)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(r["step"], r["v"]) for r in rows] == [(5, 0), (10, 0), (15, 2)]
    reset_logs([log], start=15, resume=False)
    assert log.read_text() == ""


def test_output_checks(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="output path exists and is not a folder"):
        check_output_folder(f)
    with pytest.raises(InputError, match=f"{f} is a file, not a folder"):
        check_output_folder(f / "a" / "b")
    with pytest.raises(InputError, match="is a folder, not a file"):
        check_output_file(tmp_path)
    with pytest.raises(InputError, match="is a file"):
        check_output_file(f / "x.json")
    check_output_folder(tmp_path / "new" / "deeper")  # fine, and nothing made
    check_output_file(tmp_path / "new" / "x.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_check_cases_stops_or_skips(case, tmp_path, capsys):
    root, image, _ = case
    save_volume(image.with_array(np.zeros_like(image.array)), tmp_path / "zeros.nii.gz")
    good = {"image": str(root / "a_image.nii.gz"), "label": str(root / "a_label.nii.gz")}
    bad1 = {"image": str(tmp_path / "zeros.nii.gz"), "label": str(root / "a_label.nii.gz")}
    bad2 = {"image": str(tmp_path / "gone.nii.gz"), "label": str(root / "a_label.nii.gz")}
    with pytest.raises(CaseErrors) as ei:
        check_cases([good, bad1, bad2], "abdomen7", tmp_path / "dl.json")
    lines = ei.value.lines
    assert len(lines) == 2 and lines[0].startswith(bad1["image"]) and lines[1].startswith(bad2["image"])
    assert "2 of 3 cases of dl.json bad" in lines[1] and "--skip-bad-cases" in lines[1]
    said = []
    assert check_cases([good, bad1, bad2], "abdomen7", tmp_path / "dl.json", skip_bad=True, log=said.append) == [good]
    assert len(said) == 1 and said[0].startswith("skipped 2 bad case(s) of 3 in dl.json")
    with pytest.raises(InputError, match="all 2 cases are bad"):
        check_cases([bad1, bad2], "abdomen7", tmp_path / "dl.json", skip_bad=True)
