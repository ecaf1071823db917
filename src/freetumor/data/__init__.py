"""Datalists (MSD-style JSON) and case checks.

A datalist is the JSON users of MONAI and the Medical Segmentation Decathlon
already have::

    {"label_map": "abdomen7",                       # optional
     "training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, ...],
     "validation": [...], "test": [{"image": "imagesTs/b.nii.gz"}, ...]}

Relative paths are relative to the datalist's folder, a ``label_map`` JSON file's
too (a preset name such as ``abdomen7`` is kept as written). Every list of objects
with an ``image`` key is read; ``label`` is optional (a test case).

Example:
    >>> import json, tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "dl.json")
    >>> _ = open(p, "w").write(json.dumps({"training": [{"image": "a.nii.gz", "label": "b.nii.gz"}]}))
    >>> [e["image"].endswith("a.nii.gz") for e in load_datalist(p)]
    [True]
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import CaseErrors, ConfigError, FreeTumorError, InputError
from ..io import case_name, check_ct_intensity, check_same_grid, load_volume, write_bytes_atomic
from ..labels import PRESETS, LabelMap, check_integer_labels, get_label_map, label_values
from ..structured import read_json


def load_datalist(path: str | os.PathLike, keys: tuple[str, ...] | None = None) -> list[dict]:
    """Entries of a datalist with absolute ``image``/``label`` paths and a ``split`` key."""
    p = Path(path)
    data = read_json(p, "datalist")  # size and depth bounded before parsing
    if isinstance(data, list):
        data = {"training": data}
    if not isinstance(data, dict):
        raise InputError(p, "datalist must be a JSON object with lists such as \"training\"")
    base = p.resolve().parent
    entries: list[dict] = []
    for key, value in data.items():
        if keys is not None and key not in keys:
            continue
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
            continue
        for i, item in enumerate(value):
            if "image" not in item:
                continue
            entry = dict(item)
            entry["split"] = key
            entry["id"] = entry.get("id") or f"{key}[{i}]"
            for k in ("image", "label"):
                if isinstance(entry.get(k), str):
                    entry[k] = str((base / entry[k]) if not os.path.isabs(entry[k]) else Path(entry[k]))
            entries.append(entry)
    if not entries:
        raise InputError(p, "datalist has no entries with an \"image\" key")
    if data.get("allow_duplicates") is not True:
        check_no_duplicates(entries, p)
    return entries


def check_no_duplicates(entries: list[dict], source: str | os.PathLike) -> None:
    """Refuse a datalist that lists one image file twice (in one list or in two): trained on twice,
    and possibly in training and validation both, a leak. A datalist that means it (several labels
    of one image, say) says ``"allow_duplicates": true``.

    Example:
        >>> check_no_duplicates([{"image": "/d/a.nii.gz", "id": "training[0]"},
        ...                      {"image": "/d/a.nii.gz", "id": "validation[3]"}], "dl.json")
        Traceback (most recent call last):
        ...
        freetumor.errors.InputError: dl.json: lists /d/a.nii.gz twice (training[0] and validation[3]): a case listed twice is trained on twice and can be validated on too; remove one, or set "allow_duplicates": true in the datalist
    """
    seen: dict[str, str] = {}
    for e in entries:
        key = os.path.realpath(e["image"]) if isinstance(e["image"], str) else str(e["image"])
        if key in seen:
            raise InputError(source, f"lists {e['image']} twice ({seen[key]} and {e['id']}): a case listed twice is "
                                     "trained on twice and can be validated on too; remove one, or set "
                                     "\"allow_duplicates\": true in the datalist")
        seen[key] = e["id"]


def datalist_entries(datalist: str | os.PathLike, what: str = "labelled cases",
                     keys: tuple[str, ...] | None = ("training",), *, label_map: "str | LabelMap | None" = None,
                     skip_bad: bool = False, log: Callable[[str], None] | None = None) -> list[dict]:
    """The entries of a datalist that have a label, after checking their files exist (one-line errors).

    With ``label_map`` every case is also checked up front, as ``freetumor data check`` does
    (:func:`check_cases`): bad cases stop the caller before any work, or are left out with
    ``skip_bad``.
    """
    entries = [e for e in load_datalist(datalist, keys=keys) if e.get("label")]
    if not entries:
        where = " under \"training\"" if keys == ("training",) else ""
        raise InputError(datalist, f"no {what} (entries with \"label\"){where}")
    if label_map is not None:
        return check_cases(entries, label_map, datalist, skip_bad=skip_bad, log=log)
    missing = [e["image"] for e in entries if not Path(e["image"]).exists()] + [
        e["label"] for e in entries if not Path(e["label"]).exists()]
    if missing:
        raise InputError(missing[0], "listed in the datalist but not found")
    return entries


def datalist_label_map(path: str | os.PathLike) -> str | None:
    """The ``label_map`` a datalist declares, if any.

    A preset name comes back as written; a relative path to a JSON label map is resolved
    against the datalist's folder, like its image and label paths, so the datalist works
    from any working directory.
    """
    try:
        data = read_json(path, "datalist")
    except InputError:
        return None
    value = data.get("label_map") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        return None
    is_file = value.lower().endswith(".json") or "/" in value or os.sep in value
    if value in PRESETS or not is_file or os.path.isabs(value):
        return value
    return os.path.normpath(Path(path).resolve().parent / value)


_LIDC_PATIENT = re.compile(r"^(LIDC-IDRI-\d+)")


def patient_id(entry: dict) -> str:
    """The patient an entry belongs to: its ``patient`` field, else the ``LIDC-IDRI-XXXX`` prefix of
    its image file name, else its case name (one patient per case).

    Example:
        >>> patient_id({"image": "/d/images/LIDC-IDRI-0003_R_2.nii.gz"}), patient_id({"image": "a.nii.gz"})
        ('LIDC-IDRI-0003', 'a')
    """
    if entry.get("patient") not in (None, ""):
        return str(entry["patient"])
    name = Path(str(entry["image"])).name
    match = _LIDC_PATIENT.match(name)
    return match.group(1) if match else case_name(str(entry["image"]))


def patient_split(entries: Iterable[dict], fraction: float = 0.5, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split entries into two patient-disjoint lists (see :func:`patient_id`).

    Patients are taken in a seeded random order into the first list until it holds at least
    ``fraction`` of the entries; the rest form the second. Each list keeps the input order.
    Use it for real-vs-real controls (``freetumor realism --control``) and any train / test
    split where one patient's lesions must not sit on both sides.

    Raises:
        ConfigError: ``fraction`` outside (0, 1), or fewer than 2 patients.
    """
    entries = list(entries)
    if not (isinstance(fraction, (int, float)) and 0.0 < float(fraction) < 1.0):
        raise ConfigError(f"fraction must be a number in (0, 1), got {fraction!r}")
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault(patient_id(e), []).append(i)
    if len(groups) < 2:
        raise ConfigError(f"a patient-wise split needs at least 2 patients, got {len(groups)}")
    order = np.random.default_rng(seed).permutation(sorted(groups))
    target = float(fraction) * len(entries)
    first: set[int] = set()
    for pid in order[:-1]:  # the last patient always goes to the second list
        if len(first) >= target:
            break
        first.update(groups[str(pid)])
    return [e for i, e in enumerate(entries) if i in first], [e for i, e in enumerate(entries) if i not in first]


