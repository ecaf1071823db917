"""Lesion pictures (render.py) and HTML report pages (htmlpage.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from freetumor import __version__
from freetumor.io import Volume, load_volume
from freetumor.render import _Geometry, _display_planes, render_lesions_png
from freetumor.htmlpage import format_value, lesion_table, write_html_page

from conftest import need

WINDOW = (-175.0, 250.0)
RAS_SPACING = (0.9, 0.9, 3.0)
SHAPE = (64, 64, 24)
LESION_RAS = (46, 30, 12)  # in the "liver", on the patient's right (high x in RAS)


def _phantom_ras() -> np.ndarray:
    """A toy axial-slab phantom in RAS voxel order: body, "liver" on the right, markers."""
    x, y, z = np.indices(SHAPE, sparse=True)
    a = np.full(SHAPE, -1000, np.int16)
    body = ((x - 32) / 28.0) ** 2 + ((y - 32) / 22.0) ** 2 <= 1
    a[np.broadcast_to(body, SHAPE)] = 40
    liver = ((x - 44) / 12.0) ** 2 + ((y - 34) / 12.0) ** 2 + ((z - 12) / 8.0) ** 2 <= 1
    a[liver] = 100
    a[30:34, 58:62, :] = 1000  # anterior marker (high y = anterior)
    a[30:34, 30:34, 20:24] = 700  # superior marker (high z = superior)
    return a


def _lesion_mask_ras() -> np.ndarray:
    x, y, z = np.indices(SHAPE, sparse=True)
    c = LESION_RAS
    return ((x - c[0]) * 0.9) ** 2 + ((y - c[1]) * 0.9) ** 2 + ((z - c[2]) * 3.0) ** 2 <= 6.0**2


def _ras_affine() -> np.ndarray:
    aff = np.diag([*RAS_SPACING, 1.0])
    aff[:3, 3] = [-30.0, -20.0, 100.0]
    return aff


def _as_codes(array: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored in another voxel order, with the matching affine."""
    ornt = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes)))
    return apply_orientation(array, ornt), _ras_affine() @ inv_ornt_aff(ornt, array.shape)


def _centre_in(vol: Volume, ras_ijk) -> list[int]:
    world = np.append(Volume(np.zeros(SHAPE), _ras_affine()).voxel_to_mm(ras_ijk), 1.0)
    return [int(round(v)) for v in (np.linalg.inv(vol.affine) @ world)[:3]]


def _case(codes: str = "RAS"):
    """(before, after, mask, record) for the phantom stored with voxel order ``codes``."""
    before_ras = _phantom_ras()
    mask_ras = _lesion_mask_ras()
    after_ras = before_ras.copy()
    after_ras[mask_ras] -= 80
    arr, aff = _as_codes(before_ras, codes)
    before = Volume(np.ascontiguousarray(arr), aff)
    after = before.with_array(np.ascontiguousarray(_as_codes(after_ras, codes)[0]))
    mask = np.ascontiguousarray(_as_codes(mask_ras, codes)[0])
    rec = {"index": 1, "organ": "liver", "size_class": "small", "volume_ml": 0.9,
           "semi_axes_mm": [6.0, 6.0, 6.0], "mean_hu_before": 100.0, "mean_hu_after": 20.0,
           "centre_voxel": _centre_in(before, LESION_RAS)}
    return before, after, mask, rec


def _yellow(img: np.ndarray) -> np.ndarray:
    """Pixels of the after-contour colour (#ffd60a) in an RGB(A) float image."""
    return (img[..., 0] > 0.85) & (img[..., 1] > 0.7) & (img[..., 2] < 0.35)


@pytest.mark.parametrize("codes", ["LPS", "RAI", "SLA", "PIR"])
def test_display_is_the_same_for_any_voxel_order(codes):
    ras_before, _, ras_mask, ras_rec = _case("RAS")
    other, _, other_mask, rec = _case(codes)
    assert other.orientation == tuple(codes)
    want = _display_planes(ras_before, ras_rec["centre_voxel"])
    got = _display_planes(other, rec["centre_voxel"])
    for w, g in zip(want, got):
        assert np.array_equal(w, g)
    for w, g in zip(_display_planes(ras_before, ras_rec["centre_voxel"], ras_mask),
                    _display_planes(other, rec["centre_voxel"], other_mask)):
        assert np.array_equal(w, g)
    assert _Geometry.of(other).ras_spacing == pytest.approx(RAS_SPACING)


