"""The test sets, never trained or tuned on: a test datalist checked and prepared for ``predict`` /
``evaluate`` (crops and whole scans, padding masked in a copy), the shifted crops (the same crops at a
random offset in a window of noisy air) and the composite crops (held-out nodules pasted into the real
lung of the whole test chests)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from .base import Failure, sh, write_datalist
from .split import SPLIT_SEED


WHOLE_SCAN_MM = 150.0       # an entry at least this wide in-plane is scored as a whole scan
PADDING_HU = -1500.0        # voxels at or below are scanner padding: set to AIR_HU in a copy
AIR_HU = -1000
AIR_NOISE_HU = 15.0         # shifted / composite windows: air padding with this noise (not flat -1000, which
                            # predict's foreground crop would cut away, re-centring the crop)
WINDOW_MM = (72.0, 72.0, 40.0)  # shifted and composite windows (58 x 58 x 16 voxels of the models' grid); every test
                                # crop must fit (the largest LIDC test crop is 66 x 32 x 31 mm)
N_COMPOSITE = 60            # composite test nodules (every n-th test crop)
COMPOSITE_AWAY_MM = 20.0    # composite nodules keep this far from the host chest's own nodules
NODULES_MAP = {"name": "lidc-nodules", "organs": {"lung": {"tumor": 1}}, "labels": [0, 1]}


def evaluation_map(spec: str, dst: Path) -> str:
    """``evaluate`` needs the organ's ids: a tumour-only map (nodule crops) gets an id no label uses."""
    from freetumor.labels import get_label_map

    lm = get_label_map(spec, "lung")
    if lm.has_organ_ids("lung"):
        return spec
    unused = next(i for i in range(250, 65536) if i not in lm.known)
    dst.write_text(json.dumps({"name": f"{lm.name}+unused-organ-id", "organs": {"lung": {
        "organ": [unused], "tumor": lm.tumour_id("lung")}}, "labels": sorted(set(lm.known) | {unused})}))
    return str(dst)


def in_plane_mm(vol) -> float:
    axis = vol.axis_of("S")
    return min(n * s for a, (n, s) in enumerate(zip(vol.shape, vol.spacing)) if a != axis)


def check_test_datalist(datalist: Path, default_map: Path | None = None) -> tuple[list[dict], str]:
    """The labelled entries of a test datalist and its label map (its own, relative to it, else the LIDC
    crops' convention: 1 = nodule); a :class:`Failure` naming the file otherwise."""
    from freetumor.data import datalist_label_map, load_datalist
    from freetumor.errors import ConfigError, FreeTumorError
    from freetumor.labels import get_label_map

    try:
        entries = [e for e in load_datalist(datalist) if e.get("label")]
        if not entries:
            raise Failure(f"{datalist}: no entries with a \"label\"")
        lm_spec = datalist_label_map(datalist) or (None if default_map is None else str(default_map))
        if lm_spec is not None:
            get_label_map(lm_spec, "lung").tumour_id("lung")
    except ConfigError as exc:  # e.g. a label map without lung: name the datalist
        raise Failure(f"{datalist}: {exc}") from None
    except FreeTumorError as exc:  # already names its file
        raise Failure(str(exc)) from None
    for e in entries:
        for k in ("image", "label"):
            if not Path(e[k]).exists():
                raise Failure(f"{e[k]}: listed in {datalist} but not found")
    from freetumor.io import load_volume

    tumour = get_label_map(lm_spec, "lung").tumour_id("lung") if lm_spec else 1
    try:
        if not any((np.asarray(load_volume(e["label"]).array) == tumour).any() for e in entries):
            raise Failure(f"{datalist}: no lesion (label {tumour}) in any of its {len(entries)} labels")
    except FreeTumorError as exc:
        raise Failure(str(exc)) from None
    check_crops_fit(entries, str(datalist))
    return entries, lm_spec


