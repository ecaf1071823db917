#!/usr/bin/env python
"""Few labels, real lungs: does synthesis help when only K nodules are labelled? Real CT, through the CLI.

Data (all real, from ``../shared/datasets``; the script stops with one line when it is absent):

* **crops**: the 735 LIDC-IDRI nodule crops (``lidc_nodule_vois``), split **patient-wise** with a
  fixed seed into a training pool, a validation part and a test part (>= 150 crops; the patients of
  ``lidc_full_scans``, LIDC-IDRI-0001 and -0003, are forced into it). The split is stored
  (``--split``, default ``benchmarks/results/fewlabel_lung_split.json``) and reused on every rerun.
* **labels**: for each seed, K crops of the pool (one per patient, K = 10 and 30, the 10 inside the
  30) are the only labelled nodules any arm sees. Validation crops pick each run's ``best.pt``.
* **healthy hosts**: slabs of the three real chests that are not LIDC patients (pyradiomics lung1,
  lung2: 5 mm; NSCLC LUNG1-001: 3 mm): the slices more than 15 mm away from the scan's own tumour,
  with the model-free lung mask of ``freetumor organs --engine threshold`` as lung. The labelled
  crops' own parenchyma (away from their nodule) is lung too, so synthesis also puts nodules there.
* **test**: the test crops (Dice, NSD, detection by diameter) and the two whole thin-slice LIDC
  chests (``lidc_full_scans``; lesion-wise sensitivity and false positives per scan). The scanner's
  padding (-2048 HU outside the field of view) is set to -1000 HU in a copy before ``predict``.

Arms (``train-seg``; every number from the CLI's ``predict`` and ``evaluate``):

* ``stage0``: the K labelled crops alone (its own recipe);
* ``none``: K crops + the host slabs, no synthesis (the shared recipe);
* ``procedural``: the same, ``--synthesis profile`` with a lung profile fitted (``lesions fit``)
  on the same K labelled crops;
* ``generator``: the same, ``--synthesis generator`` with QC: a Stage-1 generator
  (``train-synth``) trained on the K crops + the host slabs, the ``stage0`` model as its frozen
  segmentor and as the QC segmentor.

Statistics: per test crop the Dice / NSD averaged over seeds; paired t / Wilcoxon tests and paired
bootstrap CIs of each synthesis arm minus ``stage0`` and minus ``none``; detection per diameter
bin (< 10, 10-20, >= 20 mm); a data-scaling curve (best synthesis arm at the first K: test Dice
against the host lung volume used, from none to all); ``--test DATALIST`` scores the same models on
another labelled nodule datalist (label map relative to it allowed; entries >= 150 mm across are
scored as whole scans).

``--out`` is a folder (work files + ``results.json``) or a ``.json`` path (the work folder is
``<stem>_work`` beside it; ``--work`` sets another). Finished steps are reused on a rerun.

    python benchmarks/experiment_fewlabel_lung.py --quick --out /tmp/fewlabel-quick.json
    python benchmarks/experiment_fewlabel_lung.py --out benchmarks/results/fewlabel_lung.json \\
        --work /tmp/fewlabel-work
    python benchmarks/experiment_fewlabel_lung.py --out ... --work /tmp/fewlabel-work --test other/nodules.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("FREETUMOR_DATASETS", REPO.parent / "shared" / "datasets"))
SPLIT_FILE = REPO / "benchmarks" / "results" / "fewlabel_lung_split.json"
CLI = [str(Path(sys.executable).parent / "freetumor")]
if not Path(CLI[0]).exists():
    CLI = [sys.executable, "-m", "freetumor.cli"]

ARMS = ("stage0", "none", "procedural", "generator")
SYNTH_ARMS = ("procedural", "generator")
SPLIT_SEED = 0
TEST_PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0003")  # their whole chests are test scans
TEST_FRACTION, VAL_FRACTION = 0.25, 0.08
WHOLE_SCAN_MM = 150.0       # an entry at least this wide in-plane is scored as a whole scan
PADDING_HU = -1500.0        # voxels at or below are scanner padding: set to AIR_HU in a copy
AIR_HU = -1000
HOST_MARGIN_MM = 15.0       # host slabs keep slices this far from the host's own tumour
MIN_SLAB_MM = 40.0
LUNG_REACH_MM = 5.0         # whole scans: predictions "in lung" = within this of the threshold lung mask
NODULES_MAP = {"name": "lidc-nodules", "organs": {"lung": {"tumor": 1}}, "labels": [0, 1]}
BRIEF = ("dice", "nsd", "sensitivity", "fp_per_scan", "sensitivity_in_lung", "fp_per_scan_in_lung",
         "fp_3mm_per_scan_in_lung")
BINS = (("<10 mm", 0.0, 10.0), ("10-20 mm", 10.0, 20.0), (">=20 mm", 20.0, math.inf))

# Geometry and sliding window of every model: 1.25 x 1.25 x 2.5 mm (the whole scans' slices; crops are
# 0.45-2.5 mm, median 1.25), 32 x 32 x 8 patches (40 x 40 x 20 mm: a median crop, 31 x 31 x 7.5 mm, padded);
# sliding windows without overlap (a crop is one window; a whole chest costs half as much as at 0.25).
GEOMETRY = ["data.spacing=[1.25,1.25,2.5]", "data.roi_size=[32,32,8]", "data.num_samples=4", "data.cache=true",
            "val.overlap=0", "val.sw_batch_size=32"]
RECIPE = ["train.lr=3e-3", "train.warmup_steps=20", "synth.online_prob=0.5"]  # none / procedural / generator
STAGE0_RECIPE = ["train.lr=3e-3", "train.warmup_steps=20"]   # the labelled-only baseline
SYNTH_RECIPE = ["data.num_samples=2", "synth.probe_samples=4", "synth.epoch_steps=50"]

FULL = {"k": [10, 30], "seeds": 3, "steps": 350, "synth_steps": 100, "curve_seeds": 1}
QUICK = {"k": [10], "seeds": 1, "steps": 200, "synth_steps": 50, "curve_seeds": 0}


class Failure(Exception):
    """A one-line error: the file and the problem."""


# ----------------------------------------------------------------------------- running the CLI
def sh(args: list, log: list, quiet: bool = True) -> str:
    """Run ``freetumor ARGS``; logs the command, its wall time and its CPU time (user + system)."""
    cmd = [*CLI, *map(str, args)]
    t, c = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.append({"cmd": "freetumor " + " ".join(map(str, args)), "rc": r.returncode,
                "seconds": round(time.perf_counter() - t, 1),
                "cpu_seconds": round(c1.ru_utime - c.ru_utime + c1.ru_stime - c.ru_stime, 1)})
    if not quiet:
        print(f"[{log[-1]['seconds']:6.1f} s] {log[-1]['cmd'][:160]}", file=sys.stderr, flush=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-3000:])
        raise Failure(f"freetumor {args[0]}: failed (exit {r.returncode}): {' '.join(map(str, args))[:300]}")
    return r.stdout


def sets(opts: list[str]) -> list[str]:
    return [x for o in opts for x in ("--set", o)]


# ----------------------------------------------------------------------------- crops and the split
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


def load_split(path: Path, cases: list[str], seed: int) -> dict:
    """The stored split when it covers exactly ``cases``; else a new one, stored at ``path``."""
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


# ----------------------------------------------------------------------------- labels, hosts, test sets
def fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    from scipy import ndimage

    moved = np.moveaxis(mask, axis, 0)
    return np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in moved]), 0, axis)


def ball(radius_mm: float, spacing) -> np.ndarray:
    reach = [max(1, int(np.ceil(radius_mm / s))) for s in spacing]
    g = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    return sum((x * s / radius_mm) ** 2 for x, s in zip(g, spacing)) <= 1.0


def write_crop_chest3(entry: dict, dst: Path) -> None:
    """A crop's label in the chest3 convention: 2 nodule, 1 lung parenchyma (air below -320 HU with its
    vessels filled in slice by slice, minus 2 mm around the nodule), 0 else."""
    from scipy import ndimage

    from freetumor.io import load_volume, save_volume

    if dst.exists():
        return
    img, lab = load_volume(entry["image"]), load_volume(entry["label"])
    nodule = np.asarray(lab.array) > 0
    axis = img.axis_of("S")
    lung = fill_slices(np.asarray(img.array) < -320, axis)
    near = ndimage.binary_dilation(nodule, structure=ball(2.0, img.spacing))
    out = np.where(lung & ~near, 1, 0).astype(np.uint8)
    out[nodule] = 2
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_volume(lab.with_array(out), dst)


HOSTS = {
    "pyradiomics_lung1": ("pyradiomics_lung/lung1_image.nii.gz", "pyradiomics_lung/lung1_label.nii.gz"),
    "pyradiomics_lung2": ("pyradiomics_lung/lung2_image.nii.gz", "pyradiomics_lung/lung2_label.nii.gz"),
    "nsclc_lung1_001": ("nsclc_radiomics_lung1_001/image.nii.gz", "nsclc_radiomics_lung1_001/label.nii.gz"),
}


def host_slabs(name: str, work: Path, log: list) -> list[dict]:
    """Tumour-free slabs of one host chest: slices farther than HOST_MARGIN_MM from its tumour (label 1),
    at least MIN_SLAB_MM thick, image copied as is, label chest3 (1 = threshold lung of the whole chest)."""
    from freetumor.io import Volume, load_volume, save_volume

    img_rel, lab_rel = HOSTS[name]
    folder = work / "hosts"
    done = folder / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())
    lungs = work / "hosts" / "lungs" / name
    if not (lungs / "datalist.json").exists():
        sh(["organs", "--engine", "threshold", "--image", DATASETS / img_rel, "--out", lungs], log)
    image = load_volume(DATASETS / img_rel)
    lung = np.asarray(load_volume(next(p for p in lungs.glob("*.nii.gz"))).array) > 0
    tumour = np.asarray(load_volume(DATASETS / lab_rel).array) == 1
    axis = image.axis_of("S")
    dz = image.spacing[axis]
    zs = np.nonzero(np.moveaxis(tumour, axis, 0).reshape(tumour.shape[axis], -1).any(1))[0]
    keep = np.ones(image.shape[axis], bool)
    if zs.size:
        m = int(np.ceil(HOST_MARGIN_MM / dz))
        keep[max(0, zs.min() - m): zs.max() + m + 1] = False
    runs, start = [], None
    for z in range(len(keep) + 1):
        if z < len(keep) and keep[z]:
            start = z if start is None else start
        elif start is not None:
            runs.append((start, z))
            start = None
    slabs = []
    for i, (z0, z1) in enumerate(r for r in runs if (r[1] - r[0]) * dz >= MIN_SLAB_MM):
        index = [slice(None)] * 3
        index[axis] = slice(z0, z1)
        shift = np.eye(4)
        shift[axis, 3] = z0
        affine = image.affine @ shift
        sub_lung = lung[tuple(index)]
        if sub_lung.sum() * float(np.prod(image.spacing)) / 1000.0 < 20.0:  # under 20 mL of lung: skip
            continue
        ip, lp = folder / f"{name}_slab{i}_image.nii.gz", folder / f"{name}_slab{i}_label.nii.gz"
        save_volume(Volume(np.ascontiguousarray(image.array[tuple(index)]), affine), ip)
        save_volume(Volume(sub_lung.astype(np.uint8), affine), lp)
        slabs.append({"image": str(ip), "label": str(lp), "host": name, "slices": [int(z0), int(z1)],
                      "lung_ml": round(float(sub_lung.sum() * np.prod(image.spacing) / 1000.0), 1)})
    done.write_text(json.dumps(slabs, indent=1))
    return slabs


def write_datalist(path: Path, entries: list[dict], label_map: str, keep=("image", "label", "fold")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: e[k] for k in keep if k in e} for e in entries]
    path.write_text(json.dumps({"label_map": label_map, "training": rows}, indent=1) + "\n")
    return path


def evaluation_map(spec: str, dst: Path) -> str:
    """``evaluate`` needs the organ's ids: a tumour-only map (nodule crops) gets an id no label uses."""
    from freetumor.labels import get_label_map

    lm = get_label_map(spec, "lung")
    if lm.has_organ_ids("lung"):
        return spec
    unused = next(i for i in range(250, 65536) if i not in lm.known)
    dst.write_text(json.dumps({"name": f"{lm.name}+unused-organ-id", "organs": {"lung": {
        "organ": [unused], "tumor": lm.tumour_id("lung")}}, "labels": sorted(set(lm.known) | {unused})}))
    return str(dst)


