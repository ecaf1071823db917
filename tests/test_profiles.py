"""Lesion profiles: fitting real lesions, sampling, rendering in mm and HU, and the CLI around them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from freetumor.errors import InputError
from freetumor.grids import Grid
from freetumor.io import load_volume, save_volume
from freetumor.lesions.features import LesionCrop, extract_crops
from freetumor.lesions.fit import fit_profile
from freetumor.lesions.measure import measure_crop
from freetumor.lesions.profile import FEATURE_ORDER, LesionProfile, builtin_names, load_profile
from freetumor.lesions.render import (FITTED_STYLE, NEUTRAL_STYLE, _heavy_tailed, choose_centre, draw_lesion, local_depth,
                                      measure_rendered, render_lesion, sample_centre)
from freetumor.progress import without_progress

from conftest import DATASETS, lesion_params, lung_host, need, run_cli

VOIS = DATASETS / "lidc_nodule_vois"
LIDC = DATASETS / "lidc_full_scans" / "LIDC-IDRI-0001"


def nodule_crops(n: int) -> list[LesionCrop]:
    """The first ``n`` real LIDC nodule crops (1 mm, 10 mm margin), or skip."""
    from freetumor.lesions.measure import FIT_MARGIN_MM, MIN_VOXELS

    need(VOIS)
    crops = []
    for p in sorted((VOIS / "images").glob("*.nii.gz"))[:n]:
        crops += extract_crops(load_volume(p), load_volume(VOIS / "labels" / p.name), 1, "real", p.name,
                               margin_mm=FIT_MARGIN_MM, min_voxels=MIN_VOXELS)
    return crops




# ----------------------------------------------------------------------------- profiles


def test_fitted_profile_reproduces_measured_statistics():
    """Sampling a profile fitted on real crops gives back their measured medians and spreads."""
    crops = nodule_crops(60)
    measured = np.array([[measure_crop(c)[f] for f in FEATURE_ORDER] for c in crops])
    profile = fit_profile(crops, "lung", {"test": True})
    rng = np.random.default_rng(0)
    drawn = np.array([[s[f] for f in FEATURE_ORDER] for s in (profile.sample(rng) for _ in range(3000))])
    for j, f in enumerate(FEATURE_ORDER):
        m, d = np.median(measured[:, j]), np.median(drawn[:, j])
        spread = np.percentile(measured[:, j], 75) - np.percentile(measured[:, j], 25)
        assert abs(d - m) <= 0.15 * spread + 1e-6 + 0.02 * abs(m), (f, m, d)
        iqr_d = np.percentile(drawn[:, j], 75) - np.percentile(drawn[:, j], 25)
        assert 0.7 * spread - 1e-6 <= iqr_d <= 1.3 * spread + 1e-6, (f, spread, iqr_d)
    # the joint distribution is kept: size and contrast stay correlated as in the real set
    r_real = np.corrcoef(measured[:, 0], measured[:, 4])[0, 1]
    r_drawn = np.corrcoef(drawn[:, 0], drawn[:, 4])[0, 1]
    assert abs(r_real - r_drawn) < 0.15


def test_profile_files_round_trip_and_refusals(tmp_path):
    p = LesionProfile.from_rows("lung", [[8.0, .9, .8, .95, 700.0, .3, .5, 60.0, 30.0, 2.0, 0.0]] * 3, {"x": 1})
    p.save(tmp_path / "p.json")
    q = load_profile(tmp_path / "p.json", "lung")
    assert q.rows == p.rows and q.summary == p.summary
    doc = json.loads((tmp_path / "p.json").read_text())
    bad = {
        "schema": {**doc, "format": "something-else"},
        "version": {**doc, "version": 99},
        "organ": {**doc, "organ": "brain"},
        "rows": {**doc, "rows": [[1.0, 2.0]]},
    }
    for name, d in bad.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
        with pytest.raises(InputError) as ei:
            load_profile(tmp_path / f"{name}.json")
        assert "\n" not in str(ei.value) and f"{name}.json" in str(ei.value)
    with pytest.raises(InputError, match="for lung, not liver"):
        load_profile(tmp_path / "p.json", "liver")
    with pytest.raises(InputError, match="no such built-in profile"):
        load_profile("builtin:spleen")


def test_builtin_lung_profile_is_fitted_from_real_nodules():
    assert "lung" in builtin_names()
    p = load_profile("builtin:lung", "lung")
    assert p.kind == "fitted" and len(p.rows) >= 500
    assert 5.0 <= p.summary["diameter_mm"]["median"] <= 11.0  # real LIDC nodules: median about 8 mm
    assert p.summary["contrast_hu"]["median"] > 400           # solid tissue against lung, not a faint haze


# ----------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("contrast, edge", [(750.0, 0.30), (500.0, 0.18)])
def test_rendered_lesions_have_the_drawn_contrast_and_edge(contrast, edge):
    """Measured on the output exactly as real lesions are measured, a rendered lesion has the profile's
    contrast and edge sharpness (median over a few lesions, on a thin-slice lung-like host)."""
    img, lung, grid = lung_host(shape=(72, 72, 56), spacing=(0.7, 0.7, 0.7))
    rng = np.random.default_rng(1)
    got_c, got_e = [], []
    for k in range(5):
        p = lesion_params(diameter_mm=12.0, contrast_hu=contrast, edge_norm=edge, interior_sd=40.0, noise_sd=25.0)
        r = render_lesion(img, lung, grid, (36, 36, 28), p, rng)
        m = measure_rendered(img, grid, r)  # the 1 mm crop lesions fit measures
        got_c.append(m["contrast_hu"])
        got_e.append(m["edge_norm"])
    assert abs(np.median(got_c) - contrast) < 0.12 * contrast, got_c
    assert abs(np.median(got_e) - edge) < 0.25 * edge, got_e


def test_calibration_brings_the_measured_texture_of_a_thick_slice_render_to_the_drawn_one():
    """On a 2.5 mm host the grid and the 1 mm resampling of the measurement damp the rendered fine noise;
    the calibration pass (measure, correct, render again) brings the measured values back to the draw."""
    img, lung, grid = lung_host(shape=(72, 72, 24), spacing=(0.7, 0.7, 2.5))
    p = lesion_params(diameter_mm=12.0, contrast_hu=700.0, edge_norm=0.3, interior_sd=110.0, noise_sd=60.0)
    keys = ("noise_sd", "interior_sd", "contrast_hu")
    err = {}
    for calibrate in (False, True):
        rng = np.random.default_rng(2)
        e = []
        for k in range(3):
            r = render_lesion(img, lung, grid, (36, 36, 12), p, rng, calibrate=calibrate)
            m = measure_rendered(img, grid, r)
            e.append([abs(np.log(m[f] / p[f])) for f in keys])
            if calibrate:
                assert set(r.record["settings"]) >= {"fine_sd", "coherent_sd", "edge_norm"}
        err[calibrate] = np.mean(e, axis=0)
    assert err[True].mean() < err[False].mean(), err
    assert err[True][0] < 0.2, err  # measured fine noise within about 20 % of the drawn


def test_a_soft_edged_small_lesion_keeps_its_drawn_volume():
    """The profile's softest edge on an 8 mm lesion on a 2.5 mm grid once left a 1-voxel label."""
    img, lung, grid = lung_host(shape=(64, 64, 24), spacing=(0.7, 0.7, 2.5))
    p = lesion_params(diameter_mm=8.0, edge_norm=0.158, occupancy_outer=0.39)
    for calibrate in (False, True):
        r = render_lesion(img, lung, grid, (32, 32, 12), p, np.random.default_rng(4), calibrate=calibrate)
        vol = r.label.sum() * np.prod(grid.spacing)
        assert 0.5 < vol / (np.pi / 6 * 8.0 ** 3) < 1.5, (calibrate, vol)


