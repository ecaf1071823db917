from __future__ import annotations

import json

import numpy as np
import pytest

from freetumor.errors import ConfigError, InputError
from freetumor.labels import default_label_map, get_label_map, load_label_map
from freetumor.organs import ORGAN_NAMES, get_organ


def test_registry_values_follow_method():
    for name in ("liver", "pancreas", "kidney"):
        o = get_organ(name)
        assert o.hu_window == (-175.0, 250.0) and o.target_spacing == (1.5, 1.5, 1.5)
        assert o.roi_size == (96, 96, 96) and o.sign == -1
        assert dict(o.size_probs) == {"tiny": 0.25, "small": 0.25, "medium": 0.25, "large": 0.25}
    for name in ("lung", "covid"):
        o = get_organ(name)
        assert o.hu_window == (-1000.0, 500.0) and o.target_spacing == (1.25, 1.25, 5.0)
        assert o.roi_size == (192, 192, 32) and o.sign == +1
    assert dict(get_organ("covid").size_probs) == {"tiny": 0.35, "small": 0.35, "medium": 0.30}
    assert dict(get_organ("lung").size_probs) == {"tiny": 0.5, "small": 0.5}
    assert [get_organ(n).generator_channel for n in ("liver", "pancreas", "kidney")] == [0, 1, 2]
    assert get_organ("liver").base_radius_mm("large") == (48.0, 48.0, 48.0)
    assert get_organ("covid").base_radius_mm("tiny", "released") == (5.0, 5.0, 20.0)  # the released stretch
    assert get_organ("covid").base_radius_mm("tiny") == (2.75, 2.75, 2.75)  # physical (default): round, in mm


def test_unknown_organ_and_size():
    with pytest.raises(ConfigError, match="unknown organ 'brain'"):
        get_organ("brain")
    with pytest.raises(ConfigError, match="unknown size class"):
        get_organ("liver").base_radius_mm("huge")


def test_presets():
    ab = get_label_map("abdomen7")
    assert [(ab.organ_ids(o), ab.tumour_id(o)) for o in ("liver", "pancreas", "kidney")] == [
        ((1,), 2), ((3,), 4), ((5,), 6)]
    ch = get_label_map("chest3")
    assert ch.organ_ids("covid") == (1,) and ch.tumour_id("lung") == 2
    ts = get_label_map("totalseg")
    assert ts.organ_ids("liver") == (5,) and ts.organ_ids("pancreas") == (7,)
    assert ts.organ_ids("kidney") == (2, 3) and ts.organ_ids("lung") == (10, 11, 12, 13, 14)
    assert ts.unknown_values([0, 5, 117, 201]) == [] and ts.unknown_values([118]) == [118]
    assert default_label_map("lung") == "chest3" and default_label_map("kidney") == "abdomen7"
    with pytest.raises(ConfigError, match="has no 'liver'"):
        ch.organ_ids("liver")
    lab = np.array([0, 1, 2, 5, 6])
    assert ab.organ_mask(lab, "liver").tolist() == [False, True, False, False, False]
    assert ab.tumour_mask(lab, "kidney").tolist() == [False, False, False, False, True]


def test_user_json_map(tmp_path):
    p = tmp_path / "site.json"
    p.write_text(json.dumps({"name": "site", "organs": {"liver": {"organ": [7, 8], "tumor": 9}}, "labels": [0, 3]}))
    lm = get_label_map(str(p))
    assert lm.name == "site" and lm.organ_ids("liver") == (7, 8) and lm.tumour_id("liver") == 9
    assert lm.known == frozenset({0, 3, 7, 8, 9})
    assert load_label_map(p).organs == lm.organs