def in_plane_mm(vol) -> float:
    axis = vol.axis_of("S")
    return min(n * s for a, (n, s) in enumerate(zip(vol.shape, vol.spacing)) if a != axis)


def check_test_datalist(datalist: Path, default_map: Path | None = None) -> tuple[list[dict], str]:
    """The labelled entries of a test datalist and its label map (its own, relative to it, else the LIDC
    crops' convention: 1 = nodule); a :class:`Failure` naming the file otherwise."""
    from freetumor.data import datalist_label_map, load_datalist
    from freetumor.errors import ConfigError, FreeTumorError
    from freetumor.labels import get_label_map

    try:
        entries = [e for e in load_datalist(datalist) if e.get("label")]
        if not entries:
            raise Failure(f"{datalist}: no entries with a \"label\"")
        lm_spec = datalist_label_map(datalist) or (None if default_map is None else str(default_map))
        if lm_spec is not None:
            get_label_map(lm_spec, "lung").tumour_id("lung")
    except ConfigError as exc:  # e.g. a label map without lung: name the datalist
        raise Failure(f"{datalist}: {exc}") from None
    except FreeTumorError as exc:  # already names its file
        raise Failure(str(exc)) from None
    for e in entries:
        for k in ("image", "label"):
            if not Path(e[k]).exists():
                raise Failure(f"{e[k]}: listed in {datalist} but not found")
    return entries, lm_spec


