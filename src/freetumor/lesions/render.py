"""Render one lesion drawn from a lesion profile into a CT, in millimetres and Hounsfield units.

Given a lesion's parameters (one draw of :meth:`freetumor.lesions.profile.LesionProfile.sample`), a
centre and the CT's own voxel grid, :func:`render_lesion`:

1. **shape**: an ellipsoid of the drawn equivalent diameter and principal axis ratios, randomly
   rotated (isotropic in physical space whatever the voxel spacing), whose radius is modulated by
   band-limited random noise on the sphere at three scales (lobes, bumps, fine roughness; many random
   waves per scale, so no regular petals); the noise amplitude reproduces the drawn surface roughness
   (or, for a profile without it, the drawn relative solidity; :func:`amplitude_for`);
2. **occupancy and edge**: the lesion's physical edge profile -- a Gaussian-blurred step whose width
   reproduces the drawn edge sharpness relative to the contrast (:func:`edge_sigma_for`), with the style's
   plateau -- evaluated on sub-samples about 0.4 mm apart and averaged over each native voxel, then the
   scanner's in-plane blur (:func:`scanner_psf`): partial-volume edges at the host's resolution, never a
   voxel staircase, and a thick-slice host blurs a small lesion as a real one would be;
3. **size**: the surface is rescaled until the label has the drawn volume (the closest of up to 10
   tries is kept);
4. **intensity**: inside the lesion the host is replaced by the lesion's core HU — the local host
   HU plus the drawn contrast — plus a spatially coherent texture T (Gaussian random field with
   the drawn SD and correlation length), plus the host's own fine noise N (the host minus
   its 1.5 mm smoothing, where that residual looks like noise; noise of the same SD where it does
   not, so vessels and fissures never show through a solid lesion; in abdominal organs,
   ``hide_wide_structure``, stand-in noise of the host's SD everywhere: the lesion replaces the
   host's texture, vessels included); extra scanner-like fine noise brings the lesion's fine-scale SD
   up to the drawn one, but the lesion's fine noise never exceeds the scan's own soft-tissue noise
   (:func:`soft_tissue_noise`: a solid lesion is not grainier than muscle in the same scan):

       x' = x + f * (host + contrast + T + N - x)

   and, for a lesion brighter than its host (lung), a soft union with the host's structure at the
   margin, so that a vessel meeting the lesion runs into it instead of stopping at its edge:
   ``x' += f (1 - f^2) max(0, smooth(x) - core)``;
5. **label**: the voxels whose occupancy reaches the threshold that gives the label's outer layer
   the drawn mean occupancy (real masks are generous: their outer layer is partly host).

:func:`draw_lesion` then checks that a reader could see the lesion (:func:`visibility`: contrast to
noise in its centre slice) and that its label is not smaller than the profile's smallest real lesion;
a lesion that fails is drawn again, never written.

Only voxels of the allowed region (the organ) change; the function returns the new values of
the lesion's box and leaves the input untouched.

Example:
    >>> import numpy as np
    >>> from freetumor.grids import Grid
    >>> rng = np.random.default_rng(0)
    >>> img = (-850 + 15 * rng.standard_normal((48, 48, 40))).astype(np.float32)
    >>> lung = np.ones(img.shape, bool)
    >>> grid = Grid((48, 48, 40), (0.7, 0.7, 1.0), (0, 1, 2), (1, 1, 1))
    >>> p = dict(diameter_mm=10.0, axis_ratio_mid=0.9, axis_ratio_min=0.8, solidity=0.95, contrast_hu=750.0,
    ...          edge_norm=0.25, occupancy_outer=0.45, interior_sd=80.0, noise_sd=40.0, corr_length_mm=2.0,
    ...          attached_fraction=0.0)
    >>> r = render_lesion(img, lung, grid, (24, 24, 20), p, rng)
    >>> core = r.values[r.label & (r.occupancy > 0.95)]
    >>> bool(-150 < core.mean() < 150), bool(300 < r.label.sum() * 0.49 < 900)  # solid tissue HU; about 520 mm3
    (True, True)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

from ..grids import Grid
from ..io import Volume
from .attachment import WALL_RADIUS_MM
from .features import extract_crops
from .measure import FIT_MARGIN_MM, MIN_VOXELS, edge_sharpness, lesion_core, measure_crop, relative_solidity
from .shape import shape_descriptors

SUBSAMPLE_MM = 0.4      # supersampling step of the occupancy
STRUCTURE_MM = 1.5      # the host's structure: the host smoothed with this Gaussian sigma
UNION_MM = 0.6          # vessels meeting a lesion: the host denoised with this Gaussian sigma
MAX_SUB = 6



@dataclass(frozen=True)
class RenderStyle:
    """Shape constants of the renderer that a profile's measured features do not fix.

    The neutral style (all 1) renders the drawn features as :func:`render_lesion` documents. For a
    profile fitted to real lesions, :data:`FITTED_STYLE` was chosen by comparing the realism
    features (``freetumor realism``) of rendered lesions with those of the profile's own *fit*
    lesions (never the held-out ones); see ``docs/method-notes.md``:

    * ``plateau``: the lesion's edge profile (in mm, before the host's voxels average it) saturates at
      this value (s -> min(1, s / plateau)), so a lesion is a plateau of solid tissue with a steep
      margin, as real solid nodules are, instead of a blurred dome;
    * ``texture_tail``: the coherent texture field's marginal is made heavier-tailed (g -> sign(g) |g|^tail,
      rescaled to unit SD): real nodules hold bright specks and dark clefts a Gaussian field lacks;
    * ``corr_scale`` and ``coherent_gain``: the coherent texture's correlation length and SD relative
      to the drawn ones (the fitted values are measured on the 1.5 mm core only, which hides the
      lesion-scale variation a whole real lesion shows);
    * ``label_gain``: the label's outer-layer occupancy relative to the drawn one (below 1: a more
      generous label).
    """

    plateau: float = 1.0
    texture_tail: float = 1.0
    corr_scale: float = 1.0
    coherent_gain: float = 1.0
    label_gain: float = 1.0

    def as_record(self) -> dict:
        return {k: float(v) for k, v in self.__dict__.items()}


NEUTRAL_STYLE = RenderStyle()
# chosen against the realism features of the fit half of the shared LIDC crops only (real hosts, 48-64
# lesions per setting): AUC against the fit lesions 0.78 -> 0.65 in four real hosts (docs/method-notes.md,
# "Renderer style of fitted profiles")
FITTED_STYLE = RenderStyle(plateau=0.35, texture_tail=1.5, corr_scale=3.0, coherent_gain=1.6, label_gain=1.0)


def _heavy_tailed(g: np.ndarray, power: float) -> np.ndarray:
    """``g`` (zero-mean field) mapped through sign(g) |g|^power and rescaled to unit SD."""
    if power == 1.0:
        return g
    h = np.sign(g) * np.abs(g) ** np.float32(power)
    return (h / max(float(h.std()), 1e-6)).astype(np.float32)

@dataclass
class RenderedLesion:
    """One rendered lesion on its box of the volume.

    Attributes:
        box: slices of the box in the volume.
        centre: the lesion's centre voxel in the volume.
        values: new HU of the box (float32); voxels outside the lesion's reach are unchanged.
        label: the lesion's label on the box (bool).
        occupancy: the blurred occupancy f on the box.
        record: what was drawn and derived (JSON-able).
    """

    box: tuple[slice, slice, slice]
    centre: tuple[int, int, int]
    values: np.ndarray
    label: np.ndarray
    occupancy: np.ndarray
    record: dict


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# The surface's log-radius is band-limited random noise on the sphere at three scales: lobulation (a few
# broad lobes), bumps, and fine roughness. Each band is a sum of _WAVES plane waves of random direction,
# phase and a wave number drawn in the band (radians per unit of the direction vector: 2 ~ a lobe per
# hemisphere, 10 ~ bumps a tenth of the circumference apart); the bands' SDs are in _BAND_SD's ratio.
# Many random waves per band (not 7 smooth lobes) leave no regular petals.
_BANDS = ((1.2, 2.6), (3.5, 6.5), (9.0, 15.0))
_BAND_SD = (1.0, 0.8, 0.6)
_WAVES = 24
_TABLE = (48, 96)  # the log-radius is tabulated on this (polar, azimuth) grid of directions
# Large lesions: their finer bands (bumps, fine roughness) are patchy -- confined by a broad random envelope to
# a few sectors of the surface, rough sectors beside smooth ones -- instead of an even crenellated rim that makes
# a large rough lesion a star. Real large nodules (fit half of the shared LIDC crops, 14 mm and more) have as much
# fine roughness in mm as the even bands give (0.40 mm against 0.32 mm; tests/test_lesion_surfaces.py), so the
# amplitude stays and only its distribution over the surface changes. Up to BAND_REF_RADIUS_MM (most real nodules,
# median 7.7 mm) the bands are even, the mix AMPLITUDE_TABLE was measured with. Lung lesions only (measured on
# lung nodules; the abdominal renders, hide_wide_structure, keep even bands).
BAND_REF_RADIUS_MM = 7.0
PATCHINESS = 1.0


def patchiness_for(radius_mm: float) -> float:
    """How patchy the finer surface bands of a lesion of equivalent radius ``radius_mm`` are (the strength of
    their envelope in :func:`_sphere_noise`): 0 up to :data:`BAND_REF_RADIUS_MM`, rising to :data:`PATCHINESS`
    at twice that radius.

    >>> patchiness_for(5.0), patchiness_for(10.5), patchiness_for(20.0)
    (0.0, 0.5, 1.0)
    """
    return PATCHINESS * min(1.0, max(0.0, float(radius_mm) / BAND_REF_RADIUS_MM - 1.0))


def _sphere_noise(rng: np.random.Generator, n_theta: int = _TABLE[0], n_phi: int = _TABLE[1],
                  sds=_BAND_SD, patchiness: float = 0.0) -> np.ndarray:
    """Unit-SD band-limited random noise on the unit sphere, tabulated on a (polar, azimuth) grid
    (azimuth wrapped: the last column repeats the first); ``patchiness``: the strength of the finer bands' envelope
    (:func:`patchiness_for`)."""
    theta = (np.arange(n_theta) + 0.5) / n_theta * math.pi
    phi = np.arange(n_phi + 1) / n_phi * 2.0 * math.pi
    st = np.sin(theta)[:, None]
    u = np.stack([st * np.cos(phi)[None, :], st * np.sin(phi)[None, :],
                  np.cos(theta)[:, None] * np.ones_like(phi)[None, :]], axis=-1)
    area = np.broadcast_to(st, (n_theta, n_phi + 1))[:, :-1]
    field = np.zeros((n_theta, n_phi + 1))

    def unit_band(lo, hi):
        d = rng.standard_normal((_WAVES, 3))
        d *= (rng.uniform(lo, hi, _WAVES) / np.linalg.norm(d, axis=1))[:, None]
        band = np.cos(u @ d.T + rng.uniform(0.0, 2.0 * math.pi, _WAVES)).sum(axis=-1)
        mean = np.average(band[:, :-1], weights=area)
        return (band - mean) / math.sqrt(np.average((band[:, :-1] - mean) ** 2, weights=area))

    for b, ((lo, hi), sd) in enumerate(zip(_BANDS, sds)):
        band = unit_band(lo, hi)
        if b > 0 and patchiness > 0:
            # the finer bands confined to a few patches of the surface (an envelope exp(p g), g a broad band, of
            # unit RMS): rough sectors and smooth ones, not an even crenellated rim
            env = np.exp(patchiness * unit_band(*_BANDS[0]))
            band = band * env / math.sqrt(np.average(env[:, :-1] ** 2, weights=area))
        field += sd * band
    return field / math.sqrt(sum(sd * sd for sd in sds))


class Surface:
    """A rotated ellipsoid whose radius is modulated by band-limited random noise on the sphere at three
    scales (:func:`_sphere_noise`): inside where ``value(points) <= 1``. ``amplitude`` is the SD of the
    log-radius (0: the plain ellipsoid); the finer bands of a large lesion are patchy (:func:`patchiness_for`
    the ellipsoid's equivalent radius, or ``band_radius_mm`` when given), unless ``patchy`` is false."""

    def __init__(self, semi_axes_mm, rotation: np.ndarray, amplitude: float, rng: np.random.Generator,
                 band_radius_mm: float | None = None, patchy: bool = True):
        self.a = np.asarray(semi_axes_mm, np.float64)
        self.rot = np.asarray(rotation, np.float64)
        self.amp = float(amplitude)
        radius = float(np.prod(self.a)) ** (1.0 / 3.0) if band_radius_mm is None else float(band_radius_mm)
        self.patchiness = patchiness_for(radius) if patchy else 0.0
        self.log_r = self.amp * _sphere_noise(rng, patchiness=self.patchiness)

    @property
    def reach(self) -> float:
        """The largest distance (mm) of a surface point from the centre."""
        return float(self.a.max() * math.exp(float(self.log_r.max())))

    def _radius_factor(self, u: np.ndarray) -> np.ndarray:
        if self.amp == 0:
            return np.ones(len(u))
        n_theta, n_phi = self.log_r.shape[0], self.log_r.shape[1] - 1
        ti = np.arccos(np.clip(u[:, 2], -1.0, 1.0)) / math.pi * n_theta - 0.5
        pj = np.mod(np.arctan2(u[:, 1], u[:, 0]), 2.0 * math.pi) / (2.0 * math.pi) * n_phi
        lr = ndimage.map_coordinates(self.log_r, [ti, pj], order=1, mode="nearest")
        return np.exp(lr)

    def radial(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``pts`` (N, 3) in mm relative to the centre -> (their distance from the centre in units of the
        surface's radius along the same ray (1 on the surface), that radius in mm)."""
        local = pts @ self.rot / self.a
        rho = np.sqrt(np.einsum("ij,ij->i", local, local))
        u = local / np.maximum(rho, 1e-12)[:, None]
        m = self._radius_factor(u)
        return rho / m, m * np.linalg.norm(u * self.a, axis=1)

    def value(self, pts: np.ndarray) -> np.ndarray:
        """``pts`` (N, 3) in mm relative to the centre -> scaled squared radius (1 on the surface)."""
        return self.radial(pts)[0] ** 2


def _subsamples(shape, spacing, origin_mm, step_mm: float):
    """Per x-slice of a box: the sub-sample points (mm) of its voxels, and the sub-sample counts."""
    sub = [int(min(MAX_SUB, max(1, math.ceil(s / step_mm)))) for s in spacing]
    offs = [((np.arange(n) + 0.5) / n - 0.5) * s for n, s in zip(sub, spacing)]
    ys = origin_mm[1] + np.arange(shape[1]) * spacing[1]
    zs = origin_mm[2] + np.arange(shape[2]) * spacing[2]
    yy = (ys[:, None] + offs[1][None, :]).ravel()
    zz = (zs[:, None] + offs[2][None, :]).ravel()
    grid_yz = np.stack(np.meshgrid(yy, zz, indexing="ij"), axis=-1).reshape(-1, 2)
    for i in range(shape[0]):
        xs = origin_mm[0] + i * spacing[0] + offs[0]
        yield i, np.concatenate([np.repeat(xs, len(grid_yz))[:, None], np.tile(grid_yz, (len(xs), 1))], axis=1), sub


def _occupancy(surface: Surface, shape, spacing, origin_mm, step_mm: float = SUBSAMPLE_MM) -> np.ndarray:
    """Fraction of each voxel of a box inside ``surface`` (voxel ``i`` centred at origin + i * spacing),
    from sub-samples about ``step_mm`` apart."""
    out = np.zeros(shape, np.float32)
    for i, pts, sub in _subsamples(shape, spacing, origin_mm, step_mm):
        inside = (surface.value(pts) <= 1.0).reshape(sub[0], shape[1], sub[1], shape[2], sub[2])
        out[i] = inside.mean(axis=(0, 2, 4))
    return out


def _soft_occupancy(surface: Surface, shape, spacing, origin_mm, sigma_mm: float, plateau: float = 1.0,
                    step_mm: float = SUBSAMPLE_MM) -> np.ndarray:
    """The lesion's partial-volume fraction of each voxel: at every sub-sample (about ``step_mm`` apart) the
    lesion's physical edge profile -- a Gaussian-blurred step of width ``sigma_mm`` across the surface (by the
    radial distance to it), saturating at ``plateau`` (``min(1, s / plateau)``: a solid plateau with a steeper
    margin) -- averaged over the voxel. The edge is shaped in mm *before* the host's voxels average it, so a
    steep margin is still a smooth partial-volume ramp on the host's grid, never a voxel staircase."""
    out = np.zeros(shape, np.float32)
    sig = max(float(sigma_mm), 1e-3)
    for i, pts, sub in _subsamples(shape, spacing, origin_mm, step_mm):
        rel, radius_mm = surface.radial(pts)
        s = 0.5 * special.erfc((rel - 1.0) * radius_mm / (math.sqrt(2.0) * sig))
        if plateau < 1.0:
            s = np.minimum(1.0, s / plateau)
        out[i] = s.reshape(sub[0], shape[1], sub[1], shape[2], sub[2]).mean(axis=(0, 2, 4))
    return out


def _semi_axes(diameter_mm: float, q_mid: float, q_min: float) -> np.ndarray:
    q_mid, q_min = min(1.0, q_mid), min(q_mid, q_min)
    r = diameter_mm / 2.0
    return r * np.array([1.0, q_mid, q_min]) / (q_mid * q_min) ** (1.0 / 3.0)


def _gaussian_mm(arr: np.ndarray, sigma_mm: float, spacing) -> np.ndarray:
    if sigma_mm <= 0:
        return arr
    return ndimage.gaussian_filter(arr, [sigma_mm / s for s in spacing], mode="nearest")


@functools.lru_cache(maxsize=None)
def _edge_table() -> tuple[np.ndarray, np.ndarray]:
    """Normalised edge sharpness (1/mm) of a blurred 16 mm ball measured as the realism score does,
    for a range of blur sigmas (mm): the table :func:`edge_sigma_for` inverts."""
    sigmas = np.array([0.05, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0])
    surf = Surface((8.0, 8.0, 8.0), np.eye(3), 0.0, np.random.default_rng(0))
    shape = (33, 33, 33)
    vals = []
    for s in sigmas:
        f = scanner_psf(_soft_occupancy(surf, shape, (1.0, 1.0, 1.0), (-16.0, -16.0, -16.0), float(s), step_mm=0.5),
                        (1.0, 1.0, 1.0))
        mask = f >= 0.5
        # normalised by the contrast as it is measured (the core's mean), like edge_norm of real lesions
        vals.append(edge_sharpness(f, mask, None, (1.0, 1.0, 1.0)) / core_level(f, mask, (1.0, 1.0, 1.0)))
    return sigmas, np.asarray(vals)


def core_level(f: np.ndarray, label: np.ndarray, spacing) -> float:
    """Mean of ``f`` over the lesion core (:func:`freetumor.lesions.measure.lesion_core`, the core
    :func:`freetumor.lesions.measure.measure_crop` measures contrast on): the level a measured contrast sees."""
    core = lesion_core(label, spacing, f)
    return float(f[core].mean()) if core.any() else 1.0


def edge_sigma_for(edge_norm: float) -> float:
    """The Gaussian edge blur (mm) whose normalised edge sharpness is ``edge_norm`` (1/mm)."""
    sigmas, vals = _edge_table()
    # vals decreases with sigma
    return float(np.interp(edge_norm, vals[::-1], sigmas[::-1]))


# (surface-noise amplitude, mean relative solidity, mean surface roughness) of 14 mm lesions on 1 mm grids,
# 8 random shapes each: measure_amplitude_table(AMPLITUDE_TABLE_AMPS) (tests/test_lesion_surfaces.py
# re-measures some entries). Real LIDC nodules (builtin:lung): roughness median 0.088, 5-95 % 0.05-0.21.
AMPLITUDE_TABLE = ((0.0, 1.0000, 0.0199), (0.03, 0.9967, 0.0212), (0.06, 0.9984, 0.0336), (0.1, 0.9490, 0.0530),
                   (0.14, 0.8939, 0.0743), (0.19, 0.8025, 0.1042), (0.25, 0.7164, 0.1402), (0.32, 0.6233, 0.1858),
                   (0.4, 0.5405, 0.2368), (0.5, 0.4560, 0.3008), (0.6, 0.4028, 0.3615))


def measure_amplitude_table(amps, shapes: int = 8) -> list[tuple[float, float, float]]:
    """For each surface-noise amplitude (:class:`Surface`), the mean relative solidity
    (:func:`freetumor.lesions.measure.relative_solidity`) and surface roughness
    (:func:`freetumor.lesions.shape.shape_descriptors`) of ``shapes`` random 14 mm lesions on a 1 mm grid,
    measured as ``lesions fit`` measures real lesions (the source of :data:`AMPLITUDE_TABLE`)."""
    out = []
    for a in amps:
        sol, rough = [], []
        for k in range(shapes):
            rng = np.random.default_rng(100 + k)
            surf = Surface((7.0, 7.0, 7.0), random_rotation(rng), float(a), rng)
            n = int(math.ceil(surf.reach + 2.0))
            m = _occupancy(surf, (2 * n + 1,) * 3, (1.0, 1.0, 1.0), (-float(n),) * 3, step_mm=0.5) >= 0.5
            sol.append(relative_solidity(m, (1.0, 1.0, 1.0), float(m.sum())))
            rough.append(shape_descriptors(m, (1.0, 1.0, 1.0))["surface_roughness"])
        out.append((float(a), float(np.mean(sol)), float(np.mean(rough))))
    return out


def _amplitude_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(AMPLITUDE_TABLE, np.float64)
    # made monotone (sampling noise): solidity falls and roughness rises with the amplitude
    return t[:, 0], np.minimum.accumulate(t[:, 1]), np.maximum.accumulate(t[:, 2])


def amplitude_for(solidity: float, roughness: float = math.nan) -> float:
    """The surface-noise amplitude (SD of the log-radius) whose shapes have the measured surface
    ``roughness`` on average; when that is not given (NaN: a profile fitted before it was measured),
    the amplitude whose shapes have relative solidity ``solidity``."""
    amps, sol, rough = _amplitude_tables()
    if roughness is not None and math.isfinite(roughness):
        return float(np.interp(roughness, rough, amps))
    return float(np.interp(solidity, sol[::-1], amps[::-1]))


def _label_threshold(f: np.ndarray, target: float) -> float:
    """The occupancy threshold t whose label (f >= t) has outer-layer mean occupancy ``target``; at most
    0.9 of the peak, so that a faint (soft-edged, small) lesion still has a label."""
    hi = min(0.9, 0.9 * float(f.max())) if f.size else 0.9
    lo = min(0.02, 0.5 * hi)
    for _ in range(12):
        t = 0.5 * (lo + hi)
        lab = f >= t
        outer = lab & ~ndimage.binary_erosion(lab, border_value=1)
        occ = float(f[outer].mean()) if outer.any() else t
        if occ < target:
            lo = t
        else:
            hi = t
    return 0.5 * (lo + hi)


def render_lesion(image: np.ndarray, allowed: np.ndarray, grid: Grid, centre, params: dict,
                  rng: np.random.Generator, protect: np.ndarray | None = None,
                  hide_wide_structure: bool = False, calibrate: bool = False,
                  style: RenderStyle = NEUTRAL_STYLE) -> RenderedLesion:
    """Render one lesion (``params`` as drawn from a profile) centred at voxel ``centre``.

    Args:
        image: the CT in HU (native grid; not modified).
        allowed: voxels the lesion may occupy (the organ).
        grid: the CT's grid (voxel spacing in mm).
        protect: voxels that never change (real tumours).
        hide_wide_structure: also treat as host structure (replaced by stand-in noise) every voxel whose
            1.5 mm-smoothed host differs from the host's median by more than 2.5 noise SDs. A vessel only a
            few noise SDs brighter than its host (abdominal organs: about +50-100 HU over 10-15 HU noise)
            otherwise leaves its low-amplitude residual inside the lesion, a faint trace of the vessel.
            Off for lung (:func:`draw_lesion`).
        calibrate: render twice: measure the first render as ``freetumor lesions fit`` measures a real
            lesion (:func:`measure_rendered`: cropped, resampled to 1 mm) and correct the renderer's
            settings by what the host's grid did to them (:func:`calibrated_settings`), so the *measured*
            contrast, edge, texture and solidity of the output are the drawn ones on any slice thickness.
            Both renders use the same shape and random fields. :func:`draw_lesion` calibrates lesions of a
            *fitted* profile, whose numbers are such measurements (noise included in the edge, 1 mm
            resampling included in the texture); a literature profile's numbers are rendered as given.
        style: the renderer's shape constants (:class:`RenderStyle`); :func:`draw_lesion` uses
            :data:`FITTED_STYLE` for fitted profiles.
    """
    seed = int(rng.integers(2**63))
    first = _render_once(image, allowed, grid, centre, params, {}, seed, protect, hide_wide_structure, style)
    if not calibrate:
        return first
    measured = measure_rendered(image, grid, first)
    want, got = params["contrast_hu"], (measured or {}).get("contrast_hu", 0.0)
    if measured is None or want * got <= 0 or abs(got) < 0.5 * abs(want):
        # the pilot cannot be measured as drawn (e.g. its host shell reaches another tissue): keep it
        first.record["calibration"] = "skipped: the first render does not measure with the drawn contrast"
        return first
    settings = calibrated_settings(params, measured, first.record)
    out = _render_once(image, allowed, grid, centre, params, settings, seed, protect, hide_wide_structure, style)
    target = drawn_volume_mm3(params)
    size_error = [abs(float(r.label.sum()) * float(np.prod(grid.spacing)) / target - 1.0) for r in (first, out)]
    if size_error[1] > max(0.3, size_error[0]):  # the corrected settings lost the drawn size: keep the first
        first.record["calibration"] = "skipped: the corrected render misses the drawn volume"
        return first
    out.record["calibration"] = "applied"
    out.record["pilot_measured"] = {k: round(float(measured[k]), 4) for k in CALIBRATED}
    out.record["settings"] = {k: round(float(v), 4) for k, v in settings.items()}
    return out


def drawn_volume_mm3(params: dict) -> float:
    """The label volume a drawn lesion is rendered to: the ball of its equivalent diameter."""
    return math.pi / 6.0 * params["diameter_mm"] ** 3


# Features whose measured value the calibration pass brings to the drawn one.
CALIBRATED = ("contrast_hu", "edge_norm", "solidity", "surface_roughness", "occupancy_outer", "interior_sd",
              "noise_sd")
MAX_CORRECTION = 2.0   # no setting is moved by more than this factor (a grid cannot show every draw)


def measure_rendered(image: np.ndarray, grid: Grid, rendered: RenderedLesion) -> dict | None:
    """The profile features of a rendered lesion, measured exactly as ``freetumor lesions fit`` measures
    a real one (:func:`freetumor.lesions.measure.measure_crop` on its 1 mm crop); ``None`` if too small."""
    spacing = tuple(float(s) for s in grid.spacing)
    pad = [int(math.ceil(FIT_MARGIN_MM / s)) + 1 for s in spacing]
    big = tuple(slice(max(0, b.start - p), min(int(n), b.stop + p)) for b, p, n in zip(rendered.box, pad, image.shape))
    inner = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(rendered.box, big))
    vals = np.array(image[big], np.float32)
    vals[inner] = rendered.values
    lab = np.zeros(vals.shape, np.uint8)
    lab[inner] = rendered.label
    affine = np.diag([*spacing, 1.0])
    crops = extract_crops(Volume(vals, affine), Volume(lab, affine), 1, "rendered", "calibration",
                          margin_mm=FIT_MARGIN_MM, min_voxels=MIN_VOXELS)
    if not crops:
        return None
    return measure_crop(max(crops, key=lambda c: c.meta["voxels"]))


def calibrated_settings(params: dict, measured: dict, record: dict) -> dict:
    """Renderer settings that bring a first render's measured features (``measured``) to the drawn
    ``params``: first-order corrections of contrast, edge sharpness, solidity, the label's outer occupancy and the two texture
    amplitudes (fine noise and coherent texture), each bounded by :data:`MAX_CORRECTION`."""
    def ratio(want: float, got: float) -> float:
        if want == 0 or got == 0 or (want > 0) != (got > 0):
            return 1.0
        return float(np.clip(want / got, 1.0 / MAX_CORRECTION, MAX_CORRECTION))

    out = {
        "contrast_hu": params["contrast_hu"] * ratio(params["contrast_hu"], measured["contrast_hu"]),
        "edge_norm": params["edge_norm"] * ratio(params["edge_norm"], measured["edge_norm"]),
        "solidity": float(np.clip(2.0 * params["solidity"] - measured["solidity"], 0.3, 1.0)),
        "occupancy_outer": float(np.clip(2.0 * params["occupancy_outer"] - measured["occupancy_outer"], 0.05, 0.9)),
    }
    if "surface_roughness" in params and "surface_roughness" in measured:
        out["surface_roughness"] = float(np.clip(2.0 * params["surface_roughness"] - measured["surface_roughness"],
                                                 0.0, 0.5))
    host_sd, fine_sd, coh_sd = record["host_noise_sd"], record["fine_sd"], record["coherent_sd"]
    # fine noise: the grid and the 1 mm resampling keep a share a of the native fine variance
    native = host_sd ** 2 + fine_sd ** 2
    kept = measured["noise_sd"] ** 2 / native if native > 0 else 1.0
    want = params["noise_sd"] ** 2 / max(kept, 1.0 / MAX_CORRECTION ** 2)
    out["fine_sd"] = math.sqrt(float(np.clip(want - host_sd ** 2, 0.0, (MAX_CORRECTION * max(fine_sd, host_sd)) ** 2)))
    # coherent texture: what the core's variance lacks beyond the fine noise's correction
    extra = (params["interior_sd"] ** 2 - measured["interior_sd"] ** 2) - (params["noise_sd"] ** 2 - measured["noise_sd"] ** 2)
    out["coherent_sd"] = math.sqrt(float(np.clip(coh_sd ** 2 + extra, 0.0, (MAX_CORRECTION * max(coh_sd, 1.0)) ** 2)))
    return out


def _render_once(image, allowed, grid: Grid, centre, params: dict, settings: dict, seed: int,
                 protect, hide_wide_structure: bool, style: RenderStyle = NEUTRAL_STYLE) -> RenderedLesion:
    """One render of :func:`render_lesion`; ``settings`` override the renderer settings derived from
    ``params`` (contrast_hu, edge_norm, solidity, surface_roughness, occupancy_outer, fine_sd, coherent_sd);
    ``seed`` fixes shape and fields."""
    rng = np.random.default_rng(seed)
    knob = {**params, **settings}
    spacing = np.asarray(grid.spacing, np.float64)
    axes = _semi_axes(params["diameter_mm"], params["axis_ratio_mid"], params["axis_ratio_min"])
    amp = amplitude_for(knob["solidity"], knob.get("surface_roughness", math.nan))
    # A soft edge is a margin of the lesion, not a blur wider than the lesion: a small lesion measures a low
    # edge_norm because partial volume flattens it, which the host's grid reproduces by itself (a 2.7 mm edge
    # on a 3 mm lesion made a broad faint blob, or a label twice the drawn size).
    sigma_edge = min(edge_sigma_for(knob["edge_norm"]), EDGE_MAX_RADII * params["diameter_mm"] / 2.0)
    rotation = random_rotation(rng)
    surface_rng = np.random.default_rng(rng.integers(2**63))
    c = np.asarray(centre, int)
    target_mm3 = drawn_volume_mm3(params)
    allowed = np.asarray(allowed, bool)
    vox_mm3 = float(np.prod(spacing))
    # The drawn diameter is the *label's*: the surface is rescaled until the label (a partial-volume threshold
    # of the occupancy on this grid, inside the allowed region) has that volume. The label's volume jumps with
    # the scale on a coarse grid: bracket, bisect, and keep the closest try (never the last one blindly: a
    # small lesion on thick slices used to end on a too-small try).
    best = None
    scale, below, above = 1.0, None, None
    for _ in range(10):
        surface = Surface(axes * scale, rotation, amp, np.random.default_rng(surface_rng.bit_generator.seed_seq),
                          band_radius_mm=params["diameter_mm"] / 2.0, patchy=not hide_wide_structure)
        reach_mm = surface.reach + 3.0 * sigma_edge + 2.0 * STRUCTURE_MM + 2.0
        half = np.ceil(reach_mm / spacing).astype(int)
        box = tuple(slice(max(0, int(ci - h)), min(int(n), int(ci + h + 1))) for ci, h, n in zip(c, half, grid.shape))
        shape = tuple(b.stop - b.start for b in box)
        origin = np.array([(b.start - ci) * s for b, ci, s in zip(box, c, spacing)])
        allow = allowed[box]
        if protect is not None:
            allow = allow & ~np.asarray(protect[box], bool)
        f = scanner_psf(_soft_occupancy(surface, shape, spacing, origin, sigma_edge, style.plateau), spacing)
        f = np.where(allow, f, np.float32(0.0)).astype(np.float32)
        t = _label_threshold(f, knob["occupancy_outer"] * style.label_gain)
        got_mm3 = float(np.count_nonzero(f >= t)) * vox_mm3
        err = abs(math.log(max(got_mm3, 1e-9) / target_mm3))
        if best is None or err < best[0]:
            best = (err, scale, surface, box, shape, allow, f, t)
        if err < 0.1:
            break
        if got_mm3 < target_mm3:
            below = scale if below is None else max(below, scale)
        else:
            above = scale if above is None else min(above, scale)
        if below is not None and above is not None:
            scale = math.sqrt(below * above)
        else:
            scale *= float(np.clip((target_mm3 / max(got_mm3, 1e-9)) ** (1.0 / 3.0), 0.5, 1.5))
    _, scale, surface, box, shape, allow, f, t = best

    x = np.asarray(image[box], np.float32)
    smooth = _gaussian_mm(x, STRUCTURE_MM, spacing)
    dist_out = ndimage.distance_transform_edt(f < 0.5, sampling=spacing)
    shell = allow & (f < 0.05) & (dist_out > 3.0) & (dist_out <= 8.0)
    if shell.sum() < 8:
        shell = allow & (f < 0.05)
    host_hu = float(np.median(x[shell])) if shell.any() else float(np.median(x[allow])) if allow.any() else 0.0
    # The drawn contrast is a measured one (the core's mean): the peak is set so the core reaches it.
    label = (f >= t) & allow
    level = core_level(f, label, spacing)
    core_hu = host_hu + knob["contrast_hu"] / max(level, 0.5)

    # Host noise: the fine residual of the host where it looks like noise; where it does not (a vessel's
    # edge, a fissure), noise of the same SD instead, so host structure never shows through the lesion.
    residual = x - smooth
    fine = residual[shell] if shell.any() else residual.ravel()
    host_noise = float(1.4826 * np.median(np.abs(fine - np.median(fine)))) if fine.size else 0.0
    noise_like = np.abs(residual) <= 2.5 * max(host_noise, 1.0)
    if hide_wide_structure:
        noise_like &= np.abs(smooth - host_hu) <= 2.5 * max(host_noise, 1.0)
    stand_in = _scanner_noise(rng, shape, spacing)
    stand_in *= np.float32(host_noise)
    # Abdominal hosts: a hypodense lesion replaces the host, texture included. A vessel only a few noise SDs
    # brighter than the liver has partial-volume edges that pass any noise test, so none of the host's fine
    # residual is kept: the lesion gets stand-in noise of the host's SD (issue 23: vessels showed through
    # IRCAD liver lesions, +16 HU on the vessel voxels of a 25 mm lesion's core).
    kept_noise = stand_in if hide_wide_structure else np.where(noise_like, residual, stand_in)
    # Fine noise inside the lesion: never grainier than the scan's own soft tissue (a solid lesion is soft
    # tissue imaged by the same scanner): the host's residual is scaled down to that level if needed, and the
    # extra fine noise (scanner-like, Gaussian) only fills up to it.
    soft_sd = soft_tissue_noise(image, spacing)
    cap = soft_sd if soft_sd is not None else math.inf
    keep_gain = min(1.0, cap / host_noise) if host_noise > 0 else 1.0
    kept_noise = kept_noise * np.float32(keep_gain)
    kept_sd = host_noise * keep_gain

    coh_sd = knob.get("coherent_sd", math.sqrt(max(0.0, params["interior_sd"] ** 2 - params["noise_sd"] ** 2)))
    coh_sd *= style.coherent_gain  # recorded with the gain: the calibration corrects the rendered amplitude
    fine_sd = knob.get("fine_sd", math.sqrt(max(0.0, params["noise_sd"] ** 2 - host_noise ** 2)))
    fine_sd = min(fine_sd, math.sqrt(max(0.0, cap ** 2 - kept_sd ** 2)) if math.isfinite(cap) else fine_sd)
    # both fields are always drawn, so a second render (other amplitudes) has the same fields
    g = _gaussian_mm(rng.standard_normal(shape).astype(np.float32), style.corr_scale * params["corr_length_mm"] / 2.0,
                     spacing)
    g = _heavy_tailed(g / max(float(g.std()), 1e-6), style.texture_tail)
    extra = _scanner_noise(rng, shape, spacing)
    texture = np.float32(coh_sd) * g + np.float32(fine_sd) * extra
    if hide_wide_structure:
        # the host's structures (vessels) fade under the lesion as f^2 instead of f: a vessel crossing a hypodense
        # lesion leaves no bright trace in its core (f just below 1 there), yet does not stop at its outer edge
        base = x - f * (x - np.where(noise_like, x, np.float32(host_hu) + stand_in))
    else:
        base = x
    values = base + f * (np.float32(core_hu) + texture + kept_noise - base)
    if not hide_wide_structure and knob["contrast_hu"] > 0:
        # Vessels run into the lesion: a soft union of the host's structure (denoised by a 0.6 mm smoothing,
        # which keeps a 2-3 mm vessel's HU) and the lesion at the margin, instead of the lesion's partial volume
        # darkening a vessel where they meet. 0 outside (f = 0) and in the core (f = 1): the core is the lesion's.
        vessel = _gaussian_mm(x, UNION_MM, spacing)
        over = np.maximum(np.float32(0.0), vessel - np.float32(core_hu))
        values = values + f * (np.float32(1.0) - f * f) * over

    record = {
        "semi_axes_mm": [round(float(v), 2) for v in axes * scale],
        "surface_amplitude": round(amp, 4),
        "edge_sigma_mm": round(sigma_edge, 3),
        "host_hu": round(host_hu, 1),
        "host_noise_sd": round(host_noise, 1),
        "soft_tissue_noise_sd": None if soft_sd is None else round(soft_sd, 1),
        "core_hu": round(core_hu, 1),
        "fine_sd": round(float(fine_sd), 2),
        "coherent_sd": round(float(coh_sd), 2),
        "label_threshold": round(t, 3),
        "style": style.as_record(),
        "drawn": {k: round(float(v), 4) for k, v in params.items()},
    }
    return RenderedLesion(box, tuple(int(v) for v in c), values.astype(np.float32), label, f, record)


EDGE_MAX_RADII = 0.45  # the edge's Gaussian width is at most this fraction of the lesion's equivalent radius
PSF_VOXELS = 0.5  # the scanner's in-plane blur (Gaussian sigma, voxels) that a rendered lesion gets too


def scanner_psf(f: np.ndarray, spacing) -> np.ndarray:
    """The host's in-plane resolution applied to a rendered occupancy: a Gaussian of :data:`PSF_VOXELS`
    voxels along the fine (in-plane) axes. A real CT's reconstruction blurs every edge over about a voxel, so
    no edge of a real lesion jumps from host to lesion between two neighbouring pixels; the thick axis
    (slices at least 1.5x the finest spacing) already averages over its slice."""
    sp = np.asarray(spacing, np.float64)
    sig = [PSF_VOXELS if s < 1.5 * sp.min() else 0.0 for s in sp]
    return ndimage.gaussian_filter(f, sig, mode="constant").astype(np.float32)


def _scanner_noise(rng: np.random.Generator, shape, spacing) -> np.ndarray:
    """Unit-SD Gaussian noise with a CT scanner's short correlation (white noise smoothed by 0.35 mm)."""
    n = _gaussian_mm(rng.standard_normal(shape).astype(np.float32), 0.35, spacing)
    return n / np.float32(max(float(n.std()), 1e-6))


SOFT_TISSUE_HU = (-100.0, 150.0)  # soft tissue (muscle, mediastinum, organs) on the host's 1.5 mm smoothing
_SOFT_NOISE_CACHE: dict = {}


def soft_tissue_noise(image: np.ndarray, spacing, slabs: int = 6) -> float | None:
    """The scan's own fine noise in soft tissue (HU): the robust SD (1.4826 MAD) of the residual from the
    1.5 mm smoothing, on voxels well inside uniform soft tissue (smoothed HU in :data:`SOFT_TISSUE_HU`, 2
    voxels from anything else), over ``slabs`` slabs of 7 slices spread along the last axis. ``None`` when
    the scan has too little soft tissue (fewer than 2000 such voxels). Cached per array."""
    arr = np.asarray(image)
    key = (arr.__array_interface__["data"][0], arr.shape, tuple(float(s) for s in spacing),
           float(arr.flat[0]), float(arr.flat[arr.size // 2]), float(arr.flat[-1]))
    if key in _SOFT_NOISE_CACHE:
        return _SOFT_NOISE_CACHE[key]
    nz = arr.shape[-1]
    vals = []
    for z0 in np.linspace(0, max(0, nz - 7), slabs).astype(int):
        slab = np.asarray(arr[..., z0:z0 + 7], np.float32)
        sm = _gaussian_mm(slab, STRUCTURE_MM, spacing)
        soft = (sm > SOFT_TISSUE_HU[0]) & (sm < SOFT_TISSUE_HU[1])
        soft = ndimage.binary_erosion(soft, iterations=2)
        mid = slice(min(3, slab.shape[-1] - 1), max(min(4, slab.shape[-1]), slab.shape[-1] - 3))
        r = (slab - sm)[..., mid][soft[..., mid]]
        vals.append(r)
    r = np.concatenate(vals) if vals else np.zeros(0)
    out = float(1.4826 * np.median(np.abs(r - np.median(r)))) if r.size >= 2000 else None
    if len(_SOFT_NOISE_CACHE) > 16:
        _SOFT_NOISE_CACHE.clear()
    _SOFT_NOISE_CACHE[key] = out
    return out


ATTACHED_ABOVE = 0.15   # a drawn attached_fraction above this places the lesion against the organ's wall
# A juxtapleural lesion's centre lies this many radii from the lung's boundary: it meets the wall over a contact
# disc (about 0.4-0.8 radii wide, a broad base as real juxtapleural nodules have) and loses at most a thin cap
# to it, which the label never holds (the label is the lesion inside the allowed region).
PLEURAL_DEPTH_RADII = (0.65, 0.95)
FREE_MARGIN_MM = 1.5    # a free lesion's centre is at least a radius plus this from the boundary


def _depth_ranges(params: dict, attachment: str | None = None) -> list[tuple[float, float]]:
    """The depth ranges (mm to the allowed region's boundary) a lesion's centre may lie in, in order
    of preference. With an ``attachment`` drawn from the profile's measured shares: ``juxtapleural``, against
    the wall (:data:`PLEURAL_DEPTH_RADII`); ``free`` and ``juxtavascular``, wholly inside (a radius plus
    :data:`FREE_MARGIN_MM`), then half a radius less. Without (a profile fitted before they were measured): against
    the wall (0.3-0.9 radii deep) for a lesion drawn as attached (``attached_fraction`` above
    :data:`ATTACHED_ABOVE`), else wholly inside; then a looser range of each kind."""
    r = params["diameter_mm"] / 2.0
    if attachment == "juxtapleural":
        return [(PLEURAL_DEPTH_RADII[0] * r, PLEURAL_DEPTH_RADII[1] * r), (0.5 * r, r)]
    if attachment in ("free", "juxtavascular"):
        return [(r + FREE_MARGIN_MM, np.inf), (r + 0.5, np.inf)]
    if params.get("attached_fraction", 0.0) > ATTACHED_ABOVE:
        return [(0.3 * r, 0.9 * r), (0.0, 1.5 * r)]
    return [(r + 1.5, np.inf), (0.5 * r, np.inf)]


def choose_centre(depth_mm: np.ndarray, params: dict, rng: np.random.Generator, attachment: str | None = None):
    """A centre voxel for a lesion, from the allowed region's depth map (mm to its boundary),
    uniform over the voxels of the first range of :func:`_depth_ranges` that has any.
    ``None`` when no range has a voxel."""
    for lo, hi in _depth_ranges(params, attachment):
        cand = np.flatnonzero((depth_mm.ravel() > max(lo, 0.0)) & (depth_mm.ravel() <= hi))
        if cand.size:
            return tuple(int(v) for v in np.unravel_index(int(cand[rng.integers(cand.size)]), depth_mm.shape))
    return None


def local_depth(allowed: np.ndarray, spacing, centre, reach_mm: float) -> float:
    """The depth (mm to the nearest voxel outside ``allowed``) of ``centre``, exact when it is below
    ``reach_mm``, else a value of at least ``reach_mm``: a distance transform of the box of half-size
    ``reach_mm`` around the centre only (a whole chest's transform takes about 20 s)."""
    spacing = np.asarray(spacing, np.float64)
    half = np.ceil(reach_mm / spacing).astype(int) + 1
    box = tuple(slice(max(0, int(c - h)), min(int(n), int(c + h + 1))) for c, h, n in zip(centre, half, allowed.shape))
    sub = np.asarray(allowed[box], bool)
    if sub.all():
        return float(reach_mm)
    d = ndimage.distance_transform_edt(sub, sampling=spacing)
    return float(min(d[tuple(int(c) - b.start for c, b in zip(centre, box))], reach_mm))


def sample_centre(allowed: np.ndarray, spacing, params: dict, rng: np.random.Generator, attempts: int = 300,
                  attachment: str | None = None):
    """:func:`choose_centre` without the whole region's depth map: random voxels of ``allowed`` are
    tested with :func:`local_depth` until one lies in the first depth range (the same uniform
    distribution over that range's voxels). A range with no hit in ``attempts`` tries falls back to
    the exact depth map of the region's bounding box."""
    idx = np.flatnonzero(np.asarray(allowed, bool).ravel())
    if not idx.size:
        return None
    lo, hi = _depth_ranges(params, attachment)[0]
    reach = (hi if np.isfinite(hi) else lo) + 2.0 * float(max(spacing))  # depths below it are exact
    for _ in range(attempts):
        c = np.unravel_index(int(idx[rng.integers(idx.size)]), allowed.shape)
        if lo < local_depth(allowed, spacing, c, reach) <= hi:
            return tuple(int(v) for v in c)
    nz = np.nonzero(allowed)  # the region's bounding box, plus one voxel
    box = tuple(slice(max(0, int(v.min()) - 1), min(n, int(v.max()) + 2)) for v, n in zip(nz, allowed.shape))
    depth = ndimage.distance_transform_edt(np.asarray(allowed[box], bool), sampling=spacing)
    c = choose_centre(depth, params, rng, attachment)
    return None if c is None else tuple(int(v + b.start) for v, b in zip(c, box))


VESSEL_HU = -400.0            # a lung vessel: its 0.6 mm-smoothed HU is above this ...
VESSEL_MAX_RADIUS_MM = WALL_RADIUS_MM  # ... and thinner than this (no ball of this radius of dense tissue): a
                                       # vessel as lesions.attachment measures one on real nodules
VESSEL_OFFSET_RADII = (0.6, 1.0)  # a juxtavascular lesion's centre lies this many radii from a vessel voxel


def vessel_centre(image: np.ndarray, allowed: np.ndarray, spacing, params: dict, rng: np.random.Generator,
                  attempts: int = 200):
    """A centre voxel for a juxtavascular lesion: a random vessel voxel of the allowed region (smoothed HU above
    :data:`VESSEL_HU`, in a structure thinner than :data:`VESSEL_MAX_RADIUS_MM`), moved by
    :data:`VESSEL_OFFSET_RADII` radii in a random direction, so that the vessel runs into the lesion's margin
    (where the renderer's soft union joins them); the centre must be a free lesion's depth from the region's
    boundary (:func:`_depth_ranges`), so the lesion is not juxtapleural too. ``None`` when no try succeeds."""
    spacing = np.asarray(spacing, np.float64)
    allowed = np.asarray(allowed, bool)
    idx = np.flatnonzero(allowed.ravel() & (np.asarray(image).ravel() > VESSEL_HU))
    if not idx.size:
        return None
    r = params["diameter_mm"] / 2.0
    lo = r + FREE_MARGIN_MM
    half = np.ceil((VESSEL_MAX_RADIUS_MM + 2.0) / spacing).astype(int)
    for _ in range(attempts):
        v = np.array(np.unravel_index(int(idx[rng.integers(idx.size)]), allowed.shape))
        box = tuple(slice(max(0, int(c - h)), min(int(n), int(c + h + 1))) for c, h, n in zip(v, half, allowed.shape))
        sub = _gaussian_mm(np.asarray(image[box], np.float32), UNION_MM, spacing) > VESSEL_HU
        inner = tuple(int(c - b.start) for c, b in zip(v, box))
        if not sub[inner]:
            continue
        dense = ndimage.distance_transform_edt(sub, sampling=spacing)
        if dense.max() >= VESSEL_MAX_RADIUS_MM:  # a wall, the hilum or a real lesion, not a vessel
            continue
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        d = rng.uniform(*VESSEL_OFFSET_RADII) * r
        c = np.round(v + u * d / spacing).astype(int)
        if np.any(c < 0) or np.any(c >= allowed.shape) or not allowed[tuple(c)]:
            continue
        if local_depth(allowed, spacing, tuple(c), lo + 2.0 * float(spacing.max())) > lo:
            return tuple(int(x) for x in c)
    return None


VISIBLE_CNR = 3.0        # a lesion stands out when its centre slice's contrast-to-noise ratio reaches this
RING_MM = (1.0, 5.0)     # its surroundings: the centre slice's voxels this far outside its label
MIN_IN_ORGAN = 0.5       # with the organ given, at least this share of the surroundings lies in it


def visibility(rendered: RenderedLesion, grid: Grid, allowed: np.ndarray | None = None) -> dict:
    """How well a rendered lesion stands out from its surroundings in its centre slice (the slice through its
    centre voxel across the axis of the thickest spacing, as a reader scrolls it).

    ``cnr`` = (mean HU of the label in that slice - median HU of its surroundings) / their spread, signed by
    the lesion's contrast; the surroundings are the slice's voxels :data:`RING_MM` outside the label, and the
    spread is the larger of their robust SD (1.4826 MAD) and the host's fine noise. A lesion against a wall or
    inside a vessel bundle has surroundings of its own density (a low or negative ``cnr``): a reader could not
    tell it from the wall. With ``allowed`` (the organ the lesion was drawn in), the surroundings are its voxels
    only: a juxtapleural lesion is seen against the lung beside it, as a reader sees one, and the wall it touches
    is not its background (its label holds no wall), but at least :data:`MIN_IN_ORGAN` of its surroundings must be
    organ (a lesion filling a narrow strip of lung between walls is wall thickening to a reader). ``visible``: ``cnr`` reaches :data:`VISIBLE_CNR` (Rose's criterion, 3-5 for a
    detectable object) and the label has at least 2 voxels in that slice.
    """
    spacing = np.asarray(grid.spacing, np.float64)
    axis = int(np.argmax(spacing)) if np.ptp(spacing) > 1e-6 else 2
    k = int(rendered.centre[axis] - rendered.box[axis].start)
    lab = np.take(rendered.label, k, axis=axis)
    vals = np.take(rendered.values, k, axis=axis)
    plane = [s for i, s in enumerate(spacing) if i != axis]
    out = {"slice_axis": axis, "pixels": int(lab.sum()), "cnr": 0.0, "visible": False}
    if out["pixels"] == 0:
        return out
    d = ndimage.distance_transform_edt(~lab, sampling=plane)
    ring = (d > RING_MM[0]) & (d <= RING_MM[1])
    in_organ = 1.0
    if allowed is not None and ring.any():
        inside = ring & np.take(np.asarray(allowed[rendered.box], bool), k, axis=axis)
        in_organ = float(inside.sum()) / float(ring.sum())
        out["surroundings_in_organ"] = round(in_organ, 3)
        ring = inside
    if not ring.any():
        return out
    bg = vals[ring]
    med = float(np.median(bg))
    spread = max(float(1.4826 * np.median(np.abs(bg - med))), float(rendered.record.get("host_noise_sd", 0.0)), 1.0)
    sign = 1.0 if rendered.record["drawn"]["contrast_hu"] >= 0 else -1.0
    cnr = sign * (float(vals[lab].mean()) - med) / spread
    out.update(cnr=round(cnr, 2), lesion_hu=round(float(vals[lab].mean()), 1), surround_hu=round(med, 1),
               surround_sd=round(spread, 1), visible=bool(cnr >= VISIBLE_CNR and out["pixels"] >= 2 and in_organ >= MIN_IN_ORGAN))
    return out


def label_diameter_mm(rendered: RenderedLesion, grid: Grid) -> float:
    """Equivalent-sphere diameter (mm) of a rendered lesion's label."""
    return float((6.0 * float(rendered.label.sum()) * float(np.prod(grid.spacing)) / math.pi) ** (1.0 / 3.0))


def draw_lesion(profile, image: np.ndarray, allowed: np.ndarray, grid: Grid, rng: np.random.Generator,
                tries: int = 1, protect: np.ndarray | None = None, redraws: int = 10):
    """Draw a lesion from ``profile`` (:class:`freetumor.lesions.profile.LesionProfile`), place it in
    ``allowed`` (:func:`sample_centre`, up to ``tries`` draws) and render it (:func:`render_lesion`;
    calibrated to the host's grid for a fitted profile).

    A profile with measured attachment shares (``profile.attachment``) places the lesion juxtapleural (against
    the allowed region's boundary, :data:`PLEURAL_DEPTH_RADII`), juxtavascular (:func:`vessel_centre`; free
    where no vessel has room) or free, with those shares; the kind is drawn once and kept through redraws, and
    the record says it (``attachment``: ``drawn`` and ``placed``).

    A render that a reader could not see (:func:`visibility`), or whose label is smaller than the profile's
    smallest lesion (``summary["diameter_mm"]["min"]``: no specks below the real minimum), is not returned:
    the lesion is drawn and placed again, up to ``redraws`` times; the returned render's record says how many
    were redrawn and why (``redrawn``) and holds its ``visibility``.

    Returns ``(rendered, params, draws)``: ``rendered`` is ``None`` when no draw found room or none of the
    renders was visible and large enough (``params`` is then the last draw).
    """
    min_d = float((profile.summary.get("diameter_mm") or {}).get("min", 0.0) or 0.0)
    redrawn = {"invisible": 0, "below_minimum_size": 0}
    params, draws = None, 0
    # where the lesion goes (the profile's measured shares), drawn once: redraws keep it, so the shares of
    # written lesions are the profile's whatever the visibility check redraws
    attachment = profile.draw_attachment(rng)
    while draws < tries + sum(redrawn.values()) and sum(redrawn.values()) <= redraws:
        draws += 1
        params = profile.sample(rng)
        placed = attachment
        if attachment == "juxtavascular":
            centre = vessel_centre(image, allowed, grid.spacing, params, rng)
            if centre is None:  # no vessel with room beside it: a free lesion
                placed = "free"
                centre = sample_centre(allowed, grid.spacing, params, rng, attachment="free")
        else:
            centre = sample_centre(allowed, grid.spacing, params, rng, attachment=attachment)
        if centre is None:
            continue
        # abdominal hosts: vessels only a few noise SDs bright must not leave a trace (see render_lesion)
        r = render_lesion(image, allowed, grid, centre, params, rng, protect=protect,
                          hide_wide_structure=profile.organ != "lung",
                          calibrate=profile.kind in ("fitted", "combined"),
                          style=FITTED_STYLE if profile.kind == "fitted" else NEUTRAL_STYLE)
        seen = visibility(r, grid, allowed)
        if attachment is not None:
            r.record["attachment"] = {"drawn": attachment, "placed": placed}
        if label_diameter_mm(r, grid) < min_d:
            redrawn["below_minimum_size"] += 1
        elif not seen["visible"]:
            redrawn["invisible"] += 1
        else:
            r.record["visibility"] = seen
            r.record["redrawn"] = dict(redrawn)
            return r, params, draws
    return None, params, draws
