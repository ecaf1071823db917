"""Native-grid geometry for the networks: RAS views, resampling and the region a network sees.

Synthesis and quality control work on the CT's own voxel grid (:class:`freetumor.shapes.Grid`);
the generator and the segmentor were trained on RAS patches at the training spacing, windowed to
[0, 1]. These functions move a region of a native-grid volume into that space and back.

Example:
    >>> import numpy as np
    >>> from freetumor.shapes import Grid
    >>> grid = Grid((4, 5, 6), (1.0, 1.0, 2.0), (0, 1, 2), (-1, 1, 1))  # x runs right to left
    >>> a = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    >>> bool((from_ras(to_ras(a, grid), grid) == a).all()), bool(to_ras(a, grid)[0, 0, 0] == a[-1, 0, 0])
    (True, True)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def to_ras(arr: np.ndarray, grid) -> np.ndarray:
    """View of ``arr`` with voxel axes along R, A, S (transposes and flips only)."""
    perm = [grid.phys_axis.index(j) for j in range(3)]
    out = np.transpose(arr, perm)
    flips = tuple(j for j in range(3) if grid.phys_sign[perm[j]] < 0)
    return np.flip(out, flips) if flips else out


def from_ras(arr: np.ndarray, grid) -> np.ndarray:
    """Inverse of :func:`to_ras`."""
    perm = [grid.phys_axis.index(j) for j in range(3)]
    flips = tuple(j for j in range(3) if grid.phys_sign[perm[j]] < 0)
    if flips:
        arr = np.flip(arr, flips)
    return np.transpose(arr, np.argsort(perm))


def ras_spacing(grid) -> tuple[float, float, float]:
    perm = [grid.phys_axis.index(j) for j in range(3)]
    return tuple(float(grid.spacing[k]) for k in perm)  # type: ignore[return-value]


def resample_to(t: torch.Tensor, size, mode: str = "trilinear") -> torch.Tensor:
    """Resize ``(B, C, X, Y, Z)`` to ``size`` (trilinear, or nearest for masks)."""
    size = tuple(int(s) for s in size)
    if tuple(t.shape[2:]) == size:
        return t
    if mode == "nearest":
        return F.interpolate(t, size=size, mode="nearest-exact")
    return F.interpolate(t, size=size, mode="trilinear", align_corners=False)


def context_region(box, grid, spacing, shape, mode: str, margin_vox: int, roi_size) -> tuple[slice, ...]:
    """The native-grid region a network sees around a lesion box.

    ``spacing`` is the network's voxel size (mm, R-L / A-P / S-I). ``bbox``: the
    box grown by ``margin_vox`` network voxels, unless that is larger than the
    training patch along some axis; ``patch`` (and that case): a ``roi_size``
    window (network voxels) centred on the box, grown to hold the box.
    """
    native = grid.per_voxel_axis(spacing) / np.asarray(grid.spacing)  # native voxels per network voxel
    if mode == "bbox":
        out = []
        for a, s in enumerate(box):
            g = int(math.ceil(margin_vox * native[a]))
            out.append(slice(max(0, s.start - g), min(int(shape[a]), s.stop + g)))
        fits = all((r.stop - r.start) / native[a] <= roi_size[grid.phys_axis[a]] for a, r in enumerate(out))
        if fits:
            return tuple(out)
    out = []
    for a, s in enumerate(box):
        roi_axis = roi_size[grid.phys_axis[a]]
        half = int(math.ceil(roi_axis * native[a] / 2))
        c = (s.start + s.stop) // 2
        lo, hi = min(s.start, c - half), max(s.stop, c + half)
        out.append(slice(max(0, lo), min(int(shape[a]), hi)))
    return tuple(out)


def network_input(image: np.ndarray, region, grid, spacing, window, device=None):
    """The CT of ``image[region]`` as a network sees it: RAS, resampled to ``spacing``, windowed to [0, 1].

    Returns ``(tensor (1, 1, X, Y, Z), size, ras_shape)``: ``size`` is the resampled shape (to
    bring masks of the region onto that grid), ``ras_shape`` the region's shape in RAS axis order
    before resampling (to bring network outputs back).
    """
    crop = to_ras(np.asarray(image[region], np.float32), grid)
    sp = np.asarray(ras_spacing(grid))
    size = np.maximum(1, np.rint(np.asarray(crop.shape) * sp / np.asarray(spacing, float))).astype(int)
    t = resample_to(torch.from_numpy(np.ascontiguousarray(crop))[None, None].to(device), size)
    lo, hi = (float(v) for v in window)
    return ((t - lo) / (hi - lo)).clamp_(0.0, 1.0), size, crop.shape