def prepare_test_set(name: str, datalist: Path, work: Path, log: list, default_map: Path) -> dict:
    """A test set ready for ``predict`` / ``evaluate``: every image under a unique name in
    ``work/tests/NAME/images/all`` (a link, or a copy with the padding set to air), the crops' and the
    whole scans' datalists (original labels), and the whole scans' threshold lungs."""
    from freetumor.errors import FreeTumorError
    from freetumor.io import case_name, load_volume, save_volume

    root = work / "tests" / name
    ready = root / "set.json"
    if ready.exists():
        return json.loads(ready.read_text())
    entries, lm_spec = check_test_datalist(datalist, default_map)
    images = root / "images"
    (images / "all").mkdir(parents=True, exist_ok=True)
    (images / "scans").mkdir(parents=True, exist_ok=True)
    crops, scans = [], []
    used: set[str] = set()
    for i, e in enumerate(entries):
        try:
            vol = load_volume(e["image"])
        except FreeTumorError as exc:
            raise Failure(str(exc)) from None
        case = case_name(e["image"])
        unique = case if case not in used and name == "lidc_crops" else f"{i:04d}_{e.get('patient') or case}"
        while unique in used:
            unique += "_"
        used.add(unique)
        whole = bool(e["whole_scan"]) if "whole_scan" in e else in_plane_mm(vol) >= WHOLE_SCAN_MM
        dst = images / "all" / f"{unique}.nii.gz"
        padded = np.asarray(vol.array) <= PADDING_HU
        if padded.any():  # never modify the input: a copy with the scanner's padding set to air
            src = images / ("scans" if whole else "crops") / f"{unique}.nii.gz"
            src.parent.mkdir(parents=True, exist_ok=True)
            arr = np.array(vol.array, copy=True)
            arr[padded] = AIR_HU
            save_volume(vol.with_array(arr), src)
        elif whole:
            src = images / "scans" / f"{unique}.nii.gz"
            if not src.exists():
                src.symlink_to(Path(e["image"]).resolve())
        else:
            src = Path(e["image"]).resolve()
        if not dst.exists() and not dst.is_symlink():
            dst.symlink_to(src.resolve())
        row = {"image": str(dst), "label": str(Path(e["label"]).resolve()), "source": e["image"]}
        (scans if whole else crops).append(row)
    out = {"name": name, "datalist": str(datalist), "label_map": lm_spec,
           "eval_label_map": evaluation_map(lm_spec, root / "eval_label_map.json"), "images": str(images / "all"),
           "crops": None, "scans": None, "n_crops": len(crops), "n_scans": len(scans)}
    if crops:
        out["crops"] = str(write_datalist(root / "crops.json", crops, lm_spec))
    if scans:
        out["scans"] = str(write_datalist(root / "scans.json", scans, lm_spec))
        lungs = root / "lungs"
        try:
            if not (lungs / "datalist.json").exists():
                sh(["organs", "--engine", "threshold", "--image", images / "scans", "--out", lungs], log)
            out["lungs"] = str(lungs)
        except Failure as exc:  # no model-free lung mask (e.g. no air in the body): no "in lung" figures
            out["lungs"], out["lungs_error"] = None, str(exc)
    ready.write_text(json.dumps(out, indent=1))
    return out


