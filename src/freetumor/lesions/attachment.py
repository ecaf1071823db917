"""Where a lung lesion is attached: to the chest wall or mediastinum (juxtapleural), to a vessel
(juxtavascular), or free in the lung.

Measured on a lesion crop (the 1 mm crops that ``freetumor lesions fit`` measures,
:class:`~freetumor.lesions.features.LesionCrop`) by :func:`attachment_of`:

* **tissue**: voxels whose lightly smoothed HU (:data:`SMOOTH_MM`) is above :data:`SOFT_HU` (denser than
  aerated lung), outside the lesion and its partial-volume rim (:data:`RIM_MM` around the label) and
  outside other lesions, split into connected structures;
* **wall**: in one of the lesion's main slices (below), a tissue structure of that slice that reaches the
  crop's border and is thick somewhere (it holds a disc of radius :data:`WALL_RADIUS_MM`: chest wall,
  diaphragm, mediastinum; no intrapulmonary vessel of a nodule crop is that thick);
* **vessel**: a 3D tissue structure that is not wall, thin everywhere (no ball of radius
  :data:`WALL_RADIUS_MM`) and at least :data:`VESSEL_MIN_MM` long (a tube, not a speck of noise);
* a structure **touches** the lesion when one of its voxels lies within :data:`CONTACT_MM` of the label in
  the same slice, on the lesion's main slices (:func:`main_slices`: label area at least
  :data:`MAIN_SLICE_SHARE` of its largest): as a reader judges contact, scrolling the slices through the
  lesion. The first and last native slice of a lesion hold its partial volume with the slices beyond (a
  thick-slice crop's top slice blurs a nodule into the chest wall that curves in two slices away) and do
  not count.

A lesion touching wall is ``juxtapleural``; one touching a vessel but no wall is ``juxtavascular``;
otherwise ``free``. The categories are exclusive (a lesion against the wall with a vessel too is
juxtapleural), so their fractions add up to at most 1 and a renderer can draw one of them
(:func:`attachment_fractions`).

Example:
    >>> import numpy as np
    >>> i, j, k = np.mgrid[0:24, 0:24, 0:16].astype(float)  # axis 2: the slices
    >>> lung = np.full((24, 24, 16), -850.0, np.float32)
    >>> wall = i < 3                                      # a slab of chest wall along one face
    >>> ball = (i - 7.5) ** 2 + (j - 12) ** 2 + (k - 8) ** 2 <= 16   # a 4 mm-radius nodule against it
    >>> img = np.where(wall | ball, 40.0, lung).astype(np.float32)
    >>> attachment_of(img, ball, (1.0, 1.0, 1.0))["kind"]
    'juxtapleural'
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["ATTACHMENT_KINDS", "main_slices", "crop_attachment", "measure_attachment", "CONTACT_MM", "RIM_MM", "SMOOTH_MM", "SOFT_HU", "VESSEL_MIN_MM", "WALL_RADIUS_MM",
           "attachment_of", "attachment_fractions"]

SOFT_HU = -500.0        # tissue: denser than this (aerated lung is about -850 HU)
SMOOTH_MM = 0.5         # the HU is smoothed with this Gaussian sigma first (noise makes no tissue)
RIM_MM = 1.0            # the lesion's own partial-volume rim: this far around its label is not another structure
CONTACT_MM = 2.0        # a structure touches the lesion when a voxel of it is this close to the label
WALL_RADIUS_MM = 3.0    # wall holds a ball of this radius; a vessel does not
VESSEL_MIN_MM = 3.0     # a vessel is at least this long (its bounding box's largest side)
MAIN_SLICE_SHARE = 0.5  # the lesion's main slices: label area at least this share of its largest slice's
ATTACHMENT_KINDS = ("juxtapleural", "juxtavascular", "free")


def main_slices(mask: np.ndarray, spacing, axis: int, edge_mm: float = 0.0) -> np.ndarray:
    """The lesion's main slices across ``axis``: label area at least :data:`MAIN_SLICE_SHARE` of the largest,
    and more than ``edge_mm`` inside the first and last slice of the label (its partial-volume end slices);
    the largest slice when no slice is that far inside."""
    m = np.moveaxis(np.asarray(mask, bool), axis, 0)
    area = m.reshape(m.shape[0], -1).sum(axis=1)
    on = np.flatnonzero(area)
    keep = area >= MAIN_SLICE_SHARE * area.max()
    k = np.arange(len(area)) * float(spacing[axis])
    keep &= (k > k[on[0]] + edge_mm - 1e-6) & (k < k[on[-1]] - edge_mm + 1e-6)
    return np.flatnonzero(keep) if keep.any() else np.array([int(np.argmax(area))])


def _in_slice_distance(mask: np.ndarray, spacing, axis: int, edge_mm: float = 0.0) -> np.ndarray:
    """Per slice across ``axis``: the in-plane distance (mm) of every voxel to the label in that slice,
    on the lesion's main slices (:func:`main_slices`); infinite elsewhere."""
    m = np.moveaxis(mask, axis, 0)
    plane = [s for i, s in enumerate(spacing) if i != axis]
    out = np.full(m.shape, np.inf)
    for k in main_slices(mask, spacing, axis, edge_mm):
        out[k] = ndimage.distance_transform_edt(~m[k], sampling=plane)
    return np.moveaxis(out, 0, axis)


