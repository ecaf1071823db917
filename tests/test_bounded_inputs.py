"""Bounded inputs and plain messages (issue 25, items 2 and 5), rule by rule, in-process and fast.

The command-level contract (exit 1, one line, nothing written) of the same inputs is in
``tests/test_cli_contract.py``; here each rule is stated on the function that keeps it.
"""

from __future__ import annotations

import json
import math
import re
import tracemalloc
from pathlib import Path

import pytest

from freetumor.errors import ConfigError, InputError
from freetumor.lesions.profile import (BUILTIN_DIR, FEATURE_ORDER, FEATURE_RANGES, LesionProfile, builtin_names,
                                       load_profile, range_text)
from freetumor.structured import MAX_DEPTH, json_depth, read_json, read_yaml

REPO = Path(__file__).resolve().parents[1]
ROW = [8.0, 0.9, 0.8, 0.95, 700.0, 0.3, 0.5, 60.0, 30.0, 2.0, 0.0]  # one plausible lung lesion


# ----------------------------------------------------------------------------- JSON / YAML limits
@pytest.mark.parametrize("text, depth", [("[]", 1), ('{"a": [1, {"b": 2}]}', 3), ('["[[[[", "]"]', 1),
                                         (r'["\"[[[", [[]]]', 3), (r'["\\", [[]]]', 3), ("1", 0)])
def test_json_depth_counts_brackets_outside_strings(text, depth):
    assert json_depth(text) == depth == _python_depth(json.loads(text))


def _python_depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_python_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_python_depth(v) for v in value), default=0)
    return 0


def test_depth_limit_is_refused_before_parsing(tmp_path, monkeypatch):
    """Past MAX_DEPTH levels a document is refused by the pre-scan: the parser is never called
    (so the refusal does not rest on catching a RecursionError)."""
    import freetumor.structured as structured

    calls = []
    monkeypatch.setattr(structured.json, "loads", lambda *a, **k: calls.append(a) or [])
    deep = tmp_path / "deep.json"
    deep.write_text("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    with pytest.raises(InputError, match=rf"deep.json: datalist nested too deeply \({MAX_DEPTH + 1} levels, "
                                         rf"the limit is {MAX_DEPTH}\)"):
        read_json(deep, "datalist")
    assert calls == []
    ok = tmp_path / "ok.json"
    ok.write_text("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    read_json(ok, "datalist")
    assert len(calls) == 1


def test_yaml_depth_limit_flow_and_block(tmp_path):
    for name, text in (("flow.yaml", "[" * 5000 + "]" * 5000),
                       ("block.yaml", "".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_DEPTH + 1)) + "  " * (MAX_DEPTH + 1) + "v: 1\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=f"{name}: config nested too deeply"):
            read_yaml(tmp_path / name, "config")
    (tmp_path / "fine.yaml").write_text("a:\n  b: [1, 2, {c: 3}]\n")
    assert read_yaml(tmp_path / "fine.yaml", "config") == {"a": {"b": [1, 2, {"c": 3}]}}


def test_size_limit_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(65 * 2**20)  # sparse: no disk used, and never read
    with pytest.raises(InputError, match="big.json: datalist of 65 MiB is larger than the limit of 64 MiB"):
        read_json(big, "datalist")
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"training": ["x" * 100]}))
    with pytest.raises(InputError, match="small.json: label map of 1.. bytes is larger than the limit of 50 bytes"):
        read_json(small, "label map", max_bytes=50)


def test_every_loader_goes_through_the_bounds(tmp_path):
    """Datalists, label maps, profiles, configs (and --set values) and records: one rule, each file named."""
    from freetumor.config import load_config
    from freetumor.data import load_datalist
    from freetumor.labels import load_label_map
    from freetumor.lesions.features import read_synthesis_record

    deep = "[" * 200 + "]" * 200
    for name in ("dl.json", "lm.json", "p.json", "c.yaml", "r.json"):
        (tmp_path / name).write_text(deep)
    for load, name in ((load_datalist, "dl.json"), (load_label_map, "lm.json"), (load_profile, "p.json"),
                       (load_config, "c.yaml"), (read_synthesis_record, "r.json")):
        with pytest.raises(InputError, match=f"{name}: .* nested too deeply"):
            load(str(tmp_path / name))
    with pytest.raises(InputError, match=r"--set model.name: value nested too deeply"):
        load_config("liver-cpu-tiny", [f"model.name={deep}"])


