"""Before / after pictures of synthetic lesions, for checking them by eye.

:func:`render_lesions_png` draws one row per lesion with six panels: axial,
coronal and sagittal slices through the lesion's centre, each before and
after the tumour was put in, with the lesion's outline on the "after" panels.

Display is anatomically correct whatever the file's voxel order: the arrays
are reoriented (as views, nothing is resampled) into RAS with the affine and
shown in radiological convention:

* axial: anterior at the top, the patient's right on the image's left;
* coronal: superior at the top, the patient's right on the image's left;
* sagittal: superior at the top, anterior on the image's left.

Pixel aspect ratios follow the voxel spacing, so thick slices look right.
matplotlib is imported only when a picture is drawn.

Example:
    >>> import numpy as np
    >>> from freetumor.io import Volume
    >>> vol = Volume(np.zeros((4, 5, 6), np.int16), np.diag([1.0, 2.0, 3.0, 1.0]))
    >>> axial, coronal, sagittal = _display_planes(vol, (1, 2, 3))
    >>> axial.shape, coronal.shape, sagittal.shape   # (rows, columns) on screen
    ((5, 4), (6, 4), (6, 5))
"""

from __future__ import annotations

import io as _bytesio
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from nibabel.orientations import apply_orientation
from nibabel.orientations import io_orientation

from .io import Volume, write_bytes_atomic

__all__ = ["render_lesions_png"]

# Colours and layout (inches at the figure's dpi).
_CONTOUR_AFTER = "#ffd60a"
_FIG_FACE = "#111111"
_TEXT = "#e8e8e8"
_MIN_FOV_MM = 80.0
_FOV_FACTOR = 3.0


@dataclass(frozen=True)
class _Geometry:
    """How a volume's voxel axes map onto RAS for display."""

    ornt: np.ndarray  # nibabel orientation: per file axis (RAS axis, +1 / -1)
    shape: tuple[int, int, int]  # file voxel order
    ras_shape: tuple[int, int, int]
    ras_spacing: tuple[float, float, float]

    @classmethod
    def of(cls, vol: Volume) -> "_Geometry":
        ornt = io_orientation(vol.affine)
        ras_shape = [0, 0, 0]
        ras_spacing = [0.0, 0.0, 0.0]
        for i, (ax, _flip) in enumerate(ornt):
            ras_shape[int(ax)] = vol.shape[i]
            ras_spacing[int(ax)] = float(vol.spacing[i])
        return cls(ornt, vol.shape, tuple(ras_shape), tuple(ras_spacing))  # type: ignore[arg-type]

    def ras_view(self, array: np.ndarray) -> np.ndarray:
        """The array reoriented to RAS (a view: only flips and a transpose)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {tuple(array.shape)} does not match volume shape {self.shape}")
        return apply_orientation(array, self.ornt)

    def ras_index(self, ijk) -> tuple[int, int, int]:
        """A voxel index in file order to the same voxel's index in the RAS view."""
        try:
            c = [int(v) for v in ijk]
        except (TypeError, ValueError):
            raise ValueError(f"centre {ijk!r} is not three integers") from None
        if len(c) != 3:
            raise ValueError(f"centre {list(c)} is not three integers")
        if any(not 0 <= v < n for v, n in zip(c, self.shape)):
            raise ValueError(f"centre {c} lies outside the volume (shape {self.shape})")
        out = [0, 0, 0]
        for i, (ax, flip) in enumerate(self.ornt):
            out[int(ax)] = c[i] if flip > 0 else self.shape[i] - 1 - c[i]
        return tuple(out)  # type: ignore[return-value]


