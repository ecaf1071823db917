"""Input checks shared by the metrics and the lesion analysis: masks and voxel spacing (a mask's
bounding box is :func:`freetumor.grids.bounding_box`).

Example:
    >>> import numpy as np
    >>> p, g = mask_pair([[0, 2], [0, 0]], np.zeros((2, 2)))
    >>> p.dtype, int(p.sum()), bool(g.any())
    (dtype('bool'), 1, False)
    >>> mask_spacing(0.8, 3)
    (0.8, 0.8, 0.8)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["as_mask", "mask_pair", "mask_spacing"]


def as_mask(a: object) -> np.ndarray:
    """``a`` as a boolean array (non-zero is foreground); a boolean array is returned as is."""
    arr = np.asarray(a)
    return arr if arr.dtype == bool else arr != 0


def mask_pair(pred: object, gt: object) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean arrays; :class:`ConfigError` when their shapes differ."""
    p, g = as_mask(pred), as_mask(gt)
    if p.shape != g.shape:
        raise ConfigError(f"pred and gt must have the same shape, got pred {p.shape} and gt {g.shape}")
    return p, g


def mask_spacing(spacing: Sequence[float] | float, ndim: int) -> tuple[float, ...]:
    """Voxel spacing in mm, one positive finite value per axis (a number is used for every axis)."""
    if np.isscalar(spacing):
        spacing = (float(spacing),) * ndim  # type: ignore[arg-type]
    sp = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
    if len(sp) != ndim:
        raise ConfigError(f"spacing {sp} has {len(sp)} values but the masks have {ndim} dimensions")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ConfigError(f"spacing must be positive finite millimetres, got {sp}")
    return sp