def write_datalist(path: str | os.PathLike, entries: Iterable[dict], label_map: str | os.PathLike | None = None,
                   key: str = "training") -> Path:
    """Write entries as a datalist under ``key`` (image / label paths absolute, other fields kept).

    ``label_map`` is stored as given for a preset; a label map file is stored relative to the
    datalist's folder (see :func:`datalist_label_map`). The ``split`` and ``id`` that
    :func:`load_datalist` adds are dropped. Written atomically; returns the path.
    """
    out = Path(path)
    rows = []
    for e in entries:
        row = {k: v for k, v in e.items() if k not in ("split", "id")}
        for k in ("image", "label"):
            if isinstance(row.get(k), str):
                row[k] = str(Path(row[k]).resolve())
        rows.append(row)
    if not rows:
        raise ConfigError(f"no entries to write to {out}")
    data: dict = {}
    if label_map is not None:
        lm = str(label_map)
        data["label_map"] = os.path.relpath(Path(lm).resolve(), out.resolve().parent) if Path(lm).is_file() else lm
    data[key] = rows
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, (json.dumps(data, indent=2) + "\n").encode())
    return out


@dataclass
class CaseCheck:
    """Result of checking one datalist entry."""

    id: str
    image: str
    label: str | None
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    shape: tuple | None = None
    spacing: tuple | None = None
    hu_range: tuple | None = None
    labels: list[int] | None = None


