from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from freetumor.errors import InputError
from freetumor.io import Volume, case_name, check_same_grid, load_volume, save_volume, staged_output

from conftest import need


def test_dicom_and_nifti_load_identically(totalseg):
    dicom = load_volume(need(totalseg / "dicom_slab"))
    nifti = load_volume(totalseg / "slab1mm_image.nii.gz")
    assert dicom.shape == nifti.shape == (512, 512, 20)
    assert np.array_equal(dicom.array, nifti.array)
    assert np.allclose(dicom.affine, nifti.affine, atol=1e-4)
    assert dicom.orientation == nifti.orientation == ("L", "P", "S")
    assert dicom.spacing == pytest.approx(nifti.spacing)


def test_roundtrip_keeps_affine_header_and_dtype(tmp_path, totalseg):
    src = load_volume(totalseg / "ct3mm_image.nii.gz")
    out = tmp_path / "copy.nii.gz"
    save_volume(src, out)
    back = load_volume(out)
    assert back.array.dtype == src.array.dtype
    assert np.array_equal(back.array, src.array)
    assert np.array_equal(back.affine, src.affine)
    a, b = nib.load(str(totalseg / "ct3mm_image.nii.gz")).header, nib.load(str(out)).header
    for key in ("qform_code", "sform_code", "pixdim", "xyzt_units", "datatype"):
        assert np.array_equal(a[key], b[key]), key


def test_new_volume_roundtrip_lps(tmp_path):
    aff = np.diag([-0.7, -0.7, 2.5, 1.0])
    aff[:3, 3] = [10, 20, -30]
    vol = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), aff)
    save_volume(vol, tmp_path / "x.nii")
    back = load_volume(tmp_path / "x.nii")
    assert back.orientation == ("L", "P", "S")
    assert np.array_equal(back.array, vol.array) and np.allclose(back.affine, aff)
    assert back.spacing == pytest.approx((0.7, 0.7, 2.5))
    assert back.axis_of("S") == 2


def test_truncated_and_garbage_files(tmp_path, totalseg):
    raw = (totalseg / "ct3mm_image.nii.gz").read_bytes()
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="trunc.nii.gz"):
        load_volume(trunc)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(InputError, match="garbage.nii.gz"):
        load_volume(garbage)
    with pytest.raises(InputError, match="no such file"):
        load_volume(tmp_path / "missing.nii.gz")
    empty_dir = tmp_path / "nodicom"
    empty_dir.mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        load_volume(empty_dir)


def test_unknown_format_and_single_dicom(tmp_path):
    f = tmp_path / "scan.mha"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="unknown format"):
        load_volume(f)
    d = tmp_path / "one.dcm"
    d.write_bytes(b"x")
    with pytest.raises(InputError, match="single DICOM file"):
        load_volume(d)


def test_4d_rejected_and_singleton_squeezed(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.int16), np.eye(4)), tmp_path / "four.nii.gz")
    with pytest.raises(InputError, match="3D"):
        load_volume(tmp_path / "four.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 1), np.int16), np.eye(4)), tmp_path / "one.nii.gz")
    assert load_volume(tmp_path / "one.nii.gz").shape == (3, 3, 3)


def test_grid_check_names_label():
    a = Volume(np.zeros((4, 4, 4)), np.eye(4), path="img.nii.gz")
    b = Volume(np.zeros((4, 4, 5)), np.eye(4), path="lab.nii.gz")
    with pytest.raises(InputError, match=r"lab.nii.gz: shape"):
        check_same_grid(a, b)
    c = Volume(np.zeros((4, 4, 4)), np.diag([2.0, 1, 1, 1]), path="lab2.nii.gz")
    with pytest.raises(InputError, match=r"lab2.nii.gz: affine"):
        check_same_grid(a, c)


def test_staged_output_writes_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output(out) as stage:
            (stage / "partial.nii.gz").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_case_name():
    assert case_name("/a/b/case_01.nii.gz") == "case_01"
    assert case_name("/a/b/case_01.nii") == "case_01"
    assert case_name("/a/dicom_slab") == "dicom_slab"


def test_outputs_get_normal_permissions(tmp_path):
    import os

    from freetumor.io import write_bytes_atomic

    mask = os.umask(0o022)
    try:
        save_volume(Volume(np.zeros((2, 2, 2), np.int16), np.eye(4)), tmp_path / "a.nii.gz")
        write_bytes_atomic(tmp_path / "b.json", b"{}")
    finally:
        os.umask(mask)
    for name in ("a.nii.gz", "b.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


def test_outputs_never_replace_a_special_file(tmp_path):
    """A FIFO (like /dev/null or /dev/full, which a root run would otherwise swap for a regular file)
    is refused by the output checks and by the atomic write itself; an empty output path is refused."""
    import os

    from freetumor.errors import InputError
    from freetumor.io import atomic_path, check_output_file, check_output_folder, special_kind

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert special_kind(fifo) == "a FIFO" and special_kind(tmp_path) is None
    for check in (check_output_file, check_output_folder):
        with pytest.raises(InputError, match="is a FIFO"):
            check(fifo)
        with pytest.raises(InputError, match="empty output path"):
            check("")
    with pytest.raises(InputError, match="is a FIFO"):
        with atomic_path(fifo) as tmp:
            open(tmp, "w").write("x")
    assert special_kind(fifo) == "a FIFO" and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_deeply_nested_json_and_yaml_are_one_line_errors(tmp_path):
    """5,000 levels of nesting (a RecursionError in the parsers) in a datalist, a label map, a lesion
    profile and a config: an InputError naming the file, not a traceback."""
    from freetumor.config import load_config
    from freetumor.data import load_datalist
    from freetumor.errors import InputError
    from freetumor.labels import load_label_map
    from freetumor.lesions.profile import load_profile

    deep = "[" * 5000 + "]" * 5000
    (tmp_path / "deep.json").write_text(deep)
    (tmp_path / "deep.yaml").write_text(deep)
    for load, name in ((load_datalist, "deep.json"), (load_label_map, "deep.json"), (load_profile, "deep.json"),
                       (load_config, "deep.yaml")):
        with pytest.raises(InputError, match="nested too deeply") as info:
            load(str(tmp_path / name))
        assert name in str(info.value)
