"""The native voxel grid of a CT, and moving regions of it into and out of the networks' space.

Synthesis, tumour shapes and quality control work on the CT's own voxel grid (:class:`Grid`:
shape, spacing and how the voxel axes run in RAS); the generator and the segmentor were trained
on RAS patches at the training spacing, windowed to [0, 1]. The functions here move a region of a
native-grid volume into that space and back (torch is imported only by the two that need it, so
rule-based synthesis runs without it).

Example:
    >>> import numpy as np
    >>> grid = Grid((4, 5, 6), (1.0, 1.0, 2.0), (0, 1, 2), (-1, 1, 1))  # x runs right to left
    >>> a = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    >>> bool((from_ras(to_ras(a, grid), grid) == a).all()), bool(to_ras(a, grid)[0, 0, 0] == a[-1, 0, 0])
    (True, True)
    >>> Grid.from_affine(np.diag([-1.5, 1.5, 3.0, 1.0]), (10, 10, 4)).axial_axis
    2
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from nibabel.orientations import io_orientation

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Grid:
    """Geometry of a voxel grid: shape, spacing and how voxel axes map to RAS.

    Attributes:
        shape: array shape.
        spacing: voxel size (mm) along each voxel axis.
        phys_axis: for each voxel axis, the RAS axis (0, 1, 2) it runs along.
        phys_sign: +1 if the voxel axis points towards R/A/S, -1 towards L/P/I.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    phys_axis: tuple[int, int, int]
    phys_sign: tuple[int, int, int]

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape) -> "Grid":
        ornt = io_orientation(np.asarray(affine, dtype=np.float64))
        spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
        return cls(
            tuple(int(s) for s in shape),  # type: ignore[arg-type]
            spacing,  # type: ignore[arg-type]
            tuple(int(a) for a in ornt[:, 0]),  # type: ignore[arg-type]
            tuple(int(s) for s in ornt[:, 1]),  # type: ignore[arg-type]
        )

    @classmethod
    def of(cls, volume) -> "Grid":
        return cls.from_affine(volume.affine, volume.shape)

    @property
    def axial_axis(self) -> int:
        """The voxel axis that runs superior-inferior."""
        return self.phys_axis.index(2)

    def per_voxel_axis(self, phys_values) -> np.ndarray:
        """Reorder a (x, y, z) physical triple into voxel-axis order."""
        v = np.asarray(phys_values, dtype=np.float64)
        return v[list(self.phys_axis)]

    def voxels_per(self, phys_spacing) -> np.ndarray:
        """Native voxels per voxel of another grid with ``phys_spacing`` (mm along R-L, A-P, S-I), per voxel axis."""
        return self.per_voxel_axis(phys_spacing) / np.asarray(self.spacing)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the foreground as slices; ``None`` when the mask is empty.

    Example:
        >>> bounding_box(np.array([[0, 2], [0, 0]]) != 0), bounding_box(np.zeros((2, 2), bool))
        ((slice(0, 1, None), slice(1, 2, None)), None)
    """
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other)) if other else np.flatnonzero(mask)
        if idx.size == 0:
            return None
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def inner_slices(box, region) -> tuple[slice, ...]:
    """Where ``box`` sits inside ``region`` (both slices of one volume; ``box`` within ``region``).

    Example:
        >>> inner_slices((slice(5, 8), slice(0, 2)), (slice(3, 10), slice(0, 4)))
        (slice(2, 5, None), slice(0, 2, None))
    """
    return tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region))


def to_ras(arr: np.ndarray, grid: Grid) -> np.ndarray:
    """View of ``arr`` with voxel axes along R, A, S (transposes and flips only)."""
    perm = [grid.phys_axis.index(j) for j in range(3)]
    out = np.transpose(arr, perm)
    flips = tuple(j for j in range(3) if grid.phys_sign[perm[j]] < 0)
    return np.flip(out, flips) if flips else out


def from_ras(arr: np.ndarray, grid: Grid) -> np.ndarray:
    """Inverse of :func:`to_ras`."""
    perm = [grid.phys_axis.index(j) for j in range(3)]
    flips = tuple(j for j in range(3) if grid.phys_sign[perm[j]] < 0)
    if flips:
        arr = np.flip(arr, flips)
    return np.transpose(arr, np.argsort(perm))


def ras_spacing(grid: Grid) -> tuple[float, float, float]:
    perm = [grid.phys_axis.index(j) for j in range(3)]
    return tuple(float(grid.spacing[k]) for k in perm)  # type: ignore[return-value]


def resample_to(t: torch.Tensor, size, mode: str = "trilinear") -> torch.Tensor:
    """Resize ``(B, C, X, Y, Z)`` to ``size`` (trilinear, or nearest for masks)."""
    import torch.nn.functional as F  # deferred: torch (seconds to import) only where a network runs

    size = tuple(int(s) for s in size)
    if tuple(t.shape[2:]) == size:
        return t
    if mode == "nearest":
        return F.interpolate(t, size=size, mode="nearest-exact")
    return F.interpolate(t, size=size, mode="trilinear", align_corners=False)


def context_region(box, grid: Grid, spacing, shape, mode: str, margin_vox: int, roi_size,
                   multiple: int = 1) -> tuple[slice, ...]:
    """The native-grid region a network sees around a lesion box.

    ``spacing`` is the network's voxel size (mm, R-L / A-P / S-I). ``bbox``: the
    box grown by ``margin_vox`` network voxels, unless that is larger than the
    training patch along some axis; ``patch`` (and that case): a ``roi_size``
    window (network voxels) centred on the box, grown to hold the box, and shifted
    inside the volume where it fits (as a training patch lies inside its scan; the
    whole axis where it does not): the windows of one volume then share a shape, so
    the network can judge them in one batch. ``fit``: as ``patch``, with a window of
    the box plus ``margin_vox`` either side, rounded up to ``multiple`` (the network's
    input multiple) and at most ``roi_size``: the smallest input that holds the
    lesion and its margin, filled with the scan (no zero padding, unlike ``bbox``).
    """
    native = grid.voxels_per(spacing)  # native voxels per network voxel
    if mode == "bbox":
        out = []
        for a, s in enumerate(box):
            g = int(math.ceil(margin_vox * native[a]))
            out.append(slice(max(0, s.start - g), min(int(shape[a]), s.stop + g)))
        fits = all((r.stop - r.start) / native[a] <= roi_size[grid.phys_axis[a]] for a, r in enumerate(out))
        if fits:
            return tuple(out)
    widths = [roi_size[grid.phys_axis[a]] for a in range(len(box))]
    if mode == "fit":
        widths = [min(w, fit_width((s.stop - s.start) / native[a], margin_vox, multiple))
                  for a, (s, w) in enumerate(zip(box, widths))]
    return centred_window(box, [w * native[a] for a, w in enumerate(widths)], shape)


def fit_width(box_vox: float, margin_vox: int, multiple: int) -> int:
    """The ``fit`` window along one axis: ``box_vox`` (network voxels) plus ``margin_vox`` either
    side, rounded up to ``multiple``.

    Example:
        >>> fit_width(10, 8, 16), fit_width(10.5, 3, 8)
        (32, 24)
    """
    m = max(1, int(multiple))
    return int(math.ceil((box_vox + 2 * margin_vox) / m) * m)


def centred_window(box, widths, shape) -> tuple[slice, ...]:
    """Per axis a window of ``widths[a]`` voxels centred on ``box``, grown to hold it, and shifted
    inside ``shape`` where it fits (the whole axis where it does not).

    Example:
        >>> centred_window((slice(2, 6), slice(40, 44)), (8, 8), (50, 50))
        (slice(0, 8, None), slice(38, 46, None))
    """
    out = []
    for s, w, n in zip(box, widths, shape):
        half = int(math.ceil(w / 2))
        c = (s.start + s.stop) // 2
        lo, hi = min(s.start, c - half), max(s.stop, c + half)
        n = int(n)
        if hi - lo <= n:
            shift = max(0, -lo) - max(0, hi - n)
            lo, hi = lo + shift, hi + shift
        else:  # the volume is narrower than the window: all of it
            lo, hi = 0, n
        out.append(slice(max(0, lo), min(n, hi)))
    return tuple(out)


def network_input(image: np.ndarray, region, grid: Grid, spacing, window, device=None):
    """The CT of ``image[region]`` as a network sees it: RAS, resampled to ``spacing``, windowed to [0, 1].

    Returns ``(tensor (1, 1, X, Y, Z), size, ras_shape)``: ``size`` is the resampled shape (to
    bring masks of the region onto that grid), ``ras_shape`` the region's shape in RAS axis order
    before resampling (to bring network outputs back).
    """
    import torch  # deferred: torch (seconds to import) only where a network runs

    crop = to_ras(np.asarray(image[region], np.float32), grid)
    sp = np.asarray(ras_spacing(grid))
    size = np.maximum(1, np.rint(np.asarray(crop.shape) * sp / np.asarray(spacing, float))).astype(int)
    t = resample_to(torch.from_numpy(np.ascontiguousarray(crop))[None, None].to(device), size)
    lo, hi = (float(v) for v in window)
    return ((t - lo) / (hi - lo)).clamp_(0.0, 1.0), size, crop.shape