# ----------------------------------------------------------------------------- profile values
def _literature(tmp_path, feature, **spec) -> Path:
    doc = json.loads((BUILTIN_DIR / "liver-literature.json").read_text())
    doc["distributions"][feature] = {**doc["distributions"][feature], **spec}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    return path


def _fitted(tmp_path, rows) -> Path:
    doc = LesionProfile.from_rows("lung", [ROW, ROW], {"test": True}).to_json()
    doc["rows"] = rows
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))  # NaN and Infinity as Python's json writes (and reads) them
    return path


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("feature", ["diameter_mm", "contrast_hu", "edge_norm"])
def test_profile_rows_must_be_finite(tmp_path, feature, value):
    """The rule: every value of a profile row is a finite number. NaN compares false with any bound,
    so a range check alone would let it through; the error says what is wrong with it."""
    row = [value if f == feature else x for f, x in zip(FEATURE_ORDER, ROW)]
    path = _fitted(tmp_path, [ROW, row])
    with pytest.raises(InputError) as info:
        load_profile(path)
    assert str(info.value) == f"{path}: {feature} of row 2 must be a finite number, got {value!r}"


@pytest.mark.parametrize("feature, value", [("diameter_mm", 0.0), ("diameter_mm", -8.0), ("diameter_mm", 1e6),
                                            ("contrast_hu", 1e12), ("contrast_hu", 1e308), ("solidity", 0.0),
                                            ("axis_ratio_mid", 1.5), ("interior_sd", -1.0),
                                            ("attached_fraction", 1.01), ("corr_length_mm", 0.0)])
def test_profile_row_values_in_range(tmp_path, feature, value):
    row = [value if f == feature else x for f, x in zip(FEATURE_ORDER, ROW)]
    path = _fitted(tmp_path, [ROW, row])
    with pytest.raises(InputError, match=re.escape(f"{path}: {feature} of row 2 is {value:g}, outside its valid "
                                                   f"range {range_text(feature)}")):
        load_profile(path)
    # the bounds themselves are values a row may take where the range includes them
    lo, hi, lo_ok, _ = FEATURE_RANGES[feature]
    edge = [hi if f == feature else x for f, x in zip(FEATURE_ORDER, ROW)]
    assert load_profile(_fitted(tmp_path, [ROW, edge])).rows[1][FEATURE_ORDER.index(feature)] == hi


def test_row_of_zeros_and_of_1e308_refused_at_once(tmp_path):
    for fill in (0.0, 1e308):
        path = _fitted(tmp_path, [[fill] * len(FEATURE_ORDER)])
        with pytest.raises(InputError, match=re.escape(f"{path}: diameter_mm of row 1 is {fill:g}")):
            load_profile(path)


@pytest.mark.parametrize("feature, spec, where", [
    ("contrast_hu", {"sd": -18.0}, "distributions.contrast_hu.sd is -18, outside its valid range 0 <= x <= 10000"),
    ("diameter_mm", {"sigma": -0.75}, "distributions.diameter_mm.sigma is -0.75, outside its valid range 0 <= x <= 3"),
    ("diameter_mm", {"median": 0}, "distributions.diameter_mm.median is 0, outside its valid range 0 < x <= 500 mm"),
    ("axis_ratio_mid", {"dist": "uniform", "low": 0.9, "high": 0.5}, "distributions.axis_ratio_mid.low 0.9 is above high 0.5"),
    ("contrast_hu", {"mean": 1e12}, "distributions.contrast_hu.mean is 1e+12, outside its valid range"),
    ("contrast_hu", {"max": 1e308}, "distributions.contrast_hu.max is 1e+308"),
    ("diameter_mm", {"min": 50.0, "max": 20.0}, "distributions.diameter_mm.min 50 is above max 20"),
    ("noise_sd", {"mean": math.nan}, "distributions.noise_sd.mean must be a finite number, got nan"),
    ("noise_sd", {"sd": "3"}, "distributions.noise_sd.sd must be a finite number, got '3'"),
])
def test_literature_parameters_in_range(tmp_path, feature, spec, where):
    path = _literature(tmp_path, feature, **spec)
    with pytest.raises(InputError) as info:
        load_profile(path)
    assert str(info.value).startswith(f"{path}: {where}"), str(info.value)


