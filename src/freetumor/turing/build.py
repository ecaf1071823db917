"""``freetumor turing build``: a balanced, shuffled, blinded study of real and synthetic tumours.

Real tumours are the connected components (26-neighbourhood) of each organ's tumour label in
the cases of a datalist; synthetic ones are the lesions recorded by ``freetumor synthesize``
(``<case>.json`` next to ``<case>_image.nii.gz`` / ``<case>_label.nii.gz``). Per tumour type
the same number of real and synthetic lesions is drawn (``per_type`` each, or as many as the
smaller side has), and every lesion becomes one case: a stack of ``SLICES`` axial slices of
``ROWS`` x ``COLS`` pixels around the lesion centre, resampled (linear) from the scan in
physical space to one fixed grid (0.75 mm pixels, 2 mm slices) in radiological display
orientation, stored as raw int16 HU. All case files therefore have the same size and carry no
header. Case ids are random (``secrets``), the case order is shuffled, and the truth goes to
``key.json`` only.
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates

from ..errors import ConfigError, InputError
from ..io import check_output_folder, load_volume, staged_output, write_bytes_atomic
from ..data import check_cases, datalist_label_map, load_datalist
from ..evaluation.lesions import connected_lesions
from ..labels import get_label_map
from ..lesions.features import read_synthesis_record

SLICES, ROWS, COLS = 24, 128, 128
PIXEL_MM, SLICE_MM = 0.75, 2.0
WINDOWS = {"abdomen": [-160, 240], "liver": [-45, 105], "lung": [-1350, 150], "mediastinum": [-125, 225],
           "bone": [-450, 1050]}
DEFAULT_WINDOW = {"liver": "abdomen", "pancreas": "abdomen", "kidney": "abdomen", "lung": "lung", "covid": "lung"}
MIN_VOXELS = 20


def stack_around(image, centre_mm) -> np.ndarray:
    """int16 (SLICES, ROWS, COLS) around ``centre_mm`` (RAS+): row 0 anterior, col 0 patient's right."""
    cx, cy, cz = (float(v) for v in centre_mm)
    c = (np.arange(COLS) - (COLS - 1) / 2) * PIXEL_MM
    r = (np.arange(ROWS) - (ROWS - 1) / 2) * PIXEL_MM
    k = (np.arange(SLICES) - (SLICES - 1) / 2) * SLICE_MM
    z, y, x = np.meshgrid(cz + k, cy - r, cx - c, indexing="ij")  # x decreases to the patient's left
    pts = np.stack([x.ravel(), y.ravel(), z.ravel(), np.ones(x.size)])
    ijk = (np.linalg.inv(image.affine) @ pts)[:3]
    vals = map_coordinates(np.asarray(image.array, np.float32), ijk, order=1, cval=-1024.0, mode="constant")
    return np.clip(np.rint(vals), -32768, 32767).astype("<i2").reshape(SLICES, ROWS, COLS)


def _real_lesions(datalist, label_map, organs, log, skip_bad: bool = False) -> dict[str, list[dict]]:
    p = Path(datalist)
    if not p.is_file():
        raise InputError(p, "no such datalist")
    dl_map = datalist_label_map(p)
    out: dict[str, list[dict]] = {}
    entries = [e for e in load_datalist(p) if e.get("label")]
    # every real case checked first (a CT in HU, its label on its grid), as `freetumor data check` does
    entries = check_cases(entries, get_label_map(label_map or dl_map, organs[0]), p, skip_bad=skip_bad, log=log)
    for e in entries:
        label = load_volume(e["label"])
        for organ in organs:
            lm = get_label_map(label_map or dl_map, organ)
            if not lm.supports(organ):
                continue
            _, lesions = connected_lesions(label.array == lm.tumour_id(organ), label.spacing, min_voxels=MIN_VOXELS)
            for les in lesions:
                out.setdefault(organ, []).append({"image": e["image"], "label": e["label"], "organ": organ,
                                                  "centre_voxel": [float(v) for v in les.centroid_voxel],
                                                  "diameter_mm": round(les.diameter_mm, 2)})
    return out


def check_synthetic_grid(image: Path, label: Path) -> None:
    """Refuse a synthetic case whose label is not on its image's grid (shape, or voxel-to-mm map by
    more than 1e-3 mm), from the NIfTI headers alone, as ``realism`` refuses it: the record's lesion
    positions would not be where the reader is shown them."""
    try:
        a, b = nib.load(str(image)), nib.load(str(label))
    except Exception as exc:  # nibabel's ImageFileError, OSError, ...: one line naming the file
        raise InputError(label, f"not a readable NIfTI label ({type(exc).__name__})") from None
    if tuple(a.shape) != tuple(b.shape):
        raise InputError(label, f"shape {tuple(b.shape)} does not match its image {tuple(a.shape)} ({image.name})")
    if not np.allclose(a.affine, b.affine, atol=1e-3):
        raise InputError(label, f"grid (affine) does not match its image ({image.name})")