def test_radiological_convention():
    vol = Volume(_phantom_ras(), _ras_affine())
    axial, coronal, sagittal = _display_planes(vol, (32, 32, 12))
    rows, cols = np.nonzero(axial == 1000)  # anterior marker
    assert rows.max() < axial.shape[0] / 4, "anterior must be at the top of the axial panel"
    rows, cols = np.nonzero(axial == 100)  # "liver", on the patient's right
    assert cols.mean() < axial.shape[1] / 2, "patient's right must be on the image's left"
    rows, cols = np.nonzero(coronal == 700)  # superior marker
    assert rows.max() < coronal.shape[0] / 4, "superior must be at the top of the coronal panel"
    _, cols = np.nonzero(coronal == 100)
    assert cols.mean() < coronal.shape[1] / 2
    sag = _display_planes(vol, (32, 32, 12))[2]
    rows, cols = np.nonzero(sag == 1000)  # anterior marker in the mid-sagittal plane
    assert cols.max() < sag.shape[1] / 4, "anterior must be on the left of the sagittal panel"
    rows, _ = np.nonzero(sag == 700)
    assert rows.max() < sag.shape[0] / 4


def test_png_rows_contours_and_clean_before(tmp_path):
    before, after, mask, rec = _case("LPS")
    one, three = tmp_path / "one.png", tmp_path / "three.png"
    render_lesions_png(before, after, [mask], [rec], WINDOW, one, title="one lesion")
    recs = [dict(rec, index=i) for i in (1, 2, 3)]
    render_lesions_png(before, after, [mask] * 3, recs, WINDOW, three, title="three lesions")

    import matplotlib.image as mpimg

    a, b = mpimg.imread(str(one)), mpimg.imread(str(three))
    assert a.shape[1] == b.shape[1] == 1200  # 12 inches at 100 dpi
    row_px = (b.shape[0] - a.shape[0]) / 2  # two more rows
    assert 200 < row_px < 300
    # The lesion outline is on the axial "after" panel and not on the "before" one.
    yellow = _yellow(a)
    assert yellow[:, 200:390].sum() > 20
    assert yellow[:, :195].sum() == 0
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"


def test_no_lesions_draws_central_planes(tmp_path):
    before, after, _, _ = _case("RAS")
    out = tmp_path / "none.png"
    render_lesions_png(before, after, [], [], WINDOW, out)
    import matplotlib.image as mpimg

    img = mpimg.imread(str(out))
    assert img.shape[1] == 1200 and 200 < img.shape[0] < 330
    assert _yellow(img).sum() == 0


@pytest.mark.parametrize("bad", [[64, 0, 0], [-1, 3, 3], [1, 2], "x"])
def test_bad_centre_raises_and_writes_nothing(tmp_path, bad):
    before, after, mask, rec = _case("RAS")
    out = tmp_path / "sub" / "x.png"
    with pytest.raises(ValueError):
        render_lesions_png(before, after, [mask], [dict(rec, centre_voxel=bad)], WINDOW, out)
    assert not out.exists()
    # An existing picture is left as it was.
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(b"old")
    with pytest.raises(ValueError):
        render_lesions_png(before, after, [mask], [dict(rec, centre_voxel=bad)], WINDOW, out)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.png"]


def test_inconsistent_inputs_raise(tmp_path):
    before, after, mask, rec = _case("RAS")
    out = tmp_path / "x.png"
    with pytest.raises(ValueError):
        render_lesions_png(before, after, [mask, mask], [rec], WINDOW, out)
    with pytest.raises(ValueError):
        render_lesions_png(before, after, [mask[:-1]], [rec], WINDOW, out)
    with pytest.raises(ValueError):
        render_lesions_png(before, Volume(after.array[:-1], after.affine), [mask], [rec], WINDOW, out)
    with pytest.raises(ValueError):
        render_lesions_png(before, after, [mask], [rec], (250, -175), out)
    assert not out.exists()