def test_builtin_profiles_and_an_older_profile_load(tmp_path):
    """Every shipped profile is inside the ranges; a profile without the optional fields of newer
    versions (name, summary, source, features, min/max bounds) still loads and draws."""
    import numpy as np

    for name in builtin_names():
        load_profile(f"builtin:{name}")
    ranges = {f: FEATURE_RANGES[f] for f in FEATURE_ORDER}  # a literature profile gives the 11 core features
    old = {"format": "freetumor-lesion-profile", "version": 1, "organ": "lung", "kind": "literature",
           "distributions": {f: {"dist": "normal", "mean": (lo + hi) / 2 if hi <= 1000 else 50.0, "sd": 0.0}
                             for f, (lo, hi, _, _) in ranges.items()}}
    old["distributions"]["diameter_mm"] = {"dist": "lognormal", "median": 8.0, "sigma": 0.3}
    (tmp_path / "old.json").write_text(json.dumps(old))
    p = load_profile(tmp_path / "old.json")
    assert p.kind == "literature" and p.name == "" and 1.0 <= p.sample(np.random.default_rng(0))["diameter_mm"] <= 300
    fitted = {"format": "freetumor-lesion-profile", "version": 1, "organ": "lung", "kind": "fitted", "rows": [ROW]}
    (tmp_path / "old_fitted.json").write_text(json.dumps(fitted))
    assert load_profile(tmp_path / "old_fitted.json").rows == (tuple(ROW),)


def test_every_profile_field_range_is_documented():
    """docs/concepts/lesion-profiles.md gives each feature's valid range, as the code checks it."""
    text = (REPO / "docs" / "concepts" / "lesion-profiles.md").read_text()
    for f in FEATURE_ORDER:
        assert re.search(rf"\| `{f}` \| {re.escape(range_text(f))} \|", text), f
    for rule in ("`sd`", "`sigma`", "`median`", "`low` <= `high`", "`min` <= `max`"):
        assert rule in text


# ----------------------------------------------------------------------------- --count, --per-case, planning
def test_count_bounds():
    from freetumor.synthesis import MAX_LESIONS_PER_CASE, SynthesisOptions, check_count

    assert check_count(MAX_LESIONS_PER_CASE) == MAX_LESIONS_PER_CASE
    for n in (MAX_LESIONS_PER_CASE + 1, 10**12, 2**70):
        with pytest.raises(ConfigError, match=f"--count {n} is above the limit of {MAX_LESIONS_PER_CASE} lesions"):
            SynthesisOptions("liver", count=n)
    with pytest.raises(ConfigError, match="--count must be at least 1, got 0"):
        check_count(0)


