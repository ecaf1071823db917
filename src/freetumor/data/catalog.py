"""A catalog of the public CT sources FreeTumor uses, and indexing/merging of the user's copies.

The registry is ``catalog.yaml`` beside this module. Each source says where users
obtain it (nothing is downloaded), its licence as published ("see source" where
not certain), its folder layout (path templates relative to the dataset's root,
with ``{case}`` standing for the case id), its label ids and how each id maps to
FreeTumor's conventions, ``abdomen7`` or ``chest3`` (stated once, in
:data:`freetumor.labels.CONVENTIONS`).

The label ids come from each source's documentation and must be checked against
the user's copy: :func:`index_source` reports every case whose label holds an id
the catalog does not list (and skips it), so a wrong entry shows up at once.

:func:`index_source` scans a copy by its layout, converts each label to the
target convention (written next to the output datalist; the user's files are
never modified), checks every case like ``freetumor data check`` and writes an
MSD-style datalist. :func:`merge_datalists` pools several such datalists into the
labelled (real tumours) and unlabelled (healthy organs) pools of ``train-synth``.

Example:
    >>> src = get_source("kits23")
    >>> src.target, src.mapping[3], src.mapping[2], src.layout_globs()
    ('abdomen7', 5, 6, ('case_*/imaging.nii.gz', 'case_*/segmentation.nii.gz'))
    >>> convert_label(np.array([[[0, 1, 2, 3]]]), src)[0].tolist()
    [[[0, 5, 6, 5]]]
    >>> get_source("nope")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    freetumor.errors.ConfigError: unknown source 'nope'; catalogued: abdomenatlas, ...
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
from scipy import ndimage

from ..errors import ConfigError, FreeTumorError, InputError
from ..io import (Volume, check_ct_intensity, check_same_grid, load_volume, save_volume, staged_output,
                  write_bytes_atomic)
from ..labels import CONVENTIONS, convention_names, label_values
from ..structured import read_yaml
from . import datalist_label_map, load_datalist

CATALOG_PATH = Path(__file__).resolve().with_name("catalog.yaml")

#: Target conventions: valid ids and, per host organ, (organ id, tumour id).
TARGETS: Mapping[str, dict] = {
    name: {"ids": frozenset(convention_names(name)), "organs": dict(organs)} for name, organs in CONVENTIONS.items()
}
STATUSES = ("tumour", "mixed", "healthy", "unlabelled")
KINDS = ("file", "structures", "none")
BY_ORGAN = "by_organ"
REQUIRED = ("title", "description", "obtain", "licence", "modality", "region", "target", "status", "layout",
            "tumour_ids")


@dataclass(frozen=True)
class Source:
    """One catalogued dataset (fields as in ``catalog.yaml``)."""

    name: str
    title: str
    description: str
    obtain: str
    licence: str
    modality: str
    region: str
    target: str
    status: str
    images: str
    labels: str | None
    kind: str
    pairing: str
    case_glob: str = "*"
    label_names: Mapping[int, str] = field(default_factory=dict)
    mapping: Mapping[int, int | str] = field(default_factory=dict)
    structures: Mapping[str, int] = field(default_factory=dict)
    tumour_ids: tuple[int, ...] = ()
    aliases: tuple[str, ...] = ()
    notes: str = ""
    uncertain: str = ""

    def layout_globs(self) -> tuple[str, str | None]:
        """(image glob, label glob) relative to the root."""
        lab = None
        if self.labels:
            lab = self.labels.replace("{case}", self.case_glob).replace("{structure}", "*")
        return self.images.replace("{case}", self.case_glob), lab

    def to_dict(self) -> dict:
        images, labels = self.layout_globs()
        return {
            "name": self.name, "title": self.title, "description": self.description, "obtain": self.obtain,
            "licence": self.licence, "modality": self.modality, "region": self.region, "target": self.target,
            "status": self.status, "layout": {"images": self.images, "labels": self.labels, "kind": self.kind,
                                              "pairing": self.pairing, "image_glob": images, "label_glob": labels},
            "labels": {str(k): v for k, v in self.label_names.items()},
            "mapping": {str(k): v for k, v in self.mapping.items()},
            "structures": dict(self.structures), "tumour_ids": list(self.tumour_ids),
            "notes": self.notes, "uncertain": self.uncertain,
        }


def _text(v) -> str:
    return " ".join(str(v).split()) if v is not None else ""


def _int_keys(name: str, what: str, raw) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"catalog source {name!r}: {what} must be a mapping")
    out = {}
    for k, v in raw.items():
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"catalog source {name!r}: {what} key {k!r} is not a label id")
        out[k] = v
    return out


def validate_entry(name: str, raw: dict) -> Source:
    """Check one catalog entry and return it as a :class:`Source` (:class:`ConfigError` if invalid)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"catalog source {name!r} must be a mapping")
    missing = [k for k in REQUIRED if raw.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"catalog source {name!r} lacks {', '.join(missing)}")
    target = raw["target"]
    if target not in TARGETS:
        raise ConfigError(f"catalog source {name!r}: target {target!r} is not one of {', '.join(TARGETS)}")
    if raw["status"] not in STATUSES:
        raise ConfigError(f"catalog source {name!r}: status {raw['status']!r} is not one of {', '.join(STATUSES)}")
    lay = raw["layout"]
    if not isinstance(lay, dict) or not lay.get("images") or lay.get("kind") not in KINDS:
        raise ConfigError(f"catalog source {name!r}: layout needs images and kind ({', '.join(KINDS)})")
    kind, images, labels = lay["kind"], str(lay["images"]), lay.get("labels")
    if images.count("{case}") != 1 or images.startswith("/"):
        raise ConfigError(f"catalog source {name!r}: images must be a relative template with one {{case}}")
    valid = TARGETS[target]["ids"]
    names = {k: _text(v) for k, v in _int_keys(name, "labels", raw.get("labels")).items()}
    mapping = _int_keys(name, "mapping", raw.get("mapping"))
    structures = raw.get("structures") or {}
    tumour_ids = raw.get("tumour_ids") or []
    if kind == "none":
        if labels:
            raise ConfigError(f"catalog source {name!r}: kind none must have labels: null")
    else:
        if not labels or "{case}" not in str(labels):
            raise ConfigError(f"catalog source {name!r}: kind {kind} needs a labels template with {{case}}")
    if kind == "file":
        if not mapping or 0 not in mapping:
            raise ConfigError(f"catalog source {name!r}: a label file source needs a mapping including 0")
        if set(names) != set(mapping):
            raise ConfigError(f"catalog source {name!r}: labels and mapping must list the same ids")
    for k, v in mapping.items():
        if v == BY_ORGAN:
            if k not in tumour_ids:
                raise ConfigError(f"catalog source {name!r}: {BY_ORGAN} is only for tumour ids (id {k})")
        elif isinstance(v, bool) or not isinstance(v, int) or v not in valid:
            raise ConfigError(f"catalog source {name!r}: id {k} maps to {v!r}, not a {target} id")
    if mapping.get(0, 0) != 0:
        raise ConfigError(f"catalog source {name!r}: background 0 must map to 0")
    if kind == "structures":
        if "{structure}" not in str(labels) or not isinstance(structures, dict) or not structures:
            raise ConfigError(f"catalog source {name!r}: kind structures needs {{structure}} and a structures map")
        for s, v in structures.items():
            if isinstance(v, bool) or not isinstance(v, int) or v not in valid or v == 0:
                raise ConfigError(f"catalog source {name!r}: structure {s!r} maps to {v!r}, not a {target} id")
    if not isinstance(tumour_ids, list) or any(isinstance(t, bool) or not isinstance(t, int) for t in tumour_ids):
        raise ConfigError(f"catalog source {name!r}: tumour_ids must be a list of ids")
    if kind == "file":
        tumour_targets = {TARGETS[target]["organs"][o][1] for o in TARGETS[target]["organs"]}
        for t in tumour_ids:
            if t not in mapping:
                raise ConfigError(f"catalog source {name!r}: tumour id {t} is not in mapping")
            if mapping[t] not in (0, BY_ORGAN) and mapping[t] not in tumour_targets:
                raise ConfigError(f"catalog source {name!r}: tumour id {t} maps to non-tumour id {mapping[t]}")
    return Source(
        name=name, title=_text(raw["title"]), description=_text(raw["description"]), obtain=_text(raw["obtain"]),
        licence=_text(raw["licence"]), modality=_text(raw["modality"]), region=_text(raw["region"]),
        target=target, status=raw["status"], images=images, labels=str(labels) if labels else None, kind=kind,
        pairing=_text(lay.get("pairing")), case_glob=str(lay.get("case_glob") or "*"), label_names=names,
        mapping=mapping, structures=dict(structures), tumour_ids=tuple(tumour_ids),
        aliases=tuple(str(a).lower() for a in raw.get("aliases") or ()), notes=_text(raw.get("notes")),
        uncertain=_text(raw.get("uncertain")),
    )


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Source]:
    raw = read_yaml(path, "source catalog")  # size and depth bounded before parsing
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, "the source catalog must map source names to entries")
    return {str(k): validate_entry(str(k), v) for k, v in raw.items()}


