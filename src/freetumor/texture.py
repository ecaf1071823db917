"""Procedural tumour texture (METHOD §4.1), generated lazily for one bounding box.

The released code builds one 420x300x320 texture at start-up and crops it; here
the same recipe runs only on the tumour's bounding box (plus a margin so the
smoothing does not see the box edge), in float32:

1. a = Gaussian(uniform noise, sigma_a = 3), min-max rescaled to [b0, b0 + s],
   s ~ U(0.19, 0.21), b0 ~ U(0.04, 0.06);
2. b = 1[a > u] with u ~ U(0, 1) per voxel: a sparse dot field (5-25% of voxels);
3. b = Gaussian(b, sigma_b = 4);
4. rescale so the mean of voxels with b > 0.12 is u0 ~ U(0.5, 0.55); clip to [0, 1].

Sigmas are in voxels at the organ's target spacing and are converted to the
native grid, so texture grain has the same physical size at any resolution.

Example:
    >>> import numpy as np
    >>> t = procedural_texture((20, 20, 20), np.random.default_rng(0))
    >>> t.dtype, t.shape, bool(0.0 <= t.min() and t.max() <= 1.0)
    (dtype('float32'), (20, 20, 20), True)
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

SIGMA_A = 3.0
SIGMA_B = 4.0
_TRUNCATE = 3.0


def procedural_texture(
    shape,
    rng: np.random.Generator,
    sigma_a=(SIGMA_A,) * 3,
    sigma_b=(SIGMA_B,) * 3,
) -> np.ndarray:
    """Texture values in [0, 1] for a box of ``shape`` (sigmas per axis, in voxels)."""
    sigma_a = np.broadcast_to(np.asarray(sigma_a, np.float64), (3,))
    sigma_b = np.broadcast_to(np.asarray(sigma_b, np.float64), (3,))
    shape = np.asarray(shape, int)
    pad = np.ceil(_TRUNCATE * (sigma_a + sigma_b)).astype(int)
    big = tuple(int(v) for v in shape + 2 * pad)

    noise = rng.random(big, dtype=np.float32)
    a = gaussian_filter(noise, sigma_a, truncate=_TRUNCATE, mode="reflect")
    scale = rng.uniform(0.19, 0.21)
    base = rng.uniform(0.04, 0.06)
    amin, amax = float(a.min()), float(a.max())
    a = (a - amin) * np.float32(scale / max(amax - amin, 1e-12)) + np.float32(base)
    b = (a > rng.random(big, dtype=np.float32)).astype(np.float32)
    b = gaussian_filter(b, sigma_b, truncate=_TRUNCATE, mode="reflect")
    inner = tuple(slice(int(p), int(p + s)) for p, s in zip(pad, shape))
    b = b[inner]
    target = rng.uniform(0.5, 0.55)
    sel = b > 0.12
    mean = float(b[sel].mean()) if sel.any() else float(b.mean())
    b *= np.float32(target / max(mean, 1e-6))
    np.clip(b, 0.0, 1.0, out=b)
    return b
