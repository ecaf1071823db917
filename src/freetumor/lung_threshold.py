"""Lung masks for chest CT without a model: thresholds, connected components and morphology.

``freetumor organs --engine threshold`` uses this to make unlabelled chest CT usable as hosts
for synthetic lung lesions. Steps, on the volume reoriented to RAS (axis 2 runs foot to head):

1. **body**: voxels above ``BODY_HU`` (-500 HU), opened once, the largest 3D component, holes
   filled slice by slice (so the lungs are inside it);
2. **air in the body**: voxels below ``AIR_HU`` (-320 HU) inside the body; its 3D components of at
   least ``MIN_LUNG_ML`` and at least ``MIN_SHARE`` of the largest one are lung candidates (gas in
   the bowel or stomach is smaller);
3. **trachea and main bronchi**: followed down from the highest slice: a small air region near the
   midline (area below ``AIRWAY_MAX_CM2``), then, slice by slice, each small air region that
   overlaps the airway of the slice above; they are removed (grown by one voxel in-plane);
4. **holes**: vessels and nodules inside the lung are filled slice by slice, after a closing with
   a ball of ``CLOSING_MM`` so that vessels on the lung's edge join it.

The result is one lung mask (both lungs). A scan whose air is not lungs is a one-line
:class:`~freetumor.errors.InputError` (:func:`check_lung_candidates`), never a mask of something
else: no air region inside the body of at least ``MIN_LUNG_ML``; a candidate that is gas (median
below ``GAS_HU``: bowel or stomach gas reads about -1000 HU, lung parenchyma about -850 HU, with
its vessels and walls); a candidate that lies below the largest one (its centre under that
region's lowest slice: under the diaphragm, where lungs cannot be). An upper-abdomen CT, whose
lung bases come with colon gas, is refused so, not turned into a "lung" of bowel.

Example:
    >>> import numpy as np
    >>> from freetumor.io import Volume
    >>> x = np.full((40, 30, 24), -1000, np.int16)          # air around the body
    >>> x[4:36, 3:27, :] = 40                                 # body
    >>> x[8:18, 8:22, 4:20] = x[22:32, 8:22, 4:20] = -850     # two lungs
    >>> mask = threshold_lung_mask(Volume(x, np.diag([5.0, 5.0, 5.0, 1.0]), None, "toy"))
    >>> int(mask.sum()) == 2 * 10 * 14 * 16
    True
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .grids import from_ras, ras_spacing, to_ras
from .grids import Grid
from .io import Volume

BODY_HU = -500.0
AIR_HU = -320.0
MIN_LUNG_ML = 50.0
MIN_SHARE = 0.1
GAS_HU = -950.0
AIRWAY_MAX_CM2 = 6.0
CLOSING_MM = 4.0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lbl, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = ndi.sum_labels(mask, lbl, np.arange(1, n + 1))
    return lbl == (1 + int(np.argmax(sizes)))


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Holes filled in every axial slice (axis 2)."""
    out = np.empty_like(mask)
    for k in range(mask.shape[2]):
        out[:, :, k] = ndi.binary_fill_holes(mask[:, :, k])
    return out


