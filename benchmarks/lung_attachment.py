"""Attachment of real lung nodules (issue 23): the share against the chest wall or mediastinum (juxtapleural)
and against a vessel only (juxtavascular), measured on Real CT.

Data: the shared LIDC-IDRI nodule crops (``lidc_nodule_vois``), **fit half only** of the patient-wise split of
``benchmarks/realism_lung.py`` (seed ``--seed``); the held-out quarters are never measured. Each nodule is
cropped and resampled to 1 mm as ``freetumor lesions fit`` does and measured by
:func:`freetumor.lesions.attachment.crop_attachment`. Writes ``benchmarks/results/lung_attachment.json``
(shares, median diameter per kind, shares by size); with ``--update-profile`` also stores the shares in
``builtin:lung`` (its optional ``attachment`` field).

    PYTHONPATH=src python benchmarks/lung_attachment.py --update-profile
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import portable  # noqa: E402
from realism_lung import DATASETS, REPO, lidc_voi_entries, split_patients  # noqa: E402

import numpy as np  # noqa: E402

PROFILE = REPO / "src" / "freetumor" / "lesion_profiles" / "lung.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lung_attachment.json")
    ap.add_argument("--update-profile", action="store_true", help="store the shares in builtin:lung")
    args = ap.parse_args()
    if not (DATASETS / "lidc_nodule_vois").is_dir():
        print(f"real CT not available: {DATASETS / 'lidc_nodule_vois'}", file=sys.stderr)
        return 2
    from freetumor.io import case_name, load_volume
    from freetumor.lesions.attachment import attachment_fractions, crop_attachment
    from freetumor.lesions.features import extract_crops
    from freetumor.lesions.measure import FIT_MARGIN_MM, MIN_VOXELS

    t0 = time.time()
    fit_e, _, _ = split_patients(lidc_voi_entries(), args.seed)
    kinds, diam, contact = [], [], []
    for e in fit_e:
        img, lab = load_volume(e["image"]), load_volume(e["label"])
        for c in extract_crops(img, lab, 1, "real", case_name(e["image"]), margin_mm=FIT_MARGIN_MM,
                               min_voxels=MIN_VOXELS):
            a = crop_attachment(c)
            kinds.append(a["kind"])
            diam.append(float((6.0 * c.meta["volume_ml"] * 1000.0 / np.pi) ** (1.0 / 3.0)))
            contact.append(a["wall_contact_mm2"])
    fr = attachment_fractions(kinds)
    diam = np.asarray(diam)
    by_size = {}
    for lo, hi in ((0, 6), (6, 10), (10, 20), (20, 1000)):
        sel = [k for k, d in zip(kinds, diam) if lo <= d < hi]
        if sel:
            by_size[f"{lo}-{hi} mm" if hi < 1000 else f">={lo} mm"] = attachment_fractions(sel)
    wall_contact = [c for c, k in zip(contact, kinds) if k == "juxtapleural"]
    doc = {
        "data": "Real CT only: LIDC-IDRI nodule crops (lidc_nodule_vois), fit half of the patient-wise split of "
                f"benchmarks/realism_lung.py (seed {args.seed}; {len({Path(e['image']).name.split('_')[0] for e in fit_e})} "
                "patients); held-out quarters not measured",
        "command": "PYTHONPATH=src python benchmarks/lung_attachment.py " + " ".join(sys.argv[1:]),
        "definition": "freetumor.lesions.attachment: juxtapleural = in a main slice the nodule is within 2 mm of "
                      "dense tissue (smoothed HU > -500) that reaches the crop border and holds a 3 mm-radius disc; "
                      "juxtavascular = not juxtapleural, within 2 mm of a thin tube (no 3 mm-radius ball, >= 3 mm long)",
        "fractions": {k: fr[k] for k in ("juxtapleural", "juxtavascular", "free")},
        "lesions": fr["lesions"],
        "median_diameter_mm": {k: round(float(np.median(diam[[x == k for x in kinds]])), 2)
                               for k in ("juxtapleural", "juxtavascular", "free") if k in kinds},
        "by_size": by_size,
        "wall_contact_mm2_median": round(float(np.median(wall_contact)), 1) if wall_contact else None,
        "caveat": "the crops are tight (median 31 x 31 x 7.5 mm): a wall just outside a crop is not seen, and a "
                  "crop's thick slices blur contact; no radiologist rating of attachment exists in the set to check against",
        "seconds": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(portable(json.dumps(doc, indent=1)) + "\n")
    print(json.dumps(doc, indent=1))
    if args.update_profile:
        prof = json.loads(PROFILE.read_text())
        prof["attachment"] = {"juxtapleural": fr["juxtapleural"], "juxtavascular": fr["juxtavascular"],
                              "lesions": fr["lesions"],
                              "measured_on": f"fit half of the shared LIDC crops (seed {args.seed}, "
                                             "benchmarks/results/lung_attachment.json; freetumor.lesions.attachment)"}
        PROFILE.write_text(json.dumps(prof, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
