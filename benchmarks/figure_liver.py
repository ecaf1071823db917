"""Figure of docs/benchmarks/realism-liver.md: real IRCAD liver tumours (top) and builtin:liver lesions
of the same diameters drawn into the same liver (bottom), axial slices through the centres, one window
(-60..240 HU), no outlines. ``python benchmarks/figure_liver.py [--seed 0]`` writes
docs/images/realism-liver.png (Real CT, 3D-IRCADb-01 patient 1)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402

TUMOURS = ("livertumor02", "livertumor05", "livertumor03", "livertumor07")
WINDOW = (-60, 240)


def main(argv=None) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from freetumor.grids import Grid
    from freetumor.io import load_volume
    from freetumor.lesions.profile import load_profile
    from freetumor.lesions.render import render_lesion, sample_centre

    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "realism-liver.png")
    a = ap.parse_args(argv)
    d = a.datasets / "ircadb01_liver01"
    image = load_volume(d / "image.nii.gz")
    img = np.asarray(image.array, np.float32)
    lab = np.asarray(load_volume(d / "label.nii.gz").array)
    grid = Grid.of(image)
    tum = lab == 2
    bb = tuple(slice(int(v.min()), int(v.max()) + 1) for v in np.nonzero(lab > 0))
    far = np.zeros(lab.shape, bool)
    far[bb] = ndimage.distance_transform_edt(~tum[bb], sampling=grid.spacing) > 10.0
    allowed = (lab == 1) & far
    prof = load_profile("builtin:liver", "liver")
    rng = np.random.default_rng(a.seed)
    fig, ax = plt.subplots(2, len(TUMOURS), figsize=(3 * len(TUMOURS), 6.2))
    for i, t in enumerate(TUMOURS):
        m = np.asarray(load_volume(d / "masks" / f"{t}.nii.gz").array) > 0
        diam = float((6.0 * m.sum() * np.prod(grid.spacing) / np.pi) ** (1 / 3))
        z = int(np.median(np.nonzero(m)[2]))
        c = np.round(ndimage.center_of_mass(m[:, :, z])).astype(int)
        ax[0, i].imshow(img[c[0] - 45:c[0] + 45, c[1] - 45:c[1] + 45, z].T, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
        ax[0, i].set_title(f"real {t[-2:]}, {diam:.0f} mm", fontsize=9)
        p = prof.sample(rng)
        p.update(diameter_mm=diam, attached_fraction=0.0)
        centre = sample_centre(allowed, grid.spacing, p, rng)
        r = render_lesion(img, allowed, grid, centre, p, rng, protect=tum, hide_wide_structure=True, calibrate=True)
        out = img.copy()
        out[r.box] = r.values
        c = r.centre
        ax[1, i].imshow(out[c[0] - 45:c[0] + 45, c[1] - 45:c[1] + 45, c[2]].T, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
        ax[1, i].set_title(f"builtin:liver, {diam:.0f} mm", fontsize=9)
    for x in ax.ravel():
        x.axis("off")
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=80)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
