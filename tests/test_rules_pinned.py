"""Rules pinned by value, each by a test that fails when the rule is changed (mutation check of
issue 15): QC's visibility rule and its organ-limited contrast ring, the McNemar test of
``compare`` (two-sided) and its early-lesion selection (< 20 mm), the blend equation's scale."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from freetumor.config import QCConfig
from freetumor.evaluation.compare import compare_reports
from freetumor.evaluation.stats import mcnemar_exact
from freetumor.evaluation.tables import CASE_METRICS
from freetumor.organs import ORGAN_NAMES, get_organ
from freetumor.quality import cheap_scores, decide
from freetumor.synthesis import blend

LIVER = get_organ("liver")  # tumour contrast -300..-5 HU


# ----------------------------------------------------------------------------- quality control
def _cube(shape=(24, 24, 24), lo=9, hi=15) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return m


def test_qc_visibility_alone_rejects_a_faint_tumour():
    """Inside the organ, with a plausible contrast, but changed by less than visible_hu: only the
    visibility rule can reject it (it is the one reason given), and 20 HU more makes it pass."""
    fake = _cube()
    organ = np.ones(fake.shape, bool)
    before = np.full(fake.shape, 60.0)
    before[fake] = 20.0  # already darker: the contrast after synthesis is plausible anyway
    settings = QCConfig()
    faint = cheap_scores(before, before - 5.0 * fake, fake, organ, (1.0, 1.0, 1.0))
    assert faint["visible_mm3"] == 0.0 and faint["inside_fraction"] == 1.0
    assert -300 <= faint["contrast_hu"] <= -5
    d = decide(faint, LIVER, settings)
    assert not d.accepted
    assert len(d.reasons) == 1 and d.reasons[0].startswith("visible volume 0.0 mm3")
    clear = cheap_scores(before, before - 20.0 * fake, fake, organ, (1.0, 1.0, 1.0))
    assert clear["visible_mm3"] == fake.sum() == 216
    assert decide(clear, LIVER, settings).accepted


def test_qc_contrast_ring_lies_in_the_organ():
    """A tumour at the organ's edge: the ring around it reaches air outside the organ, which must not
    count. Ring in the organ: 60 HU, tumour 20 HU -> contrast exactly -40 HU, accepted; a ring that
    took the air too would give a large positive contrast and a rejection."""
    shape = (24, 24, 24)
    organ = np.zeros(shape, bool)
    organ[:, :, :14] = True  # the organ ends at k = 14; the tumour below touches k = 13
    fake = np.zeros(shape, bool)
    fake[9:15, 9:15, 8:14] = True
    before = np.where(organ, 60.0, -1000.0)
    after = np.where(fake, 20.0, before)
    s = cheap_scores(before, after, fake, organ, (1.0, 1.0, 1.0), shell_mm=5.0)
    assert s["inside_fraction"] == 1.0
    assert s["contrast_hu"] == pytest.approx(-40.0, abs=1e-9)
    d = decide(s, LIVER, QCConfig())
    assert d.accepted, d.reasons


# ----------------------------------------------------------------------------- compare: McNemar
def _report(folder, name: str, lesions: list[tuple[str, int, float, bool]]):
    """An evaluation report folder as `freetumor evaluate` writes it (the files compare reads)."""
    folder.mkdir()
    cases = sorted({c for c, *_ in lesions})
    with open(folder / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["case", *CASE_METRICS])
        w.writeheader()
        for i, c in enumerate(cases):
            w.writerow({"case": c, **{k: 0.5 + 0.01 * i for k in CASE_METRICS}})
    with open(folder / "lesions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["case", "index", "diameter_mm", "volume_ml", "bin", "detected"])
        w.writeheader()
        for c, i, d, det in lesions:
            w.writerow({"case": c, "index": i, "diameter_mm": d, "volume_ml": 0.1, "bin": "x", "detected": det})
    (folder / "summary.json").write_text(json.dumps({"name": name}))
    return folder


def test_compare_mcnemar_is_two_sided_and_early_lesions_are_the_small_ones(tmp_path):
    """Ten large lesions (30 mm): B finds 9 that A misses, A finds 1 that B misses. Four early
    lesions (8 mm): A finds all, B none. Overall discordant pairs (1+4, 9): two-sided exact p =
    P(X <= 5 | n=14) * 2; early: (4, 0) -> 2 / 16 = 0.125. Both tails count the same."""
    large = [(f"c{i}", 1, 30.0, i == 0) for i in range(10)]
    small = [(f"c{i}", 2, 8.0, True) for i in range(4)]
    a = _report(tmp_path / "a", "A", large + small)
    b_large = [(c, i, d, not det) for c, i, d, det in large]
    b = _report(tmp_path / "b", "B", b_large + [(c, i, d, False) for c, i, d, _ in small])
    r = compare_reports(a, b, tmp_path / "cmp")
    det = r["lesion_detection"]
    assert (det["lesions"], det["detected_a"], det["detected_b"], det["only_a"], det["only_b"]) == (14, 5, 9, 5, 9)
    two_sided = 2 * sum(math.comb(14, k) for k in range(6)) / 2**14
    assert det["mcnemar_exact_p"] == pytest.approx(two_sided, rel=1e-12)
    early = r["early_detection"]
    assert (early["lesions"], early["detected_a"], early["detected_b"]) == (4, 4, 0)
    assert early["mcnemar_exact_p"] == pytest.approx(2 / 16, rel=1e-12)
    # the swapped comparison has the same p-values (a one-sided test would not)
    r2 = compare_reports(b, a, tmp_path / "cmp2")
    assert r2["lesion_detection"]["mcnemar_exact_p"] == pytest.approx(two_sided, rel=1e-12)
    assert r2["early_detection"]["mcnemar_exact_p"] == pytest.approx(2 / 16, rel=1e-12)


@pytest.mark.parametrize("b, c", [(0, 5), (1, 9), (2, 2), (7, 3), (0, 1)])
def test_mcnemar_exact_equals_the_two_sided_binomial_sum(b, c):
    n, k = b + c, min(b, c)
    expected = min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2**n)
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact(c, b) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- the blend equation
@pytest.mark.parametrize("organ_name", ORGAN_NAMES)
@pytest.mark.parametrize("difference", [0.2, 0.45, 0.7])
def test_blend_adds_sign_times_window_times_d_times_texture_inside_the_organ(organ_name, difference):
    """x' = x + sign * (a_max - a_min) * M * D * T on organ voxels, x elsewhere, to float32 precision."""
    organ = get_organ(organ_name)
    rng = np.random.default_rng(3)
    x = rng.uniform(-100, 100, (6, 5, 4)).astype(np.float32)
    soft = rng.uniform(0, 1, x.shape).astype(np.float32)
    texture = rng.uniform(0.3, 1.0, x.shape).astype(np.float32)
    inside = rng.random(x.shape) < 0.7
    out = blend(x, inside, soft, difference, texture, organ)
    width = organ.hu_window[1] - organ.hu_window[0]
    expected = np.where(inside, x + organ.sign * width * soft * difference * texture, x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)
    # the largest change is of the order of the window: D * T * width at a full mask
    full = blend(np.zeros((1, 1, 1), np.float32), np.ones((1, 1, 1), bool), np.ones((1, 1, 1), np.float32),
                 difference, np.ones((1, 1, 1), np.float32), organ)
    assert float(full[0, 0, 0]) == pytest.approx(organ.sign * width * difference, rel=1e-6)