def _ball(radius_mm: float, spacing) -> np.ndarray:
    reach = [max(1, int(np.ceil(radius_mm / s))) for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    return sum((g * s / radius_mm) ** 2 for g, s in zip(grids, spacing)) <= 1.0


def airway_mask(air: np.ndarray, spacing) -> np.ndarray:
    """Trachea and main bronchi in an air mask (RAS axes), followed down from the highest slice."""
    pixel_cm2 = float(spacing[0] * spacing[1]) / 100.0
    max_px = AIRWAY_MAX_CM2 / pixel_cm2
    out = np.zeros_like(air)
    zs = np.nonzero(air.any(axis=(0, 1)))[0]
    if zs.size == 0:
        return out
    centre_x = (air.shape[0] - 1) / 2.0
    above = None
    for k in zs[::-1]:
        lbl, n = ndi.label(air[:, :, k])
        if n == 0:
            break
        ids = np.arange(1, n + 1)
        areas = ndi.sum_labels(np.ones_like(lbl), lbl, ids)
        if above is None:  # the top: the small region nearest the midline starts the trachea
            small = [i for i, a in zip(ids, areas) if a <= max_px]
            if not small:
                return out
            coms = ndi.center_of_mass(np.ones_like(lbl), lbl, small)
            start = min(zip(small, coms), key=lambda t: abs(t[1][0] - centre_x))[0]
            keep = [start]
        else:
            touching = np.unique(lbl[above & (lbl > 0)])
            keep = [i for i in touching if areas[i - 1] <= max_px]
        if not keep:
            break
        above = np.isin(lbl, keep)
        out[:, :, k] = above
    return out


def check_lung_candidates(name: str, x: np.ndarray, lbl: np.ndarray, keep, sizes_ml: np.ndarray) -> None:
    """Refuse lung candidates that are not lungs (RAS axes; ``keep``: the labels of ``lbl`` kept as
    candidates, ``sizes_ml`` every label's volume).

    Rules, each a one-line :class:`~freetumor.errors.InputError` naming the scan: a candidate whose
    median is below ``GAS_HU`` is gas (bowel, stomach), not lung parenchyma; a candidate other than
    the largest whose centre lies below the largest one's lowest slice is under the diaphragm.

    Example:
        >>> x = np.full((10, 10, 30), 40.0); x[1:5, 2:8, 12:28] = -850; x[6:9, 2:8, 1:10] = -850
        >>> lbl, n = ndi.label(x < AIR_HU)
        >>> check_lung_candidates("ct.nii.gz", x, lbl, [1, 2], np.array([384.0, 162.0]))
        Traceback (most recent call last):
        ...
        freetumor.errors.InputError: ct.nii.gz: an air region of 162 mL lies below the lungs (under the diaphragm: bowel gas?); not a chest CT
    """
    order = sorted((int(i) for i in keep), key=lambda i: -float(sizes_ml[i - 1]))
    boxes = ndi.find_objects(lbl)
    largest = order[0]
    bottom = boxes[largest - 1][2].start
    for i in order:
        box = boxes[i - 1]
        region = lbl[box] == i
        median = float(np.median(x[box][region]))
        if median < GAS_HU:
            raise InputError(name, f"an air region of {sizes_ml[i - 1]:.0f} mL reads {median:.0f} HU (median), "
                                   f"below {GAS_HU:g} HU: gas in the bowel or stomach, not lung (lung reads about "
                                   "-850 HU); not a chest CT")
        if i != largest:
            centre = box[2].start + float(np.nonzero(region.any(axis=(0, 1)))[0].mean())
            if centre < bottom:
                raise InputError(name, f"an air region of {sizes_ml[i - 1]:.0f} mL lies below the lungs (under "
                                       "the diaphragm: bowel gas?); not a chest CT")


def threshold_lung_mask(volume: Volume) -> np.ndarray:
    """A boolean lung mask (both lungs) on the volume's own grid.

    Raises:
        InputError: no air inside the body, so no lungs (not a chest CT, or not in HU); air that is
            not lungs (:func:`check_lung_candidates`).
    """
    grid = Grid.of(volume)
    x = to_ras(np.asarray(volume.array), grid)
    spacing = ras_spacing(grid)
    voxel_ml = float(np.prod(spacing)) / 1000.0

    body = ndi.binary_opening(x > BODY_HU, iterations=1)
    body = _fill_slices(_largest_component(body))
    air = (x < AIR_HU) & body
    lbl, n = ndi.label(air)
    sizes = ndi.sum_labels(air, lbl, np.arange(1, n + 1)) * voxel_ml if n else np.zeros(0)
    if not sizes.size or sizes.max() < MIN_LUNG_ML:
        found = f"{sizes.max():.0f} mL" if sizes.size else "none"
        raise InputError(volume.name, f"no lungs found: the largest air region inside the body is {found} "
                                      f"(need at least {MIN_LUNG_ML:g} mL below {AIR_HU:g} HU); not a chest CT in HU?")
    keep = 1 + np.nonzero((sizes >= MIN_LUNG_ML) & (sizes >= MIN_SHARE * sizes.max()))[0]
    check_lung_candidates(volume.name, x, lbl, keep, sizes)
    lungs = np.isin(lbl, keep)
    airways = airway_mask(lungs, spacing)
    if airways.any():
        airways = ndi.binary_dilation(airways, structure=np.ones((3, 3, 1), bool))
        lungs &= ~airways
    lungs = _fill_slices(lungs)
    lungs = ndi.binary_closing(lungs, structure=_ball(CLOSING_MM, spacing), border_value=0)
    lungs = _fill_slices(lungs) & body
    if airways.any():
        lungs &= ~airways
    return np.ascontiguousarray(from_ras(lungs, grid))
