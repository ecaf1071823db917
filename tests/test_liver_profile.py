"""builtin:liver: a combined profile (appearance fitted on the real IRCAD liver tumours, size from the
literature), its reproducibility from the shared scan, and its rendering into that real liver."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from freetumor.errors import InputError
from freetumor.lesions.profile import BUILTIN_DIR, FEATURE_ORDER, LesionProfile, load_profile

from conftest import DATASETS, REPO, need

IRCAD = DATASETS / "ircadb01_liver01"


def _fit_script():
    spec = importlib.util.spec_from_file_location("fit_liver_profile", REPO / "benchmarks" / "fit_liver_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_builtin_liver_is_combined_with_per_feature_provenance():
    p = load_profile("builtin:liver", "liver")
    assert p.kind == "combined" and len(p.rows) == 6 and set(p.distributions) == {"diameter_mm"}
    prov = p.source["provenance"]
    assert set(prov) == set(FEATURE_ORDER)
    assert {f for f, v in prov.items() if v["from"] == "literature"} == {"diameter_mm"}
    assert all(v["from"] == "fit" for f, v in prov.items() if f != "diameter_mm")
    assert p.source["count"]["from"] == "literature" and "Real CT" in p.source["data"]
    assert "/work/" not in json.dumps(p.to_json())  # no machine path
    # the size comes from the literature profile, the appearance from the real rows
    lit = load_profile("builtin:liver-literature", "liver")
    assert p.distributions["diameter_mm"] == lit.distributions["diameter_mm"]
    rng = np.random.default_rng(0)
    draws = [p.sample(rng) for _ in range(500)]
    c = np.array([d["contrast_hu"] for d in draws])
    rows = np.asarray(p.rows)
    j = FEATURE_ORDER.index("contrast_hu")
    assert c.max() < 0 and rows[:, j].min() <= c.min() and c.max() <= rows[:, j].max()
    d = np.array([d["diameter_mm"] for d in draws])
    assert 12 < np.median(d) < 25 and d.max() > rows[:, 0].max()  # literature sizes, wider than the 6 tumours


def test_combined_profile_round_trips_and_validates(tmp_path):
    rows = [[6.0, 0.9, 0.8, 0.95, -30.0, 0.4, 0.3, 15.0, 8.0, 2.0, 0.1],
            [12.0, 0.8, 0.7, 0.90, -45.0, 0.5, 0.2, 20.0, 9.0, 2.5, 0.3]]
    dist = {"diameter_mm": {"dist": "lognormal", "median": 18.0, "sigma": 0.75, "min": 5.0, "max": 120.0}}
    p = LesionProfile.combined("liver", rows, dist, {"kind": "combined"}, "t", summary_draws=2000)
    q = LesionProfile.from_json(json.loads(json.dumps(p.to_json())), "p.json")
    assert q == p
    assert abs(p.summary["diameter_mm"]["median"] - 18.0) < 2.0 and p.summary["contrast_hu"]["median"] == -37.5
    bad = p.to_json()
    bad["distributions"] = {"size": dist["diameter_mm"]}
    with pytest.raises(InputError, match="combined lesion profile distributions"):
        LesionProfile.from_json(bad, "p.json")
    # older profiles (fitted, literature) still load
    assert load_profile("builtin:lung").kind == "fitted" and load_profile("builtin:kidney").kind == "literature"


def test_shipped_liver_profile_is_what_the_script_fits():
    """The shipped rows are a fresh `lesions fit` of the real scan's hypo-attenuating tumours."""
    need(IRCAD / "label.nii.gz")
    mod = _fit_script()
    rows, _ = mod.fit_rows(DATASETS)
    shipped = json.loads((BUILTIN_DIR / "liver.json").read_text())
    j = FEATURE_ORDER.index("contrast_hu")
    assert len(rows) == 7
    kept = [r for r in rows if r[j] < 0]
    np.testing.assert_allclose(np.asarray(kept), np.asarray(shipped["rows"]), atol=1e-4)
    assert shipped["source"]["excluded"]["rows"][0]["tumour"] == "livertumor04"