def load_catalog(path: str | os.PathLike | None = None) -> dict[str, Source]:
    """All catalogued sources by name (validated).

    Example:
        >>> cat = load_catalog()
        >>> cat["msd-task03-liver"].layout_globs()
        ('imagesTr/*.nii.gz', 'labelsTr/*.nii.gz')
        >>> sorted({s.target for s in cat.values()})
        ['abdomen7', 'chest3']
    """
    return dict(_load(str(path or CATALOG_PATH)))


def get_source(name: str | Source) -> Source:
    """A source by name or alias (case-insensitive); :class:`ConfigError` listing the names otherwise."""
    if isinstance(name, Source):
        return name
    cat = load_catalog()
    key = str(name).strip().lower()
    for src in cat.values():
        if key == src.name or key in src.aliases:
            return src
    raise ConfigError(f"unknown source {name!r}; catalogued: {', '.join(sorted(cat))}")


# ---------------------------------------------------------------------------------------------- scan

def _part_regex(part: str) -> re.Pattern:
    """Regex for one path component of a template: ``{case}`` captured, glob wildcards allowed."""
    out = []
    for tok in re.split(r"(\{case\}|\*|\?|\[[^\]]*\])", part):
        if tok == "{case}":
            out.append("(?P<case>.+?)")
        elif tok == "*":
            out.append("[^/]*")
        elif tok == "?":
            out.append("[^/]")
        elif tok.startswith("[") and tok.endswith("]") and len(tok) > 2:
            out.append("[^" + tok[2:] if tok[1] == "!" else tok)
        else:
            out.append(re.escape(tok))
    return re.compile("^" + "".join(out) + "$")


