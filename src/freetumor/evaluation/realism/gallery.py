"""``lesions.png``: real and synthetic lesions side by side, at one physical scale and one window.

Each panel is the axial plane through a lesion's centre (the native slice nearest its
centroid), resampled from the whole scan onto a square grid of :data:`GALLERY_PIXELS` pixels
covering one field of view in mm for every panel, in radiological orientation (patient right
on the left, anterior up) and in the organ's HU window. So sizes, textures and edges compare
directly across rows. The field of view is the smallest of :data:`FOV_STEPS_MM` that holds
twice the largest shown lesion's bounding-box side; a scale bar gives the mm.

Which lesions are shown (:func:`pick_lesions`): up to :data:`GALLERY_PER_SET` per set, evenly
spread over the set sorted by volume (the smallest, the largest and those between).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from ...io import Volume, load_volume
from ...lesions.features import LesionCrop

__all__ = ["FOV_STEPS_MM", "GALLERY_PER_SET", "GALLERY_PIXELS", "axial_view", "lesion_gallery_png", "pick_lesions"]

GALLERY_PER_SET = 8
GALLERY_PIXELS = 160
FOV_STEPS_MM = (20, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400, 500)
_SCALE_STEPS_MM = (1, 2, 5, 10, 20, 50, 100)


def pick_lesions(crops: Sequence[LesionCrop], n: int = GALLERY_PER_SET) -> list[LesionCrop]:
    """Up to ``n`` crops evenly spread over ``crops`` sorted by volume, smallest first."""
    ranked = sorted(crops, key=lambda c: (c.meta.get("volume_ml", 0.0), c.case, c.index))
    if len(ranked) <= n:
        return ranked
    picks = np.unique(np.rint(np.linspace(0, len(ranked) - 1, n)).astype(int))
    return [ranked[i] for i in picks]


def _extent_mm(crop: LesionCrop) -> float:
    """The largest side of the lesion's bounding box in mm (on the crop's grid)."""
    idx = np.nonzero(crop.mask)
    if not idx[0].size:
        return 0.0
    return float(max((i.max() - i.min() + 1) * s for i, s in zip(idx, crop.spacing)))


def _crop_to_native(crop: LesionCrop) -> tuple[np.ndarray, np.ndarray]:
    """(start, step): native voxel = start + (o + 0.5) * step - 0.5 for crop-grid index o."""
    start = np.array([b[0] for b in crop.meta["bbox_voxel"]], dtype=np.float64)
    step = np.asarray(crop.spacing, dtype=np.float64) / np.asarray(crop.meta["native_spacing"], dtype=np.float64)
    return start, step


def axial_view(crop: LesionCrop, volume: Volume, fov_mm: float, pixels: int = GALLERY_PIXELS) -> np.ndarray:
    """The axial plane of ``volume`` through the lesion's centre: ``pixels`` x ``pixels`` HU, NaN outside the scan.

    ``volume`` is the scan the crop was cut from (``crop.meta["image"]``); rows run anterior to
    posterior, columns patient right to left; a pixel is ``fov_mm / pixels`` mm wide.
    """
    start, step = _crop_to_native(crop)
    centroid = np.array(ndimage.center_of_mass(crop.mask), dtype=np.float64)
    centre = start + (centroid + 0.5) * step - 0.5
    s_axis = volume.axis_of("S")
    centre[s_axis] = np.clip(np.rint(centre[s_axis]), 0, volume.shape[s_axis] - 1)
    p_mm = volume.voxel_to_mm(centre)
    d = (np.arange(pixels) - (pixels - 1) / 2.0) * (fov_mm / pixels)
    rows, cols = np.meshgrid(d, d, indexing="ij")
    ras = np.stack([p_mm[0] - cols, p_mm[1] - rows, np.full_like(rows, p_mm[2])], axis=-1)
    inv = np.linalg.inv(volume.affine)
    ijk = ras @ inv[:3, :3].T + inv[:3, 3]
    # In-plane sampling only: the slice axis stays on the chosen native slice.
    ijk[..., s_axis] = centre[s_axis]
    return ndimage.map_coordinates(np.asarray(volume.array, dtype=np.float32), np.moveaxis(ijk, -1, 0), order=1,
                                   mode="constant", cval=np.nan)


def _nice(value: float, steps: Sequence[float], up: bool) -> float:
    if up:
        return float(next((s for s in steps if s >= value), steps[-1]))
    return float(next((s for s in reversed(steps) if s <= value), steps[0]))


def lesion_gallery_png(sets: Sequence[tuple[str, Sequence[LesionCrop]]], window, path: str | Path,
                       title: str = "", per_set: int = GALLERY_PER_SET) -> dict:
    """Write ``path`` (PNG): one row per ``(name, crops)`` set, up to ``per_set`` lesions each.

    Returns what was drawn: ``fov_mm``, ``mm_per_pixel``, ``window`` and ``shown`` (per set,
    ``case#index`` of each panel).
    """
    from matplotlib import colormaps  # deferred: heavy optional dependency
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: heavy optional dependency
    from matplotlib.figure import Figure  # deferred: heavy optional dependency

    rows = [(name, pick_lesions(crops, per_set)) for name, crops in sets]
    largest = max((_extent_mm(c) for _, chosen in rows for c in chosen), default=0.0)
    fov = _nice(max(2.0 * largest, FOV_STEPS_MM[0]), FOV_STEPS_MM, up=True)
    px = fov / GALLERY_PIXELS
    bar = _nice(fov / 4.0, _SCALE_STEPS_MM, up=False)
    lo, hi = float(window[0]), float(window[1])
    views: dict[tuple[int, int], np.ndarray] = {}
    by_image: dict[str, list[tuple[int, int, LesionCrop]]] = {}
    for r, (_, chosen) in enumerate(rows):
        for k, crop in enumerate(chosen):
            by_image.setdefault(str(crop.meta["image"]), []).append((r, k, crop))
    for image_path, wanted in by_image.items():  # each scan is read once
        volume = load_volume(image_path)
        for r, k, crop in wanted:
            views[r, k] = axial_view(crop, volume, fov)
    ncol = max(1, max(len(chosen) for _, chosen in rows))
    fig = Figure(figsize=(1.45 * ncol + 0.6, 1.7 * len(rows) + 0.7), dpi=110)
    FigureCanvasAgg(fig)
    cmap = colormaps["gray"].with_extremes(bad=(0.25, 0.1, 0.1))
    for r, (name, chosen) in enumerate(rows):
        for k in range(ncol):
            ax = fig.add_subplot(len(rows), ncol, r * ncol + k + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(name, fontsize=11, fontweight="bold")
            if k >= len(chosen):
                for spine in ax.spines.values():
                    spine.set_visible(False)
                continue
            crop = chosen[k]
            ax.imshow(np.ma.masked_invalid(views[r, k]), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(f"{crop.case} #{crop.index}\n{crop.meta.get('volume_ml', 0.0):.2f} mL", fontsize=6)
            x0, y0 = 0.06 * GALLERY_PIXELS, 0.92 * GALLERY_PIXELS
            ax.plot([x0, x0 + bar / px], [y0, y0], color="yellow", lw=2)
            ax.text(x0, y0 - 0.03 * GALLERY_PIXELS, f"{bar:g} mm", color="yellow", fontsize=6)
    fig.suptitle(f"{title}\naxial slice through each lesion centre; every panel {fov:g} mm wide "
                 f"({px:.3g} mm/pixel), window {lo:g}..{hi:g} HU", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))
    return {"fov_mm": fov, "mm_per_pixel": px, "window": [lo, hi],
            "shown": {name: [f"{c.case}#{c.index}" for c in chosen] for name, chosen in rows}}
