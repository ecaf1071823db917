"""The CNN reader of `freetumor realism --reader cnn` on tiny synthetic crops (seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from freetumor.errors import ConfigError
from freetumor.evaluation.realism.cnn import cnn_grid, cnn_input, cnn_reader
from freetumor.lesions.features import LesionCrop

GRID = {"px": 12, "slices": 4, "inplane_mm": 1.0, "slice_mm": 2.5, "margin_mm": 3.5, "slice_margin_mm": 0.0,
        "pad_hu": -1000.0}
WINDOW = (-1000.0, 500.0)


def _crop(rng, k: int, kind: str, source: str, spacing=(1.0, 1.0, 2.5)) -> LesionCrop:
    shape = (18, 18, 6)
    z, y, x = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape), indexing="ij")
    r = np.sqrt(z ** 2 + y ** 2 + (x * spacing[2]) ** 2)
    mask = r <= 4.0 + rng.uniform(0, 1.5)
    img = rng.normal(-800.0, 40.0, shape)
    if kind == "smooth":      # a homogeneous solid lesion
        img[mask] = rng.normal(20.0, 15.0, int(mask.sum()))
    else:                     # a salt-and-pepper interior
        img[mask] = rng.choice([-500.0, 300.0], int(mask.sum()))
    img = img.astype(np.float32)
    meta = {"native_spacing": list(spacing), "volume_ml": float(mask.sum() * np.prod(spacing) / 1000)}
    return LesionCrop(source, f"{source}{k // 3}", k % 3 + 1, img, mask, spacing, meta,
                      native_image=img, native_mask=mask)


def test_grid_and_input_geometry():
    rng = np.random.default_rng(0)
    thin = [_crop(rng, k, "smooth", "real", (0.7, 0.7, 1.25)) for k in range(3)]
    thick = [_crop(rng, k, "smooth", "synthetic", (0.8, 0.8, 2.5)) for k in range(3)]
    g = cnn_grid([thin, thick], px=16, slices=6)
    assert g["slice_mm"] == 2.5 and g["inplane_mm"] == pytest.approx(0.75)  # thicker slices, native in-plane
    x = cnn_input(thin[0], g, WINDOW)
    assert x.shape == (16, 16, 6) and x.dtype == np.float32 and -1 <= x.min() <= x.max() <= 1
    # outside the box (lesion z-extent: 6 slices of 1.25 mm = 7.5 mm, centred) reads the pad: samples at
    # +-1.25, +-3.75, +-6.25 mm, so the first and last lie outside
    assert np.all(x[:, :, 0] == -1.0) and np.all(x[:, :, -1] == -1.0) and x[:, :, 1:5].min() > -1.0


def test_separates_obviously_different_crops():
    rng = np.random.default_rng(1)
    real = [_crop(rng, k, "smooth", "real") for k in range(24)]
    syn = [_crop(rng, k, "grainy", "synthetic") for k in range(24)]
    res = cnn_reader(real, syn, WINDOW, folds=3, seed=0, grid=GRID, epochs=12)
    assert res["auc"] > 0.9 and res["folds"] == 3 and res["groups"] == {"real": 8, "synthetic": 8}
    assert len(res["oof"]) == 48 and res["auc_ci95"][0] <= res["auc"] <= res["auc_ci95"][1]


def test_identical_distributions_near_chance_and_deterministic():
    rng = np.random.default_rng(2)
    crops = [_crop(rng, k, "smooth", "real") for k in range(48)]
    a = [c for i, c in enumerate(crops) if i % 2 == 0]
    b = [LesionCrop("control", "c" + c.case, c.index, c.image, c.mask, c.spacing, c.meta, None, c.native_image,
                    c.native_mask) for i, c in enumerate(crops) if i % 2 == 1]
    res = cnn_reader(a, b, WINDOW, folds=3, seed=0, grid=GRID, epochs=6)
    assert abs(res["auc"] - 0.5) < 0.2
    again = cnn_reader(a, b, WINDOW, folds=3, seed=0, grid=GRID, epochs=6)
    assert again["auc"] == res["auc"] and again["oof"] == res["oof"]


def test_fewer_than_20_lesions_per_side_is_an_error():
    rng = np.random.default_rng(3)
    real = [_crop(rng, k, "smooth", "real") for k in range(25)]
    syn = [_crop(rng, k, "grainy", "synthetic") for k in range(19)]
    with pytest.raises(ConfigError, match="at least 20 lesions per side, got 25 real and 19 synthetic"):
        cnn_reader(real, syn, WINDOW, grid=GRID)
    one_case = [_crop(rng, 0, "grainy", "synthetic") for _ in range(20)]
    with pytest.raises(ConfigError, match="at least 2 cases per side"):
        cnn_reader(real, one_case, WINDOW, grid=GRID)