def _scan(root: Path, template: str, case_glob: str, skip: Iterable[Path] = ()) -> dict[str, list[Path]]:
    """Paths matching a template under ``root``, grouped by case id."""
    parts = template.split("/")
    idx = next(i for i, p in enumerate(parts) if "{case}" in p)
    from_end = "**" in parts[:idx]
    rx = _part_regex(parts[idx])
    skip = [s.resolve() for s in skip]
    found: dict[str, list[Path]] = {}
    for p in root.glob(template.replace("{case}", case_glob)):
        rel = p.relative_to(root).parts
        if any(r.startswith(".") for r in rel):  # hidden files (._* of macOS tarballs), staging folders
            continue
        if skip and any(p.resolve() == s or s in p.resolve().parents for s in skip):
            continue
        k = len(rel) - (len(parts) - idx) if from_end else idx
        if not 0 <= k < len(rel):
            continue
        m = rx.match(rel[k])
        if not m or not fnmatch.fnmatchcase(m.group("case"), case_glob):
            continue
        found.setdefault(m.group("case"), []).append(p)
    return {c: sorted(v) for c, v in sorted(found.items())}


@dataclass
class FoundCase:
    """One image of a source's layout and its label file(s)."""

    case: str
    image: Path
    label: Path | None = None
    structures: dict[str, Path] | None = None
    problem: str | None = None