# ----------------------------------------------------------------------------- training
class Runs:
    """Trains (or reuses) the runs of the experiment through the CLI."""

    def __init__(self, work: Path, args, log: list, hosts_dl: dict[str, Path]):
        self.work, self.args, self.log, self.hosts_dl = work, args, log, hosts_dl

    def seg(self, run: Path, datalist: Path, recipe: list[str], seed: int, extra: list, steps: int) -> Path:
        if not (run / "final.json").exists():
            resume = ["--resume"] if (run / "last.pt").exists() else []
            every = max(1, steps // 5)
            sh(["train-seg", "--config", "lung-cpu-tiny", "--datalist", datalist, "--out", run, "--max-steps", steps,
                *sets([*GEOMETRY, *recipe, f"train.seed={seed}", f"train.val_every={every}",
                       f"train.checkpoint_every={every}"]), *extra, *resume], self.log, quiet=False)
        return run / "best.pt"

    def synth(self, run: Path, labelled: Path, hosts: Path, segmentor: Path, seed: int) -> Path:
        if not (run / "final.json").exists():
            resume = ["--resume"] if (run / "last.pt").exists() else []
            sh(["train-synth", "--config", "lung-cpu-tiny", "--datalist", labelled, "--unlabeled", hosts,
                "--segmentor", segmentor, "--out", run, "--max-steps", self.args.synth_steps,
                *sets([*GEOMETRY, *SYNTH_RECIPE, f"train.seed={seed}"]), *resume], self.log, quiet=False)
        return run / "generator.pt"


def arm_models(runs: Runs, d: Path, data: dict, seed: int, steps: int, hosts: str = "all",
               arms=ARMS) -> dict[str, Path]:
    """Train the arms of one (K, seed) (cached); ``hosts`` names the host subset (scaling curve)."""
    hosts_dl = runs.hosts_dl[hosts]
    out: dict[str, Path] = {}
    stage0 = runs.seg(d / "stage0", data["trainval"], STAGE0_RECIPE, seed, [], steps)
    tag = "" if hosts == "all" else f"_hosts-{hosts}"
    unl = [] if hosts_dl is None else ["--unlabeled", hosts_dl]
    if "stage0" in arms:
        out["stage0"] = stage0
    if "none" in arms:
        out["none"] = runs.seg(d / f"none{tag}", data["trainval"], RECIPE, seed, unl, steps)
    if "procedural" in arms:
        out["procedural"] = runs.seg(d / f"procedural{tag}", data["trainval"], RECIPE, seed,
                                     [*unl, "--synthesis", "profile", "--profile", data["profile"]], steps)
    if "generator" in arms:
        gen = runs.synth(d / "stage1", data["labelled"], runs.hosts_dl["all"], stage0, seed)
        out["generator"] = runs.seg(d / f"generator{tag}", data["trainval"], RECIPE, seed,
                                    [*unl, "--synthesis", "generator", "--generator", gen, "--qc-segmentor", stage0],
                                    steps)
    return out


# ----------------------------------------------------------------------------- scoring
def score_model(model: Path, test: dict, work: Path, run_id: str, log: list) -> dict:
    """``predict`` on a test set (crops and whole scans in one call), ``evaluate`` the crops (Dice, NSD,
    lesions); whole scans: lesion-wise detection as ``evaluate`` counts it (:func:`scan_detection`)."""
    pred = work / "pred" / test["name"] / run_id
    if not pred.exists():
        sh(["predict", "--model", model, "--image", test["images"], "--out", pred, "--device", "cpu"], log)
    res: dict = {}
    if test["crops"]:
        rep = work / "eval" / test["name"] / run_id / "crops"
        if not (rep / "summary.json").exists():
            sh(["evaluate", "--pred", pred, "--gt", test["crops"], "--organ", "lung", "--out", rep,
                "--label-map", test["eval_label_map"], "--pred-label-map", "organ3"], log)
        res["crops"] = read_report(rep)
    if test["scans"]:
        res["scans"] = scan_detection(pred, test, work / "eval" / test["name"] / run_id / "scans.json")
    return res


def read_report(rep: Path) -> dict:
    with open(rep / "metrics.csv", newline="") as fh:
        cases = {r["case"]: r for r in csv.DictReader(fh)}
    with open(rep / "lesions.csv", newline="") as fh:
        lesions = [{"case": r["case"], "diameter_mm": float(r["diameter_mm"]), "detected": r["detected"] == "True"}
                   for r in csv.DictReader(fh)]
    num = lambda v: None if v in ("", None) else float(v)  # noqa: E731
    per_case = {c: {"dice": num(r["tumour_dice"]), "nsd": num(r["tumour_nsd"]), "fp": int(float(r["false_positives"])),
                    "detected": int(float(r["detected"])), "lesions": int(float(r["gt_lesions"])),
                    "volume_ratio": (num(r["tumour_volume_ml_pred"]) / num(r["tumour_volume_ml_gt"])
                                     if num(r.get("tumour_volume_ml_gt")) else None)}
                for c, r in cases.items()}
    return {"cases": per_case, "lesions": lesions}


def near_lung(lungs: Path, case: str, spacing) -> np.ndarray:
    """The threshold lung mask of a whole scan grown by LUNG_REACH_MM (computed once per scan, kept beside it)."""
    from scipy import ndimage

    from freetumor.io import load_volume, save_volume

    dst = lungs.parent / "lungs_near" / f"{case}.nii.gz"
    if dst.exists():
        return np.asarray(load_volume(dst).array) > 0
    vol = load_volume(lungs / f"{case}.nii.gz")
    near = ndimage.binary_dilation(np.asarray(vol.array) > 0, structure=ball(LUNG_REACH_MM, spacing))
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_volume(vol.with_array(near.astype(np.uint8)), dst)
    return near


def scan_detection(pred: Path, test: dict, cache: Path) -> dict:
    """Per whole scan: lesion-wise detection (:func:`freetumor.evaluation.match_lesions`, what ``evaluate``
    counts: a nodule is found when a predicted component overlaps it; a component touching no nodule is a
    false positive) of the raw prediction, and of the prediction kept within LUNG_REACH_MM of the scan's
    threshold lung mask (``in_lung``), with the false positives of at least 3 mm (LIDC's smallest nodules)."""
    from freetumor.data import load_datalist
    from freetumor.evaluation import match_lesions
    from freetumor.io import case_name, load_volume
    from freetumor.labels import get_label_map

    if cache.exists():
        return json.loads(cache.read_text())
    tumour_id = get_label_map(test["label_map"], "lung").tumour_id("lung")
    per_case = {}
    for e in load_datalist(test["scans"]):
        case = case_name(e["image"])
        g = load_volume(e["label"])
        gt = np.asarray(g.array) == tumour_id
        p = np.asarray(load_volume(pred / f"{case}.nii.gz").array) == 2
        m = match_lesions(p, gt, g.spacing)
        row = {"detected": m.tp, "lesions": m.n_gt, "fp": m.fp,
               "fp_3mm": sum(not r["true_positive"] and r["diameter_mm"] >= 3.0 for r in m.pred)}
        if test.get("lungs"):
            m = match_lesions(p & near_lung(Path(test["lungs"]), case, g.spacing), gt, g.spacing)
            row["in_lung"] = {"detected": m.tp, "lesions": m.n_gt, "fp": m.fp,
                              "fp_3mm": sum(not r["true_positive"] and r["diameter_mm"] >= 3.0 for r in m.pred)}
        per_case[case] = row
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(per_case))
    return per_case


