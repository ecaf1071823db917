"""Measurements of one lesion that synthesis, fitting and the realism scores share.

* :func:`edge_sharpness`: mean gradient magnitude (HU/mm) on the lesion's boundary band;
* :func:`lesion_core`: the voxels a lesion's contrast is measured on;
* :func:`solidity` and :func:`relative_solidity` (defined in :mod:`freetumor.lesions.shape`, the
  home of shape descriptors, and re-exported here): volume over convex-hull volume, and the same
  relative to a ball of equal volume on the same grid (so voxelisation does not make small
  lesions look lobulated);
* :func:`measure_crop`: the profile features of one lesion crop, as ``freetumor lesions fit``
  measures a real lesion and the renderer's calibration measures a rendered one (a 1 mm crop
  with a :data:`FIT_MARGIN_MM` margin, labels of at least :data:`MIN_VOXELS` native voxels).

Example:
    >>> import numpy as np
    >>> ball = sphere_mask(12.0, (1.0, 1.0, 1.0))
    >>> round(relative_solidity(ball, (1.0, 1.0, 1.0), float(ball.sum())), 3)
    1.0
    >>> img = np.where(ball, 100.0, 0.0)
    >>> round(edge_sharpness(img, ball, None, (1.0, 1.0, 1.0)), 1)  # a step of 100 HU, central differences
    63.3
    >>> from freetumor.lesions.features import LesionCrop
    >>> z, y, x = np.mgrid[-12:13, -12:13, -12:13]
    >>> ball = x**2 + y**2 + z**2 <= 36
    >>> img = np.where(ball, 0.0, -850.0).astype(np.float32)
    >>> m = measure_crop(LesionCrop("real", "toy", 1, img, ball, (1.0, 1.0, 1.0), {"volume_ml": ball.sum() / 1000}))
    >>> round(m["contrast_hu"]), round(m["diameter_mm"], 1), m["solidity"] > 0.9
    (850, 12.1, True)
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .shape import principal_ratios, relative_solidity, shape_descriptors, solidity, sphere_mask

__all__ = ["ATTACH_MM", "CORE_MM", "FIT_MARGIN_MM", "MIN_VOXELS", "SHELL_MM", "edge_sharpness", "lesion_core",
           "measure_crop", "relative_solidity", "solidity", "sphere_mask"]

from ..errors import InputError

CORE_MM = 1.5  # a lesion's core: voxels at least this far inside its label


def lesion_core(mask: np.ndarray, spacing, salience: np.ndarray) -> np.ndarray:
    """The lesion's core: voxels at least :data:`CORE_MM` inside ``mask``; for a lesion thinner than
    that (fewer than 4 such voxels), the quarter of its voxels highest in ``salience`` (e.g. the
    distance of their HU from the host's, or a rendered occupancy)."""
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    core = mask & (inside >= CORE_MM)
    if core.sum() < 4 and mask.any():
        core = mask & (salience >= np.percentile(salience[mask], 75))
    return core


def edge_sharpness(img: np.ndarray, mask: np.ndarray, other: np.ndarray | None, spacing) -> float:
    """Mean gradient magnitude (HU/mm, central differences) on the band of voxels with a 6-neighbour
    on the other side of the lesion edge (both sides), ``other`` tumours excluded."""
    band = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask, border_value=1)
    if other is not None:
        band &= ~other
    idx = np.nonzero(band)
    if not idx[0].size:
        return 0.0
    g2 = np.zeros(idx[0].size)
    for ax in range(3):
        n = img.shape[ax]
        if n < 2:
            continue
        lo = np.maximum(idx[ax] - 1, 0)
        hi = np.minimum(idx[ax] + 1, n - 1)
        lo_idx = list(idx)
        hi_idx = list(idx)
        lo_idx[ax], hi_idx[ax] = lo, hi
        g = (img[tuple(hi_idx)] - img[tuple(lo_idx)]) / ((hi - lo) * float(spacing[ax]))
        g2 += g * g
    return float(np.mean(np.sqrt(g2)))


SHELL_MM = (3.0, 8.0)  # host: the shell between these distances outside the mask
ATTACH_MM = 3.0        # attachment: the shell within this distance
HOST_MIN_VOXELS = 8    # host voxels (outside every lesion) a measurement needs: fewer is refused
FIT_MARGIN_MM = 10.0   # a lesion is measured on its 1 mm crop with this margin
MIN_VOXELS = 8         # native voxels: smaller labels are not lesions one can measure


def _principal_ratios(mask: np.ndarray, spacing) -> tuple[float, float]:
    return principal_ratios(mask, spacing, voxel_extent=False)  # voxel centres, as profiles were fitted