def find_cases(root: str | os.PathLike, source: str | Source, skip: Iterable[Path] = ()) -> list[FoundCase]:
    """Images of ``source``'s layout under ``root``, paired with their labels (nothing is read)."""
    src = get_source(source)
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such folder" if not root.exists() else "is not a folder")
    images = _scan(root, src.images, src.case_glob, skip)
    labels = _scan(root, src.labels, src.case_glob, skip) if src.kind == "file" else {}
    cases = []
    for case, paths in images.items():
        for j, img in enumerate(paths):
            cid = case if len(paths) == 1 else f"{case}_{j + 1}"
            fc = FoundCase(cid, img)
            if src.kind == "file":
                labs = labels.get(case, [])
                if len(paths) > 1:
                    fc.problem = f"{img}: {len(paths)} images match case {case!r}; cannot pair a label"
                elif len(labs) == 1:
                    fc.label = labs[0]
                elif not labs:
                    fc.problem = f"{img}: no label file ({src.labels.replace('{case}', case)})"
                else:
                    fc.problem = f"{img}: {len(labs)} label files match {src.labels.replace('{case}', case)}"
            elif src.kind == "structures":
                fc.structures = {s: root / src.labels.replace("{case}", case).replace("{structure}", s)
                                 for s in src.structures}
            cases.append(fc)
    return cases


# ------------------------------------------------------------------------------------------ convert

def _organ_of(target: str) -> dict[int, str]:
    return {i: o for o, ids in TARGETS[target]["organs"].items() for i in ids}


def convert_label(array: np.ndarray, source: str | Source) -> tuple[np.ndarray | None, list[int]]:
    """Map a source label array to the target convention: (uint8 array, []) or (None, unknown ids)."""
    src = get_source(source)
    arr = np.asarray(array)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.array_equal(arr, np.rint(arr)):
            raise ValueError("label holds non-integer values")
        arr = arr.astype(np.int64)
    values = label_values(arr)
    unknown = [v for v in values if v not in src.mapping]
    if unknown:
        return None, unknown
    lut = np.zeros(max(values) + 1, np.uint8)
    for v in values:
        t = src.mapping[v]
        lut[v] = 0 if t == BY_ORGAN else t
    out = lut[arr]
    lesion_ids = [v for v in values if src.mapping[v] == BY_ORGAN]
    if lesion_ids:
        _assign_lesions(np.isin(arr, lesion_ids), out, src.target)
    return out, []


