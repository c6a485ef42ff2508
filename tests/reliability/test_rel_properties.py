"""Property tests (hypothesis): the parsers of user files — arch JSON, experiment configs,
measurement CSVs — never fail with anything but the project's own error types, whatever
they are fed (random text, and valid documents with random damage)."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rel_helpers import smoke_dict

from search_space.errors import TemponasError

pytestmark = pytest.mark.timeout(120)

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# JSON/YAML-like values: what a hand-edit or a bad merge can put anywhere in a document
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                   st.dictionaries(st.text(max_size=8), c, max_size=4)),
                      max_leaves=12)


def _paths(d, prefix=()):
    """Every (path) into a nested dict/list document."""
    yield prefix
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _paths(v, prefix + (i,))


def _mutate(doc, data):
    """Replace, delete or add one node of ``doc`` (drawn by hypothesis)."""
    paths = [p for p in _paths(doc) if p]
    if not paths:
        return data.draw(values)
    path = data.draw(st.sampled_from(paths))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    op = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if op == "replace":
        parent[path[-1]] = data.draw(values)
    elif op == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = data.draw(values)
    else:
        parent.append(data.draw(values))
    return doc


def _only_project_errors(fn, *a):
    try:
        fn(*a)
    except TemponasError as e:
        msg = str(e)
        assert msg and "\n" not in msg.strip(), f"multi-line error: {msg!r}"


# ---- arch JSON ----------------------------------------------------------------------------------

def _arch_doc():
    from search_space.arch import ArchConfig, StageChoice
    from search_space.presets import default_task, get_backbone

    bb = get_backbone("tiny")
    a = ArchConfig.create("tiny", default_task("tiny"),
                          {bb.stage_ids[0]: StageChoice("attn1d", 1, 2, 0, 0),
                           bb.stage_ids[-1]: StageChoice("conv3d", 1, 0, 3, 3)}, bb.stage_ids)
    return {**a.to_dict(), "arch_id": a.arch_id}


@SETTINGS
@given(st.text(max_size=200))
def test_arch_json_random_text(text):
    from search_space.arch import ArchConfig

    _only_project_errors(ArchConfig.from_json, text, "f.json")


@SETTINGS
@given(st.data())
def test_arch_json_damaged_document(data):
    from search_space.arch import ArchConfig
    from search_space.geometry import validate_arch
    from search_space.presets import get_backbone

    doc = _mutate(_arch_doc(), data)

    def parse_and_validate(text):
        arch = ArchConfig.from_json(text, "f.json")
        validate_arch(get_backbone("tiny"), arch, where="f.json")

    _only_project_errors(parse_and_validate, json.dumps(doc, allow_nan=True))


# ---- experiment configs -----------------------------------------------------------------------

@SETTINGS
@given(st.data())
def test_config_damaged_document(data):
    from experiments.config import parse_config

    doc = _mutate(smoke_dict(), data)
    _only_project_errors(parse_config, doc, "cfg.yaml")


@SETTINGS
@given(st.text(max_size=200))
def test_config_random_yaml_text(tmp_path_factory, text):
    from experiments.config import load_config

    p = tmp_path_factory.getbasetemp() / "prop_cfg.yaml"
    p.write_bytes(text.encode("utf-8", errors="replace"))
    _only_project_errors(load_config, p)


@SETTINGS
@given(st.data())
def test_config_damaged_yaml_text(tmp_path_factory, data):
    """Valid YAML text with characters cut, doubled or inserted."""
    from experiments.config import load_config

    text = yaml.safe_dump(smoke_dict(), sort_keys=False)
    i = data.draw(st.integers(0, len(text) - 1))
    op = data.draw(st.sampled_from(["cut", "insert", "truncate"]))
    if op == "cut":
        text = text[:i] + text[i + data.draw(st.integers(1, 20)):]
    elif op == "insert":
        text = text[:i] + data.draw(st.text(alphabet=":{}[]-,#&*!|>'\"% \t\n", min_size=1, max_size=4)) + text[i:]
    else:
        text = text[:i]
    p = tmp_path_factory.getbasetemp() / "prop_cfg2.yaml"
    p.write_text(text)
    _only_project_errors(load_config, p)


# ---- measurement CSVs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def csv_rows(tmp_path_factory):
    from test_rel_bad_input import valid_measurement_csv

    p = valid_measurement_csv(tmp_path_factory.mktemp("prop_csv"))
    with open(p, newline="") as f:
        return list(csv.reader(f))


cells = st.one_of(st.sampled_from(["", "nan", "-1", "0", "inf", "1e309", "block", "network",
                                   "x", "{", "3.5", "1", "true"]), st.text(max_size=10))


@SETTINGS
@given(data=st.data())
def test_measurement_csv_damaged_cells(tmp_path_factory, csv_rows, data):
    from latency_models.measurements import read_csv

    rows = [list(r) for r in csv_rows]
    for _ in range(data.draw(st.integers(1, 4))):
        r = data.draw(st.integers(0, len(rows) - 1))
        c = data.draw(st.integers(0, len(rows[0]) - 1))
        op = data.draw(st.sampled_from(["set", "drop_row", "drop_col", "cut_row"]))
        if op == "set":
            rows[r][c] = data.draw(cells)
        elif op == "drop_row" and len(rows) > 1:
            rows.pop(r)
        elif op == "drop_col":
            rows = [row[:c] + row[c + 1:] for row in rows]
        else:
            rows[r] = rows[r][: c]
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    p = tmp_path_factory.getbasetemp() / "prop_meas.csv"
    p.write_text(buf.getvalue())
    _only_project_errors(read_csv, p)


@SETTINGS
@given(st.binary(max_size=300))
def test_measurement_csv_random_bytes(tmp_path_factory, blob):
    from latency_models.measurements import read_csv

    p = tmp_path_factory.getbasetemp() / "prop_bytes.csv"
    p.write_bytes(blob)
    _only_project_errors(read_csv, p)


def test_property_tests_recorded(record):
    record("bad input", "property tests (hypothesis): arch JSON, configs, measurement CSVs",
           "random text/bytes and valid documents with random replaced/deleted/added nodes, cut or "
           "inserted characters, damaged CSV cells/rows/columns; 40 examples per property, 7 "
           "properties",
           "only TemponasError subclasses with a one-line message (anything else fails the test)",
           "-")