def test_per_case_bounds_and_lazy_plan():
    """--per-case is bounded, and the plan is made lazily: the largest allowed plan costs no memory
    up front, and its tasks are those of the eager plan (names, seeds) in the same order."""
    from freetumor.batch import MAX_PER_CASE, check_per_case, plan_tasks

    with pytest.raises(ConfigError, match=f"--per-case {10**9} is above the limit of {MAX_PER_CASE}"):
        check_per_case(10**9)
    entries = [{"image": f"/d/case{i}.nii.gz", "label": f"/d/case{i}_l.nii.gz"} for i in range(50)]
    list(plan_tasks(entries[:1], 1, seed=0))  # warm up: first-use imports and caches are not the plan
    tracemalloc.start()
    tasks = plan_tasks(entries, MAX_PER_CASE, seed=3)
    first = [next(tasks) for _ in range(3)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 * 2**20  # the eager plan, 500000 tasks of ~0.6 kB, takes hundreds of MB
    assert [t["name"] for t in first] == ["case0_syn0", "case0_syn1", "case0_syn2"]
    small = list(plan_tasks(entries[:2], 2, seed=3))
    assert [t["name"] for t in small] == ["case0_syn0", "case0_syn1", "case1_syn0", "case1_syn1"]
    assert small[0]["seed"] == first[0]["seed"] and len({t["seed"] for t in small}) == 4
    with pytest.raises(InputError, match="two cases share a file name"):
        plan_tasks([entries[0], dict(entries[0])], 1, 0)


# ----------------------------------------------------------------------------- messages
def test_text_file_is_not_a_checkpoint(tmp_path):
    from freetumor.checkpoints import load_checkpoint

    for name, content, what in (("notes.pt", b"c__builtin__\neval\n", "a text file"),
                                ("empty.pt", b"", "an empty file"),
                                ("image.pt", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "another kind of file")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError) as info:
            load_checkpoint(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}: not a checkpoint ({what};")
        assert "pickled" not in str(info.value)


def test_device_names():
    import torch

    from freetumor.checkpoints import check_device

    assert check_device("cpu") == "cpu" and check_device(None) is None
    with pytest.raises(ConfigError, match=r"^--qc-device 'bogus' is not a device; use cpu, cuda, cuda:N or mps$"):
        check_device("bogus", "--qc-device")
    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda:999: this machine has"):
            check_device("cuda:999")
    else:
        with pytest.raises(ConfigError, match=r"^--device cuda: no CUDA on this machine"):
            check_device("cuda")


def test_port_and_ray_address():
    import socket

    from freetumor.batch import check_ray_address
    from freetumor.turing.server import check_port

    assert check_port(8000) == 8000
    for port in (0, 70000, -1):
        with pytest.raises(ConfigError, match=f"--port {port} is not a TCP port"):
            check_port(port)
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--ray-address 127.0.0.1:{port}: cannot connect"):
            check_ray_address(f"127.0.0.1:{port}", timeout_s=2)
    check_ray_address("local")
    check_ray_address("auto")


def test_output_names_too_long(tmp_path):
    from freetumor.io import check_output_file, check_output_folder

    with pytest.raises(InputError, match="is 300 bytes long; the file system allows 239 for an output"):
        check_output_folder(tmp_path / ("a" * 300))
    with pytest.raises(InputError, match="is 256 bytes long; the file system allows 255$"):
        check_output_file(tmp_path / ("b" * 256) / "x.json")
    check_output_folder(tmp_path / ("c" * 239))
    assert list(tmp_path.iterdir()) == []


def test_record_fields(tmp_path):
    from freetumor.lesions.features import read_synthesis_record

    good = {"case": "s", "organ": "liver", "tumour_id": 2, "outputs": {"image": "s_image.nii.gz"},
            "lesions": [{"index": 1, "centre_voxel": [1, 2, 3.5], "bbox_voxel": [[0, 4], [0, 4], [1, 5]]}]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(good))
    assert read_synthesis_record(path) == good
    for edit, field in (({"tumour_id": "abc"}, '"tumour_id"'), ({"tumour_id": 0}, '"tumour_id"'),
                        ({"tumour_id": True}, '"tumour_id"'), ({"outputs": {"image": 3}}, '"outputs"'),
                        ({"lesions": [{"centre_voxel": [1, 2]}]}, '"centre_voxel"'),
                        ({"lesions": [{"index": "1"}]}, '"index"'),
                        ({"lesions": [{"bbox_voxel": [[0, 1]]}]}, '"bbox_voxel"'), ({"lesions": [7]}, "lesion 0")):
        path.write_text(json.dumps({**good, **edit}))
        with pytest.raises(InputError, match=re.escape(field)) as info:
            read_synthesis_record(path)
        assert str(info.value).startswith(f"{path}: ")
    path.write_text(json.dumps({"training": []}))
    assert read_synthesis_record(path) is None  # another kind of JSON file: not a record


def test_compare_refuses_a_binary_or_malformed_metrics_csv(tmp_path):
    from freetumor.evaluation.compare import read_metrics_csv

    header = "case,tumour_dice,tumour_nsd,organ_dice,organ_nsd\n"
    for content, problem in ((bytes(range(256)) * 4, "not UTF-8 text"), (b"a,b\x00c\n", "NUL bytes"),
                             ((header + "c1,0.5\n").encode(), "more or fewer fields"),
                             ((header + "c1,high,0.5,0.9,0.9\n").encode(), "column 'tumour_dice' of case 'c1'"),
                             (b"case,dice\nc1,0.5\n", "no column tumour_dice")):
        (tmp_path / "metrics.csv").write_bytes(content)
        with pytest.raises(InputError, match=re.escape(problem)) as info:
            read_metrics_csv(tmp_path)
        assert str(info.value).startswith(f"{tmp_path / 'metrics.csv'}: ")
    (tmp_path / "metrics.csv").write_text(header + "c1,0.5,,0.9,0.8\n")
    assert read_metrics_csv(tmp_path) == {"c1": {"case": "c1", "tumour_dice": 0.5, "tumour_nsd": None,
                                                 "organ_dice": 0.9, "organ_nsd": 0.8}}