def _corr_length(values: np.ndarray, region: np.ndarray, spacing, max_lag: int = 8) -> float:
    """Lag (mm) where the autocorrelation of ``values`` inside ``region`` falls below 1/e, averaged over axes."""
    v = np.where(region, values - values[region].mean(), 0.0)
    var = float(np.mean(v[region] ** 2))
    if var <= 1e-9:
        return float(min(spacing))
    lengths = []
    for ax in range(3):
        prev_c, found = 1.0, None
        for lag in range(1, min(max_lag, values.shape[ax] - 1) + 1):
            a = [slice(None)] * 3
            b = [slice(None)] * 3
            a[ax], b[ax] = slice(0, -lag), slice(lag, None)
            both = region[tuple(a)] & region[tuple(b)]
            if both.sum() < 8:
                break
            c = float(np.mean(v[tuple(a)][both] * v[tuple(b)][both])) / var
            if c < 1.0 / math.e:
                found = (lag - 1 + (prev_c - 1.0 / math.e) / max(prev_c - c, 1e-9)) * spacing[ax]
                break
            prev_c = c
        if found is not None:
            lengths.append(found)
    return float(np.mean(lengths)) if lengths else float(max_lag * min(spacing))


def measure_crop(crop) -> dict[str, float]:
    """The :data:`freetumor.lesions.profile.PROFILE_FEATURES` of one lesion crop (1 mm isotropic advised).

    ``crop`` is a :class:`freetumor.lesions.features.LesionCrop` (its ``image``, ``mask``,
    ``spacing``, ``other`` and ``meta["volume_ml"]`` are read). The measurements:

    * size and shape: equivalent diameter from the native voxel count; principal semi-axis ratios;
      solidity relative to a ball (:func:`relative_solidity`);
    * intensity: the core (:func:`lesion_core`: voxels at least 1.5 mm inside the mask; the quarter
      farthest from the host's HU when the lesion is thinner than that), the host (median of the
      shell 3-8 mm outside, :data:`SHELL_MM`, other lesions left out; all tissue outside every
      lesion when that shell has fewer than :data:`HOST_MIN_VOXELS`), their contrast;
    * edge: the realism edge sharpness (HU/mm, :func:`edge_sharpness`) divided by the contrast;
    * the label's generosity: the mean partial-volume occupancy of the label's outer voxel layer;
    * texture: core SD, fine-scale residual SD, and the autocorrelation length of core HU;
    * attachment: the share of the 3 mm shell (:data:`ATTACH_MM`) that is solid tissue (a pleural
      or vessel contact);
    * the optional ``surface_roughness`` (:data:`freetumor.lesions.profile.OPTIONAL_FEATURES`): RMS radial
      deviation of the surface from the moment ellipsoid over the equivalent radius
      (:func:`freetumor.lesions.shape.shape_descriptors`).

    Raises:
        InputError: (named by ``crop.case``) the lesion and other lesions fill the crop: fewer than
            :data:`HOST_MIN_VOXELS` voxels of host tissue, so no contrast can be measured.
    """
    img = np.asarray(crop.image, np.float64)
    mask = np.asarray(crop.mask, bool)
    sp = tuple(float(s) for s in crop.spacing)
    other = np.zeros_like(mask) if crop.other is None else np.asarray(crop.other, bool)
    volume_mm3 = float(crop.meta.get("volume_ml", mask.sum() * np.prod(sp) / 1000.0)) * 1000.0
    tissue = ~mask & ~other  # the host: never the lesion, never another lesion
    if tissue.sum() < HOST_MIN_VOXELS:
        raise InputError(crop.case, f"lesion {crop.index} fills its image: fewer than {HOST_MIN_VOXELS} voxels of "
                                    "host tissue around it, so no host HU to measure its contrast against (give "
                                    "the image with tissue around the lesion)")
    outside = ndimage.distance_transform_edt(~mask, sampling=sp)
    shell = tissue & (outside > SHELL_MM[0]) & (outside <= SHELL_MM[1])
    if shell.sum() < HOST_MIN_VOXELS:
        shell = tissue
    host = float(np.median(img[shell]))
    core = lesion_core(mask, sp, np.abs(img - host))  # thin lesion: the quarter farthest from the host's HU
    core_hu = float(img[core].mean())
    contrast = core_hu - host
    edge = edge_sharpness(img, mask, crop.other, sp)  # the realism feature edge_sharpness
    outer = mask & ~ndimage.binary_erosion(mask, border_value=1)
    occ = np.clip((img[outer] - host) / contrast, 0.0, 1.0) if abs(contrast) > 1e-6 else np.ones(int(outer.sum()))
    smooth = ndimage.gaussian_filter(img, sigma=[1.0 / s for s in sp])
    attach_shell = ~mask & ~other & (outside <= ATTACH_MM)
    solid = (img - host) / contrast > 0.5 if abs(contrast) > 1e-6 else np.zeros_like(mask)
    return {
        "diameter_mm": float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)),
        **dict(zip(("axis_ratio_mid", "axis_ratio_min"), _principal_ratios(mask, sp))),
        "solidity": relative_solidity(mask, sp, volume_mm3),
        "contrast_hu": contrast,
        "edge_norm": float(edge / abs(contrast)) if abs(contrast) > 1e-6 else 0.0,
        "occupancy_outer": float(occ.mean()) if occ.size else 1.0,
        "interior_sd": float(img[core].std()),
        "noise_sd": float((img - smooth)[core].std()),
        "corr_length_mm": _corr_length(img, core if core.sum() >= 27 else mask, sp),
        "attached_fraction": float(solid[attach_shell].mean()) if attach_shell.any() else 0.0,
        "surface_roughness": float(shape_descriptors(mask, sp)["surface_roughness"]),
    }
