"""The patient-wise split of the LIDC nodule crops (training pool, validation, test; stored and reused)
and the K labelled crops of each seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import Failure


SPLIT_SEED = 0
TEST_PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0003")  # their whole chests are test scans
TEST_FRACTION, VAL_FRACTION = 0.25, 0.08


def patient_of(name: str) -> str:
    return name.split("_")[0]


def crop_entries(vois: Path) -> list[dict]:
    """One entry per LIDC crop: image, label (1 = nodule), case name, patient."""
    images = sorted((vois / "images").glob("*.nii.gz"))
    if not images:
        raise Failure(f"{vois}: no crops in images/")
    out = []
    for p in images:
        lab = vois / "labels" / p.name
        if not lab.exists():
            raise Failure(f"{lab}: label of {p.name} not found")
        case = p.name[: -len(".nii.gz")]
        out.append({"image": str(p), "label": str(lab), "case": case, "patient": patient_of(case)})
    return out


def make_split(cases: list[str], seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION,
               val_fraction: float = VAL_FRACTION, forced_test=TEST_PATIENTS) -> dict:
    """Patient-wise split of crop case names into ``pool``, ``val`` and ``test`` (deterministic in
    ``cases`` and ``seed``): patients in a seeded order, the forced ones first into test, test filled to
    ``test_fraction`` of the crops, then validation to ``val_fraction``, the rest the training pool."""
    by_patient: dict[str, list[str]] = {}
    for c in sorted(cases):
        by_patient.setdefault(patient_of(c), []).append(c)
    patients = sorted(by_patient)
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    order = [p for p in forced_test if p in by_patient] + [p for p in order if p not in forced_test]
    parts = {"test": [], "val": [], "pool": []}
    targets = (("test", test_fraction * len(cases)), ("val", val_fraction * len(cases)))
    k = 0
    for part, target in targets:
        while k < len(order) and len(parts[part]) < target:
            parts[part] += by_patient[order[k]]
            k += 1
    for p in order[k:]:
        parts["pool"] += by_patient[p]
    out = {"seed": seed, "fractions": {"test": test_fraction, "val": val_fraction}, "forced_test": list(forced_test)}
    for part in ("pool", "val", "test"):
        names = sorted(parts[part])
        out[part] = {"crops": names, "patients": sorted({patient_of(c) for c in names})}
    return out


def load_split(path: Path, cases: list[str], seed: int, store: bool = True) -> dict:
    """The stored split when it covers exactly ``cases``; else a new one, stored at ``path`` (with ``store``)."""
    if path.exists():
        try:
            split = json.loads(path.read_text())
            stored = sorted(c for part in ("pool", "val", "test") for c in split[part]["crops"])
        except (OSError, ValueError, KeyError, TypeError):
            raise Failure(f"{path}: not a split file of this experiment (delete it or pass --split NEW.json)")
        if stored != sorted(cases):
            raise Failure(f"{path}: the stored split lists {len(stored)} crops, the data has {len(cases)} others "
                          f"(delete it or pass --split NEW.json)")
        return split
    split = make_split(cases, seed)
    if not store:
        return split
    split["note"] = ("patient-wise split of the lidc_nodule_vois crops for benchmarks/experiment_fewlabel_lung.py; "
                     "made once with make_split and reused")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(split, indent=1) + "\n")
    tmp.replace(path)
    return split


def labelled_crops(pool: list[str], k: int, seed: int) -> list[str]:
    """K pool crops from K different patients, drawn by ``seed`` (the first 10 of K = 30 are those of K = 10)."""
    by_patient: dict[str, list[str]] = {}
    for c in sorted(pool):
        by_patient.setdefault(patient_of(c), []).append(c)
    patients = sorted(by_patient)
    rng = np.random.default_rng([SPLIT_SEED, 1000 + seed])
    order = [patients[i] for i in rng.permutation(len(patients))]
    if k > len(order):
        raise Failure(f"K = {k} needs {k} pool patients, the pool has {len(order)}")
    return [by_patient[p][int(rng.integers(len(by_patient[p])))] for p in order[:k]]
