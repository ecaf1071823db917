"""Issue 23, attachment: lung lesions against the chest wall (juxtapleural) or a vessel (juxtavascular) in the
proportions measured on real nodules. The measurement on constructions whose answer is known, the profile's
optional ``attachment`` field, and the placement: a juxtapleural lesion touches the wall and its label holds
no wall; the shares over many draws are the profile's. Small synthetic hosts only (seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from freetumor.errors import InputError
from freetumor.grids import Grid
from freetumor.lesions import profile as profile_mod
from freetumor.lesions.attachment import attachment_fractions, attachment_of, main_slices
from freetumor.lesions.profile import LesionProfile
from freetumor.lesions.render import (PLEURAL_DEPTH_RADII, draw_lesion, local_depth, sample_centre,
                                      vessel_centre)

import conftest

ROW = [6.0, 0.9, 0.8, 0.95, 780.0, 0.12, 0.4, 60.0, 40.0, 2.0, 0.1]
LUNG, TISSUE = -850.0, 40.0


def _crop(shape=(32, 32, 14)):
    i, j, k = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]].astype(float)
    return i, j, k, np.full(shape, LUNG, np.float32)


def _ball(i, j, k, c, r):
    return (i - c[0]) ** 2 + (j - c[1]) ** 2 + (k - c[2]) ** 2 <= r * r


# ----------------------------------------------------------------------------- measurement


def test_a_nodule_against_the_wall_is_juxtapleural_and_one_a_few_mm_away_is_free():
    i, j, k, img = _crop()
    wall = i < 6
    for gap, kind in ((0.0, "juxtapleural"), (4.0, "free")):
        ball = _ball(i, j, k, (6 + 4.5 + gap, 16, 7), 4.5)
        x = np.where(wall | ball, TISSUE, img).astype(np.float32)
        a = attachment_of(x, ball, (1.0, 1.0, 1.0))
        assert a["kind"] == kind, (gap, a)
        assert (a["wall_contact_mm2"] > 0) == (kind == "juxtapleural")


def test_a_nodule_touching_a_thin_vessel_is_juxtavascular():
    i, j, k, img = _crop()
    vessel = (i - 16) ** 2 + (k - 7) ** 2 <= 1.2 ** 2  # a 2.4 mm tube along the second axis
    ball = _ball(i, j, k, (16 + 1.2 + 4.0, 16, 7), 4.0)
    x = np.where(vessel | ball, TISSUE, img).astype(np.float32)
    a = attachment_of(x, ball, (1.0, 1.0, 1.0))
    assert a["kind"] == "juxtavascular" and a["vessel"] and not a["wall"], a
    # a speck of tissue beside the nodule (1 voxel, noise) is no vessel
    speck = np.zeros_like(ball)
    speck[16 + 6, 16, 7] = True
    y = np.where(speck | ball, TISSUE, img).astype(np.float32)
    assert attachment_of(y, ball, (1.0, 1.0, 1.0))["kind"] == "free"


def test_wall_only_beside_the_end_slice_does_not_count():
    """A thick-slice nodule's last slice blurs it into the wall that curves in beyond it: contact seen only
    there is partial volume, not a juxtapleural nodule."""
    i, j, k, img = _crop(shape=(32, 32, 15))
    ball = _ball(i, j, k, (16, 16, 7), 5.0) & (k >= 3) & (k <= 11)
    wall_near_end = (i > 21) & (k >= 11)  # reaches the label's last slice only
    x = np.where(wall_near_end | ball, TISSUE, img).astype(np.float32)
    assert main_slices(ball, (1.0, 1.0, 1.0), 2, 2.5).tolist() == [6, 7, 8]
    assert attachment_of(x, ball, (1.0, 1.0, 1.0), slice_axis=2, slice_mm=2.5)["kind"] == "free"
    wall_all = (i > 21)
    x = np.where(wall_all | ball, TISSUE, img).astype(np.float32)
    assert attachment_of(x, ball, (1.0, 1.0, 1.0), slice_axis=2, slice_mm=2.5)["kind"] == "juxtapleural"


def test_attachment_fractions_count_the_kinds():
    f = attachment_fractions(["juxtapleural", "free", "free", "juxtavascular"])
    assert f == {"juxtapleural": 0.25, "juxtavascular": 0.25, "free": 0.5, "lesions": 4}
    with pytest.raises(ValueError, match="unknown"):
        attachment_fractions(["pleural"])


# ----------------------------------------------------------------------------- profile field


def _profile(att=None) -> LesionProfile:
    p = LesionProfile.from_rows("lung", [ROW, [9.0] + ROW[1:]], {"kind": "example"}, "t")
    return p if att is None else p.with_attachment(att)


def test_profile_attachment_round_trips_and_is_checked():
    p = _profile({"juxtapleural": 0.4, "juxtavascular": 0.15, "lesions": 20})
    q = LesionProfile.from_json(json.loads(json.dumps(p.to_json())), "p.json")
    assert q.attachment == p.attachment and q.without_calcified().attachment == p.attachment
    for bad, msg in (({"juxtapleural": 1.2, "juxtavascular": 0.0}, "attachment.juxtapleural is 1.2"),
                     ({"juxtapleural": 0.7, "juxtavascular": 0.4}, "add up to 1.1"),
                     ({"juxtapleural": "x", "juxtavascular": 0.1}, "finite number"),
                     ([0.3], "mapping")):
        doc = p.to_json()
        doc["attachment"] = bad
        with pytest.raises(InputError, match=msg) as e:
            LesionProfile.from_json(doc, "bad.json")
        assert str(e.value).startswith("bad.json") and "\n" not in str(e.value)


def test_profile_without_attachment_loads_with_a_one_time_note(capsys):
    doc = _profile().to_json()
    profile_mod._NOTIFIED_ATTACHMENT.discard("old.json")
    p = LesionProfile.from_json(doc, "old.json")
    LesionProfile.from_json(doc, "old.json")
    assert capsys.readouterr().err.count("has no attachment shares") == 1
    assert p.attachment == {} and p.draw_attachment(np.random.default_rng(0)) is None


def test_drawn_attachment_shares_are_the_profiles():
    p = _profile({"juxtapleural": 0.38, "juxtavascular": 0.14})
    rng = np.random.default_rng(0)
    kinds = [p.draw_attachment(rng) for _ in range(4000)]
    for k, want in (("juxtapleural", 0.38), ("juxtavascular", 0.14), ("free", 0.48)):
        assert abs(kinds.count(k) / len(kinds) - want) < 0.025, k


def test_builtin_lung_has_attachment_shares_measured_on_the_fit_half():
    p = profile_mod.builtin_profile("lung")
    a = p.attachment
    assert a and 0.0 < a["juxtapleural"] < 1.0 and 0.0 < a["juxtavascular"] < 1.0 and "fit half" in a["measured_on"]
    results = json.loads((conftest.REPO / "benchmarks" / "results" / "lung_attachment.json").read_text())
    assert a["juxtapleural"] == results["fractions"]["juxtapleural"]
    assert a["juxtavascular"] == results["fractions"]["juxtavascular"]


# ----------------------------------------------------------------------------- placement


def _chest(shape=(60, 60, 24), spacing=(0.7, 0.7, 2.5), seed=0):
    """A lung (-850 HU, noise 20) inside soft-tissue walls (+40 HU): the lung is the allowed region."""
    rng = np.random.default_rng(seed)
    lung = np.zeros(shape, bool)
    lung[8:-8, 8:-8, 3:-3] = True
    img = np.where(lung, LUNG, TISSUE).astype(np.float32) + 20.0 * rng.standard_normal(shape).astype(np.float32)
    return img, lung, Grid(shape, spacing, (0, 1, 2), (1, 1, 1))


def test_a_juxtapleural_lesion_touches_the_wall_and_its_label_holds_no_wall():
    img, lung, grid = _chest()
    p = _profile({"juxtapleural": 1.0, "juxtavascular": 0.0})
    rng = np.random.default_rng(3)
    for _ in range(3):
        r, params, _ = draw_lesion(p, img, lung, grid, rng)
        assert r is not None and r.record["attachment"] == {"drawn": "juxtapleural", "placed": "juxtapleural"}
        wall = ~lung[r.box]
        assert not (r.label & wall).any()                              # no wall voxel in the label
        touch = ndimage.binary_dilation(r.label, iterations=1) & wall
        assert touch.any()                                             # it meets the wall
        out = np.asarray(img[r.box])
        assert np.array_equal(r.values[wall], out[wall])               # the wall is not brightened
        assert r.record["visibility"]["visible"]


def test_juxtapleural_centres_lie_at_the_contact_depth():
    img, lung, grid = _chest()
    rng = np.random.default_rng(0)
    params = conftest.lesion_params(diameter_mm=6.0)
    for _ in range(20):
        c = sample_centre(lung, grid.spacing, params, rng, attachment="juxtapleural")
        d = local_depth(lung, grid.spacing, c, 10.0)
        assert PLEURAL_DEPTH_RADII[0] * 3.0 - 1e-6 < d <= PLEURAL_DEPTH_RADII[1] * 3.0 + 1e-6
        f = sample_centre(lung, grid.spacing, params, rng, attachment="free")
        assert local_depth(lung, grid.spacing, f, 10.0) > 3.0 + 1.5


def test_a_juxtavascular_lesion_lies_beside_a_vessel_and_away_from_the_wall():
    img, lung, grid = _chest(shape=(60, 60, 30), spacing=(0.7, 0.7, 0.7))
    img[:, 28:32, 13:17] = TISSUE  # a 2.8 mm vessel across the lung
    rng = np.random.default_rng(1)
    params = conftest.lesion_params(diameter_mm=6.0)
    for _ in range(10):
        c = vessel_centre(img, lung, grid.spacing, params, rng)
        assert c is not None
        # the vessel runs within a radius of the centre; the wall is farther than a free lesion's margin
        dy, dz = max(0, abs(c[1] - 29.5) - 2) * 0.7, max(0, abs(c[2] - 14.5) - 2) * 0.7
        assert np.hypot(dy, dz) <= 3.0 + 0.8
        assert local_depth(lung, grid.spacing, c, 10.0) > 3.0 + 1.5
    # no vessel: no juxtavascular centre
    bare, _, _ = _chest(shape=(60, 60, 30), spacing=(0.7, 0.7, 0.7))
    assert vessel_centre(bare, lung, grid.spacing, params, rng, attempts=20) is None


def test_written_lesions_keep_the_profiles_shares():
    """Over lesions drawn with the visibility check, the placed kinds are the profile's shares (the redraws
    keep the drawn kind). A literature profile (one render per lesion, no calibration pass) keeps it quick."""
    img, lung, grid = _chest(shape=(48, 48, 16))
    fitted = _profile()
    dists = {f: {"dist": "uniform", "low": min(a, b), "high": max(a, b) + 1e-9}
             for f, a, b in zip(fitted.columns, fitted.rows[0], fitted.rows[1])}
    p = LesionProfile("lung", "literature", (), dists, fitted.summary, {}, "t",
                      attachment={"juxtapleural": 0.5, "juxtavascular": 0.0})
    rng = np.random.default_rng(5)
    kinds = []
    for _ in range(16):
        r, _, _ = draw_lesion(p, img, lung, grid, rng)
        assert r is not None and r.record["attachment"]["drawn"] == r.record["attachment"]["placed"]
        kinds.append(r.record["attachment"]["placed"])
    assert 3 <= kinds.count("juxtapleural") <= 13  # binomial(16, 0.5): 99.6 % inside