def attachment_of(image: np.ndarray, mask: np.ndarray, spacing, other: np.ndarray | None = None,
                  slice_axis: int = 2, slice_mm: float = 0.0) -> dict:
    """How the lesion ``mask`` of the CT crop ``image`` (HU, voxel ``spacing`` in mm) is attached (see the
    module docstring; ``slice_axis``: the axis a reader scrolls, the native scan's slice axis; ``slice_mm``: the
    native slice thickness, the depth of the label's end slices that do not count): ``{"kind": "juxtapleural" | "juxtavascular" | "free", "wall": bool, "vessel": bool,
    "wall_contact_mm2": float}`` (the last: the area of the label's surface within :data:`CONTACT_MM` of wall,
    approximately, from its voxels' faces)."""
    image = np.asarray(image, np.float32)
    mask = np.asarray(mask, bool)
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in shape")
    spacing = np.asarray(spacing, np.float64)
    out = {"kind": "free", "wall": False, "vessel": False, "wall_contact_mm2": 0.0}
    if not mask.any():
        return out
    smooth = ndimage.gaussian_filter(image, SMOOTH_MM / spacing, mode="nearest")
    soft = smooth > SOFT_HU
    from_lesion = ndimage.distance_transform_edt(~mask, sampling=spacing)
    tissue = soft & (from_lesion > RIM_MM)
    if other is not None:
        tissue &= ~np.asarray(other, bool)
    spacing_plane = [s for i, s in enumerate(spacing) if i != slice_axis]
    in_slice = _in_slice_distance(mask, spacing, slice_axis, slice_mm)
    # wall: judged slice by slice on the lesion's main slices, as a reader sees contact (3D connectivity would
    # join a nodule's partial-volume bloom in its top slice to a wall that is millimetres away in its own slices)
    t_sl, d_sl = np.moveaxis(tissue, slice_axis, 0), np.moveaxis(in_slice, slice_axis, 0)
    s_sl = np.moveaxis(soft & ~mask, slice_axis, 0)
    wall_map = np.zeros(t_sl.shape, bool)
    for k in np.flatnonzero(np.isfinite(d_sl).reshape(d_sl.shape[0], -1).any(axis=1)):
        lab2, n2 = ndimage.label(t_sl[k])
        if n2 == 0:
            continue
        ids = np.arange(1, n2 + 1)
        depth2 = ndimage.distance_transform_edt(s_sl[k], sampling=spacing_plane)
        thick = ndimage.maximum(depth2, lab2, ids) >= WALL_RADIUS_MM
        near = ndimage.minimum(d_sl[k], lab2, ids) <= CONTACT_MM
        edge = np.unique(np.concatenate([lab2[0], lab2[-1], lab2[:, 0], lab2[:, -1]]))
        on_border = np.isin(ids, edge)
        hit = ids[thick & near & on_border]
        if hit.size:
            wall_map[k] = np.isin(lab2, hit)
    wall_map = np.moveaxis(wall_map, 0, slice_axis)
    out["wall"] = bool(wall_map.any())
    # vessel: a thin tube in 3D (not thick anywhere, not reaching the border as a thick wall), in contact in a
    # main slice
    labels, n = ndimage.label(tissue & ~wall_map)
    if n:
        depth = ndimage.distance_transform_edt(soft & ~mask, sampling=spacing)
        idx = np.arange(1, n + 1)
        thick3 = ndimage.maximum(depth, labels, idx) >= WALL_RADIUS_MM
        near3 = ndimage.minimum(in_slice, labels, idx) <= CONTACT_MM
        objs = ndimage.find_objects(labels)
        length = np.array([max((s.stop - s.start) * sp for s, sp in zip(o, spacing)) for o in objs])
        out["vessel"] = bool((~thick3 & near3 & (length >= VESSEL_MIN_MM)).any())
    if out["wall"]:
        out["kind"] = "juxtapleural"
        close = ndimage.distance_transform_edt(~wall_map, sampling=spacing) <= CONTACT_MM
        surface = mask & ~ndimage.binary_erosion(mask, border_value=1)
        face = float(np.prod(spacing) / spacing.min())
        out["wall_contact_mm2"] = round(float((surface & close).sum()) * face, 1)
    elif out["vessel"]:
        out["kind"] = "juxtavascular"
    return out


def attachment_fractions(kinds) -> dict:
    """The share of each attachment kind (:data:`ATTACHMENT_KINDS`) among ``kinds`` (the ``kind`` of
    :func:`attachment_of` of each lesion), rounded to 4 digits, with the number of lesions (``lesions``)."""
    kinds = list(kinds)
    if not kinds:
        raise ValueError("no lesions to count attachments of")
    bad = sorted({k for k in kinds if k not in ATTACHMENT_KINDS})
    if bad:
        raise ValueError(f"unknown attachment kind(s) {bad}; expected {ATTACHMENT_KINDS}")
    out = {k: round(sum(1 for v in kinds if v == k) / len(kinds), 4) for k in ATTACHMENT_KINDS}
    out["lesions"] = len(kinds)
    return out


def crop_attachment(crop) -> dict:
    """:func:`attachment_of` of a :class:`~freetumor.lesions.features.LesionCrop`: the slice axis is the one of
    the native scan's thickest spacing, and the label's end slices (1.5 native slices deep: the end slice and
    the crop's interpolation into it) do not count."""
    native = crop.meta.get("native_spacing") or crop.spacing
    axis = int(np.argmax(native)) if np.ptp(native) > 1e-6 else 2
    return attachment_of(crop.image, crop.mask, crop.spacing, crop.other, axis, 1.5 * float(max(native)))


def measure_attachment(crops) -> dict:
    """The attachment shares (:func:`attachment_fractions`) of lesion crops (:func:`crop_attachment`)."""
    return attachment_fractions(crop_attachment(c)["kind"] for c in crops)
