"""Regenerate ``builtin:liver`` (``src/freetumor/lesion_profiles/liver.json``) from the real IRCAD scan.

``builtin:liver`` is a *combined* profile (:mod:`freetumor.lesions.profile`):

* the appearance of every drawn lesion (shape, contrast to the liver, edge, label generosity,
  texture, wall contact) is one row measured on a real liver tumour of 3D-IRCADb-01 patient 1
  (``../shared/datasets/ircadb01_liver01``), exactly as ``freetumor lesions fit`` measures it;
  equivalent to::

      echo '[{"image": ".../ircadb01_liver01/image.nii.gz", "label": ".../ircadb01_liver01/label.nii.gz"}]' > dl.json
      freetumor lesions fit --datalist dl.json --organ liver --label-map abdomen7 --out fit.json

  then only the hypo-attenuating rows (``contrast_hu < 0``) are kept: the profile models
  hypo-attenuating lesions (livertumor04, +6 HU, is nearly iso-attenuating and its edge_norm,
  a gradient divided by that 6 HU, is 3.4/mm);
* the size (``diameter_mm``) is the literature distribution of ``builtin:liver-literature``
  (the earlier literature-only profile, kept as it was): 6 tumours of one patient cannot give a
  size distribution.
* the number of lesions per liver (``source.count``) is not a per-lesion feature; it is recorded
  from the literature profile's reasoning (an assumption) and ``synthesize --count`` still sets it.

Usage (writes the shipped file; ``--out`` elsewhere to compare)::

    python benchmarks/fit_liver_profile.py [--datasets ../shared/datasets] [--out PATH]

``tests/test_liver_profile.py`` checks that the shipped file equals what this produces.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, portable  # noqa: E402

from freetumor.lesions.fit import fit_datalist  # noqa: E402
from freetumor.lesions.profile import FEATURE_ORDER, OPTIONAL_ORDER, BUILTIN_DIR, LesionProfile  # noqa: E402

SCAN = "ircadb01_liver01"
LITERATURE = BUILTIN_DIR / "liver-literature.json"
OUT = BUILTIN_DIR / "liver.json"
FROM_LITERATURE = ("diameter_mm",)
TUMOURS = ("livertumor01", "livertumor02", "livertumor03", "livertumor04", "livertumor05", "livertumor06",
           "livertumor07")


def fit_rows(datasets: Path, label: str = "label.nii.gz") -> tuple[list[list[float]], dict]:
    """The ``lesions fit`` rows of every liver tumour of the scan (label 2 of ``label``)."""
    scan = datasets / SCAN
    with tempfile.TemporaryDirectory() as tmp:
        dl = Path(tmp) / "ircadb01_liver01.json"
        dl.write_text(json.dumps([{"image": str(scan / "image.nii.gz"), "label": str(scan / label)}]))
        prof = fit_datalist(dl, "liver", Path(tmp) / "fit.json", label_map="abdomen7")
    return [list(r) for r in prof.rows], prof.source


def build(datasets: Path) -> LesionProfile:
    rows, fit_source = fit_rows(datasets)
    kept = [r for r in rows if r[FEATURE_ORDER.index("contrast_hu")] < 0]
    lit = json.loads(LITERATURE.read_text(encoding="utf-8"))
    dists = {f: lit["distributions"][f] for f in FROM_LITERATURE}
    fitted = [f for f in FEATURE_ORDER + OPTIONAL_ORDER if f not in FROM_LITERATURE]
    provenance = {f: {"from": "fit", "how": f"measured on the {len(kept)} hypo-attenuating real tumours "
                                            "(one row per tumour, drawn jointly with a 0.1 SD jitter)"}
                  for f in fitted}
    for f in FROM_LITERATURE:
        provenance[f] = {"from": "literature", "how": "builtin:liver-literature: " + lit["source"]["notes"][f]["how"],
                         "status": lit["source"]["notes"][f]["status"]}
    source = {
        "kind": "combined",
        "description": "hypo-attenuating liver tumours in contrast-enhanced (portal-venous) CT: appearance measured on "
                       "the real liver tumours of one scan, size from the literature profile",
        "data": "Real CT (3D-IRCADb-01 patient 1): 7 liver tumours of 0.4-84 mL, 0.57x0.57x1.6 mm",
        "datalist": portable(str(datasets / SCAN / "label.nii.gz")),
        "command": "freetumor lesions fit --datalist DL.json --organ liver --label-map abdomen7 --out fit.json "
                   "(DL.json: image.nii.gz + label.nii.gz of the scan); python benchmarks/fit_liver_profile.py",
        "label_map": "abdomen7",
        "lesions_measured": len(rows),
        "lesions": len(kept),
        "excluded": {"rule": "contrast_hu >= 0 (not hypo-attenuating)",
                     "rows": [{"tumour": t, "contrast_hu": r[FEATURE_ORDER.index("contrast_hu")],
                               "edge_norm": r[FEATURE_ORDER.index("edge_norm")]}
                              for t, r in zip(_tumour_names(datasets, rows), rows)
                              if r[FEATURE_ORDER.index("contrast_hu")] >= 0]},
        "measured_at_mm": fit_source.get("measured_at_mm", 1.0),
        "provenance": provenance,
        "count": {"from": "literature", "status": "assumed",
                  "how": "lesions per liver are not a per-lesion feature and one scan cannot give their distribution; "
                         "LiTS (Bilic et al. 2023) has scans with none to many tumours. `synthesize --count` (default 1) "
                         "sets the number; this scan has 7."},
        "citations": {"3D-IRCADb-01": "Soler L, Hostettler A, Agnus V, et al. 3D image reconstruction for comparison of "
                                      "algorithm database: a patient-specific anatomical and medical image database. "
                                      "IRCAD, Strasbourg, 2010",
                      **lit["source"]["citations"]},
        "caveats": ["one patient, one scan, one phase: the appearance rows are 6 tumours of one liver",
                    "hyper-attenuating (hypervascular) lesions are not modelled",
                    "size from the literature profile (an assumption, see provenance)"],
        "refit": "python benchmarks/fit_liver_profile.py (needs ../shared/datasets/ircadb01_liver01)",
    }
    return LesionProfile.combined("liver", kept, dists, source, "liver-ircad-combined", optional=OPTIONAL_ORDER)


def _tumour_names(datasets: Path, rows) -> list[str]:
    """Which source mask (``masks/livertumorNN``) each row is: the fit's lesions are the 26-connected
    components of the tumour label in ``scipy.ndimage.label`` order (``extract_crops``)."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from freetumor.lesions.measure import MIN_VOXELS

    scan = datasets / SCAN
    lab = np.asarray(nib.load(scan / "label.nii.gz").dataobj) == 2
    comps, n = ndimage.label(lab, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    masks = {t: np.asarray(nib.load(scan / "masks" / f"{t}.nii.gz").dataobj) > 0 for t in TUMOURS}
    names = []
    for k in range(1, n + 1):
        if sizes[k] < MIN_VOXELS:
            continue
        comp = comps == k
        names.append(max(TUMOURS, key=lambda t: int(np.count_nonzero(masks[t] & comp))))
    return names if len(names) == len(rows) else ["?"] * len(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    prof = build(a.datasets)
    prof.save(a.out)
    print(f"{len(prof.rows)} rows; wrote {portable(str(a.out))}")
    for f in FEATURE_ORDER + OPTIONAL_ORDER:
        s = prof.summary[f]
        print(f"  {f:18s} {prof.source['provenance'][f]['from']:10s} median {s['median']:9.3f}  5-95% {s['p5']:.3f} .. {s['p95']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