def prepare_test_set(name: str, datalist: Path, work: Path, log: list, default_map: Path) -> dict:
    """A test set ready for ``predict`` / ``evaluate``: every crop under a unique name in
    ``work/tests/NAME/images/all`` and every whole scan in ``.../images/scans`` (a link, or a copy with the
    padding set to air), the crops' and the whole scans' datalists (original labels), and the whole scans'
    threshold lungs."""
    from freetumor.errors import FreeTumorError
    from freetumor.io import case_name, load_volume, save_volume

    root = work / "tests" / name
    ready = root / "set.json"
    if ready.exists():
        return json.loads(ready.read_text())
    entries, lm_spec = check_test_datalist(datalist, default_map)
    images = root / "images"
    (images / "all").mkdir(parents=True, exist_ok=True)
    (images / "scans").mkdir(parents=True, exist_ok=True)
    crops, scans = [], []
    used: set[str] = set()
    for i, e in enumerate(entries):
        try:
            vol = load_volume(e["image"])
        except FreeTumorError as exc:
            raise Failure(str(exc)) from None
        case = case_name(e["image"])
        unique = case if case not in used and name == "lidc_crops" else f"{i:04d}_{e.get('patient') or case}"
        while unique in used:
            unique += "_"
        used.add(unique)
        whole = bool(e["whole_scan"]) if "whole_scan" in e else in_plane_mm(vol) >= WHOLE_SCAN_MM
        dst = images / ("scans" if whole else "all") / f"{unique}.nii.gz"
        padded = np.asarray(vol.array) <= PADDING_HU
        if padded.any():  # never modify the input: a copy with the scanner's padding set to air
            src = images / ("scans_padded" if whole else "crops") / f"{unique}.nii.gz"
            src.parent.mkdir(parents=True, exist_ok=True)
            arr = np.array(vol.array, copy=True)
            arr[padded] = AIR_HU
            save_volume(vol.with_array(arr), src)
        else:
            src = Path(e["image"]).resolve()
        if not dst.exists() and not dst.is_symlink():
            dst.symlink_to(src.resolve())
        row = {"image": str(dst), "label": str(Path(e["label"]).resolve()), "source": e["image"]}
        (scans if whole else crops).append(row)
    out = {"name": name, "datalist": str(datalist), "label_map": lm_spec,
           "eval_label_map": evaluation_map(lm_spec, root / "eval_label_map.json"), "images": str(images / "all"),
           "scan_images": str(images / "scans"),
           "crops": None, "scans": None, "n_crops": len(crops), "n_scans": len(scans)}
    if crops:
        out["crops"] = str(write_datalist(root / "crops.json", crops, lm_spec))
    if scans:
        out["scans"] = str(write_datalist(root / "scans.json", scans, lm_spec))
        lungs = root / "lungs"
        try:
            if not (lungs / "datalist.json").exists():
                sh(["organs", "--engine", "threshold", "--image", images / "scans", "--out", lungs], log)
            out["lungs"] = str(lungs)
        except Failure as exc:  # no model-free lung mask (e.g. no air in the body): no "in lung" figures
            out["lungs"], out["lungs_error"] = None, str(exc)
    ready.write_text(json.dumps(out, indent=1))
    return out


def window_voxels(spacing) -> tuple[int, ...]:
    return tuple(int(math.ceil(w / s)) for w, s in zip(WINDOW_MM, spacing))


def noisy_air(shape, rng: np.random.Generator) -> np.ndarray:
    return np.rint(AIR_HU + np.abs(rng.normal(0.0, AIR_NOISE_HU, shape))).astype(np.int16)


def shifted_crops(entries: list[dict], dst: Path, nodules_map: Path) -> Path:
    """The test crops at a random offset (seeded by the crop's name) in a window of ``WINDOW_MM`` filled with
    noisy air; label likewise. Datalist written to ``dst``. (:func:`check_crops_fit` refused larger crops.)"""
    from freetumor.io import load_volume, save_volume

    folder = dst.parent / "shifted"
    rows = []
    for e in entries:
        img_p, lab_p = folder / "images" / f"{e['case']}.nii.gz", folder / "labels" / f"{e['case']}.nii.gz"
        if not lab_p.exists():
            img, lab = load_volume(e["image"]), load_volume(e["label"])
            rng = np.random.default_rng(int(hashlib.sha256(e["case"].encode()).hexdigest()[:8], 16))
            size = [max(w, n) for w, n in zip(window_voxels(img.spacing), img.shape)]
            off = [int(rng.integers(0, c - n + 1)) for c, n in zip(size, img.shape)]
            region = tuple(slice(o, o + n) for o, n in zip(off, img.shape))
            arr = noisy_air(size, rng)
            src = np.asarray(img.array)
            arr[region] = np.where(src <= PADDING_HU, AIR_HU, src)
            out_lab = np.zeros(size, np.asarray(lab.array).dtype)
            out_lab[region] = np.asarray(lab.array)
            shift = np.eye(4)
            shift[:3, 3] = -np.asarray(off, float)
            affine = img.affine @ shift
            from freetumor.io import Volume

            img_p.parent.mkdir(parents=True, exist_ok=True)
            lab_p.parent.mkdir(parents=True, exist_ok=True)
            save_volume(Volume(arr, affine), img_p)
            save_volume(Volume(out_lab, affine), lab_p)
        rows.append({"image": str(img_p), "label": str(lab_p)})
    return write_datalist(dst, rows, str(nodules_map))


def check_crops_fit(entries: list[dict], source: str) -> None:
    """A :class:`Failure` naming the first crop (an entry narrower than a whole scan) larger than ``WINDOW_MM``
    along some axis: it could not be shifted inside the window."""
    from freetumor.errors import FreeTumorError
    from freetumor.io import load_volume

    for e in entries:
        if e.get("whole_scan"):
            continue
        try:
            vol = load_volume(e["image"])
        except FreeTumorError as exc:
            raise Failure(str(exc)) from None
        if in_plane_mm(vol) >= WHOLE_SCAN_MM:
            continue
        mm = [n * sp for n, sp in zip(vol.shape, vol.spacing)]
        if any(m > w + sp + 1e-6 for m, w, sp in zip(mm, WINDOW_MM, vol.spacing)):  # the window, to a voxel
            raise Failure(f"{e['image']}: crop of {' x '.join(f'{m:.0f}' for m in mm)} mm (in {source}) is larger than "
                          f"the {' x '.join(f'{w:.0f}' for w in WINDOW_MM)} mm test window")