def scan_summary(per_seed: list[dict]) -> dict:
    """Lesion-wise sensitivity and false positives per scan, pooled over the seeds' runs."""
    det = sum(c["detected"] for s in per_seed for c in s.values())
    n = sum(c["lesions"] for s in per_seed for c in s.values())
    fp = [sum(c["fp"] for c in s.values()) / max(1, len(s)) for s in per_seed]
    fp3 = [sum(c["fp_3mm"] for c in s.values()) / max(1, len(s)) for s in per_seed]
    return {"sensitivity": round(det / n, 4) if n else None, "detected": det, "lesions": n,
            "fp_per_scan": round(float(np.mean(fp)), 2), "fp_per_scan_by_seed": [round(x, 2) for x in fp],
            "fp_3mm_per_scan": round(float(np.mean(fp3)), 2)}


def bin_of(d: float) -> str:
    return next(label for label, lo, hi in BINS if lo <= d < hi)


def arm_summary(scores: list[dict]) -> dict:
    """One arm at one K on one test set: ``scores`` holds one :func:`score_model` result per seed."""
    out: dict = {"seeds": len(scores)}
    if "crops" in scores[0]:
        cases = sorted(scores[0]["crops"]["cases"])
        for metric in ("dice", "nsd"):
            per_seed = [[s["crops"]["cases"][c][metric] for c in cases] for s in scores]
            seed_means = [float(np.nanmean([np.nan if v is None else v for v in row])) for row in per_seed]
            out[metric] = round(float(np.mean(seed_means)), 4)
            out[f"{metric}_by_seed"] = [round(v, 4) for v in seed_means]
        by_bin = {label: [0, 0] for label, _, _ in BINS}
        for s in scores:
            for les in s["crops"]["lesions"]:
                b = by_bin[bin_of(les["diameter_mm"])]
                b[0] += int(les["detected"])
                b[1] += 1
        out["detection_by_diameter"] = {k: {"detected": v[0], "lesions": v[1],
                                            "sensitivity": round(v[0] / v[1], 4) if v[1] else None}
                                        for k, v in by_bin.items()}
        out["crop_fp_per_crop"] = round(float(np.mean([np.mean([c["fp"] for c in s["crops"]["cases"].values()])
                                                       for s in scores])), 3)
        # predicted / true tumour volume per crop (seed-averaged), median over crops: > 1 is over-segmentation
        ratios = per_crop_mean(scores, "volume_ratio")
        vals = [v for v in ratios.values() if v is not None]
        out["volume_ratio_median"] = round(float(np.median(vals)), 3) if vals else None
        out["n_crops"] = len(cases)
    if "scans" in scores[0]:
        raw = scan_summary([s["scans"] for s in scores])
        have_lung = all("in_lung" in c for c in scores[0]["scans"].values())
        lung = scan_summary([{k: c["in_lung"] for k, c in s["scans"].items()} for s in scores]) if have_lung else \
            {"sensitivity": None, "fp_per_scan": None, "note": "no threshold lung mask"}
        out.update(sensitivity=raw["sensitivity"], fp_per_scan=raw["fp_per_scan"],
                   sensitivity_in_lung=lung["sensitivity"], fp_per_scan_in_lung=lung["fp_per_scan"],
                   fp_3mm_per_scan_in_lung=lung.get("fp_3mm_per_scan"),
                   whole_scans={"n_scans": len(scores[0]["scans"]), "raw": raw, "in_lung": lung})
    return out


def per_crop_mean(scores: list[dict], metric: str) -> dict[str, float | None]:
    cases = sorted(scores[0]["crops"]["cases"])
    out = {}
    for c in cases:
        vals = [s["crops"]["cases"][c][metric] for s in scores]
        vals = [v for v in vals if v is not None]
        out[c] = float(np.mean(vals)) if vals else None
    return out


def compare_arms(a: list[dict], b: list[dict]) -> dict:
    """B minus A on the test crops: per-crop values averaged over seeds, paired tests and a paired
    bootstrap CI (``freetumor.evaluation.stats``); the seed-paired mean differences too."""
    from freetumor.evaluation.stats import paired_bootstrap_ci, paired_tests

    out = {}
    for metric in ("dice", "nsd"):
        ma, mb = per_crop_mean(a, metric), per_crop_mean(b, metric)
        cases = sorted(ma)
        va, vb = [ma[c] for c in cases], [mb[c] for c in cases]
        t = paired_tests(va, vb)
        ci = paired_bootstrap_ci(va, vb) if t["n"] > 1 else (None, None)
        seed_diffs = []
        for sa, sb in zip(a, b):
            da = [sa["crops"]["cases"][c][metric] for c in cases]
            db = [sb["crops"]["cases"][c][metric] for c in cases]
            pairs = [(x, y) for x, y in zip(da, db) if x is not None and y is not None]
            seed_diffs.append(round(float(np.mean([y - x for x, y in pairs])), 4) if pairs else None)
        out[metric] = {"n": t["n"], "mean_a": t["mean_a"], "mean_b": t["mean_b"], "mean_diff": t["mean_diff"],
                       "ci95": [None if v is None else round(float(v), 4) for v in ci],
                       "t_p": (t.get("t_test") or {}).get("p"), "wilcoxon_p": (t.get("wilcoxon") or {}).get("p"),
                       "diff_by_seed": seed_diffs}
    return out


