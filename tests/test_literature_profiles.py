"""Built-in literature-based lesion profiles (liver, pancreas, kidney) and their rendering in an abdominal host."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from freetumor.grids import Grid
from freetumor.lesions.profile import _BOUNDS, FEATURE_ORDER, builtin_names, load_profile
from freetumor.lesions.render import draw_lesion, measure_rendered, render_lesion

ABDOMINAL = ("liver-literature", "pancreas", "kidney")  # builtin:liver is now combined (test_liver_profile.py)


@pytest.mark.parametrize("organ", ABDOMINAL)
def test_builtin_abdominal_profile_is_literature_based_and_documented(organ):
    assert organ in builtin_names()
    p = load_profile(f"builtin:{organ}", organ.split("-")[0])
    assert p.kind == "literature" and not p.rows and set(p.distributions) == set(FEATURE_ORDER)
    notes = p.source["notes"]
    assert set(notes) == set(FEATURE_ORDER)
    for f in FEATURE_ORDER:
        assert notes[f]["status"] in ("cited", "derived", "assumed"), f
        assert len(notes[f]["how"]) > 20, f
    # whatever is cited or derived names a source that is listed in full
    cites = p.source["citations"]
    assert cites and all(len(c) > 40 for c in cites.values())
    for f in FEATURE_ORDER:
        if notes[f]["status"] != "assumed":
            assert any(key.split("-")[0].rstrip("0123456789") in notes[f]["how"] for key in cites), f


@pytest.mark.parametrize("organ", ABDOMINAL)
def test_abdominal_samples_stay_in_bounds_and_are_hypo_attenuating(organ):
    p = load_profile(f"builtin:{organ}")
    rng = np.random.default_rng(0)
    draws = [p.sample(rng) for _ in range(2000)]
    for f in FEATURE_ORDER:
        v = np.array([d[f] for d in draws])
        spec = p.distributions[f]
        lo = max(spec.get("min", -np.inf), _BOUNDS.get(f, (-np.inf, np.inf))[0])
        hi = min(spec.get("max", np.inf), _BOUNDS.get(f, (-np.inf, np.inf))[1])
        assert v.min() >= lo and v.max() <= hi, f
        assert v.std() > 0, f  # a distribution, not a constant
    c = np.array([d["contrast_hu"] for d in draws])
    assert c.max() < 0 and -150 <= np.median(c) <= -20  # hypo-attenuating, tens of HU below the organ
    d = np.array([d["diameter_mm"] for d in draws])
    assert 10 <= np.median(d) <= 50  # centimetre-sized masses, not lung-nodule-sized
    # the stored summary is what the distributions give
    assert abs(np.median(c) - p.summary["contrast_hu"]["median"]) < 5


def liver_host(shape=(48, 48, 36), spacing=(0.8, 0.8, 1.0), seed=0, vessel=True):
    """60 HU liver with 12 HU slightly correlated noise and (optionally) a +100 HU, 5 mm vessel along z."""
    rng = np.random.default_rng(seed)
    img = 60.0 + 12.0 * ndimage.gaussian_filter(rng.standard_normal(shape), 0.6) / 0.33
    ves = np.zeros(shape, bool)
    if vessel:
        x, y = np.mgrid[: shape[0], : shape[1]]
        ves[np.hypot((x - shape[0] // 2 - 2) * spacing[0], (y - shape[1] // 2) * spacing[1]) <= 2.5] = True
        img[ves] += 100.0
    return img.astype(np.float32), ves, Grid(shape, spacing, (0, 1, 2), (1, 1, 1))


def liver_params(**kw):
    p = dict(diameter_mm=14.0, axis_ratio_mid=0.85, axis_ratio_min=0.75, solidity=0.95, contrast_hu=-45.0,
             edge_norm=0.22, occupancy_outer=0.47, interior_sd=11.0, noise_sd=11.0, corr_length_mm=3.0,
             attached_fraction=0.0)
    p.update(kw)
    return p


def test_rendered_liver_lesion_has_the_drawn_contrast_and_hides_the_vessel():
    """Measured as real lesions are (lesions.measure.measure_crop), a hypo-attenuating lesion in a liver-like host
    has the drawn contrast; a +100 HU vessel through it does not show through its core."""
    img, ves, grid = liver_host()
    plain, _, _ = liver_host(vessel=False)
    c = tuple(s // 2 for s in img.shape)
    p = liver_params(diameter_mm=18.0)
    traces = []
    for seed in (1, 3):
        r = render_lesion(img, np.ones(img.shape, bool), grid, c, p, np.random.default_rng(seed), hide_wide_structure=True)
        r0 = render_lesion(plain, np.ones(img.shape, bool), grid, c, p, np.random.default_rng(seed),
                           hide_wide_structure=True)
        core = r.occupancy > 0.98
        along = core & ves[r.box]
        assert along.sum() > 20
        # same lesion with and without the vessel: what of the vessel's +100 HU is left in the core
        traces.append(float((r.values[along] - r0.values[along]).mean()))
        # the core's SD is the drawn interior SD, not the vessel's contrast
        assert r.values[core].std() < 1.4 * p["interior_sd"], r.values[core].std()
    assert abs(np.mean(traces)) < 3.0, traces  # without hide_wide_structure: about +5 HU; a shifted host: +100
    m = measure_rendered(img, grid, r)
    assert abs(m["contrast_hu"] - p["contrast_hu"]) < 0.15 * abs(p["contrast_hu"]), m["contrast_hu"]


def test_rendered_edge_matches_the_drawn_edge_on_a_quiet_host():
    """The drawn edge_norm is the noise-free edge: on a quiet host the measured one matches it."""
    img, _, grid = liver_host(vessel=False)
    img = (60.0 + (img - 60.0) / 6.0).astype(np.float32)  # 2 HU noise
    got = []
    for edge in (0.20, 0.30):
        p = liver_params(edge_norm=edge, interior_sd=0.0, noise_sd=0.0)
        r = render_lesion(img, np.ones(img.shape, bool), grid, tuple(s // 2 for s in img.shape), p,
                          np.random.default_rng(2), hide_wide_structure=True)
        m = measure_rendered(img, grid, r)
        assert abs(m["edge_norm"] - edge) < 0.25 * edge, (edge, m["edge_norm"])
        got.append(m["edge_norm"])
    assert got[1] > got[0]  # a sharper drawn edge measures sharper


def test_draw_lesion_from_builtin_liver_profile_darkens_the_liver():
    img, _, grid = liver_host(shape=(64, 64, 48), vessel=False)
    allowed = np.ones(img.shape, bool)
    r, params, _ = draw_lesion(load_profile("builtin:liver"), img, allowed, grid, np.random.default_rng(4), tries=20)
    assert r is not None
    core = r.label & (r.occupancy > 0.95)
    assert params["contrast_hu"] < 0 and r.values[core].mean() < 60.0 + 0.5 * params["contrast_hu"]