def composite_crops(entries: list[dict], scans: list[tuple[str, Path, Path]], dst: Path, nodules_map: Path,
                    n: int = N_COMPOSITE) -> Path:
    """Held-out test nodules pasted into real healthy lung: every n-th test crop, resampled to a whole
    test chest's grid, pasted (1-voxel feather, :func:`freetumor.copy_paste.paste_lesion`) into its
    threshold lung at least ``COMPOSITE_AWAY_MM`` from the chest's own nodules, in a ``WINDOW_MM`` window
    at a random position. A composite: real nodules in real context, not real cases."""
    from scipy import ndimage

    from freetumor.copy_paste import LesionBank, paste_lesion
    from freetumor.io import Volume, load_volume, save_volume
    from freetumor.lung_threshold import threshold_lung_mask

    folder = dst.parent / "composite"
    picked = entries[:: max(1, len(entries) // n)][:n]  # every 3rd of the 184 test crops
    done = folder / "done.json"
    if done.exists():
        rows = json.loads(done.read_text())
        return write_datalist(dst, rows, str(nodules_map))
    hosts = []
    for name, img_p, lab_p in scans:
        img = load_volume(img_p)
        hu = np.asarray(img.array).astype(np.float32)
        hu[hu <= PADDING_HU] = AIR_HU
        lung = threshold_lung_mask(img.with_array(hu.astype(np.int16)))
        own = np.asarray(load_volume(lab_p).array) > 0
        away = np.ones(own.shape, bool)
        if own.any():  # the distance only near the nodules (exact: every nodule voxel is inside the box)
            idx = np.argwhere(own)
            reach = [int(np.ceil(COMPOSITE_AWAY_MM / sp)) + 1 for sp in img.spacing]
            box = tuple(slice(max(0, lo - r), min(n, hi + r + 1))
                        for lo, hi, r, n in zip(idx.min(0), idx.max(0), reach, own.shape))
            away[box] = ndimage.distance_transform_edt(~own[box], sampling=img.spacing) > COMPOSITE_AWAY_MM
        allowed = ndimage.binary_erosion(lung, iterations=2) & away
        hosts.append((name, img, hu, allowed))
    rows = []
    for i, e in enumerate(picked):
        rng = np.random.default_rng([SPLIT_SEED, 77, i])
        name, host, hu, allowed = hosts[i % len(hosts)]
        crop, clab = load_volume(e["image"]), load_volume(e["label"])
        zoom = [a / b for a, b in zip(crop.spacing, host.spacing)]
        c_hu = ndimage.zoom(np.where(np.asarray(crop.array) <= PADDING_HU, AIR_HU,
                                     np.asarray(crop.array)).astype(np.float32), zoom, order=1)
        c_lab = ndimage.zoom((np.asarray(clab.array) > 0).astype(np.float32), zoom, order=1) > 0.5
        bank = LesionBank.from_arrays([(c_hu, c_lab.astype(np.uint8))], 1, margin_vox=2, min_voxels=1)
        if not len(bank):
            continue
        size = window_voxels(host.spacing)
        cands = np.argwhere(allowed)
        placed = None
        for _try in range(20):
            c = cands[int(rng.integers(len(cands)))]
            lo = [int(np.clip(ci - int(rng.integers(4, max(5, s - 4))), 0, n - s)) for ci, s, n in zip(c, size, hu.shape)]
            box = tuple(slice(a, a + s) for a, s in zip(lo, size))
            r = paste_lesion(hu[box], np.zeros(size, np.uint8), allowed[box], bank, rng, 1, feather_vox=1.0)
            if r is not None:
                placed = (lo, r)
                break
        if placed is None:
            continue
        lo, (w_hu, w_lab, _info) = placed
        shift = np.eye(4)
        shift[:3, 3] = lo
        affine = host.affine @ shift
        case = f"{e['case']}_in_{name}"
        img_p, lab_p = folder / "images" / f"{case}.nii.gz", folder / "labels" / f"{case}.nii.gz"
        img_p.parent.mkdir(parents=True, exist_ok=True)
        lab_p.parent.mkdir(parents=True, exist_ok=True)
        save_volume(Volume(np.rint(w_hu).astype(np.int16), affine), img_p)
        save_volume(Volume((w_lab == 1).astype(np.uint8), affine), lab_p)
        rows.append({"image": str(img_p), "label": str(lab_p)})
    if not rows:
        raise Failure(f"{folder}: no composite nodule could be placed")
    done.write_text(json.dumps(rows, indent=1))
    return write_datalist(dst, rows, str(nodules_map))