def comparisons(scores: dict[str, list[dict]]) -> dict:
    out = {}
    for arm in SYNTH_ARMS:
        for base in ("stage0", "none"):
            if arm in scores and base in scores and "crops" in scores[arm][0]:
                out[f"{arm}_vs_{base}"] = compare_arms(scores[base], scores[arm])
    return out


def target_check(arms: dict, scores: dict) -> dict | None:
    """At the first K: the better synthesis arm against the better of stage0 and none (mean Dice);
    met when it is >= 0.05 higher with a paired CI above 0."""
    if not all(a in arms and "dice" in arms[a] for a in ARMS):
        return None
    best = max(SYNTH_ARMS, key=lambda a: arms[a]["dice"])
    base = max(("stage0", "none"), key=lambda a: arms[a]["dice"])
    c = compare_arms(scores[base], scores[best])["dice"]
    met = c["mean_diff"] is not None and c["mean_diff"] >= 0.05 and c["ci95"][0] is not None and c["ci95"][0] > 0
    return {"synthesis_arm": best, "baseline_arm": base, "dice_diff": round(c["mean_diff"], 4),
            "ci95": c["ci95"], "t_p": c["t_p"], "wilcoxon_p": c["wilcoxon_p"], "required": ">= 0.05, CI above 0",
            "met": bool(met)}


def synth_counts(run_dir: Path) -> dict:
    tally: dict = {}
    p = run_dir / "metrics.jsonl"
    if p.exists():
        for ln in p.read_text().splitlines():
            for k, v in (json.loads(ln).get("synth") or {}).items():
                tally[k] = tally.get(k, 0) + v
    return tally