def _synthetic_lesions(folder) -> dict[str, list[dict]]:
    d = Path(folder)
    if not d.is_dir():
        raise InputError(d, "no such folder of synthetic cases")
    out: dict[str, list[dict]] = {}
    for rec_path in sorted(d.glob("*.json")):
        try:
            rec = read_synthesis_record(rec_path)  # bounded, and every field used here checked
        except InputError as exc:
            if exc.problem.startswith("not a readable"):
                continue  # another kind of file
            raise
        if rec is None or "outputs" not in rec:
            continue
        for key in ("image", "organ"):
            if not isinstance(rec["outputs"].get(key) if key == "image" else rec.get(key), str):
                raise InputError(rec_path, f'synthesis record has no "{key}"'
                                           + (' in "outputs"' if key == "image" else ""))
        image = d / rec["outputs"]["image"]
        if not image.is_file():
            raise InputError(image, "listed in a synthesis record but missing")
        if isinstance(rec["outputs"].get("label"), str):
            label = d / rec["outputs"]["label"]
            if not label.is_file():
                raise InputError(label, "listed in a synthesis record but missing")
            check_synthetic_grid(image, label)
        for i, les in enumerate(rec["lesions"]):
            if "centre_voxel" not in les:
                raise InputError(rec_path, f'record lesion {i} has no "centre_voxel"')
            out.setdefault(rec["organ"], []).append({"image": str(image), "organ": rec["organ"],
                                                      "centre_voxel": [float(v) for v in les["centre_voxel"]],
                                                      "record": rec_path.name, "lesion": les.get("index")})
    if not out:
        raise InputError(d, "holds no `freetumor synthesize` records (<case>.json)")
    return out


def build_study(real: str | os.PathLike, synthetic: str | os.PathLike, out: str | os.PathLike, *,
                per_type: int | None = None, seed: int = 0, label_map: str | None = None,
                title: str = "freetumor Visual Turing Test", log=None, skip_bad_cases: bool = False) -> dict:
    """Write a study folder (all or nothing); returns a summary (counts per type).

    Every real case is checked first; a bad one stops the build, or is left out with
    ``skip_bad_cases``."""
    if per_type is not None and per_type < 1:
        raise ConfigError(f"--per-type must be at least 1, got {per_type}")
    check_output_folder(out)
    syn = _synthetic_lesions(synthetic)
    rea = _real_lesions(real, label_map, sorted(syn), log, skip_bad_cases)
    rng = np.random.default_rng(seed)
    chosen: list[tuple[str, dict]] = []
    counts = {}
    for organ in sorted(syn):
        r, s = rea.get(organ, []), syn[organ]
        n = min(len(r), len(s)) if per_type is None else min(per_type, len(r), len(s))
        if n == 0:
            if log:
                log(f"{organ}: {len(r)} real and {len(s)} synthetic lesions; skipped (need both)")
            continue
        pick_r = rng.choice(len(r), n, replace=False)
        pick_s = rng.choice(len(s), n, replace=False)
        chosen += [("real", r[int(i)]) for i in pick_r] + [("synthetic", s[int(i)]) for i in pick_s]
        counts[organ] = n
    if not chosen:
        raise InputError(real, "no tumour type has both real and synthetic lesions")
    order = rng.permutation(len(chosen))
    ids = set()
    cases, key = [], {}
    images: dict[str, object] = {}
    with staged_output(out) as stage:
        (stage / "cases").mkdir()
        for j in order:
            truth, les = chosen[int(j)]
            cid = secrets.token_hex(8)
            while cid in ids:
                cid = secrets.token_hex(8)
            ids.add(cid)
            img = images.get(les["image"])
            if img is None:
                img = images[les["image"]] = load_volume(les["image"])
                if len(images) > 8:  # keep memory bounded
                    images.pop(next(iter(images)))
            centre = img.voxel_to_mm(np.asarray(les["centre_voxel"]))
            write_bytes_atomic(stage / "cases" / f"{cid}.bin", stack_around(img, centre).tobytes())
            cases.append({"id": cid, "window": DEFAULT_WINDOW.get(les["organ"], "abdomen")})
            key[cid] = {"truth": truth, "tumour_type": les["organ"], "image": str(les["image"]),
                        "centre_mm": [round(float(v), 2) for v in centre],
                        **({"record": les["record"], "lesion": les["lesion"]} if truth == "synthetic" else {})}
        study = {"format": "freetumor-turing-study", "version": 1, "title": title, "slices": SLICES,
                 "rows": ROWS, "cols": COLS, "spacing_mm": [PIXEL_MM, PIXEL_MM, SLICE_MM], "windows": WINDOWS,
                 "cases": cases}
        write_bytes_atomic(stage / "study.json", (json.dumps(study, indent=1) + "\n").encode())
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_bytes_atomic(stage / "key.json", (json.dumps(
            {"created": created, "seed": seed, "real": str(real), "synthetic": str(synthetic),
             "per_type": counts, "cases": key}, indent=1) + "\n").encode())
    return {"cases": len(cases), "per_type": counts, "study": str(out)}