def test_calibration_is_skipped_when_the_pilot_does_not_measure_as_drawn():
    """A faint lesion in a narrow strip of lung between soft-tissue walls: its measured host shell is mostly
    wall, so the pilot measures a negative contrast; its correction would be nonsense, so the first render
    is kept."""
    img, lung, grid = lung_host(shape=(64, 64, 48), spacing=(0.7, 0.7, 1.0))
    img[:, :28, :] = 40.0  # lung only in a 6 mm strip around the lesion's centre
    img[:, 37:, :] = 40.0
    lung[:, :28, :] = False
    lung[:, 37:, :] = False
    p = lesion_params(diameter_mm=7.0, contrast_hu=170.0, attached_fraction=0.3)
    r = render_lesion(img, lung, grid, (32, 32, 24), p, np.random.default_rng(5), calibrate=True)
    assert r.record["calibration"].startswith("skipped"), r.record
    assert r.label.sum() > 0


def test_rendering_keeps_host_noise_hides_host_structure_and_leaves_input():
    img, lung, grid = lung_host()
    img[:, 30:34, :] = 40.0  # a vessel running through where the lesion goes
    before = img.copy()
    r = render_lesion(img, lung, grid, (32, 32, 24), lesion_params(diameter_mm=14.0, interior_sd=0.0, noise_sd=0.0),
                      np.random.default_rng(3))
    assert np.array_equal(img, before)  # the input is never modified
    core = r.occupancy > 0.98
    vessel = np.zeros(img.shape, bool)
    vessel[:, 30:34, :] = True
    inside_vessel = core & vessel[r.box]
    inside_lung = core & ~vessel[r.box]
    # the vessel does not show through the solid lesion: same level inside and outside its course
    assert abs(r.values[inside_vessel].mean() - r.values[inside_lung].mean()) < 40
    # the host's fine noise is kept inside the lesion
    assert 10 < r.values[inside_lung].std() < 40