# ----------------------------------------------------------------------------- README table
def fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(result: dict) -> str:
    """Markdown tables of a results JSON: per K the arms on the test crops and whole scans, the paired
    differences of the synthesis arms, and the scaling curve."""
    lines = []
    for k, byk in result["by_k"].items():
        tests = byk["tests"]
        crops, scans = tests["lidc_crops"], tests.get("lidc_full_scans")
        seeds = crops["arms"]["stage0"]["seeds"]
        lines += [f"K = {k} labelled crops, {seeds} seed(s); {crops['arms']['stage0'].get('n_crops')} test crops"
                  + (f", {scans['arms']['stage0']['whole_scans']['n_scans']} whole scans" if scans else "") + ":", "",
                  "| arm | tumour Dice | NSD (2 mm) | predicted / true volume (median) "
                  "| detected < 10 / 10-20 / >= 20 mm | whole scans: nodules found "
                  "| FP / scan | FP / scan in lung (>= 3 mm) |", "|---|---|---|---|---|---|---|---|"]
        for arm in ARMS:
            a = crops["arms"][arm]
            det = " / ".join(f"{d['detected']}/{d['lesions']}" for d in a["detection_by_diameter"].values())
            if scans:
                s = scans["arms"][arm]["whole_scans"]
                w = [f"{s['raw']['detected']}/{s['raw']['lesions']}", fmt(s["raw"]["fp_per_scan"], 0),
                     f"{fmt(s['in_lung']['fp_per_scan'], 0)} ({fmt(s['in_lung'].get('fp_3mm_per_scan'), 0)})"]
            else:
                w = ["-", "-", "-"]
            dice = f"{fmt(a['dice'])}" + (f" (seeds {', '.join(fmt(x) for x in a['dice_by_seed'])})" if seeds > 1 else "")
            lines.append(f"| `{arm}` | {dice} | {fmt(a['nsd'])} | {fmt(a.get('volume_ratio_median'), 2)} | {det} | "
                         + " | ".join(w) + " |")
        lines += ["", "| paired difference in tumour Dice (per crop, seed-averaged) | mean | 95% CI | t-test p | Wilcoxon p |",
                  "|---|---|---|---|---|"]
        for name, c in crops["comparisons"].items():
            d = c["dice"]
            lines.append(f"| `{name.replace('_vs_', '` − `')}` | {d['mean_diff']:+.3f} | {fmt(d['ci95'][0])} to "
                         f"{fmt(d['ci95'][1])} | {d['t_p']:.2g} | {d['wilcoxon_p']:.2g} |")
        lines.append("")
    t = result.get("target")
    if t:
        lines += [f"Target (K = {result['k']}): `{t['synthesis_arm']}` − `{t['baseline_arm']}` = {t['dice_diff']:+.3f} "
                  f"(95% CI {fmt(t['ci95'][0])} to {fmt(t['ci95'][1])}); needed >= +0.05 with the CI above 0: "
                  f"**{'met' if t['met'] else 'not met'}**.", ""]
    c = result.get("scaling_curve")
    if c:
        lines += [f"Scaling curve (`{c['arm']}`, K = {c['k']}): "
                  + ", ".join(f"{p['host_lung_ml']:.0f} mL of host lung ({p['hosts']}): Dice {fmt(p['dice'])}"
                              for p in c["points"]) + ".", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="See the module docstring and the README section for details.")
    ap.add_argument("--out", type=Path,
                    help="a folder (work files + results.json) or a .json file (work folder <stem>_work beside it)")
    ap.add_argument("--table", type=Path, metavar="RESULTS.json",
                    help="only print the markdown tables of an earlier run's results JSON")
    ap.add_argument("--work", type=Path, help="work folder (default: --out, or <stem>_work beside a .json --out)")
    ap.add_argument("--quick", action="store_true", help="reduced run: one K (10), one seed, fewer steps, no curve")
    ap.add_argument("--test", type=Path, action="append", default=[], metavar="DATALIST",
                    help="also score the trained models on this labelled nodule datalist (repeatable)")
    ap.add_argument("--split", type=Path, default=SPLIT_FILE, help="stored patient-wise split (made when absent)")
    ap.add_argument("--k", type=str, help=argparse.SUPPRESS)
    ap.add_argument("--seeds", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--synth-steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--curve-seeds", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, help=argparse.SUPPRESS)          # tests: first N test and val crops
    ap.add_argument("--hosts", type=str, help=argparse.SUPPRESS)          # tests: host subset (comma list)
    ap.add_argument("--no-scans", action="store_true", help=argparse.SUPPRESS)  # tests: skip the whole scans
    args = ap.parse_args(argv)
    if args.table is None and args.out is None:
        ap.error("--out is required (or --table RESULTS.json)")
    if args.table is not None:
        return args
    base = QUICK if args.quick else FULL
    args.k = [int(x) for x in args.k.split(",")] if args.k else base["k"]
    for key in ("seeds", "steps", "synth_steps", "curve_seeds"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    if args.out.suffix == ".json":
        args.json = args.out
        args.work = args.work or args.out.with_name(args.out.stem + "_work")
    else:
        args.json = args.out / "results.json"
        args.work = args.work or args.out
    return args


def run(args) -> dict:
    t_start = time.time()
    vois = DATASETS / "lidc_nodule_vois"
    if not vois.is_dir():
        raise Failure(f"{vois}: real CT not available (the LIDC nodule crops)")
    for t in args.test:  # before anything is written
        if not t.is_file():
            raise Failure(f"{t}: datalist not found")
        check_test_datalist(t.resolve())
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log: list = []
    nodules_map = work / "nodules_label_map.json"
    nodules_map.write_text(json.dumps(NODULES_MAP))

    # 1. split (stored, reused), test sets first: a bad --test datalist fails before any training
    entries = {e["case"]: e for e in crop_entries(vois)}
    split = load_split(args.split, sorted(entries), SPLIT_SEED)
    test_cases, val_cases = split["test"]["crops"], split["val"]["crops"]
    if args.limit:
        test_cases, val_cases = test_cases[: args.limit], val_cases[: args.limit]
    tests = []
    lidc = write_datalist(work / "data" / "lidc_test_crops.json", [entries[c] for c in test_cases], str(nodules_map))
    tests.append(prepare_test_set("lidc_crops", lidc, work, log, nodules_map))
    scans_dir = DATASETS / "lidc_full_scans"
    if not args.no_scans and scans_dir.is_dir():
        rows = [{"image": str(scans_dir / p / "image.nii.gz"), "label": str(scans_dir / p / "label.nii.gz"),
                 "patient": p, "whole_scan": True} for p in TEST_PATIENTS if (scans_dir / p).is_dir()]
        dl = write_datalist(work / "data" / "lidc_full_scans.json", rows, str(nodules_map),
                            keep=("image", "label", "patient", "whole_scan"))
        tests.append(prepare_test_set("lidc_full_scans", dl, work, log, nodules_map))
    for i, t in enumerate(args.test):
        tests.append(prepare_test_set(f"test{i + 1}_{t.stem}", t.resolve(), work, log, nodules_map))

    # 2. labels (chest3) of the validation crops, hosts
    chest3 = lambda c: work / "labels" / f"{c}.nii.gz"  # noqa: E731
    for c in val_cases:
        write_crop_chest3(entries[c], chest3(c))
    names = args.hosts.split(",") if args.hosts else list(HOSTS)
    for n in names:
        if n not in HOSTS:
            raise Failure(f"--hosts: unknown host {n!r}; choose from {', '.join(HOSTS)}")
    slabs = {n: host_slabs(n, work, log) for n in names if (DATASETS / HOSTS[n][0]).exists()}
    if not any(slabs.values()):
        raise Failure(f"{DATASETS}: no host chest found ({', '.join(HOSTS)})")
    all_slabs = [s for n in slabs for s in slabs[n]]
    hosts_dl: dict[str, Path | None] = {"all": write_datalist(work / "data" / "hosts_all.json", all_slabs, "chest3"),
                                        "none": None}
    # scaling curve: none, the largest single host, all
    largest = max(slabs, key=lambda n: sum(s["lung_ml"] for s in slabs[n]))
    if len(slabs) > 1:
        hosts_dl[largest] = write_datalist(work / "data" / f"hosts_{largest}.json", slabs[largest], "chest3")
    host_ml = {"none": 0.0, "all": round(sum(s["lung_ml"] for s in all_slabs), 1),
               largest: round(sum(s["lung_ml"] for s in slabs[largest]), 1)}

    runs = Runs(work, args, log, hosts_dl)
    results_by_k: dict = {}
    all_scores: dict = {}
    for k in args.k:
        scores: dict[str, dict[str, list]] = {t["name"]: {a: [] for a in ARMS} for t in tests}
        labelled_by_seed = {}
        for seed in range(args.seeds):
            labelled = labelled_crops(split["pool"]["crops"], k, seed)
            labelled_by_seed[seed] = labelled
            for c in labelled:
                write_crop_chest3(entries[c], chest3(c))
            d = work / "runs" / f"k{k}" / f"s{seed}"
            lab_rows = [{"image": entries[c]["image"], "label": str(chest3(c)), "fold": 1} for c in labelled]
            val_rows = [{"image": entries[c]["image"], "label": str(chest3(c)), "fold": 0} for c in val_cases]
            data = {"labelled": write_datalist(d / "labelled.json", lab_rows, "chest3"),
                    "trainval": write_datalist(d / "trainval.json", lab_rows + val_rows, "chest3"),
                    "profile": d / "profile.json"}
            if not data["profile"].exists():
                nod = write_datalist(d / "labelled_nodules.json", [entries[c] for c in labelled], str(nodules_map))
                sh(["lesions", "fit", "--datalist", nod, "--label-map", nodules_map, "--organ", "lung",
                    "--out", data["profile"]], log)
            models = arm_models(runs, d, data, seed, args.steps)
            for t in tests:
                for arm, model in models.items():
                    scores[t["name"]][arm].append(score_model(model, t, work, f"k{k}_s{seed}_{arm}", log))
            print(f"K={k} seed {seed}: done ({time.time() - t_start:.0f} s)", file=sys.stderr, flush=True)
        all_scores[k] = scores
        per_test = {}
        for t in tests:
            arms = {a: arm_summary(scores[t["name"]][a]) for a in ARMS}
            per_test[t["name"]] = {"arms": arms, "comparisons": comparisons(scores[t["name"]])}
        results_by_k[str(k)] = {
            "labelled_crops": {str(s): v for s, v in labelled_by_seed.items()},
            "tests": per_test,
            "synthesis_status_counts": {arm: [synth_counts(work / "runs" / f"k{k}" / f"s{s}" / arm)
                                              for s in range(args.seeds)] for arm in SYNTH_ARMS},
        }

    # 3. the headline K: arms on the test crops (+ whole scans), target
    k0 = args.k[0]
    head = results_by_k[str(k0)]["tests"]
    arms = {a: dict(head["lidc_crops"]["arms"][a]) for a in ARMS}
    if "lidc_full_scans" in head:
        for a in ARMS:
            s = head["lidc_full_scans"]["arms"][a]
            arms[a].update({k: s[k] for k in ("sensitivity", "fp_per_scan", "sensitivity_in_lung",
                                               "fp_per_scan_in_lung", "fp_3mm_per_scan_in_lung", "whole_scans")})
    target = target_check(arms, all_scores[k0]["lidc_crops"])

    # 4. data-scaling curve: the best synthesis arm at the first K, test Dice against host lung volume
    curve = None
    if args.curve_seeds > 0:
        best = max(SYNTH_ARMS, key=lambda a: arms[a]["dice"])
        points = []
        for hosts in [h for h in ("none", largest, "all") if h in hosts_dl]:
            sc = []
            for seed in range(min(args.curve_seeds, args.seeds)):
                d = work / "runs" / f"k{k0}" / f"s{seed}"
                data = {"labelled": d / "labelled.json", "trainval": d / "trainval.json", "profile": d / "profile.json"}
                model = arm_models(runs, d, data, seed, args.steps, hosts=hosts, arms=(best,))[best]
                run_id = f"k{k0}_s{seed}_{best}" + ("" if hosts == "all" else f"_hosts-{hosts}")
                sc.append(score_model(model, tests[0], work, run_id, log))
            summ = arm_summary(sc)
            points.append({"hosts": hosts, "host_lung_ml": host_ml[hosts], "dice": summ["dice"],
                           "dice_by_seed": summ["dice_by_seed"], "nsd": summ["nsd"]})
        curve = {"arm": best, "k": k0, "x": "host lung volume (mL) in the training pool", "points": points,
                 "note": "the generator's Stage 1 is the main run's (all hosts) at every point"
                 if best == "generator" else "procedural: profile fitted on the same K crops at every point"}

    settings = {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "test" else v)
                for k, v in vars(args).items()}
    result = {
        "experiment": "experiment_fewlabel_lung",
        "mode": "quick" if args.quick else "full",
        "command": "python benchmarks/experiment_fewlabel_lung.py " + " ".join(sys.argv[1:]),
        "k": k0,
        "arms": arms,
        "target": target,
        "comparisons": head["lidc_crops"]["comparisons"],
        "tests": {t["name"]: {"datalist": t["datalist"], "label_map": t["label_map"], "crops": t["n_crops"],
                              "whole_scans": t["n_scans"], "arms": {str(k): results_by_k[str(k)]["tests"][t["name"]]
                                                                    ["arms"] for k in args.k}}
                  for t in tests if t["name"] not in ("lidc_crops", "lidc_full_scans")},
        "by_k": results_by_k,
        "scaling_curve": curve,
        "split": {"file": str(args.split), "seed": split["seed"],
                  **{p: {"crops": len(split[p]["crops"]), "patients": len(split[p]["patients"])}
                     for p in ("pool", "val", "test")},
                  "used": {"test_crops": len(test_cases), "val_crops": len(val_cases)}},
        "hosts": {"slabs": all_slabs, "lung_ml": host_ml},
        "recipes": {"geometry": GEOMETRY, "stage0": STAGE0_RECIPE, "shared": RECIPE, "stage1": SYNTH_RECIPE,
                    "config": "lung-cpu-tiny"},
        "settings": settings,
        "seconds": round(time.time() - t_start, 1),
        "commands": log,
    }
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table is not None:
        try:
            print(markdown_table(json.loads(args.table.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {args.table}: not a results JSON of this experiment ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            return 1
        return 0
    try:
        result = run(args)
    except Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=1, default=str) + "\n"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(args.json.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(args.json)
    # printed: the headline figures, the same values as in the JSON written to --out
    brief = {"arms": {a: {k: v for k, v in result["arms"][a].items() if k in BRIEF} for a in ARMS},
             "k": result["k"], "mode": result["mode"], "target": result["target"],
             "tests": {n: {k: {a: {m: v for m, v in s.items() if m in BRIEF} for a, s in arms.items()}
                           for k, arms in t["arms"].items()} for n, t in result["tests"].items()},
             "seconds": result["seconds"], "json": str(args.json)}
    print(json.dumps(brief, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