def test_tumour_only_map(tmp_path):
    """Lesion-only data (nodule crops) name a tumour id and no organ: tumour lookups work, organ ones fail clearly."""
    from freetumor.phantom import make_case
    from freetumor.synthesis import Synthesizer

    p = tmp_path / "nodules.json"
    p.write_text(json.dumps({"name": "nodules", "organs": {"lung": {"tumor": 1}}, "labels": [0, 1]}))
    lm = get_label_map(str(p))
    assert lm.tumour_id("lung") == 1 and lm.supports("lung") and not lm.has_organ_ids("lung")
    assert lm.known == frozenset({0, 1})
    assert lm.tumour_mask(np.array([0, 1, 1]), "lung").tolist() == [False, True, True]
    with pytest.raises(ConfigError, match="has no 'liver'"):
        lm.tumour_id("liver")
    with pytest.raises(ConfigError) as exc:
        lm.organ_mask(np.array([0, 1]), "lung")
    msg = str(exc.value)
    assert "'nodules'" in msg and str(p) in msg and "no organ ids for 'lung'" in msg and "\n" not in msg
    # An explicit empty list means the same; a full map still has its organ.
    p2 = tmp_path / "nodules2.json"
    p2.write_text(json.dumps({"organs": {"lung": {"organ": [], "tumor": 1}}}))
    assert not get_label_map(str(p2)).has_organ_ids("lung") and get_label_map("chest3").has_organ_ids("lung")
    # Synthesis into the organ needs its ids: the same one-line error, before any work.
    image, label = make_case("chest", seed=13, tumour=False)
    with pytest.raises(ConfigError, match="no organ ids for 'lung'"):
        Synthesizer("lung", label_map=str(p))(image, label)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not a readable JSON"),
        (json.dumps({"organs": {}}), "needs an \"organs\""),
        (json.dumps({"organs": {"brain": {"organ": [1], "tumor": 2}}}), "unknown organ 'brain'"),
        (json.dumps({"organs": {"liver": {"organ": [1]}}}), "needs \"tumor\""),
        (json.dumps({"organs": {"lung": {"organ": [], "tumor": 0}}}), "non-zero"),
        (json.dumps({"organs": {"liver": {"organ": [1], "tumor": 1}}}), "distinct"),
        (json.dumps({"organs": {"liver": {"organ": ["a"], "tumor": 2}}}), "integer label id"),
    ],
)
def test_bad_json_maps(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(InputError, match=match) as exc:
        get_label_map(str(p))
    assert str(p) in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown label map"):
        get_label_map("abdomen9")
    assert set(ORGAN_NAMES) == {"liver", "pancreas", "kidney", "lung", "covid"}


def test_conventions_are_stated_once_and_read_everywhere():
    """abdomen7 / chest3 come from labels.CONVENTIONS: presets, task classes, catalog targets, export names,
    organ-mask names and the concept page's tables all agree with it."""
    from pathlib import Path

    from freetumor import export, organ_masks, tasks
    from freetumor.data import catalog
    from freetumor.labels import CONVENTIONS, convention_names

    abd = convention_names("abdomen7")
    assert abd == {0: "background", 1: "liver", 2: "liver tumour", 3: "pancreas", 4: "pancreas tumour",
                   5: "kidney", 6: "kidney tumour"}
    assert convention_names("chest3") == {0: "background", 1: "lung", 2: "lesion"}
    for name, organs in CONVENTIONS.items():
        lm = get_label_map(name)
        assert lm.known == frozenset(convention_names(name))
        for organ, (oid, tid) in organs.items():
            assert lm.organ_ids(organ) == (oid,) and lm.tumour_id(organ) == tid
            assert catalog.TARGETS[name]["organs"][organ] == (oid, tid)
        assert export.task_labels(name) == {v: k for k, v in convention_names(name).items()}
        assert tasks.num_classes(name) == len(convention_names(name))
        assert organ_masks._LABEL_NAMES[name] == {"0": "background", **{str(o[0]): n for n, o in organs.items()}}
    assert tasks.organ_classes("abdomen7", "liver") == dict(CONVENTIONS["abdomen7"])
    assert tasks.organ_classes("chest3", "lung") == dict(CONVENTIONS["chest3"])
    assert get_label_map("chest3").tumour_id("covid") == CONVENTIONS["chest3"]["lung"][1]
    with pytest.raises(ConfigError, match="unknown convention"):
        convention_names("totalseg")
    # the concept page's rows say the same, in words
    page = (Path(__file__).resolve().parents[1] / "docs" / "concepts" / "label-conventions.md").read_text()
    for name in CONVENTIONS:
        words = ", ".join(f"{i} {'bg' if n == 'background' else n}" for i, n in convention_names(name).items())
        assert f"| `{name}` | {words}" in page, words
    assert "freetumor.labels.CONVENTIONS" in page
    # no module but labels states the ids again
    src = Path(__file__).resolve().parents[1] / "src" / "freetumor"
    for path in src.rglob("*.py"):
        if path.name != "labels.py":
            text = path.read_text()
            assert '"liver": (1, 2), "pancreas": (3, 4)' not in text and "5 kidney, 6 kidney tumour" not in text, path