def test_lesion_extent_in_mm_is_the_same_at_any_slice_spacing_and_orientation():
    p = lesion_params(diameter_mm=9.0, axis_ratio_mid=1.0, axis_ratio_min=1.0, solidity=1.0, interior_sd=0.0, noise_sd=0.0)
    vols, extents = [], []
    for spacing, flip in [((0.7, 0.7, 0.7), False), ((0.7, 0.7, 5.0), False), ((0.7, 0.7, 0.7), True)]:
        shape = (60, 60, int(round(42 / spacing[2])))
        img = np.full(shape, -850.0, np.float32)
        grid = Grid(shape, spacing, (0, 1, 2), (-1, 1, 1) if flip else (1, 1, 1))
        c = tuple(s // 2 for s in shape)
        r = render_lesion(img, np.ones(shape, bool), grid, c, p, np.random.default_rng(7))
        vols.append(r.label.sum() * np.prod(spacing))
        idx = np.argwhere(r.label)
        extents.append((idx.max(0) - idx.min(0) + 1)[:2] * np.asarray(spacing[:2]))
    expect = np.pi / 6 * 9.0 ** 3
    assert all(abs(v / expect - 1) < 0.25 for v in vols), vols
    assert np.allclose(extents[0], extents[2], atol=1.5) and np.allclose(extents[0], extents[1], atol=2.0)


def test_fitted_style_renders_a_solid_plateau_with_heavy_tailed_texture():
    """The fitted style's plateau fills the label with solid tissue (no blurred dome) and its texture has
    heavier tails than a Gaussian field; draw_lesion uses it for fitted profiles only."""
    img, lung, grid = lung_host()
    p = lesion_params(diameter_mm=12.0, edge_norm=0.2, interior_sd=80.0, noise_sd=30.0)
    out = {}
    for name, style in (("neutral", NEUTRAL_STYLE), ("fitted", FITTED_STYLE)):
        r = render_lesion(img, lung, grid, (32, 32, 24), p, np.random.default_rng(5), style=style)
        out[name] = (float(np.mean(r.occupancy[r.label] >= 0.99)), r.record["style"]["plateau"])
    assert out["fitted"][0] > out["neutral"][0] + 0.15, out
    assert out["neutral"][1] == 1.0 and out["fitted"][1] == FITTED_STYLE.plateau
    g = np.random.default_rng(0).standard_normal(200_000).astype(np.float32)
    h = _heavy_tailed(g, FITTED_STYLE.texture_tail)
    kurt = lambda v: float(np.mean(((v - v.mean()) / v.std()) ** 4) - 3.0)  # noqa: E731
    assert abs(float(h.std()) - 1.0) < 1e-3 and abs(kurt(g)) < 0.1 and kurt(h) > 1.0
    fitted = LesionProfile.from_rows("lung", [[8.0, .9, .8, .95, 700.0, .3, .5, 60.0, 30.0, 2.0, 0.0]] * 3, {"x": 1})
    r, _, _ = draw_lesion(fitted, img, lung, grid, np.random.default_rng(1))
    assert r.record["style"] == FITTED_STYLE.as_record()


def test_choose_centre_attached_and_free():
    depth = np.zeros((40, 40, 40))
    depth[5:35, 5:35, 5:35] = 1.0
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(depth > 0)
    rng = np.random.default_rng(0)
    free = choose_centre(depth, lesion_params(diameter_mm=8.0), rng)
    attached = choose_centre(depth, lesion_params(diameter_mm=8.0, attached_fraction=0.5), rng)
    assert depth[free] > 5.0 and 1.0 <= depth[attached] <= 3.6
    assert choose_centre(depth, lesion_params(diameter_mm=100.0), rng) is None


def test_sample_centre_places_like_the_whole_depth_map_without_computing_it():
    from scipy import ndimage

    allowed = np.zeros((60, 50, 30), bool)
    allowed[5:55, 5:45, 3:27] = True
    allowed[20:40, 15:35, 10:20] = False  # a hole: its walls are boundary too
    spacing = (0.7, 0.8, 2.5)
    depth = ndimage.distance_transform_edt(allowed, sampling=spacing)
    rng = np.random.default_rng(3)
    for c in [tuple(int(v) for v in np.argwhere(allowed)[i]) for i in rng.choice(allowed.sum(), 40)]:
        d = local_depth(allowed, spacing, c, 6.0)
        assert (abs(d - depth[c]) < 1e-6) if depth[c] < 6.0 else d >= 6.0
    for params in (lesion_params(diameter_mm=6.0), lesion_params(diameter_mm=6.0, attached_fraction=0.5)):
        r = params["diameter_mm"] / 2
        lo, hi = (0.3 * r, 0.9 * r) if params["attached_fraction"] > 0.15 else (r + 1.5, np.inf)
        got = [depth[sample_centre(allowed, spacing, params, rng)] for _ in range(25)]
        assert all(lo < g <= hi for g in got), got
    # no voxel deep enough in the first range: the exact fallback finds the looser one, or None
    small = np.zeros((30, 30, 10), bool)
    small[10:20, 10:20, 1:9] = True  # at most 4.5 mm deep: no room for an 8 mm lesion wholly inside
    c = sample_centre(small, (1.0, 1.0, 1.0), lesion_params(diameter_mm=8.0), rng, attempts=5)
    assert c is not None and small[c]
    assert sample_centre(small, (1.0, 1.0, 1.0), lesion_params(diameter_mm=100.0), rng, attempts=5) is None


# ----------------------------------------------------------------------------- CLI


def test_lesions_fit_cli_and_synthesize_with_the_profile(tmp_path):
    need(VOIS)
    entries = [{"image": str(p), "label": str(VOIS / "labels" / p.name)}
               for p in sorted((VOIS / "images").glob("*.nii.gz"))[:25]]
    (tmp_path / "nodules.json").write_text(json.dumps({"name": "nodules", "organs": {"lung": {"tumor": 1}},
                                                       "labels": [0, 1]}))
    (tmp_path / "dl.json").write_text(json.dumps({"label_map": "nodules.json", "training": entries}))
    r = run_cli("lesions", "fit", "--datalist", tmp_path / "dl.json", "--organ", "lung", "--out", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    assert "lung lesions" in r.stdout and (tmp_path / "p.json").is_file()
    prof = load_profile(tmp_path / "p.json", "lung")
    assert len(prof.rows) >= 25

    # synthesize with it into a small chest phantom
    from freetumor.phantom import make_case

    image, label = make_case("chest", seed=4, tumour=False)
    save_volume(image, tmp_path / "chest.nii.gz")
    save_volume(label, tmp_path / "lab.nii.gz")
    r = run_cli("synthesize", "--image", tmp_path / "chest.nii.gz", "--label", tmp_path / "lab.nii.gz", "--organ", "lung",
                "--out", tmp_path / "syn", "--profile", tmp_path / "p.json", "--no-png", "--seed", "3")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "syn" / "chest.json").read_text())
    les = rec["lesions"][0]
    assert les["size_class"] == "profile" and les["difference_source"] == "profile"
    assert les["mean_hu_after"] > les["mean_hu_before"] + 200  # solid tissue in lung
    out_lab = load_volume(tmp_path / "syn" / "chest_label.nii.gz").array
    assert int((out_lab == 2).sum()) == les["voxels"]