def _planes_ras(r: np.ndarray, c: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axial, coronal, sagittal screen images (row 0 at the top) from a RAS array.

    In RAS, index increases towards the patient's right, anterior and superior;
    reversing both axes and transposing puts R / A / S to the screen's left / top.
    """
    axial = r[:, :, c[2]][::-1, ::-1].T  # rows: A -> P, cols: R -> L
    coronal = r[:, c[1], :][::-1, ::-1].T  # rows: S -> I, cols: R -> L
    sagittal = r[c[0], :, :][::-1, ::-1].T  # rows: S -> I, cols: A -> P
    return axial, coronal, sagittal


def _screen_centres(g: _Geometry, c: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """(row, column) of the RAS voxel ``c`` on the axial, coronal and sagittal screens."""
    X, Y, Z = g.ras_shape
    return ((Y - 1 - c[1], X - 1 - c[0]), (Z - 1 - c[2], X - 1 - c[0]), (Z - 1 - c[2], Y - 1 - c[1]))


def _screen_spacing(g: _Geometry) -> tuple[tuple[float, float], ...]:
    """(row height, column width) in mm of a pixel on the axial, coronal and sagittal screens."""
    sx, sy, sz = g.ras_spacing
    return ((sy, sx), (sz, sx), (sz, sy))


def _display_planes(vol: Volume, centre, array: np.ndarray | None = None):
    """The axial, coronal and sagittal slices through ``centre`` as shown on screen.

    Args:
        vol: gives the geometry (and the values, unless ``array`` is given).
        centre: voxel index in the file's voxel order.
        array: another array on ``vol``'s grid (e.g. a mask) to slice instead.

    Returns:
        three 2D arrays, row 0 at the top, in radiological convention.

    Raises:
        ValueError: the centre is not inside the volume.

    Example:
        >>> vol = Volume(np.arange(24).reshape(2, 3, 4), np.eye(4))
        >>> _display_planes(vol, (0, 0, 0))[0]    # anterior (j = 2) on the top row
        array([[20,  8],
               [16,  4],
               [12,  0]])
    """
    g = _Geometry.of(vol)
    c = g.ras_index(centre)
    return _planes_ras(g.ras_view(vol.array if array is None else array), c)


def _crop(centre_rc, shape, spacing_rc, half_mm: float) -> tuple[slice, slice]:
    out = []
    for c, n, s in zip(centre_rc, shape, spacing_rc):
        h = int(np.ceil(half_mm / s))
        out.append(slice(max(0, c - h), min(n, c + h + 1)))
    return tuple(out)  # type: ignore[return-value]


def _extent_mm(mask: np.ndarray, spacing) -> float:
    """Largest bounding-box edge of a mask in millimetres (0 for an empty mask)."""
    ext = 0.0
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.flatnonzero(np.any(mask, axis=other))
        if idx.size:
            ext = max(ext, float(idx[-1] - idx[0] + 1) * float(spacing[ax]))
    return ext


def _fmt_ml(v: float) -> str:
    return f"{v:.2g} mL" if v < 1 else (f"{v:.1f} mL" if v < 100 else f"{v:.0f} mL")


def _row_label(k: int, rec: dict) -> str:
    parts = [f"lesion {rec.get('index', k + 1)}"]
    if rec.get("organ"):
        parts.append(str(rec["organ"]))
    if rec.get("size_class"):
        parts.append(str(rec["size_class"]))
    if rec.get("volume_ml") is not None:
        parts.append(_fmt_ml(float(rec["volume_ml"])))
    hb, ha = rec.get("mean_hu_before"), rec.get("mean_hu_after")
    if hb is not None and ha is not None:
        parts.append(f"{float(hb):.0f}\u2192{float(ha):.0f} HU")
    return " \u00b7 ".join(parts)


_PLANE_NAMES = ("axial", "coronal", "sagittal")
# (left-edge letter, top-edge letter) on each screen.
_EDGE_LETTERS = (("R", "A"), ("R", "S"), ("A", "S"))


def render_lesions_png(
    before: Volume,
    after: Volume,
    lesion_masks: Sequence[np.ndarray],
    records: Sequence[dict],
    window: tuple[float, float],
    path: str | os.PathLike,
    title: str | None = None,
    dpi: int = 100,
) -> None:
    """Draw before / after slices through each lesion and write them as one PNG.

    One row per lesion, six panels: axial, coronal and sagittal, each before and
    after. The "after" panels carry the lesion's outline; the "before" ones are the
    untouched image. Each panel is cropped to a square field of view of
    ``max(80 mm, 3 x lesion extent)`` around the lesion centre, clipped to the
    volume. With no lesions, one row of the central planes is drawn.

    Args:
        before, after: the scan without and with the synthetic lesions (same grid).
        lesion_masks: one boolean array per lesion, on the scan's grid.
        records: one dict per lesion; uses ``centre_voxel`` (file voxel order) and,
            for the row label, ``index``, ``organ``, ``size_class``, ``volume_ml``,
            ``mean_hu_before`` and ``mean_hu_after`` where present.
        window: grey-scale window in HU, ``(vmin, vmax)``.
        path: the PNG to write; it is written atomically, so a failure leaves nothing.
        title: optional heading over the figure.
        dpi: resolution (a row is about 12 x 2.6 inches).

    Raises:
        ValueError: shapes disagree, a centre lies outside the volume, or a bad window.

    Example:
        >>> import tempfile, os
        >>> vol = Volume(np.zeros((32, 32, 8), np.int16), np.diag([2.0, 2.0, 5.0, 1.0]))
        >>> mask = np.zeros(vol.shape, bool); mask[14:18, 14:18, 3:5] = True
        >>> rec = {"index": 1, "size_class": "small", "centre_voxel": [16, 16, 4]}
        >>> out = os.path.join(tempfile.mkdtemp(), "lesions.png")
        >>> render_lesions_png(vol, vol, [mask], [rec], (-100, 200), out)
        >>> open(out, "rb").read(4)
        b'\\x89PNG'
    """
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} differ in shape")
    if len(lesion_masks) != len(records):
        raise ValueError(f"{len(lesion_masks)} lesion masks but {len(records)} records")
    vmin, vmax = (float(v) for v in window)
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmin < vmax):
        raise ValueError(f"window must be (vmin, vmax) with vmin < vmax, got {window!r}")

    g = _Geometry.of(before)
    r_before = g.ras_view(before.array)
    r_after = g.ras_view(after.array)
    spacing_rc = _screen_spacing(g)

    # Work out every row first, so that bad input raises before anything is drawn.
    rows = []  # (label, [(before2d, after2d, mask2d | None, spacing_rc)] * 3)
    if len(records) == 0:
        c = tuple(n // 2 for n in g.ras_shape)
        pb, pa = _planes_ras(r_before, c), _planes_ras(r_after, c)
        rows.append(("no lesions \u00b7 central planes", [(pb[p], pa[p], None, spacing_rc[p]) for p in range(3)]))
    for k, (mask, rec) in enumerate(zip(lesion_masks, records)):
        mask = np.asarray(mask)
        if "centre_voxel" not in rec:
            raise ValueError(f"lesion record {k} has no 'centre_voxel'")
        try:
            c = g.ras_index(rec["centre_voxel"])
        except ValueError as exc:
            raise ValueError(f"lesion record {k}: {exc}") from None
        r_mask = g.ras_view(mask.astype(bool, copy=False))
        extent = _extent_mm(mask, before.spacing)
        if extent == 0.0 and rec.get("semi_axes_mm"):
            extent = 2.0 * max(float(v) for v in rec["semi_axes_mm"])
        half = 0.5 * max(_MIN_FOV_MM, _FOV_FACTOR * extent)
        pb, pa, pm = _planes_ras(r_before, c), _planes_ras(r_after, c), _planes_ras(r_mask, c)
        panels = []
        for p, centre_rc in enumerate(_screen_centres(g, c)):
            box = _crop(centre_rc, pb[p].shape, spacing_rc[p], half)
            panels.append((pb[p][box], pa[p][box], pm[p][box], spacing_rc[p]))
        rows.append((_row_label(k, rec), panels))

    data = _draw(rows, (vmin, vmax), title, dpi)
    write_bytes_atomic(path, data)


def _draw(rows, window, title, dpi) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib (about 1 s to import) only for figures
    from matplotlib.figure import Figure  # deferred: matplotlib (about 1 s to import) only for figures

    # Layout in inches: pairs of panels (before | after) with wider gaps between pairs.
    margin, gap_in, gap_pair = 0.15, 0.05, 0.3
    width = 12.0
    panel = (width - 2 * margin - 3 * gap_in - 2 * gap_pair) / 6
    label_h, ptitle_h, row_gap = 0.3, 0.2, 0.12
    title_h = 0.45 if title else 0.05
    row_h = label_h + ptitle_h + panel + row_gap
    height = title_h + len(rows) * row_h + 0.05

    fig = Figure(figsize=(width, height), dpi=dpi, facecolor=_FIG_FACE)
    FigureCanvasAgg(fig)
    if title:
        fig.text(0.5, 1 - 0.28 / height, title, ha="center", va="center", color=_TEXT, fontsize=13, weight="bold")

    vmin, vmax = window
    for r, (label, panels) in enumerate(rows):
        top = title_h + r * row_h  # inches from the top
        fig.text(margin / width, 1 - (top + label_h * 0.55) / height, label,
                 ha="left", va="center", color=_TEXT, fontsize=10.5, weight="bold")
        y0 = 1 - (top + label_h + ptitle_h + panel) / height
        for p, (img_b, img_a, m, (sr, sc)) in enumerate(panels):
            for j, (img, is_after) in enumerate(((img_b, False), (img_a, True))):
                x = margin + p * (2 * panel + gap_in + gap_pair) + j * (panel + gap_in)
                ax = fig.add_axes((x / width, y0, panel / width, panel / height))
                ax.set_facecolor("black")
                ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, aspect=sr / sc,
                          interpolation="nearest", origin="upper")
                if is_after and m is not None and m.any() and min(m.shape) >= 2:
                    ax.contour(m.astype(np.uint8), levels=[0.5], colors=_CONTOUR_AFTER, linewidths=1.1)
                ax.set_anchor("N")
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_color("#444444")
                ax.set_title(f"{_PLANE_NAMES[p]} \u00b7 {'after' if is_after else 'before'}",
                             color=_TEXT, fontsize=8, pad=3)
                left, up = _EDGE_LETTERS[p]
                kw = dict(color="#8fd3ff", fontsize=7, transform=ax.transAxes)
                ax.text(0.015, 0.5, left, ha="left", va="center", **kw)
                ax.text(0.5, 0.985, up, ha="center", va="top", **kw)

    buf = _bytesio.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return buf.getvalue()
