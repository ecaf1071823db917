"""One crop geometry for every lesion a reader or a discriminator sees, real or synthetic.

Where a lesion sits in its scan must not tell a real one from a synthetic one: the shared LIDC nodule
crops are small volumes of interest that end at the nodule's first and last slice (what lies beyond
is padding), while a synthetic lesion sits in a whole chest. So every lesion is shown by one rule:

* the **context box** (:func:`context_box`): the lesion's bounding box widened by
  :data:`CONTEXT_MARGIN_MM` (3.5 mm) in-plane (axes 0 and 1) and by :data:`CONTEXT_SLICE_MARGIN_MM`
  (0 mm) along the slice axis (the LIDC crops have no slice margin, so a slice margin would be padding
  on the real side only), clipped to the array; the margins in voxels are ``ceil(margin / spacing)``;
* everything outside the box reads :data:`CONTEXT_PAD_HU` (-1000 HU, air), on both sides;
* with an output size (:func:`centred_placement`, :func:`matched_context`) the box is moved so that
  the lesion's centre of mass (rounded to a voxel) sits at voxel ``size // 2``; what falls outside
  the output is cut, what the box does not cover is padding.

The CNN reader (:mod:`freetumor.evaluation.realism.cnn`) samples this box on its own grid (native
in-plane, matched slice thickness); Stage 1's discriminator (:mod:`freetumor.training.stage1`) reads
it on the training patches, which already share one spacing (``data.spacing``).

Example:
    >>> import numpy as np
    >>> m = np.zeros((20, 20, 10), bool); m[8:12, 8:12, 4:6] = True
    >>> context_box(m, (1.0, 1.0, 2.5))
    ((4, 4, 4), (16, 16, 6))
    >>> img, lesion = matched_context(np.zeros(m.shape, np.float32), m, (1.0, 1.0, 2.5), (16, 16, 8))
    >>> img.shape, int(lesion.sum()), int((img == 0).sum()), float(img[0, 0, 0])
    ((16, 16, 8), 32, 288, -1000.0)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "CONTEXT_MARGIN_MM",
    "CONTEXT_PAD_HU",
    "CONTEXT_SLICE_MARGIN_MM",
    "centred_placement",
    "context_box",
    "matched_context",
]

CONTEXT_MARGIN_MM = 3.5
CONTEXT_SLICE_MARGIN_MM = 0.0
CONTEXT_PAD_HU = -1000.0


def context_box(mask: np.ndarray, spacing: Sequence[float], margin_mm: float = CONTEXT_MARGIN_MM,
                slice_margin_mm: float = CONTEXT_SLICE_MARGIN_MM) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(lo, hi)`` voxel corners (``hi`` exclusive) of the context box of the lesion ``mask``
    (any non-zero voxel; the module doc), clipped to the mask's shape.

    Raises:
        ValueError: an empty mask.
    """
    m = np.asarray(mask) > 0
    if not m.any():
        raise ValueError("context_box: empty lesion mask")
    idx = np.argwhere(m)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    sp = [float(s) for s in spacing]
    grow = [int(math.ceil(margin_mm / sp[0] - 1e-9)), int(math.ceil(margin_mm / sp[1] - 1e-9)),
            int(math.ceil(slice_margin_mm / sp[2] - 1e-9))]
    lo = np.maximum(lo - grow, 0)
    hi = np.minimum(hi + grow, m.shape)
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def centred_placement(mask: np.ndarray, spacing: Sequence[float], size: Sequence[int],
                      margin_mm: float = CONTEXT_MARGIN_MM, slice_margin_mm: float = CONTEXT_SLICE_MARGIN_MM
                      ) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """``(src, dst)``: the part of the context box of ``mask`` that is copied (``src``, slices of the
    input array) to where it lands in an output of ``size`` centred on the lesion's centre of mass
    (``dst``); everything else of the output is padding. Both are empty-free (the box always holds
    the centre voxel)."""
    lo, hi = context_box(mask, spacing, margin_mm, slice_margin_mm)
    centre = np.rint(np.argwhere(np.asarray(mask) > 0).mean(axis=0)).astype(int)
    src, dst = [], []
    for a in range(3):
        shift = int(size[a]) // 2 - int(centre[a])  # output index = input index + shift
        s_lo, s_hi = max(lo[a], -shift), min(hi[a], int(size[a]) - shift)
        src.append(slice(s_lo, s_hi))
        dst.append(slice(s_lo + shift, s_hi + shift))
    return tuple(src), tuple(dst)


def matched_context(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float], size: Sequence[int],
                    pad: float = CONTEXT_PAD_HU, margin_mm: float = CONTEXT_MARGIN_MM,
                    slice_margin_mm: float = CONTEXT_SLICE_MARGIN_MM) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` of ``size``: the context box of the lesion ``mask`` in ``image`` (same
    grid, ``spacing`` in mm), centred on the lesion, ``pad`` outside the box (the module doc)."""
    src, dst = centred_placement(mask, spacing, size, margin_mm, slice_margin_mm)
    out = np.full(tuple(int(s) for s in size), pad, np.asarray(image).dtype)
    box = np.zeros(out.shape, bool)
    out[dst] = np.asarray(image)[src]
    box[dst] = np.asarray(mask)[src] > 0
    return out, box
