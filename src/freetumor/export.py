"""Export a datalist as an nnU-Net v2 raw dataset (``nnUNet_raw/DatasetNNN_Name``).

Layout written (nnU-Net v2's ``dataset_format`` for one CT channel)::

    DatasetNNN_Name/
        imagesTr/<case>_0000.nii.gz   the CT as it is (same bytes for .nii.gz; .nii is gzipped;
                                      a DICOM series folder is converted to NIfTI)
        labelsTr/<case>.nii.gz        uint8 training classes on the image's grid
        dataset.json                  channel_names, labels, numTraining, file_ending, ...
        freetumor_export.json         where each case came from and the class mapping used

Labels are converted to the consecutive training classes of ``task`` with
:func:`freetumor.tasks.class_mapping` (the same mapping training uses):

* ``organ3``: 0 background, 1 ``<organ>``, 2 ``<organ> tumour``;
* ``abdomen7`` and ``chest3``: the ids and names of FreeTumor's label conventions
  (:data:`freetumor.labels.CONVENTIONS`, :func:`freetumor.labels.convention_names`).

Entries without a label (test cases) are skipped and counted. Case names come
from the image file names, made nnU-Net-safe (``[A-Za-z0-9_-]``, no trailing
``_0000``) and unique. Everything is written to a staging folder first: a
failure leaves ``out`` as it was.

Example:
    >>> dataset_name("nnUNet_raw/Dataset501_LiverPhantom")
    (501, 'LiverPhantom')
    >>> task_labels("organ3", "kidney")
    {'background': 0, 'kidney': 1, 'kidney tumour': 2}
    >>> safe_case_names(["a b.nii", "a b", "x_0000", "ok"])
    ['a_b', 'a_b_2', 'x', 'ok']
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import nibabel as nib

from .errors import ConfigError, InputError
from .tasks import class_mapping
from .io import Volume, case_name, check_same_grid, is_nifti, load_volume, save_volume, staged_output, \
    write_bytes_atomic
from . import __version__
from .data import check_cases, load_datalist
from .labels import convention_names, default_label_map
from .labels import get_label_map
from .labels import label_values
from .organs import get_organ
from .structured import read_json

__all__ = ["export_nnunet", "dataset_name", "task_labels", "safe_case_names", "default_task"]

_DATASET_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_-]+)$")
_COPY_KEYS = ("reference", "licence", "release", "tensorImageSize")


def dataset_name(out: str | os.PathLike) -> tuple[int, str]:
    """``(id, name)`` of an nnU-Net dataset folder ``DatasetNNN_Name``; :class:`ConfigError` otherwise."""
    folder = Path(out).name
    m = _DATASET_RE.match(folder)
    if not m:
        raise ConfigError(f"{out}: nnU-Net dataset folder must be named DatasetNNN_Name (3 digits, name of "
                          f"letters, digits, _ or -), e.g. Dataset501_Liver; got {folder!r}")
    return int(m.group(1)), m.group(2)


def task_labels(task: str, organ: str | None = None) -> dict[str, int]:
    """nnU-Net ``labels`` (name -> class) of a training task."""
    if task == "organ3":
        if not organ:
            raise ConfigError("task organ3 needs an organ (e.g. --organ liver)")
        return {"background": 0, organ: 1, f"{organ} tumour": 2}
    if task in ("abdomen7", "chest3"):
        return {n: i for i, n in convention_names(task).items()}
    raise ConfigError(f"unknown task {task!r}; choose one of organ3, abdomen7, chest3")


def safe_case_names(paths) -> list[str]:
    """nnU-Net-safe, unique case names for image paths (in order)."""
    names: list[str] = []
    seen: set[str] = set()
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", case_name(p)).strip("_")
        while base.endswith("_0000"):
            base = base[: -len("_0000")].rstrip("_")
        base = base or "case"
        name, k = base, 2
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        seen.add(name)
        names.append(name)
    return names


def default_task(label_map, organ: str | None) -> str:
    """``organ3`` when an organ is given, else ``abdomen7`` (or ``chest3`` for a chest-only label map)."""
    if organ:
        return "organ3"

    lm = get_label_map(label_map)
    if any(lm.supports(o) for o in ("liver", "pancreas", "kidney")):
        return "abdomen7"
    return "chest3"


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.zeros(max(mapping) + 1, np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


def _convert_label(label: Volume, lut: np.ndarray, known: frozenset, lm_name: str) -> np.ndarray:
    a = np.asarray(label.array)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.rint(a)):
            raise InputError(label.name, "label holds non-integer values")
        a = a.astype(np.int64)
    elif a.dtype.kind == "b":
        a = a.astype(np.int64)

    values = label_values(a)
    unknown = [v for v in values if v not in known]
    if unknown:
        shown = ", ".join(map(str, unknown[:8])) + (" ..." if len(unknown) > 8 else "")
        raise InputError(label.name, f"label values {shown} are not in label map {lm_name!r}")
    out = np.zeros(a.shape, np.uint8)
    inside = a < lut.size  # known values beyond the table map to 0
    out[inside] = lut[a[inside]]
    return out


def _write_image(src: Path, vol: Volume, dst: Path, copy: bool) -> None:
    """The CT as it is: same bytes (.nii.gz), gzipped bytes (.nii), or NIfTI from a DICOM series."""
    if is_nifti(src):
        raw_3d = len(nib.load(str(src)).header.get_data_shape()) == 3
        if raw_3d and str(src).lower().endswith(".nii.gz"):
            if copy:
                shutil.copyfile(src, dst)
            else:
                os.symlink(src.resolve(), dst)
            return
        if raw_3d:  # .nii: gzip the file's bytes, header untouched
            with open(src, "rb") as fi, gzip.open(dst, "wb", compresslevel=1) as fo:
                shutil.copyfileobj(fi, fo, 4 << 20)
            return
    save_volume(vol, dst)  # DICOM series, or a 4D file with a singleton time axis


def export_nnunet(
    datalist: str | os.PathLike,
    out: str | os.PathLike,
    *,
    task: str | None = None,
    organ: str | None = None,
    label_map: str | os.PathLike | None = None,
    copy: bool = True,
    log: Callable[[str], None] | None = None,
    skip_bad_cases: bool = False,
) -> dict:
    """Write ``out`` (``.../DatasetNNN_Name``) as an nnU-Net v2 raw dataset from an MSD-style datalist.

    Args:
        datalist: datalist JSON; every list of entries is read, entries with a label are exported.
        out: dataset folder, named ``DatasetNNN_Name``.
        task: ``organ3``, ``abdomen7`` or ``chest3``; default ``organ3`` when ``organ`` is given,
            else ``abdomen7`` (``chest3`` for a chest label map).
        organ: tumour type for ``organ3`` (required there); ``chest3`` uses it to prefer lung or covid.
        label_map: the labels' convention (default: the datalist's ``label_map``, else the organ's default).
        copy: copy the ``.nii.gz`` images; ``False`` symlinks them instead (``.nii`` and DICOM are always written).
        log: called with one line per written case (and the count of bad cases left out).
        skip_bad_cases: leave out labelled cases that fail the up-front check
            (:func:`~freetumor.data.check_cases`); by default one bad case stops the export
            before anything is written.

    Returns:
        The written ``dataset.json`` plus ``out``, ``cases`` (case -> source image/label),
        ``skipped_unlabelled``, ``task``, ``label_map`` and ``mapping``.

    Raises:
        ConfigError: bad folder name, unknown task, organ missing for organ3, label map lacking the organ.
        CaseErrors: one line per bad case (unless ``skip_bad_cases``): a missing, unreadable, empty,
            4D or non-CT image, a label off the image's grid, non-integer or unknown label values.
        InputError: unreadable datalist, image or label, grids that differ, unknown label values.
    """
    out = Path(out)
    ds_id, ds_name = dataset_name(out)
    dl_path = Path(datalist)
    entries = load_datalist(dl_path)
    meta = read_json(dl_path, "datalist")  # bounded, as load_datalist read it
    meta = meta if isinstance(meta, dict) else {}

    if organ is not None:
        organ = get_organ(organ).name
    lm_spec = label_map or (meta.get("label_map") if isinstance(meta.get("label_map"), str) else None)
    if lm_spec is None:
        lm_spec = default_label_map(organ) if organ else "abdomen7"
    if isinstance(lm_spec, str) and not os.path.isabs(lm_spec) and lm_spec.lower().endswith(".json") \
            and not Path(lm_spec).exists() and (dl_path.parent / lm_spec).exists():
        lm_spec = str(dl_path.parent / lm_spec)  # a label-map file named relative to the datalist
    lm = get_label_map(lm_spec)
    task = task or default_task(lm, organ)
    if task == "organ3" and not organ:
        raise ConfigError("task organ3 needs an organ (e.g. --organ liver)")
    labels = task_labels(task, organ)

    labelled, skipped, seen = [], 0, set()
    for e in entries:
        lab = e.get("label")
        if not isinstance(lab, str) or not lab:
            skipped += 1
            continue
        key = (os.path.realpath(e["image"]), os.path.realpath(lab))
        if key in seen:  # the same pair listed twice (e.g. in training and validation)
            continue
        seen.add(key)
        labelled.append(e)
    if not labelled:
        raise InputError(dl_path, "datalist has no entries with a label; nnU-Net training needs labelled cases")
    # every case checked first, as `freetumor data check` does: a bad one stops the export before any write
    labelled = check_cases(labelled, lm, dl_path, skip_bad=skip_bad_cases, log=log or print)

    mapping = class_mapping(lm, task, organ or ("lung" if task == "chest3" else "liver"))
    lut = _lut(mapping)
    names = safe_case_names(e["image"] for e in labelled)
    cases = {}
    with staged_output(out) as stage:
        (stage / "imagesTr").mkdir()
        (stage / "labelsTr").mkdir()
        for name, e in zip(names, labelled):
            image = load_volume(e["image"])  # NaN / infinite voxels were refused by the check
            label = load_volume(e["label"])
            check_same_grid(image, label)
            classes = _convert_label(label, lut, lm.known, lm.name)
            _write_image(Path(e["image"]), image, stage / "imagesTr" / f"{name}_0000.nii.gz", copy)
            save_volume(Volume(classes, image.affine.copy(), image.header, e["label"]),
                        stage / "labelsTr" / f"{name}.nii.gz")
            cases[name] = {"image": e["image"], "label": e["label"], "split": e.get("split")}
            if log:
                log(f"{name}: {e['image']}")

        ds = {
            "channel_names": {"0": "CT"},
            "labels": labels,
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
            "name": str(meta.get("name") or ds_name),
            "description": str(meta.get("description") or f"exported by freetumor from {dl_path.name}"),
        }
        for k in _COPY_KEYS:
            if meta.get(k) is not None:
                ds[k] = meta[k]
        if "licence" not in ds and meta.get("license") is not None:
            ds["licence"] = meta["license"]
        ds["freetumor_version"] = __version__
        ds["freetumor_task"] = task
        write_bytes_atomic(stage / "dataset.json", (json.dumps(ds, indent=2) + "\n").encode())
        record = {
            "dataset_id": ds_id,
            "datalist": str(dl_path.resolve()),
            "task": task,
            "organ": organ,
            "label_map": lm.name,
            "mapping": {str(k): v for k, v in mapping.items()},
            "skipped_unlabelled": skipped,
            "cases": cases,
        }
        write_bytes_atomic(stage / "freetumor_export.json", (json.dumps(record, indent=2) + "\n").encode())
    return dict(ds, out=str(out), cases=cases, skipped_unlabelled=skipped, task=task, label_map=lm.name,
                mapping=mapping)