def check_case(entry: dict, label_map: LabelMap | None) -> CaseCheck:
    """Check one pair: readable, same grid, known label values, HU plausible."""
    res = CaseCheck(entry.get("id", "?"), entry["image"], entry.get("label"))
    try:
        image = load_volume(entry["image"])
        res.shape, res.spacing = image.shape, image.spacing
        res.hu_range = (float(image.array.min()), float(image.array.max()))
        check_ct_intensity(image)
    except FreeTumorError as exc:
        res.ok = False
        res.problems.append(str(exc))
        return res
    if res.label is None:
        return res
    try:
        label = load_volume(res.label)
        check_same_grid(image, label)
        lab = label.array
        check_integer_labels(lab, label.name)
        values = label_values(lab)
        res.labels = values
        unknown = label_map.unknown_values(values)
        if unknown:
            shown = ", ".join(str(v) for v in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
            raise InputError(label.name, f"label values {shown} are not in label map {label_map.name!r}")
    except FreeTumorError as exc:
        res.ok = False
        res.problems.append(str(exc))
    return res


_CHECKED: dict[tuple, CaseCheck] = {}  # (image, label, their mtimes and sizes, label map) -> result


def _stamp(path: str | None) -> tuple:
    if path is None:
        return (None,)
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_mtime_ns, st.st_size)


def check_cases(entries: list[dict], label_map: "str | LabelMap | None", source: str | os.PathLike, *,
                skip_bad: bool = False, log: Callable[[str], None] | None = None) -> list[dict]:
    """Check every case up front with :func:`check_case`; the good entries, in order.

    The one gate of the commands that read many cases (``train-seg``, ``train-synth``,
    ``synthesize-batch``, ``turing build``, ``predict``, ``organs``, ``realism``,
    ``export-nnunet``, ``lesions fit``): a missing, corrupt, empty, 4D or
    non-CT image, a label off the image's grid, with non-integer or unknown values. A case
    checked before (same files, unchanged) is not read again.

    Raises:
        CaseErrors: one line per bad case, unless ``skip_bad``, which leaves them out and
            says how many through ``log``.
        InputError: ``skip_bad`` left no case.
    """
    if label_map is None and any(e.get("label") for e in entries):
        raise ConfigError("checking labels needs a label map")
    lm = get_label_map(label_map) if label_map is not None else None
    results = []
    for e in entries:
        key = (_stamp(e["image"]), _stamp(e.get("label")), lm and lm.name)
        if key not in _CHECKED:
            _CHECKED[key] = check_case(e, lm)
        results.append(_CHECKED[key])
    bad = [r for r in results if not r.ok]
    if not bad:
        return list(entries)
    name = Path(source).name
    if not skip_bad:
        lines = ["; ".join(r.problems) for r in bad]
        lines[-1] += (f" ({len(bad)} of {len(entries)} cases of {name} bad; nothing was done; "
                      "--skip-bad-cases leaves bad cases out)")
        raise CaseErrors(lines)
    good = [e for e, r in zip(entries, results) if r.ok]
    if not good:
        raise InputError(source, f"all {len(entries)} cases are bad (see `freetumor data check`)")
    if log is not None:
        log(f"skipped {len(bad)} bad case(s) of {len(entries)} in {name}: "
            + "; ".join(r.problems[0] for r in bad[:3]) + (" ..." if len(bad) > 3 else ""))
    return good


def checked_labelled_cases(path: str | os.PathLike, label_map: "str | LabelMap", *, skip_bad: bool = False,
                           log: Callable[[str], None] | None = None) -> list[dict]:
    """The labelled entries of every list of a datalist, each ``(image, label)`` pair once, checked
    up front with :func:`check_cases` (``freetumor realism``, ``freetumor lesions fit``).

    An empty list when no entry has a label (the caller says what it needed).

    Raises:
        InputError: the datalist is missing or unreadable; ``skip_bad`` left no case.
        CaseErrors: one line per bad case, unless ``skip_bad``.
    """
    entries, seen = [], set()
    for e in load_datalist(path):
        if not e.get("label"):
            continue
        key = (str(e["image"]), str(e["label"]))
        if key not in seen:
            seen.add(key)
            entries.append(e)
    if not entries:
        return []
    return check_cases(entries, label_map, path, skip_bad=skip_bad, log=log)


def check_datalist(path: str | os.PathLike, label_map: str | os.PathLike | None = None) -> list[CaseCheck]:
    """Check every entry of a datalist (label map: argument, else the datalist's, else abdomen7)."""
    entries = load_datalist(path)
    lm = get_label_map(label_map or datalist_label_map(path) or "abdomen7")
    return [check_case(e, lm) for e in entries]
