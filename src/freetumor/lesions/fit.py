"""``freetumor lesions fit``: measure every real lesion of a labelled datalist and write its profile.

Each lesion is cropped and resampled to 1 mm isotropic voxels exactly as the realism scores do
(:func:`freetumor.lesions.features.crops_from_datalist`, 10 mm margin), then measured
(:func:`measure_crop`; definitions in :data:`freetumor.lesions.profile.PROFILE_FEATURES`):

* size and shape: equivalent diameter from the native voxel count; principal semi-axis ratios;
  solidity (volume over convex-hull volume);
* intensity: the core (:func:`freetumor.lesions.measure.lesion_core`: voxels at least 1.5 mm inside the mask; the quarter farthest from the
  host's HU when the lesion is thinner than that), the host (median of the shell 3-8 mm outside),
  their contrast;
* edge: the realism edge sharpness (HU/mm) divided by the contrast;
* the label's generosity: the mean partial-volume occupancy of the label's outer voxel layer;
* texture: core SD, fine-scale residual SD, and the autocorrelation length of core HU;
* attachment: the share of the 3 mm shell that is solid tissue (a pleural or vessel contact).

Example:
    >>> import numpy as np
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
import os
from datetime import datetime, timezone

import numpy as np
from scipy import ndimage

from .. import __version__
from ..data import checked_labelled_cases, datalist_label_map
from ..errors import InputError
from ..labels import get_label_map
from ..organs import get_organ
from .features import LesionCrop, crops_from_datalist, lesion_features
from .measure import lesion_core, relative_solidity
from .profile import FEATURE_ORDER, LesionProfile

SHELL_MM = (3.0, 8.0)  # host: the shell between these distances outside the mask
ATTACH_MM = 3.0        # attachment: the shell within this distance
FIT_MARGIN_MM = 10.0
MIN_VOXELS = 8         # native voxels: smaller labels are not lesions one can measure


def _principal_ratios(mask: np.ndarray, spacing) -> tuple[float, float]:
    pts = np.argwhere(mask) * np.asarray(spacing, np.float64)
    if len(pts) < 4:
        return 1.0, 1.0
    ev = np.sort(np.linalg.eigvalsh(np.cov(pts.T)))[::-1]
    ev = np.maximum(ev, 1e-6)
    return float(math.sqrt(ev[1] / ev[0])), float(math.sqrt(ev[2] / ev[0]))


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


def measure_crop(crop: LesionCrop) -> dict[str, float]:
    """The :data:`freetumor.lesions.profile.PROFILE_FEATURES` of one lesion crop (1 mm isotropic advised)."""
    img = np.asarray(crop.image, np.float64)
    mask = np.asarray(crop.mask, bool)
    sp = tuple(float(s) for s in crop.spacing)
    other = np.zeros_like(mask) if crop.other is None else np.asarray(crop.other, bool)
    volume_mm3 = float(crop.meta.get("volume_ml", mask.sum() * np.prod(sp) / 1000.0)) * 1000.0
    outside = ndimage.distance_transform_edt(~mask, sampling=sp)
    shell = ~mask & ~other & (outside > SHELL_MM[0]) & (outside <= SHELL_MM[1])
    if shell.sum() < 8:
        shell = ~mask & ~other
    host = float(np.median(img[shell])) if shell.any() else float(np.median(img[~mask])) if (~mask).any() else 0.0
    core = lesion_core(mask, sp, np.abs(img - host))  # thin lesion: the quarter farthest from the host's HU
    core_hu = float(img[core].mean())
    contrast = core_hu - host
    feats = lesion_features(crop, window=crop.meta.get("hu_window"))
    edge = feats["edge_sharpness"]
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
    }


def fit_profile(crops: list[LesionCrop], organ: str, source: dict | None = None, name: str = "") -> LesionProfile:
    """The fitted profile of measured lesion crops (one row per lesion)."""
    rows = []
    for crop in crops:
        m = measure_crop(crop)
        rows.append([m[f] for f in FEATURE_ORDER])
    return LesionProfile.from_rows(organ, rows, source or {}, name)


def fit_datalist(datalist: str | os.PathLike, organ: str, out: str | os.PathLike, label_map=None,
                 name: str | None = None, *, skip_bad_cases: bool = False, log=None) -> LesionProfile:
    """``freetumor lesions fit``: check every labelled case, measure, fit, write ``out`` (all or nothing).

    ``label_map`` defaults to the datalist's, then the organ's default.

    Raises:
        CaseErrors: one line per bad case (:func:`~freetumor.data.check_cases`), unless
            ``skip_bad_cases``, which leaves them out and says how many through ``log``.
        InputError: the datalist is missing or has no lesion of the organ's tumour id.
    """
    org = get_organ(organ)
    lm = get_label_map(label_map if label_map is not None else datalist_label_map(datalist), org.name)
    entries = checked_labelled_cases(datalist, lm, skip_bad=skip_bad_cases, log=log)
    crops = crops_from_datalist(entries, org.name, lm, margin_mm=FIT_MARGIN_MM, min_voxels=MIN_VOXELS)
    if not crops:
        raise InputError(datalist, f"no {org.name} lesions (tumour label of at least {MIN_VOXELS} voxels) "
                                   "in its labelled cases")
    source = {
        "datalist": str(datalist),
        "label_map": None if label_map is None else str(label_map),
        "cases": len({c.case for c in crops}),
        "lesions": len(crops),
        "measured_at_mm": 1.0,
        "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "freetumor_version": __version__,
    }
    profile = fit_profile(crops, org.name, source, name or f"{org.name}-fitted")
    profile.save(out)  # atomic: a temporary file beside it, then renamed
    return profile
