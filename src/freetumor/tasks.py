"""Segmentation tasks and their class facts: the one place that says which class is which.

A *task* fixes the classes a segmentor predicts. Every other module (config,
transforms, trainers, quality control, export, organ masks, benchmarks) asks here.

* ``organ3``: 0 background, 1 organ, 2 tumour of the configured organ;
* ``abdomen7`` and ``chest3``: the classes are the ids of FreeTumor's label conventions of the
  same names, stated once in :data:`freetumor.labels.CONVENTIONS` (``abdomen7``: every organ the
  label map has; ``chest3``: the lung tumour or COVID-19 lesion).

:func:`class_mapping` turns the label values of a dataset's convention
(:mod:`freetumor.labels`) into these training classes.

Example:
    >>> num_classes("abdomen7"), tumour_classes("abdomen7", "liver"), tumour_classes("organ3", "kidney")
    (7, (2, 4, 6), (2,))
    >>> organ_classes("organ3", "pancreas")
    {'pancreas': (1, 2)}
    >>> class_mapping("abdomen7", "organ3", "kidney")
    {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 2}
"""

from __future__ import annotations

import os

from .errors import ConfigError
from .labels import CONVENTIONS, LabelMap, convention_names, get_label_map

TASKS = ("organ3", "abdomen7", "chest3")
# abdomen7 classes: organ -> (organ class, tumour class), the abdomen7 label ids
ABDOMEN7_ORGANS = dict(CONVENTIONS["abdomen7"])
CHEST_ORGANS = ("lung", "covid")
# organ3 and chest3: the one organ is class 1, its tumour class 2 (chest3's lung and lesion ids)
SINGLE_ORGAN_CLASSES = CONVENTIONS["chest3"]["lung"]
TASK_CLASSES = {"organ3": 3, "abdomen7": len(convention_names("abdomen7")), "chest3": len(convention_names("chest3"))}


def check_task(task: object) -> str:
    """``task`` when it is a known task, else a one-line :class:`ConfigError`."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return str(task)


def num_classes(task: str) -> int:
    """Output classes of a segmentor for ``task`` (background included)."""
    return TASK_CLASSES[check_task(task)]


def organ_classes(task: str, organ: str) -> dict[str, tuple[int, int]]:
    """Organ -> (organ class, tumour class) in the training classes of ``task``.

    ``abdomen7`` lists its three organs; ``organ3`` and ``chest3`` the configured organ.
    """
    if check_task(task) == "abdomen7":
        return dict(ABDOMEN7_ORGANS)
    return {organ: SINGLE_ORGAN_CLASSES}


def tumour_classes(task: str, organ: str) -> tuple[int, ...]:
    """The tumour classes of ``task``, in class order."""
    return tuple(sorted(t for _o, t in organ_classes(task, organ).values()))


def class_mapping(label_map: str | os.PathLike | LabelMap, task: str, organ: str) -> dict[int, int]:
    """Input label value -> training class, for every value the label map knows.

    Values the map knows but the task does not use map to 0; values the map
    does not know at all are absent here (``ConvertLabelsd`` maps them to 0 too).

    Args:
        label_map: the datalist's label convention (preset name, JSON path or
            :class:`~freetumor.labels.LabelMap`).
        task: ``organ3``, ``abdomen7`` or ``chest3``.
        organ: the tumour type (used by ``organ3``; ``chest3`` prefers it when
            it is ``lung`` or ``covid``).

    Raises:
        ConfigError: unknown task, the map lacks the organ(s) the task needs, or
            one input value would need two different classes.

    Example:
        >>> class_mapping("abdomen7", "organ3", "liver")
        {0: 0, 1: 1, 2: 2, 3: 0, 4: 0, 5: 0, 6: 0}
        >>> m = class_mapping("totalseg", "abdomen7", "liver")
        >>> m[5], m[7], m[2], m[3], m[201], m[202], m[203], m[1]
        (1, 3, 5, 5, 2, 4, 6, 0)
        >>> class_mapping("chest3", "chest3", "covid")
        {0: 0, 1: 1, 2: 2}
    """
    lm = get_label_map(label_map)
    check_task(task)
    pairs: list[tuple[str, int, int]] = []  # (organ, organ class, tumour class)
    if task == "organ3":
        lm.organ_ids(organ)  # ConfigError when the map lacks it
        pairs.append((organ, *SINGLE_ORGAN_CLASSES))
    elif task == "abdomen7":
        pairs = [(name, c, t) for name, (c, t) in ABDOMEN7_ORGANS.items() if lm.supports(name)]
        if not pairs:
            raise ConfigError(
                f"label map {lm.name!r} has none of {', '.join(ABDOMEN7_ORGANS)}; task abdomen7 needs at least one")
    else:  # chest3
        order = sorted(CHEST_ORGANS, key=lambda n: n != str(organ).lower())  # the configured organ first
        pairs = [(name, *SINGLE_ORGAN_CLASSES) for name in order if lm.supports(name)]
        if not pairs:
            raise ConfigError(f"label map {lm.name!r} has no lung or covid entry; task chest3 needs one")

    mapping = {int(v): 0 for v in lm.known}
    mapping[0] = 0
    assigned: dict[int, tuple[int, str]] = {}

    def put(value: int, cls: int, what: str) -> None:
        old = assigned.get(value)
        if old is not None and old[0] != cls:
            raise ConfigError(
                f"label map {lm.name!r}: value {value} is both {old[1]} and {what}; task {task} needs one class")
        assigned[value] = (cls, what)
        mapping[value] = cls

    for name, organ_cls, tumour_cls in pairs:
        for v in lm.organ_ids(name):
            put(int(v), organ_cls, f"{name} organ")
        put(int(lm.tumour_id(name)), tumour_cls, f"{name} tumour")
    return dict(sorted(mapping.items()))