def test_html_page_escapes_and_embeds(tmp_path):
    recs = [{"case": "ct<1>", "index": 1, "organ": "liver", "size_class": "small",
             "centre_mm": [12.3456, -200.04, 3.0], "semi_axes_mm": [4.5, 5.25, 6.0],
             "volume_ml": 2.43217, "mean_hu_before": 104.26, "mean_hu_after": 31.0, "seed": 7}]
    table = lesion_table(recs)
    assert table["columns"] == ["case", "lesion", "organ", "size class", "centre (mm)", "semi-axes (mm)",
                                "volume (mL)", "mean HU before", "mean HU after", "seed"]
    out = tmp_path / "report" / "index.html"
    write_html_page(out, "Run <b>1</b>", [
        {"heading": "Summary", "text": "<script>alert(1)</script> & more\n\nsecond paragraph"},
        {"heading": "Pictures", "images": ["cases/ct 1.png", "b.png"]},
        {"heading": "Lesions", "table": table},
    ])
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert page.count("<p>") == 2
    assert "Run &lt;b&gt;1&lt;/b&gt;" in page
    assert 'src="cases/ct%201.png"' in page and 'src="b.png"' in page
    assert page.count('loading="lazy"') == 2 and page.count("alt=") == 2
    assert "<table>" in page and "<th>mean HU before</th>" in page
    assert "ct&lt;1&gt;" in page
    assert "12.3, -200, 3" in page and ">2.43<" in page and ">104<" in page and ">31<" in page
    assert f"generated by freetumor {__version__}" in page
    assert "http://" not in page and "https://" not in page  # self-contained
    assert not list(out.parent.glob(".*"))


def test_format_value():
    assert format_value(2.43217) == "2.43"
    assert format_value(np.float32(0.5)) == "0.5"
    assert format_value(np.int64(12)) == "12"
    assert format_value(1234.56) == "1235"
    assert format_value(float("nan")) == format_value(None) == "\u2013"
    assert format_value(np.array([1.0, 2.5])) == "1, 2.5"
    assert format_value("a") == "a"


def _ball_in(label: np.ndarray, spacing, radius_mm: float, rng) -> np.ndarray:
    from scipy import ndimage

    inside = ndimage.distance_transform_edt(label, sampling=spacing) > radius_mm + 1
    cands = np.argwhere(inside)
    c = cands[rng.integers(len(cands))]
    i, j, k = np.indices(label.shape, sparse=True)
    s = spacing
    return ((i - c[0]) * s[0]) ** 2 + ((j - c[1]) * s[1]) ** 2 + ((k - c[2]) * s[2]) ** 2 <= radius_mm**2, c


@pytest.mark.parametrize("name", ["slab1mm", "ct3mm"])
def test_real_ct_liver_on_the_left(totalseg, tmp_path, name, rng):
    image = load_volume(need(totalseg / f"{name}_image.nii.gz"))
    label = load_volume(need(totalseg / f"{name}_label_freetumor7.nii.gz"))
    liver = label.array == 1
    masks, recs = [], []
    after = image.array.copy()
    for n, r in enumerate((5.0, 8.0, 12.0)):
        ball, c = _ball_in(liver, image.spacing, r, rng)
        after[ball] -= 80
        masks.append(ball)
        recs.append({"index": n + 1, "size_class": "small", "volume_ml": float(ball.sum() * np.prod(image.spacing) / 1000),
                     "centre_voxel": [int(v) for v in c], "mean_hu_before": float(image.array[ball].mean()),
                     "mean_hu_after": float(after[ball].mean())})
    out = tmp_path / f"{name}.png"
    t0 = time.perf_counter()
    render_lesions_png(image, image.with_array(after), masks, recs, WINDOW, out, title=name)
    took = time.perf_counter() - t0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert took < 6.0, f"3-lesion render took {took:.2f} s"
    # Anatomy on screen, from TotalSegmentator's labels: liver (5) on the image's left and
    # spleen (1) on its right; aorta (52) in front of (above) the spinal cord (79).
    full = load_volume(need(totalseg / f"{name}_label.nii.gz"))
    centre = [int(v) for v in np.argwhere(full.array == 79).mean(axis=0)]
    axial, _, sagittal = _display_planes(full, centre)

    def where(plane, lab):
        rows, cols = np.nonzero(plane == lab)
        assert rows.size, f"label {lab} not in the plane"
        return rows.mean(), cols.mean()

    assert where(axial, 5)[1] < axial.shape[1] / 2 < where(axial, 1)[1]
    assert where(axial, 52)[0] < where(axial, 79)[0]
    assert where(axial, 5)[0] < where(axial, 79)[0]
    assert where(sagittal, 52)[1] < where(sagittal, 79)[1]  # anterior on the left
    if name == "ct3mm":  # tall enough to hold several vertebrae: T11 above L1
        assert where(sagittal, 33)[0] < where(sagittal, 31)[0]
        centre = [int(v) for v in np.argwhere(full.array == 31).mean(axis=0)]  # L1 body
        coronal = _display_planes(full, centre)[1]
        assert where(coronal, 32)[0] < where(coronal, 31)[0] < where(coronal, 30)[0]  # T12, L1, L2
        assert where(coronal, 5)[1] < where(coronal, 1)[1]