def test_lesions_fit_refuses_a_datalist_without_lesions(tmp_path):
    from freetumor.phantom import make_case

    image, label = make_case("chest", seed=4, tumour=False)
    save_volume(image, tmp_path / "ct.nii.gz")
    save_volume(label, tmp_path / "lab.nii.gz")
    (tmp_path / "dl.json").write_text(json.dumps({"label_map": "chest3", "training": [
        {"image": "ct.nii.gz", "label": "lab.nii.gz"}]}))
    r = run_cli("lesions", "fit", "--datalist", tmp_path / "dl.json", "--organ", "lung", "--out", tmp_path / "p.json")
    assert r.returncode == 1 and len(without_progress(r.stderr)) == 1, r.stderr
    assert "no lung lesions" in r.stderr and not (tmp_path / "p.json").exists()


def test_synthesize_refuses_a_profile_of_another_organ(tmp_path):
    p = LesionProfile.from_rows("lung", [[8.0, .9, .8, .95, 700.0, .3, .5, 60.0, 30.0, 2.0, 0.0]] * 2, {})
    p.save(tmp_path / "lung.json")
    from freetumor.phantom import make_case

    image, label = make_case("abdomen", seed=4, tumour=False, shape=(96, 80, 48))
    save_volume(image, tmp_path / "ct.nii.gz")
    save_volume(label, tmp_path / "lab.nii.gz")
    r = run_cli("synthesize", "--image", tmp_path / "ct.nii.gz", "--label", tmp_path / "lab.nii.gz", "--organ", "liver",
                "--out", tmp_path / "syn", "--profile", tmp_path / "lung.json")
    assert r.returncode == 1 and "lesion profile is for lung, not liver" in r.stderr
    assert not (tmp_path / "syn").exists()