def _assign_lesions(mask: np.ndarray, out: np.ndarray, target: str) -> None:
    """Give each connected lesion the tumour id of the organ it touches most (0 if none)."""
    organs = TARGETS[target]["organs"]
    comps, n = ndimage.label(mask)
    for k, sl in enumerate(ndimage.find_objects(comps), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        comp = comps[sl] == k
        shell = ndimage.binary_dilation(comp) & ~comp
        ring = out[sl][shell]
        best, votes = 0, 0
        for organ_id, tumour_id in organs.values():
            c = int(np.count_nonzero((ring == organ_id) | (ring == tumour_id)))
            if c > votes:
                best, votes = tumour_id, c
        out[sl][comp] = best


def summarise_label(values: Iterable[int], target: str) -> tuple[list[str], list[str]]:
    """(organs present, organs with a tumour) from the values of a target-convention label."""
    organs, tumours = [], []
    for organ, (oid, tid) in TARGETS[target]["organs"].items():
        if oid in values or tid in values:
            organs.append(organ)
        if tid in values:
            tumours.append(organ)
    return organs, tumours


# --------------------------------------------------------------------------------------------- index

def _check_image(path: Path) -> Volume:
    image = load_volume(path)
    check_ct_intensity(image)
    return image


def _index_one(fc: FoundCase, src: Source, stage: Path, rel_dir: str) -> dict:
    """Check and convert one case; returns {"entry": ..., "kind": ...} or {"problem": ...}."""
    if fc.problem:
        return {"problem": fc.problem}
    try:
        image = _check_image(fc.image)
        if src.kind == "none":
            return {"kind": "unlabelled", "entry": {"image": str(fc.image.resolve()), "case": fc.case,
                                                    "source": src.name}}
        if src.kind == "file":
            label = load_volume(fc.label)
            check_same_grid(image, label)
            try:
                out, unknown = convert_label(label.array, src)
            except ValueError as exc:
                raise InputError(label.name, str(exc)) from None
            if unknown:
                shown = ", ".join(map(str, unknown[:8])) + (" ..." if len(unknown) > 8 else "")
                known = ", ".join(map(str, sorted(src.mapping)))
                raise InputError(label.name, f"label values {shown} are not in the {src.name} catalog entry "
                                             f"(known: {known}); check the source's label definitions")
            converted = label.with_array(out)
        else:
            out = np.zeros(image.shape, np.uint8)
            for s, tid in src.structures.items():
                mask = load_volume(fc.structures[s])
                check_same_grid(image, mask)
                vals = label_values(np.asarray(mask.array))
                if any(v not in (0, 1) for v in vals):
                    raise InputError(mask.name, f"label values {', '.join(map(str, vals))} in a binary mask "
                                                "(expected 0 and 1)")
                out[np.asarray(mask.array) > 0] = tid
            converted = image.with_array(out)
        values = label_values(out)
        organs, tumours = summarise_label(values, src.target)
        save_volume(converted, stage / f"{fc.case}.nii.gz")
        entry = {"image": str(fc.image.resolve()), "label": f"{rel_dir}/{fc.case}.nii.gz", "case": fc.case,
                 "tumour": bool(tumours), "source": src.name, "organs": organs, "tumour_organs": tumours}
        return {"kind": "labelled", "entry": entry}
    except FreeTumorError as exc:
        return {"problem": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a bad case is reported, never fatal
        return {"problem": f"{fc.image}: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}"}


def index_source(root: str | os.PathLike, source: str | Source, out: str | os.PathLike,
                 label_map_out: str | os.PathLike | None = None, workers: int = 1,
                 log: Callable[[str], None] | None = None) -> dict:
    """Index a user's copy of a catalogued source into an MSD-style datalist at ``out``.

    Converted labels go to ``label_map_out`` (default ``<out stem>_labels/`` beside ``out``);
    the datalist's ``label`` paths point there, ``image`` paths to the user's files.
    Bad cases are listed under ``problems`` (and passed to ``log``), not fatal. Everything
    is staged, so a failure writes nothing.

    Raises:
        InputError: ``root`` is not a folder or matches nothing of the layout.
        ConfigError: unknown source.
    """
    src = get_source(source)
    out = Path(out)
    labels_dir = Path(label_map_out) if label_map_out else out.with_name(f"{out.stem}_labels")
    if out.suffix.lower() != ".json":
        raise ConfigError(f"--out must be a .json datalist path, got {str(out)!r}")
    cases = find_cases(root, src, skip=[labels_dir, out])
    if not cases:
        globs = src.layout_globs()
        raise InputError(root, f"no files match the {src.name} layout ({globs[0]}); is this the dataset's root "
                               "folder and the right --source?")
    rel_dir = labels_dir.name if labels_dir.resolve().parent == out.resolve().parent else str(labels_dir.resolve())
    with staged_output(labels_dir) as stage:
        run = functools.partial(_index_one, src=src, stage=stage, rel_dir=rel_dir)
        if workers > 1:
            with ThreadPoolExecutor(max(1, int(workers))) as pool:
                results = list(pool.map(run, cases))
        else:
            results = [run(c) for c in cases]
        training, unlabelled, problems = [], [], []
        for fc, r in zip(cases, results):
            if "problem" in r:
                problems.append({"case": fc.case, "problem": r["problem"]})
                if log:
                    log(f"{fc.case}: {r['problem']}")
            elif r["kind"] == "labelled":
                training.append(r["entry"])
            else:
                unlabelled.append(r["entry"])
        organs = {o: sum(o in e["organs"] for e in training) for o in TARGETS[src.target]["organs"]}
        tumours = {o: sum(o in e["tumour_organs"] for e in training) for o in TARGETS[src.target]["organs"]}
        counts = {"found": len(cases), "labelled": len(training), "tumour": sum(e["tumour"] for e in training),
                  "healthy": sum(not e["tumour"] for e in training), "unlabelled": len(unlabelled),
                  "problems": len(problems), "organs": organs, "tumour_organs": tumours}
        datalist = {
            "name": f"{src.title} (freetumor data index)", "source": src.name, "root": str(Path(root).resolve()),
            "licence": src.licence, "label_map": src.target, "numTraining": len(training),
            "training": training, "unlabelled": unlabelled, "counts": counts, "problems": problems,
        }
        write_bytes_atomic(out, (json.dumps(datalist, indent=2) + "\n").encode())
    return datalist


# --------------------------------------------------------------------------------------------- merge

_GENERATED_ID = re.compile(r"^\w+\[\d+\]$")


def merge_datalists(paths: Iterable[str | os.PathLike], out_labelled: str | os.PathLike,
                    out_unlabelled: str | os.PathLike) -> dict:
    """Pool datalists into a labelled pool (cases with tumour labels) and an unlabelled pool.

    The unlabelled pool holds cases with organ masks and no tumour label; image-only
    cases are skipped (they need predicted organ masks first). All inputs must share
    one label convention (``abdomen7`` or ``chest3``). Cases listed twice (same image)
    are kept once. Counts per source and per organ are returned and stored in both outputs.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigError("give at least one datalist to merge")
    if Path(out_labelled).resolve() == Path(out_unlabelled).resolve():
        raise ConfigError("--labelled and --unlabelled must be different files")
    entries_by = [(p, load_datalist(p, keys=("training", "unlabelled"))) for p in paths]
    conventions = {}
    for p in paths:
        lm = datalist_label_map(p)
        if lm is None:
            raise InputError(p, "datalist declares no \"label_map\" (abdomen7 or chest3); add it or re-index")
        conventions[str(p)] = lm
    used = sorted(set(conventions.values()))
    if len(used) > 1:
        detail = "; ".join(f"{Path(p).name}: {c}" for p, c in conventions.items())
        raise ConfigError(f"datalists mix label conventions ({detail}); merge abdomen7 and chest3 separately")
    target = used[0]
    if target not in TARGETS:
        raise ConfigError(f"label map {target!r} is not one of {', '.join(TARGETS)}")
    organs_all = list(TARGETS[target]["organs"])
    labelled, unlabelled, seen = [], [], set()
    per_source: dict[str, dict[str, int]] = {}
    per_organ = {o: {"labelled": 0, "unlabelled": 0} for o in organs_all}
    duplicates = 0
    for p, entries in entries_by:
        for e in entries:
            key = os.path.realpath(e["image"])
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            e = {k: v for k, v in e.items() if k != "split" and not (k == "id" and _GENERATED_ID.match(str(v)))}
            src = str(e.get("source") or p.stem)
            e["source"] = src
            row = per_source.setdefault(src, {"labelled": 0, "unlabelled": 0, "skipped": 0})
            if not e.get("label"):
                row["skipped"] += 1
                continue
            if "tumour" not in e or "organs" not in e:
                values = label_values(np.asarray(load_volume(e["label"]).array).astype(np.int64))
                e["organs"], e["tumour_organs"] = summarise_label(values, target)
                e["tumour"] = bool(e["tumour_organs"])
            if e["tumour"]:
                labelled.append(e)
                row["labelled"] += 1
                for o in e.get("tumour_organs") or e["organs"]:
                    if o in per_organ:
                        per_organ[o]["labelled"] += 1
            elif e["organs"]:
                unlabelled.append(e)
                row["unlabelled"] += 1
                for o in e["organs"]:
                    if o in per_organ:
                        per_organ[o]["unlabelled"] += 1
            else:
                row["skipped"] += 1
    counts = {"labelled": len(labelled), "unlabelled": len(unlabelled), "duplicates": duplicates,
              "sources": per_source, "organs": per_organ}
    inputs = [str(p.resolve()) for p in paths]
    for out, pool, name in ((out_labelled, labelled, "labelled"), (out_unlabelled, unlabelled, "unlabelled")):
        data = {"name": f"freetumor merged {name} pool", "label_map": target, "pool": name, "inputs": inputs,
                "numTraining": len(pool), "training": pool, "counts": counts}
        write_bytes_atomic(out, (json.dumps(data, indent=2) + "\n").encode())
    return {"label_map": target, "counts": counts, "labelled": str(out_labelled), "unlabelled": str(out_unlabelled)}
