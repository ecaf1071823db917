"""A procedural CT phantom: the built-in data of the demo and the tests.

:func:`make_case` draws one synthetic patient from a seed and renders a CT
volume (int16 Hounsfield units) with its label map; :func:`write_cohort`
writes a few of them as NIfTI files with an MSD-style ``datalist.json``.
No real data is needed.

The anatomy is one torso model in millimetres (patient frame: +x = patient's
Right, +y = Anterior, +z = Superior, i.e. NIfTI RAS+), so a seed is one
"patient" whatever the grid: ``shape`` and ``spacing`` only choose the field of
view (centred on the region) and the resolution. Two regions:

* ``abdomen`` (label map ``abdomen7``, :data:`freetumor.labels.CONVENTIONS`), portal-venous
  contrast: body wall (subcutaneous fat, muscle), spine and ribs, liver on the
  patient's right, spleen, stomach, gallbladder, two kidneys, pancreas, aorta,
  IVC and portal system, bowel and colon, lung bases in the top slices.
* ``chest`` (label map ``chest3``), no contrast: body
  wall, ribs, spine, sternum, scapulae, heart and mediastinum, great vessels,
  trachea and bronchi, two lungs with vessel and airway trees.

Organs are smooth, randomly deformed ellipsoids and tubes; the image gets a
partial-volume blur, low-frequency texture and Gaussian noise; labels are sharp.
``tumour=True`` adds one or two hypodense abdominal tumours (the first always in
the liver) or one or two hyperdense lung nodules.

Example:
    >>> image, label = make_case("abdomen", seed=0, shape=(48, 40, 24))
    >>> image.array.dtype, label.array.dtype, image.orientation
    (dtype('int16'), dtype('uint8'), ('R', 'A', 'S'))
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from .errors import ConfigError
from .io import Volume, save_volume, staged_output, write_bytes_atomic
from .labels import CONVENTIONS, convention_names

__all__ = ["REGIONS", "LABEL_NAMES", "make_case", "write_cohort"]


@dataclass(frozen=True)
class _Region:
    label_map: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    z_centre: float  # patient-frame z (mm) at the centre of the field of view
    contrast: bool  # portal-venous contrast (abdomen) or none (chest)


REGIONS = {
    "abdomen": _Region("abdomen7", (176, 136, 72), (2.0, 2.0, 2.5), -95.0, True),
    "chest": _Region("chest3", (176, 144, 56), (2.0, 2.0, 5.0), 100.0, False),
}

LABEL_NAMES = {name: convention_names(name) for name in ("abdomen7", "chest3")}

# Tissue classes painted into the phantom; the label map is a look-up on these.
(AIR, FAT, MUSCLE, SOFT, GAS, FLUID, BONE, LUNG, LIVER, LIVER_VES, SPLEEN, KIDNEY, PANCREAS, VESSEL,
 T_LIVER, T_PANC, T_KIDNEY, T_LUNG) = range(18)

_ABD, _CHEST = CONVENTIONS["abdomen7"], CONVENTIONS["chest3"]
_LABEL_OF = {
    "abdomen7": {LIVER: _ABD["liver"][0], LIVER_VES: _ABD["liver"][0], T_LIVER: _ABD["liver"][1],
                 PANCREAS: _ABD["pancreas"][0], T_PANC: _ABD["pancreas"][1],
                 KIDNEY: _ABD["kidney"][0], T_KIDNEY: _ABD["kidney"][1]},
    "chest3": {LUNG: _CHEST["lung"][0], T_LUNG: _CHEST["lung"][1]},
}

# Amplitude (HU, 1 std) of the low-frequency texture added to each class.
_TEXTURE = {FAT: 6, MUSCLE: 5, SOFT: 6, GAS: 15, FLUID: 3, BONE: 45, LUNG: 18, LIVER: 4, LIVER_VES: 3,
            SPLEEN: 4, KIDNEY: 5, PANCREAS: 9, VESSEL: 3, T_LIVER: 7, T_PANC: 7, T_KIDNEY: 7, T_LUNG: 10}

# Tumours: host classes, tumour class, radius range (mm).
_TUMOUR = {
    "liver": ((LIVER, LIVER_VES), T_LIVER, (8.0, 30.0)),
    "pancreas": ((PANCREAS,), T_PANC, (6.0, 13.0)),
    "kidney": ((KIDNEY,), T_KIDNEY, (7.0, 18.0)),
    "lung": ((LUNG,), T_LUNG, (5.0, 16.0)),
}

HU_MIN, HU_MAX = -1024, 3071
# Patient-frame box (mm) whose random lattice is drawn whatever the field of view,
# so a seed gives the same anatomy on any grid that lies inside it.
_LATTICE = ((-280.0, 280.0), (-240.0, 240.0), (-420.0, 480.0))


# ----------------------------------------------------------------------------- grid


def _lut(classes) -> np.ndarray:
    t = np.zeros(256, bool)
    t[list(classes)] = True
    return t


class _Canvas:
    """HU and tissue-class arrays on the output grid, with patient-frame coordinates."""

    def __init__(self, shape, spacing, offset, field_seeds):
        self.shape = tuple(int(s) for s in shape)
        self.spacing = np.asarray(spacing, np.float64)
        self.origin = -(np.asarray(self.shape) - 1) / 2.0 * self.spacing  # world mm of voxel 0
        self.ax = [
            (self.origin[d] + offset[d] + np.arange(self.shape[d]) * self.spacing[d]).astype(np.float32)
            for d in range(3)
        ]
        self.hu = np.full(self.shape, -1000.0, np.float32)
        self.cls = np.zeros(self.shape, np.uint8)
        self._field_seeds = field_seeds
        self._fields: dict[str, np.ndarray] = {}

    def affine(self) -> np.ndarray:
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff

    def box(self, lo, hi):
        """Slices of the voxels whose centres lie in the patient-frame box [lo, hi], or None."""
        out = []
        for d in range(3):
            a0, s, n = float(self.ax[d][0]), float(self.spacing[d]), self.shape[d]
            i0 = max(0, int(math.ceil((lo[d] - a0) / s - 1e-6)))
            i1 = min(n, int(math.floor((hi[d] - a0) / s + 1e-6)) + 1)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def xyz(self, sl=(slice(None),) * 3):
        return (self.ax[0][sl[0]][:, None, None], self.ax[1][sl[1]][None, :, None],
                self.ax[2][sl[2]][None, None, :])

    @staticmethod
    def dims(sl) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in sl)  # type: ignore[return-value]

    def paint(self, sl, mask, cls=None, hu=None, only=None, keep=None):
        """Set class and/or HU where ``mask`` (broadcast to the box); ``only``/``keep``: class filters."""
        shape = self.dims(sl)
        m = np.broadcast_to(mask, shape)
        c = self.cls[sl]
        if only is not None:
            m = m & _lut(only)[c]
        if keep is not None:
            m = m & ~_lut(keep)[c]
        if hu is not None:
            h = self.hu[sl]
            if np.ndim(hu) == 0:
                h[m] = hu
            else:
                h[m] = np.broadcast_to(hu, shape)[m]
        if cls is not None:
            c[m] = cls
        return m

    def field(self, name: str, corr: float) -> np.ndarray:
        """A smooth unit-variance random field (correlation ~``corr`` mm) over the grid, cached."""
        if name not in self._fields:
            rng = np.random.default_rng(self._field_seeds[name])
            self._fields[name] = _smooth_field(rng, self.ax, corr)
        return self._fields[name]


def _smooth_field(rng: np.random.Generator, axes, corr: float) -> np.ndarray:
    """Gaussian-weighted sum of white noise on a patient-frame lattice, separable (3 matmuls)."""
    weights, picks, counts = [], [], []
    for d, ax in enumerate(axes):
        lo = min(_LATTICE[d][0], float(ax[0]) - 4 * corr)
        hi = max(_LATTICE[d][1], float(ax[-1]) + 4 * corr)
        nodes = np.arange(math.floor(lo / corr), math.ceil(hi / corr) + 1) * corr
        counts.append(nodes.size)
        sel = np.flatnonzero((nodes >= float(ax[0]) - 3 * corr) & (nodes <= float(ax[-1]) + 3 * corr))
        w = np.exp(-0.5 * ((ax[:, None].astype(np.float64) - nodes[None, sel]) / (0.5 * corr)) ** 2)
        w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
        weights.append(w.astype(np.float32))
        picks.append(sel)
    coarse = rng.standard_normal(tuple(counts), dtype=np.float32)[np.ix_(*picks)]
    n0 = weights[0].shape[0]
    out = (weights[0] @ coarse.reshape(coarse.shape[0], -1)).reshape(n0, coarse.shape[1], coarse.shape[2])
    out = np.matmul(weights[1], out)  # (n0, n1, c2)
    return np.ascontiguousarray(out @ weights[2].T)


def _rot(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    a, b, c = np.radians([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ellipsoid(cv: _Canvas, centre, semi, rot=None, deform: float = 0.0, field: str = "shape"):
    """(slices, q) with q < 1 inside a (deformed) ellipsoid; (None, None) when off the grid."""
    c = np.asarray(centre, float)
    s = np.asarray(semi, float)
    r = np.eye(3) if rot is None else np.asarray(rot, float)
    ext = np.sqrt(((r * s[None, :]) ** 2).sum(axis=1)) * (1.0 + 3.5 * deform) + 1.0
    sl = cv.box(c - ext, c + ext)
    if sl is None:
        return None, None
    x, y, z = cv.xyz(sl)
    d = (x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2]))
    q2 = None
    for k in range(3):
        pk = d[0] * np.float32(r[0, k] / s[k]) + d[1] * np.float32(r[1, k] / s[k]) + d[2] * np.float32(r[2, k] / s[k])
        q2 = pk * pk if q2 is None else q2 + pk * pk
    q = np.sqrt(q2)
    if deform:
        q /= np.maximum(1.0 + deform * cv.field(field, _CORR[field])[sl], 0.3)
    return sl, q


def _capsule(cv: _Canvas, p0, p1, r0: float, r1: float, deform: float = 0.0, field: str = "shape"):
    """(slices, q) for a tapered capsule from p0 (radius r0) to p1 (radius r1)."""
    p0 = np.asarray(p0, float)
    p1 = np.asarray(p1, float)
    rm = max(r0, r1) * (1.0 + 3.5 * deform) + 1.0
    sl = cv.box(np.minimum(p0, p1) - rm, np.maximum(p0, p1) + rm)
    if sl is None:
        return None, None
    x, y, z = cv.xyz(sl)
    d = p1 - p0
    l2 = max(float(d @ d), 1e-9)
    ex, ey, ez = x - np.float32(p0[0]), y - np.float32(p0[1]), z - np.float32(p0[2])
    t = np.clip((ex * np.float32(d[0]) + ey * np.float32(d[1]) + ez * np.float32(d[2])) / np.float32(l2), 0, 1)
    ex = ex - t * np.float32(d[0])
    ey = ey - t * np.float32(d[1])
    ez = ez - t * np.float32(d[2])
    q = np.sqrt(ex * ex + ey * ey + ez * ez) / (np.float32(r0) + t * np.float32(r1 - r0))
    if deform:
        q /= np.maximum(1.0 + deform * cv.field(field, _CORR[field])[sl], 0.3)
    return sl, q


def _tube(cv: _Canvas, z_lo: float, z_hi: float, cx, cy, rx, ry):
    """(slices, q) for a tube along z whose centre and radii are functions of z."""
    zs = cv.ax[2][(cv.ax[2] >= z_lo) & (cv.ax[2] <= z_hi)]
    if zs.size == 0:
        return None, None
    xs, ys, rxs, rys = (np.broadcast_to(np.asarray(f(zs), np.float32), zs.shape) for f in (cx, cy, rx, ry))
    lo = (float((xs - rxs).min()) - 1, float((ys - rys).min()) - 1, z_lo)
    hi = (float((xs + rxs).max()) + 1, float((ys + rys).max()) + 1, z_hi)
    sl = cv.box(lo, hi)
    if sl is None:
        return None, None
    x, y, z = cv.xyz(sl)
    z1 = z.ravel()
    f = [np.broadcast_to(np.asarray(g(z1), np.float32), z1.shape)[None, None, :] for g in (cx, cy, rx, ry)]
    q = np.sqrt(((x - f[0]) / f[2]) ** 2 + ((y - f[1]) / f[3]) ** 2)
    return sl, q


_CORR = {"shape": 30.0, "tex": 7.0, "bowel": 16.0, "gas": 9.0}


def _smoothstep(e0: float, e1: float, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------- anatomy


class _Patient:
    """All random anatomy parameters of one patient, drawn in a fixed order."""

    def __init__(self, rng: np.random.Generator):
        u, n = rng.uniform, rng.normal
        self.shift = np.array([u(-5, 5), u(-6, 6), u(-10, 10)])
        # Body outline: half-widths (mm) in the abdomen / chest, anterior and posterior half-depths.
        self.a_ab, self.a_ch = u(138, 154), u(146, 162)
        self.b_post = u(92, 106)
        self.b_ant_ab, self.b_ant_ch = u(98, 120), u(96, 112)
        self.wobble, self.ph1, self.ph2 = u(2, 5), u(0, 2 * np.pi), u(0, 2 * np.pi)
        self.flat = u(0.3, 0.6)
        self.fat, self.muscle = u(8, 24), u(10, 14)
        self.back = u(28, 40)  # extra posterior wall (paraspinal muscles) at the midline
        # Diaphragm domes and lung apices.
        self.dome_r = u(-6, 6)
        self.dome_l = self.dome_r - u(5, 18)
        self.dome_k = (u(12, 20), u(45, 60))
        self.apex = u(225, 245)
        self.lung_x, self.lung_w = u(0.44, 0.5), u(0.55, 0.62)  # lung ellipse centre / half-width (x cavity)
        # Spine: vertebral body centre ~80-88 mm in front of the back skin.
        self.yv0 = -self.b_post + u(80, 88)
        self.lordosis, self.kyphosis = u(4, 10), u(3, 8)
        self.spine_phase = u(0, 30)
        self.cancellous, self.cortical = u(180, 280), u(750, 950)
        # Ribs.
        self.rib_top = self.apex - u(10, 25)
        self.rib_step = u(24, 27.5)
        self.rib_drop0, self.rib_drop1 = u(50, 60), u(5.0, 7.0)
        self.rib_side = u(-3, 3)
        self.xiphoid = u(15, 40)
        # Intensities: (contrast, no contrast).
        self.liver_hu = (u(100, 130), u(52, 66))
        self.spleen_hu = (self.liver_hu[0] + u(-5, 10), self.liver_hu[1] - u(3, 12))
        self.kidney_hu = (u(160, 200), u(28, 38))
        self.medulla_drop = u(10, 35)
        self.pancreas_hu = (u(85, 110), u(35, 48))
        self.blood_hu = (u(150, 190), u(35, 48))
        self.noise = u(10, 18)
        # Mediastinum, heart, vessels, airway.
        self.carina = u(122, 140)
        self.heart_c = np.array([-25, 42, 38]) + n(0, 4, 3)
        self.heart_s = np.array([62, 46, 56]) * u(0.9, 1.08, 3)
        self.heart_rot = (u(-10, 10), u(10, 25), u(-35, -20))
        self.aorta_r = u(11.5, 14.5)
        # Abdominal organs.
        self.liver_c = np.array([62, 0, -62]) + n(0, 5, 3)
        self.liver_s = np.array([86, 94, 80]) * u(0.92, 1.08, 3)
        self.liver_rot = tuple(u(-8, 8, 3))
        self.lobe_c = np.array([-8, 42, -46]) + n(0, 5, 3)
        self.lobe_s = np.array([55, 36, 40]) * u(0.85, 1.15, 3)
        self.spleen_c = np.array([-88, -38, -52]) + n(0, 5, 3)
        self.spleen_s = np.array([27, 55, 46]) * u(0.85, 1.15, 3)
        self.spleen_rot = (u(-10, 10), u(-10, 10), u(-50, -30))
        self.stomach_c = np.array([-42, 42, -48]) + n(0, 5, 3)
        self.stomach_s = np.array([45, 38, 44]) * u(0.85, 1.15, 3)
        self.stomach_gas = u(0.2, 0.6)
        self.gallbladder = u() < 0.85
        self.gb_c = np.array([45, 46, -102]) + n(0, 4, 3)
        self.gb_s = np.array([14, 16, 32]) * u(0.8, 1.2, 3)
        self.kid_c = [np.array([72, -12, -125]) + n(0, 5, 3), np.array([-70, -10, -112]) + n(0, 5, 3)]
        self.kid_s = [np.array([26, 30, 52]) * u(0.9, 1.1, 3) for _ in range(2)]
        self.kid_rot = [(u(-20, -10), u(8, 16), u(20, 35)), (u(-20, -10), u(-16, -8), u(-35, -20))]
        pts = np.array([[38, 35, -112], [32, 40, -98], [8, 48, -92], [-25, 40, -86], [-60, 15, -78]], float)
        self.panc_pts = pts + n(0, 3.5, pts.shape)
        self.panc_r = np.array([13, 15, 10, 11, 9]) * u(0.85, 1.15, 5)
        # Lung trees: (seed for vessel tree, seed for airway tree).
        self.tree_seeds = [int(v) for v in rng.integers(0, 2**31, 4)]
        # Colon.
        self.colon_r = u(16, 22)

    # --- body -----------------------------------------------------------------
    def chestness(self, z):
        return _sig((np.asarray(z, np.float32) + 20.0) / 35.0)

    def body_axes(self, z):
        t = self.chestness(z)
        a = self.a_ab + (self.a_ch - self.a_ab) * t + self.wobble * np.sin(z / 50.0 + self.ph1)
        b_ant = self.b_ant_ab + (self.b_ant_ch - self.b_ant_ab) * t + 0.5 * self.wobble * np.sin(z / 40.0 + self.ph2)
        b_post = self.b_post + 0.0 * z
        return a.astype(np.float32), b_ant.astype(np.float32), b_post.astype(np.float32), t.astype(np.float32)

    def diaphragm(self, x, y):
        """Height (mm) of the diaphragm: two flat-topped domes falling to deep posterior recesses."""
        k1, k2 = self.dome_k
        ry = ((y + 5.0) / np.where(y < -5.0, 85.0, 110.0)) ** 2
        out = None
        for h, xd in ((self.dome_r, 62.0), (self.dome_l, -62.0)):
            r2 = ((x - xd) / 80.0) ** 2 + ry
            zd = h - k1 * r2 - k2 * r2 * r2
            out = zd if out is None else np.maximum(out, zd)
        # Central tendon under the heart, a little below the domes.
        r2 = ((x + 5.0) / 70.0) ** 2 + ((y - 30.0) / 80.0) ** 2
        centre = 0.5 * (self.dome_r + self.dome_l) - 12.0 - 40.0 * r2 * r2
        return np.maximum(out, centre).astype(np.float32)

    # --- spine ----------------------------------------------------------------
    def yv(self, z):
        z = np.asarray(z, np.float32)
        return (self.yv0 + self.lordosis * np.exp(-(((z + 150) / 80) ** 2))
                - self.kyphosis * np.exp(-(((z - 120) / 100) ** 2))).astype(np.float32)

    def rv(self, z):
        z = np.asarray(z, np.float32)
        return (16.0 + 7.0 * np.clip(-z / 130.0, 0, 1)).astype(np.float32)

    def levels(self):
        """(z_bottom, z_top) of each vertebral body from the sacrum to the neck."""
        out, z = [], -360.0 + self.spine_phase
        while z < 420:
            lumbar = z < -70
            h, disc = (27.0, 9.0) if lumbar else (20.0, 5.5)
            out.append((z, z + h))
            z += h + disc
        return np.array(out)


# ----------------------------------------------------------------------------- rendering


def _render(cv: _Canvas, pt: _Patient, region: _Region) -> None:
    ci = 0 if region.contrast else 1
    blood = pt.blood_hu[ci]
    X, Y, Z = cv.xyz()
    x2, y2 = X[:, :, 0], Y[:, :, 0]  # (n, 1), (1, m)
    z1 = Z[0, 0, :]

    # Body outline: radius R of the outline along each ray from the body axis.
    p = np.sqrt(x2 * x2 + y2 * y2)
    ps = np.where(p > 1e-3, p, 1.0)
    c, s = np.where(p > 1e-3, x2 / ps, 1.0), np.where(p > 1e-3, y2 / ps, 0.0)
    a, b_ant, b_post, tz = pt.body_axes(z1)
    b = np.where((s > 0)[:, :, None], b_ant[None, None, :], b_post[None, None, :])
    u_ = (c * c)[:, :, None] / (a * a)[None, None, :]
    v_ = (s * s)[:, :, None] / (b * b)
    e = u_ + v_
    g2 = e - np.where((s < 0)[:, :, None], pt.flat * u_ * v_ / e, 0.0)
    R = 1.0 / np.sqrt(g2)
    p3 = p[:, :, None]
    depth = R - p3  # mm from the skin, along the ray
    tf = pt.fat * (0.55 + 0.45 * np.maximum(s, 0) + 0.25 * np.abs(c))[:, :, None] * (1.0 - 0.45 * tz)[None, None, :]
    back = pt.back * np.exp(-((c / 0.45) ** 2)) * np.maximum(-s, 0.0) ** 2  # paraspinal muscles
    wall = tf + (pt.muscle * (1.0 + 0.4 * tz))[None, None, :] + back[:, :, None]
    qc = p3 / np.maximum(R - wall, 1.0)  # < 1 inside the body cavity (inside the ribs)
    body = depth > 0
    cv.cls[body] = FAT
    cv.hu[body] = -100.0
    m = depth >= tf
    cv.cls[m] = MUSCLE
    cv.hu[m] = 50.0
    cav = depth >= wall
    cv.cls[cav] = FAT
    cv.hu[cav] = -90.0
    full = tuple(slice(0, n) for n in cv.shape)
    zd = pt.diaphragm(x2, y2)[:, :, None]
    above = Z > zd
    yv = pt.yv(z1)[None, None, :]
    rv = pt.rv(z1)[None, None, :]

    # Bowel and colon (abdominal cavity below the liver and stomach, anterior to the spine).
    _bowel(cv, pt, cav & (Z < -95.0) & (Y > yv + rv - 5.0))

    # Lungs: one ellipse-like column per side inside the ribs, above the diaphragm, narrowing
    # to the apices; the mediastinum is what lies between them.
    top = pt.apex - 70.0
    shrink = np.sqrt(np.clip(1.0 - np.clip((z1 - top) / 70.0, 0, None) ** 2, 0, 1))[None, None, :]
    a_cav = (a - pt.muscle * (1.0 + 0.4 * tz) - 0.5 * pt.fat)[None, None, :]
    medial = 14.0 * _sig((z1 - pt.carina + 20.0) / 8.0)[None, None, :]  # wider superior mediastinum
    lung = above & (qc < 1.0) & (depth >= wall + 1.0)
    for side in (1.0, -1.0):
        xl = pt.lung_x * a_cav + medial
        ql = ((side * X - xl) / (pt.lung_w * a_cav)) ** 2 + ((Y + 5.0) / 118.0) ** 2
        side_lung = lung & (ql < shrink * shrink) & (side * X > 0)
        lung_hu = -870.0 + 70.0 * np.clip(-y2 / pt.b_post, 0, 1) ** 2  # dependent (posterior) density
        cv.paint(full, side_lung, LUNG, np.broadcast_to(lung_hu[:, :, None], cv.shape))
    # Diaphragm muscle below the lungs.
    cv.paint(full, (Z <= zd) & (Z > zd - 5.0) & (qc < 1.0), MUSCLE, 45.0, only=(FAT, SOFT, GAS, FLUID))

    _mediastinum(cv, pt, blood, above)
    _lung_trees(cv, pt, blood)
    _abdomen(cv, pt, region, blood, Z < zd - 5.0, qc < 1.0)
    _bones(cv, pt, depth, wall, tf, c, s)


def _bowel(cv: _Canvas, pt: _Patient, region: np.ndarray) -> None:
    sl = cv.box((-200, -200, -1e4), (200, 200, -95.0))
    if sl is None or not region[sl].any():
        return
    reg = region[sl]
    f = cv.field("bowel", _CORR["bowel"])[sl]
    g = cv.field("gas", _CORR["gas"])[sl]
    loops = reg & (f > 0.1)
    cv.paint(sl, loops, SOFT, 40.0)
    inner = reg & (f > 0.45)
    cv.paint(sl, inner, FLUID, 15.0)
    cv.paint(sl, inner & (g > 1.5), GAS, -950.0)
    # Colon: ascending, transverse, descending, with mottled stool and gas.
    r = pt.colon_r
    parts = [((85, 5, -260), (85, 10, -115), r), ((85, 10, -115), (35, 55, -108), r),
             ((35, 55, -108), (-40, 50, -98), r * 0.95), ((-40, 50, -98), (-85, 10, -82), r * 0.95),
             ((-85, 10, -82), (-88, -5, -260), r * 0.85)]
    boxes = []
    for p0, p1, rr in parts:
        csl, q = _capsule(cv, p0, p1, rr, rr, deform=0.08)
        if csl is not None:
            cv.paint(csl, q < 1.0, SOFT, 40.0, keep=(MUSCLE,))
            boxes.append((csl, q))
    for csl, q in boxes:
        gg = cv.field("gas", _CORR["gas"])[csl]
        stool = np.where(gg < -1.2, -950.0, np.clip(-150.0 + 220.0 * gg, -700.0, 40.0))
        cv.paint(csl, q < 0.8, GAS, stool, keep=(MUSCLE,))


def _mediastinum(cv: _Canvas, pt: _Patient, blood: float, above: np.ndarray) -> None:
    yv, rv = pt.yv, pt.rv
    # Heart: pericardial fat, myocardium, chambers; sits on the diaphragm.
    sl, q = _ellipsoid(cv, pt.heart_c, pt.heart_s, _rot(*pt.heart_rot), deform=0.04)
    if sl is not None:
        ok = above[sl]
        cv.paint(sl, ok & (q < 1.0), SOFT, -70.0)
        cv.paint(sl, ok & (q < 0.93), SOFT, 45.0 if blood < 100 else 110.0)
        cv.paint(sl, ok & (q < 0.72), VESSEL, blood)
    # Oesophagus, trachea and main bronchi.
    oes_x = lambda z: -5.0 - 30.0 * np.clip((40.0 - z) / 80.0, 0, 1)  # noqa: E731
    oes_y = lambda z: yv(z) + rv(z) + 9.0 + 25.0 * np.clip((40.0 - z) / 80.0, 0, 1)  # noqa: E731
    sl, q = _tube(cv, -40.0, 400.0, oes_x, oes_y, lambda z: 8.0, lambda z: 7.0)
    if sl is not None:
        cv.paint(sl, q < 1.0, SOFT, 40.0, keep=(BONE,))
        cv.paint(sl, q < 0.25, GAS, -800.0, keep=(BONE,))
    ty = lambda z: yv(z) + rv(z) + 27.0  # noqa: E731
    sl, q = _tube(cv, pt.carina, 400.0, lambda z: 0.0, ty, lambda z: 9.5, lambda z: 9.0)
    if sl is not None:
        cv.paint(sl, q < 1.0, SOFT, 30.0)
        cv.paint(sl, q < 0.82, GAS, -1000.0)
    car = np.array([0.0, float(ty(pt.carina)), pt.carina])
    for end, r in ((car + [38, -4, -22], 7.5), (car + [-42, -6, -28], 7.0)):
        sl, q = _capsule(cv, car, end, r, r * 0.85)
        if sl is not None:
            cv.paint(sl, q < 1.0, SOFT, 30.0)
        sl, q = _capsule(cv, car, end, r - 1.6, r * 0.85 - 1.6)
        if sl is not None:
            cv.paint(sl, q < 1.0, GAS, -1000.0)
    # Great vessels.
    ra = pt.aorta_r
    ay = float(yv(135.0) + rv(135.0) * 0.4 + ra * 0.8)
    y0 = float(yv(100.0) + rv(100.0))  # front of the thoracic spine
    hy = float(yv(pt.carina) + rv(pt.carina) + 20.0)
    arch = [((10, y0 + 50, 40), (10, y0 + 48, 125), ra * 1.15), ((10, y0 + 48, 125), (2, y0 + 45, 142), ra),
            ((2, y0 + 45, 142), (-22, y0 + 22, 146), ra), ((-22, y0 + 22, 146), (-24, ay, 132), ra)]
    pa = [((-14, y0 + 62, 52), (-14, y0 + 38, 100), 14.0), ((-14, y0 + 38, 100), (40, hy - 4, pt.carina - 24), 10.0),
          ((-14, y0 + 38, 100), (-42, hy - 6, pt.carina - 22), 10.0)]
    svc = [((28, y0 + 45, 60), (28, y0 + 40, 260), 10.0)]
    for p0, p1, r in arch + pa + svc:
        sl, q = _capsule(cv, p0, p1, r, r)
        if sl is not None:
            cv.paint(sl, q < 1.0, VESSEL, blood, keep=(BONE,))


def _tree(rng: np.random.Generator, start, dirs, r0: float, length: float, gens: int, lateral) -> list:
    segs, stack = [], [(np.asarray(start, float), np.asarray(d, float) / np.linalg.norm(d), r0, length, 0)
                       for d in dirs]
    while stack:
        p, d, r, ln, g = stack.pop()
        q = p + d * ln
        segs.append((p, q, r, r * 0.85))
        if g >= gens:
            continue
        for _ in range(2):
            v = rng.normal(size=3)
            v -= (v @ d) * d
            v /= np.linalg.norm(v) + 1e-9
            ang = np.radians(rng.uniform(20, 40))
            nd = math.cos(ang) * d + math.sin(ang) * v + 0.25 * np.asarray(lateral)
            nd /= np.linalg.norm(nd)
            stack.append((q, nd, r * 0.85 * 0.85, ln * rng.uniform(0.68, 0.85), g + 1))
    return segs


def _lung_trees(cv: _Canvas, pt: _Patient, blood: float) -> None:
    hy = float(pt.yv(pt.carina) + pt.rv(pt.carina) + 20.0)
    for side, (vseed, aseed) in zip((1.0, -1.0), (pt.tree_seeds[:2], pt.tree_seeds[2:])):
        hil = np.array([40.0 * side, hy - 6.0, pt.carina - 26.0])
        dirs = [(0.2 * side, 0.1, 1.0), (side, 0.0, 0.8), (side, 0.3, 0.0), (side, -0.6, -0.3),
                (0.3 * side, -0.7, -1.0), (0.5 * side, 0.6, -0.8)]
        lat = (side, 0.0, 0.0)
        for p0, p1, r0, r1 in _tree(np.random.default_rng(vseed), hil, dirs, 6.0, 42.0, 5, lat):
            sl, q = _capsule(cv, p0, p1, r0, r1)
            if sl is not None:
                cv.paint(sl, q < 1.0, None, blood if blood < 100 else 60.0, only=(LUNG,))
        for p0, p1, r0, r1 in _tree(np.random.default_rng(aseed), hil, dirs[:4], 5.0, 36.0, 2, lat):
            sl, q = _capsule(cv, p0, p1, r0, r1)
            if sl is not None:
                cv.paint(sl, q < 1.0, None, 0.0, only=(LUNG,))
            sl, q = _capsule(cv, p0, p1, r0 - 1.5, r1 - 1.5)
            if sl is not None:
                cv.paint(sl, q < 1.0, None, -1000.0, only=(LUNG,))


def _abdomen(cv: _Canvas, pt: _Patient, region: _Region, blood: float, below, cavity) -> None:
    ci = 0 if region.contrast else 1
    yv, rv = pt.yv, pt.rv
    soft_ok = (FAT, SOFT, GAS, FLUID, MUSCLE)

    def allowed(sl):
        return below[sl] & cavity[sl]

    # Stomach with an air-fluid level (patient supine: gas anterior).
    sl, q = _ellipsoid(cv, pt.stomach_c, pt.stomach_s, _rot(0, 10, 20), deform=0.06)
    if sl is not None:
        ok = allowed(sl)
        cv.paint(sl, ok & (q < 1.0), SOFT, 45.0)
        _, y, _ = cv.xyz(sl)
        inner = ok & (q < 0.88)
        cv.paint(sl, inner, FLUID, 22.0)
        cv.paint(sl, inner & (y > pt.stomach_c[1] + pt.stomach_gas * pt.stomach_s[1]), GAS, -980.0)
    # Duodenum: C-loop around the pancreatic head.
    yb = float(yv(-110) + rv(-110))
    duo = [(45, 20, -88), (62, yb + 33, -105), (52, yb + 28, -132), (12, yb + 32, -138), (-12, yb + 38, -124)]
    for i in range(2):
        for p0, p1 in zip(duo[:-1], duo[1:]):
            sl, q = _capsule(cv, p0, p1, 10.0, 10.0, deform=0.05)
            if sl is not None:
                cv.paint(sl, allowed(sl) & (q < (1.0 if i == 0 else 0.7)), SOFT if i == 0 else FLUID,
                         40.0 if i == 0 else 18.0)
    # Spleen.
    sl, q = _ellipsoid(cv, pt.spleen_c, pt.spleen_s, _rot(*pt.spleen_rot), deform=0.07)
    if sl is not None:
        cv.paint(sl, allowed(sl) & (q < 1.0), SPLEEN, pt.spleen_hu[ci])
    # Liver: right lobe and left lobe; then gallbladder and vessels.
    sl, q = _ellipsoid(cv, pt.liver_c, pt.liver_s, _rot(*pt.liver_rot), deform=0.06)
    sl2, q2 = _ellipsoid(cv, pt.lobe_c, pt.lobe_s, _rot(0, 0, 15), deform=0.06)
    for b, qq in ((sl, q), (sl2, q2)):
        if b is not None:
            cv.paint(b, allowed(b) & (qq < 1.0), LIVER, pt.liver_hu[ci], only=soft_ok + (SPLEEN,))
    if pt.gallbladder:
        sl, q = _ellipsoid(cv, pt.gb_c, pt.gb_s, _rot(30, 0, 10), deform=0.04)
        if sl is not None:
            cv.paint(sl, allowed(sl) & (q < 1.0), FLUID, 8.0, only=(LIVER, FAT, SOFT, FLUID))
    portal = blood - 10.0 if region.contrast else blood
    conf = np.array([6.0, float(yv(-100) + rv(-100)) + 30.0, -100.0])
    hilum = np.array([38.0, conf[1] - 6.0, -80.0])
    vessels = [(conf, hilum, 7.5, 6.5), (hilum, hilum + [40, -8, 22], 6.0, 3.0), (hilum, hilum + [25, 20, -25], 5.0, 2.5),
               (hilum, hilum + [-40, 28, 25], 5.5, 2.5), (hilum + [40, -8, 22], hilum + [75, 5, 10], 3.0, 1.5)]
    ivc_top = np.array([20.0, float(yv(-12.0) + rv(-12.0)) + 2.0, -12.0])
    for dv in ([50, 25, -15], [12, 50, -20], [-25, 45, -22]):
        vessels.append((ivc_top, ivc_top + dv, 5.5, 2.0))
    for p0, p1, r0, r1 in vessels:
        b, qq = _capsule(cv, p0, p1, r0, r1)
        if b is not None:
            cv.paint(b, (qq < 1.0) & _lut((LIVER,))[cv.cls[b]], LIVER_VES, portal)
            cv.paint(b, allowed(b) & (qq < 1.0), VESSEL, portal, only=(FAT, SOFT, FLUID))
    # Psoas muscles.
    for side in (1.0, -1.0):
        sl, q = _tube(cv, -1e4, -100.0, lambda z, s=side: s * (rv(z) + 16.0), lambda z: yv(z) + 2.0,
                      lambda z: 2.0 + 20.0 * np.clip((-100.0 - z) / 120.0, 0, 1) ** 0.7,
                      lambda z: 2.0 + 18.0 * np.clip((-100.0 - z) / 120.0, 0, 1) ** 0.7)
        if sl is not None:
            cv.paint(sl, q < 1.0, MUSCLE, 50.0, only=(FAT, SOFT, GAS, FLUID))
    # Kidneys: cortex, medulla, sinus fat, renal vessels.
    aorta_x = lambda z: -22.0 + 10.0 * np.clip((60.0 - z) / 160.0, 0, 1)  # noqa: E731
    aorta_y = lambda z: yv(z) + rv(z) * (0.4 + 0.6 * np.clip((60.0 - z) / 160.0, 0, 1)) + pt.aorta_r * 0.85  # noqa: E731
    ivc_y = lambda z: yv(z) + rv(z) + 9.0  # noqa: E731
    for k in range(2):
        c, s_, rot = pt.kid_c[k].copy(), pt.kid_s[k], _rot(*pt.kid_rot[k])
        c[1] += float(yv(c[2]))
        sl, q = _ellipsoid(cv, c, s_, rot, deform=0.04)
        if sl is None:
            continue
        ok = allowed(sl)
        cv.paint(sl, ok & (q < 1.0), KIDNEY, pt.kidney_hu[ci], keep=(BONE,))
        cv.paint(sl, ok & (q < 0.72), KIDNEY, pt.kidney_hu[ci] - pt.medulla_drop, keep=(BONE,))
        med = -np.sign(c[0])
        hc = c + rot @ np.array([med * 0.8 * s_[0], 0.25 * s_[1], 0.0])
        hs, hq = _ellipsoid(cv, hc, s_ * np.array([0.5, 0.35, 0.42]), rot)
        if hs is not None:
            cv.paint(hs, hq < 1.0, FAT, -70.0, only=(KIDNEY,))
            cv.paint(hs, hq < 0.45, FLUID, 10.0, only=(FAT,))
        for tx, ty, r in ((lambda z: 22.0, ivc_y, 5.5), (aorta_x, aorta_y, 3.5)):
            end = np.array([float(tx(hc[2])), float(ty(hc[2])), hc[2] + 8.0])
            b, qq = _capsule(cv, hc, end, r, r)
            if b is not None:
                cv.paint(b, qq < 1.0, VESSEL, blood if r < 5 else portal, only=(FAT, SOFT, FLUID))
    # Pancreas (lobulated tube from head to tail); splenic vein along its back.
    for (p0, p1), r0, r1 in zip(zip(pt.panc_pts[:-1], pt.panc_pts[1:]), pt.panc_r[:-1], pt.panc_r[1:]):
        p0 = p0 + [0, float(yv(p0[2]) + rv(p0[2])), 0]
        p1 = p1 + [0, float(yv(p1[2]) + rv(p1[2])), 0]
        sl, q = _capsule(cv, p0, p1, r0, r1, deform=0.1, field="tex")
        if sl is not None:
            cv.paint(sl, allowed(sl) & (q < 1.0), PANCREAS, pt.pancreas_hu[ci], keep=(BONE, KIDNEY, VESSEL))
    tail = pt.panc_pts[-1] + [0, float(yv(pt.panc_pts[-1][2]) + rv(pt.panc_pts[-1][2])) - 10.0, 0]
    for p0, p1, r in ((conf, conf + [-30, -12, 8], 5.0), (conf + [-30, -12, 8], tail, 4.5)):
        sl, q = _capsule(cv, p0, p1, r, r)
        if sl is not None:
            cv.paint(sl, q < 1.0, VESSEL, portal, keep=(BONE,))
    # Aorta (descending, abdominal), IVC, SMV and SMA.
    sl, q = _tube(cv, -1e4, 136.0, aorta_x, aorta_y,
                  lambda z: pt.aorta_r - 2.5 * np.clip((40.0 - z) / 200.0, 0, 1),
                  lambda z: pt.aorta_r - 2.5 * np.clip((40.0 - z) / 200.0, 0, 1))
    if sl is not None:
        cv.paint(sl, q < 1.0, VESSEL, blood, keep=(BONE,))
    sl, q = _tube(cv, -1e4, -20.0, lambda z: 22.0, ivc_y, lambda z: 13.0, lambda z: 10.0)
    if sl is not None:
        cv.paint(sl, q < 1.0, VESSEL, portal, keep=(BONE,))
    sl, q = _capsule(cv, (22.0, float(ivc_y(-20.0)), -20.0), (20.0, float(ivc_y(15.0)) + 12.0, 15.0), 12.0, 13.0)
    if sl is not None:
        cv.paint(sl, q < 1.0, VESSEL, portal, keep=(BONE,))
    for x0, dy, r, hu in ((8.0, 30.0, 5.5, portal), (-3.0, 20.0, 4.0, blood)):
        sl, q = _tube(cv, -1e4, -100.0, lambda z, x0=x0: x0, lambda z, dy=dy: yv(z) + rv(z) + dy,
                      lambda z, r=r: r, lambda z, r=r: r)
        if sl is not None:
            cv.paint(sl, q < 1.0, VESSEL, hu, only=(FAT, SOFT, FLUID, GAS, PANCREAS))


def _bones(cv: _Canvas, pt: _Patient, depth, wall, tf, c, s) -> None:
    canc, cort = pt.cancellous, pt.cortical
    # Vertebrae: bodies with cortical shell and end plates, discs, posterior arch and processes.
    lv = pt.levels()
    zc = cv.ax[2]
    k = np.searchsorted(lv[:, 0], zc, side="right") - 1
    ok = k >= 0
    kk = np.clip(k, 0, len(lv) - 1)
    in_body = ok & (zc <= lv[kk, 1])
    to_plate = np.where(in_body, np.minimum(zc - lv[kk, 0], lv[kk, 1] - zc), 0.0)
    yv, rv = pt.yv(zc), pt.rv(zc)
    sl = cv.box((-75, float(yv.min() - rv.max() - 90), -1e4), (75, float(yv.max() + rv.max() + 5), 1e4))
    if sl is not None:
        x, y, _ = cv.xyz(sl)
        zs = sl[2]
        yv3, rv3 = yv[zs][None, None, :], rv[zs][None, None, :]
        body3, plate3 = in_body[zs][None, None, :], to_plate[zs][None, None, :]
        qb = np.sqrt((x / (1.1 * rv3)) ** 2 + ((y - yv3) / (0.85 * rv3)) ** 2)
        inside = qb < 1.0
        cv.paint(sl, inside & ~body3, SOFT, 90.0)  # discs
        vb = inside & body3
        cv.paint(sl, vb, BONE, canc)
        shell = vb & ((qb > 1.0 - 2.5 / rv3) | (plate3 < 1.8))
        cv.paint(sl, shell, BONE, cort)
        cy = yv3 - 0.85 * rv3 - 9.0
        rc = 8.0 + 2.0 * (rv3 - 16.0) / 7.0
        dc = np.sqrt(x * x + (y - cy) ** 2)
        cv.paint(sl, dc < rc, SOFT, 15.0)  # spinal canal
        ring = (dc >= rc) & (dc < rc + 5.5) & (y < cy + rc * 0.8) & body3
        ax_ = np.abs(x)
        proc = body3 & (
            ((ax_ < 3.5 + 0.06 * (cy - rc - y)) & (y < cy - rc) & (y > cy - rc - 26.0))  # spinous process
            | ((np.abs(y - cy + 0.35 * (ax_ - rc)) < 4.5) & (ax_ > rc)  # transverse processes
               & (ax_ < rc + 16.0 + 8.0 * (rv3 - 16.0) / 7.0))
        )
        cv.paint(sl, ring | proc, BONE, 0.55 * cort + 0.45 * canc)
    # Ribs and costal cartilage in a band just inside the muscle wall.
    band = (depth >= wall - 7.0) & (depth < wall)
    idx = np.nonzero(band)
    if idx[0].size:
        phi = np.arccos(np.clip(-s, -1, 1))  # 0 at the posterior midline, pi anterior (2D)
        ph = np.broadcast_to(phi, c.shape[:1] + s.shape[1:])[idx[0], idx[1]]
        side = np.sign(cv.ax[0][idx[0]])
        z = cv.ax[2][idx[2]] - pt.rib_side * side
        h = 0.5 * ph / np.pi + 0.25 * (1.0 - np.cos(ph))  # 0 at the spine, 1 at the sternum
        fi = (pt.rib_top - pt.rib_drop0 * h - z) / (pt.rib_step + pt.rib_drop1 * h)
        i = np.rint(fi)
        zc_i = pt.rib_top - i * pt.rib_step - (pt.rib_drop0 + pt.rib_drop1 * i) * h
        dz = (z - zc_i) / 5.0
        dr = (depth[idx] - (wall[idx] - 3.5)) / 3.5
        qr = np.sqrt(dz * dz + dr * dr)
        ii = np.clip(i, 0, 11).astype(int)
        bone_end = np.array([0.78] * 7 + [0.72, 0.70, 0.66, 0.55, 0.42])[ii] * np.pi
        cart_end = np.array([0.97] * 7 + [0.9, 0.86, 0.8, 0.55, 0.42])[ii] * np.pi
        valid = (i >= 0) & (i <= 11) & (qr < 1.0) & (ph > 0.12 * np.pi)
        is_bone = valid & (ph <= bone_end)
        is_cart = valid & (ph > bone_end) & (ph <= cart_end)
        hu = np.where(qr > 0.6, cort, canc + 60.0).astype(np.float32)
        sel = tuple(a[is_bone] for a in idx)
        cv.cls[sel] = BONE
        cv.hu[sel] = hu[is_bone]
        sel = tuple(a[is_cart] for a in idx)
        cv.cls[sel] = SOFT
        cv.hu[sel] = 120.0
    # Sternum: anterior midline plate from the xiphoid to the manubrium.
    sl = cv.box((-30, 0, pt.xiphoid), (30, 200, pt.apex - 15.0))
    if sl is not None:
        x, y, z = cv.xyz(sl)
        hw = 12.0 + 10.0 * np.clip((z - (pt.apex - 60.0)) / 40.0, 0, 1)
        d, w = depth[sl], wall[sl]
        st = (np.abs(x) < hw) & (d >= w - 13.0) & (d < w - 2.0) & (y > 0)
        cv.paint(sl, st, BONE, canc + 50.0)
        edge = st & ((d < w - 11.0) | (d >= w - 4.0) | (np.abs(x) > hw - 2.0))
        cv.paint(sl, edge, BONE, cort)
    # Scapulae: thin plates over the upper posterior ribs, outside them.
    sl = cv.box((-200, -200, pt.apex - 125.0), (200, 0, pt.apex - 10.0))
    if sl is not None:
        _, _, z = cv.xyz(sl)
        phi = np.arccos(np.clip(-s[:, sl[1]], -1, 1))[sl[0]][:, :, None]
        lo = 0.17 * np.pi
        hi = lo + 0.28 * np.pi * np.sqrt(np.clip((z - (pt.apex - 125.0)) / 115.0, 0, 1))
        d, f = depth[sl], tf[sl]
        sc = (phi > lo) & (phi < hi) & (d >= f + 3.0) & (d < f + 7.5)
        cv.paint(sl, sc, BONE, 0.5 * (canc + cort))


def _place_tumours(cv: _Canvas, pt: _Patient, region: str, rng: np.random.Generator,
                   radius_mm: tuple[float, float] | None = None) -> None:
    if region == "abdomen":
        organs = ["liver"]
        if rng.random() < 0.5:
            organs.append(str(rng.choice(["liver", "pancreas", "kidney"])))
    else:
        organs = ["lung"] * (1 + int(rng.random() < 0.5))
    tex = cv.field("tex", _CORR["tex"])
    for organ in organs:
        hosts, tclass, (rmin, rmax) = _TUMOUR[organ]
        if radius_mm is not None:
            rmin, rmax = radius_mm
        r = rng.uniform(rmin, rmax)
        semi = r * rng.uniform(0.8, 1.2, 3)
        rot = _rot(*rng.uniform(0, 360, 3))
        contrast = rng.uniform(40, 100) if organ != "lung" else rng.uniform(-100, 40)
        host = _lut(hosts)
        cand = np.flatnonzero(host[cv.cls].ravel())
        if cand.size == 0:
            continue
        best = None
        for attempt in range(60):
            scale = 0.8 ** (attempt // 15)
            ijk = np.array(np.unravel_index(cand[rng.integers(cand.size)], cv.shape), float)
            centre = np.array([cv.ax[d][int(ijk[d])] for d in range(3)], float)
            centre += rng.uniform(-0.5, 0.5, 3) * cv.spacing
            sl, q = _ellipsoid(cv, centre, semi * scale, rot)
            if sl is None:
                continue
            inside = q < 1.0
            n_in = int(inside.sum())
            if n_in == 0:
                continue
            frac = float((inside & host[cv.cls[sl]]).sum()) / n_in
            if best is None or frac > best[0]:
                best = (frac, sl, q)
            if frac >= 0.92:
                break
        if best is None:
            continue
        _, sl, q = best
        q = q / np.maximum(1.0 + 0.08 * tex[sl], 0.3)  # irregular margin
        c = cv.cls[sl]
        region_ok = host[c] | (c == tclass)
        w = _smoothstep(1.12, 0.85, q) * region_ok
        h = cv.hu[sl]
        if organ == "lung":
            target = contrast + 25.0 * tex[sl]
            h += (target - h) * w
        else:
            core = np.where(q < 0.45, 1.25, 1.0) if r > 18 else 1.0
            h -= contrast * core * (1.0 + 0.2 * tex[sl]) * w
        c[(q <= 1.0) & host[c]] = tclass


# ----------------------------------------------------------------------------- public API


def _streams(seed, n: int) -> list[np.random.Generator]:
    """``n`` independent generators from an integer seed or a Generator (numpy >= 1.24)."""
    if isinstance(seed, np.random.Generator):
        base = np.random.SeedSequence([int(v) for v in seed.integers(0, 2**63 - 1, size=4)])
    elif isinstance(seed, np.random.SeedSequence):
        base = seed
    elif isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer or a numpy Generator, got {seed!r}")
    else:
        base = np.random.SeedSequence(int(seed))
    return [np.random.default_rng(s) for s in base.spawn(n)]


def _triple(value, what: str, kind) -> tuple:
    try:
        vals = tuple(value)
    except TypeError:
        raise ConfigError(f"{what} must be three numbers, got {value!r}") from None
    if len(vals) != 3:
        raise ConfigError(f"{what} must be three numbers, got {value!r}")
    out = []
    for v in vals:
        if isinstance(v, (bool, np.bool_)):
            raise ConfigError(f"{what} must be three numbers, got {value!r}")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be three numbers, got {value!r}") from None
        if kind is int:
            if f != int(f) or not 1 <= f <= 4096:
                raise ConfigError(f"{what} must be three integers in 1..4096, got {value!r}")
            out.append(int(f))
        else:
            if not math.isfinite(f) or not 0.05 <= f <= 50.0:
                raise ConfigError(f"{what} must be three voxel sizes in 0.05..50 mm, got {value!r}")
            out.append(f)
    return tuple(out)


TUMOUR_RADIUS_MM = (1.0, 50.0)  # a phantom tumour's radius: at least a voxel's worth, at most a large liver tumour
MAX_CASES = 10000               # a phantom cohort's cases (about 1 MB each)


def check_tumour_radius(value) -> tuple[float, float]:
    """``(min, max)`` tumour radius in mm within :data:`TUMOUR_RADIUS_MM`, else a one-line :class:`ConfigError`
    naming ``--tumour-radius-mm`` (a radius of 1e6 mm would label the whole organ as tumour).

    >>> check_tumour_radius((3, 9))
    (3.0, 9.0)
    >>> check_tumour_radius((1, 1e6))
    Traceback (most recent call last):
    ...
    freetumor.errors.ConfigError: --tumour-radius-mm must be MIN MAX with 1 <= MIN <= MAX <= 50 mm, got (1, 1000000.0)
    """
    lo_ok, hi_ok = TUMOUR_RADIUS_MM
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not lo_ok <= lo <= hi <= hi_ok:  # NaN fails every comparison
        raise ConfigError(f"--tumour-radius-mm must be MIN MAX with {lo_ok:g} <= MIN <= MAX <= {hi_ok:g} mm, "
                          f"got {tuple(value) if isinstance(value, (list, tuple)) else value!r}")
    return lo, hi


def make_case(
    region: str = "abdomen",
    *,
    seed: int | np.random.Generator = 0,
    tumour: bool = False,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    tumour_radius_mm: tuple[float, float] | None = None,
) -> tuple[Volume, Volume]:
    """Return (image, label) Volumes: image int16 HU, label uint8.

    Args:
        region: ``"abdomen"`` (label map ``abdomen7``) or ``"chest"`` (``chest3``).
        seed: an integer or a ``numpy.random.Generator``; the same seed gives the
            same arrays. The anatomy and the noise do not depend on ``tumour``,
            so ``tumour=True`` and ``False`` with one seed differ only at the tumours.
        tumour: add 1-2 tumours (abdomen: the first in the liver, a second with
            probability 1/2 in the liver, pancreas or kidney, 40-100 HU hypodense;
            chest: lung nodules of -100..40 HU). Tumour voxels replace organ voxels
            in the label. An organ outside a small field of view gets none.
        shape: grid size (default abdomen (176, 136, 72), chest (176, 144, 56)).
        spacing: voxel size in mm (default abdomen (2, 2, 2.5), chest (2, 2, 5)).
            The anatomy is fixed in millimetres, so ``shape`` and ``spacing`` set
            the field of view, centred on the region, and the resolution.
        tumour_radius_mm: (min, max) tumour radius in mm for every organ instead of the
            defaults (liver 8-30, pancreas 6-13, kidney 7-18, lung 5-16 mm), e.g. (3, 9) for a
            cohort of early (< 20 mm) tumours.

    The affine is diagonal (RAS+: ``+x`` is the patient's right) with the volume
    centre at (0, 0, 0) mm.

    Example:
        >>> image, label = make_case("chest", seed=3, shape=(48, 40, 24))
        >>> image.shape == label.shape == (48, 40, 24), image.spacing
        (True, (2.0, 2.0, 5.0))
        >>> a, _ = make_case("chest", seed=3, shape=(48, 40, 24))
        >>> bool((a.array == image.array).all())
        True
    """
    if region not in REGIONS:
        raise ConfigError(f"unknown phantom region {region!r}; choose abdomen or chest")
    spec = REGIONS[region]
    shape = spec.shape if shape is None else _triple(shape, "shape", int)
    spacing = spec.spacing if spacing is None else _triple(spacing, "spacing", float)
    anat_rng, field_rng, tumour_rng, noise_rng = _streams(seed, 4)
    pt = _Patient(anat_rng)
    field_seeds = dict(zip(_CORR, (int(v) for v in field_rng.integers(0, 2**63 - 1, len(_CORR)))))
    offset = pt.shift + np.array([0.0, 0.0, spec.z_centre])
    cv = _Canvas(shape, spacing, offset, field_seeds)
    _render(cv, pt, spec)
    if tumour_radius_mm is not None:
        tumour_radius_mm = check_tumour_radius(tumour_radius_mm)
    if tumour:
        _place_tumours(cv, pt, region, tumour_rng, tumour_radius_mm)


    amp = np.zeros(256, np.float32)
    for k, v in _TEXTURE.items():
        amp[k] = v
    hu = cv.hu
    hu += cv.field("tex", _CORR["tex"]) * amp[cv.cls]
    hu = gaussian_filter(hu, sigma=0.7, mode="nearest", truncate=3.0)  # partial-volume edges
    hu += noise_rng.standard_normal(cv.shape, dtype=np.float32) * np.float32(pt.noise)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    image = np.rint(hu).astype(np.int16)
    lut = np.zeros(256, np.uint8)
    for k, v in _LABEL_OF[spec.label_map].items():
        lut[k] = v
    label = lut[cv.cls]
    aff = cv.affine()
    meta = {"phantom_region": region, "label_map": spec.label_map}
    return Volume(image, aff, meta=dict(meta)), Volume(label, aff.copy(), meta=dict(meta))


def _tumour_cases(cases: int, fraction: float) -> set[int]:
    k = round(cases * fraction)
    return {int((j + 0.5) * cases / k) for j in range(k)} if k else set()


def write_cohort(
    out_dir: str | os.PathLike,
    cases: int,
    *,
    seed: int = 0,
    region: str = "abdomen",
    tumour_fraction: float = 0.5,
    tumour_radius_mm: tuple[float, float] | None = None,
) -> Path:
    """Write cases as NIfTI + an MSD-style datalist.json; return the datalist path.

    Files: ``imagesTr/phantom_000.nii.gz``, ``labelsTr/phantom_000.nii.gz``, ...
    and ``datalist.json`` (paths relative to it, a ``tumour`` flag per case,
    ``label_map`` and ``labels``), plus ``labelled.json`` (the cases with tumours)
    and ``unlabelled.json`` (the healthy ones), the two pools of ``train-synth``. Case ``i`` uses seed ``SeedSequence([seed, i])``;
    exactly ``round(cases * tumour_fraction)`` cases, spread evenly, have tumours.
    Everything is written to a staging folder first, so a failure writes nothing.

    Raises:
        ConfigError: ``cases`` outside 1..:data:`MAX_CASES`, unknown region, fraction outside [0, 1], bad seed,
            a tumour radius outside :data:`TUMOUR_RADIUS_MM`.

    Example:
        >>> import json, tempfile, os
        >>> dl = write_cohort(os.path.join(tempfile.mkdtemp(), "ph"), 2, region="chest")
        >>> data = json.loads(dl.read_text())
        >>> data["label_map"], [e["tumour"] for e in data["training"]]
        ('chest3', [False, True])
        >>> (dl.parent / data["training"][0]["image"]).is_file()
        True
    """
    if isinstance(cases, (bool, np.bool_)) or not isinstance(cases, (int, np.integer)) or not 1 <= cases <= MAX_CASES:
        raise ConfigError(f"--cases must be an integer in 1..{MAX_CASES}, got {cases!r}")
    if tumour_radius_mm is not None:
        check_tumour_radius(tumour_radius_mm)  # before the output folder is made
    if region not in REGIONS:
        raise ConfigError(f"unknown phantom region {region!r}; choose abdomen or chest")
    try:
        fraction = float(tumour_fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"tumour_fraction must be a number in [0, 1], got {tumour_fraction!r}") from None
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"tumour_fraction must be in [0, 1], got {tumour_fraction!r}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    spec = REGIONS[region]
    with_tumour = _tumour_cases(int(cases), fraction)
    entries = []
    out = Path(out_dir)
    with staged_output(out) as stage:
        for i in range(int(cases)):
            name = f"phantom_{i:03d}.nii.gz"
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), i]))
            image, label = make_case(region, seed=rng, tumour=i in with_tumour, tumour_radius_mm=tumour_radius_mm)
            save_volume(image, stage / "imagesTr" / name)
            save_volume(label, stage / "labelsTr" / name)
            entries.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}", "tumour": i in with_tumour})
        datalist = {
            "name": "freetumor-phantom",
            "description": f"procedural {region} CT phantom cohort (freetumor), seed {int(seed)}; "
                           "synthetic data, not from any patient",
            "region": region,
            "label_map": spec.label_map,
            "labels": {str(k): v for k, v in LABEL_NAMES[spec.label_map].items()},
            "numTraining": len(entries),
            "seed": int(seed),
            "training": entries,
        }
        write_bytes_atomic(stage / "datalist.json", (json.dumps(datalist, indent=2) + "\n").encode())
        # The two pools of Stage 1: cases with tumour labels, and healthy cases whose label holds
        # organ masks only (what unlabelled CT with predicted organs looks like).
        for name, flag in (("labelled.json", True), ("unlabelled.json", False)):
            pool = dict(datalist, training=[e for e in entries if e["tumour"] is flag])
            pool["numTraining"] = len(pool["training"])
            write_bytes_atomic(stage / name, (json.dumps(pool, indent=2) + "\n").encode())
    return out / "datalist.json"
