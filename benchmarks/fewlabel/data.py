"""Training data besides the split: a crop's label in the chest3 convention (nodule, lung, else) and the
tumour-free slabs of the healthy host chests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import DATASETS, sh


HOST_MARGIN_MM = 15.0       # host slabs keep slices this far from the host's own tumour
MIN_SLAB_MM = 40.0


def fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    from scipy import ndimage

    moved = np.moveaxis(mask, axis, 0)
    return np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in moved]), 0, axis)


def ball(radius_mm: float, spacing) -> np.ndarray:
    reach = [max(1, int(np.ceil(radius_mm / s))) for s in spacing]
    g = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    return sum((x * s / radius_mm) ** 2 for x, s in zip(g, spacing)) <= 1.0


def write_crop_chest3(entry: dict, dst: Path) -> None:
    """A crop's label in the chest3 convention: 2 nodule, 1 lung parenchyma (air below -320 HU with its
    vessels filled in slice by slice, minus 2 mm around the nodule), 0 else."""
    from scipy import ndimage

    from freetumor.io import load_volume, save_volume

    if dst.exists():
        return
    img, lab = load_volume(entry["image"]), load_volume(entry["label"])
    nodule = np.asarray(lab.array) > 0
    axis = img.axis_of("S")
    lung = fill_slices(np.asarray(img.array) < -320, axis)
    near = ndimage.binary_dilation(nodule, structure=ball(2.0, img.spacing))
    out = np.where(lung & ~near, 1, 0).astype(np.uint8)
    out[nodule] = 2
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_volume(lab.with_array(out), dst)


HOSTS = {
    "pyradiomics_lung1": ("pyradiomics_lung/lung1_image.nii.gz", "pyradiomics_lung/lung1_label.nii.gz"),
    "pyradiomics_lung2": ("pyradiomics_lung/lung2_image.nii.gz", "pyradiomics_lung/lung2_label.nii.gz"),
    "nsclc_lung1_001": ("nsclc_radiomics_lung1_001/image.nii.gz", "nsclc_radiomics_lung1_001/label.nii.gz"),
}


def host_slabs(name: str, work: Path, log: list) -> list[dict]:
    """Tumour-free slabs of one host chest: slices farther than HOST_MARGIN_MM from its tumour (label 1),
    at least MIN_SLAB_MM thick, image copied as is, label chest3 (1 = threshold lung of the whole chest)."""
    from freetumor.io import Volume, load_volume, save_volume

    img_rel, lab_rel = HOSTS[name]
    folder = work / "hosts"
    done = folder / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())
    lungs = work / "hosts" / "lungs" / name
    if not (lungs / "datalist.json").exists():
        sh(["organs", "--engine", "threshold", "--image", DATASETS / img_rel, "--out", lungs], log)
    image = load_volume(DATASETS / img_rel)
    lung = np.asarray(load_volume(next(p for p in lungs.glob("*.nii.gz"))).array) > 0
    tumour = np.asarray(load_volume(DATASETS / lab_rel).array) == 1
    axis = image.axis_of("S")
    dz = image.spacing[axis]
    zs = np.nonzero(np.moveaxis(tumour, axis, 0).reshape(tumour.shape[axis], -1).any(1))[0]
    keep = np.ones(image.shape[axis], bool)
    if zs.size:
        m = int(np.ceil(HOST_MARGIN_MM / dz))
        keep[max(0, zs.min() - m): zs.max() + m + 1] = False
    runs, start = [], None
    for z in range(len(keep) + 1):
        if z < len(keep) and keep[z]:
            start = z if start is None else start
        elif start is not None:
            runs.append((start, z))
            start = None
    slabs = []
    for i, (z0, z1) in enumerate(r for r in runs if (r[1] - r[0]) * dz >= MIN_SLAB_MM):
        index = [slice(None)] * 3
        index[axis] = slice(z0, z1)
        shift = np.eye(4)
        shift[axis, 3] = z0
        affine = image.affine @ shift
        sub_lung = lung[tuple(index)]
        if sub_lung.sum() * float(np.prod(image.spacing)) / 1000.0 < 20.0:  # under 20 mL of lung: skip
            continue
        ip, lp = folder / f"{name}_slab{i}_image.nii.gz", folder / f"{name}_slab{i}_label.nii.gz"
        save_volume(Volume(np.ascontiguousarray(image.array[tuple(index)]), affine), ip)
        save_volume(Volume(sub_lung.astype(np.uint8), affine), lp)
        slabs.append({"image": str(ip), "label": str(lp), "host": name, "slices": [int(z0), int(z1)],
                      "lung_ml": round(float(sub_lung.sum() * np.prod(image.spacing) / 1000.0), 1)})
    done.write_text(json.dumps(slabs, indent=1))
    return slabs
