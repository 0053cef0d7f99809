"""The lineage hash (``params_hash``, the branch name) covers every field that changes
results, and only those: each leaf of real params files is mutated in turn."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from charloop.params.project import (
    MEMORY_PLACEMENT_FIELDS,
    PRESENTATION_FIELDS,
    RESULT_SECTIONS,
    WORKFLOW_SECTIONS,
    params_hash,
)
from charloop.params.schema import Params
from tests.conftest import REPO


def _leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(value, list) and value and not isinstance(value[0], dict | list):
        return [(*path, "0")]  # a list of scalars: its first item stands for it
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*path, str(i)))]
    return [path] if value is not None else []


def _mutated(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    parent: Any = data
    for key in path[:-1]:
        parent = parent[int(key)] if isinstance(parent, list) else parent[key]
    last: Any = int(path[-1]) if isinstance(parent, list) else path[-1]
    old = parent[last]
    if isinstance(old, bool):
        parent[last] = not old
    elif isinstance(old, int):
        parent[last] = old + 1
    elif isinstance(old, float):
        halved = round(old * 0.5 + 0.013, 6)
        parent[last] = halved if halved != old else old + 0.013
    else:
        parent[last] = f"{old}x" if old else "x"
    return data


def _field_name(path: tuple[str, ...]) -> str:
    return ".".join(p for p in path if not p.isdigit())


def test_every_section_is_either_result_or_workflow():
    sections = set(Params.model_fields)
    assert set(RESULT_SECTIONS) | set(WORKFLOW_SECTIONS) == sections
    assert not set(RESULT_SECTIONS) & set(WORKFLOW_SECTIONS)
    for name in PRESENTATION_FIELDS:
        section, field = name.split(".")
        assert (
            section in RESULT_SECTIONS
            and field in Params.model_fields[section].annotation.model_fields
        )  # type: ignore[union-attr]


@pytest.mark.parametrize("params_file", ["params.yaml", "examples/cast.yaml", "examples/tiny.yaml"])
def test_each_result_field_changes_the_hash_and_nothing_else_does(params_file):
    raw = yaml.safe_load((REPO / params_file).read_text())
    full = Params.model_validate(raw).model_dump(mode="json")
    base = params_hash(Params.model_validate(full))
    changed, kept, tried = [], [], set()
    for path in _leaves(full):
        try:
            params = Params.model_validate(_mutated(full, path))
        except ValidationError:
            continue  # not a valid value for this field: nothing to compare
        name = _field_name(path)
        tried.add(path[0])
        unhashed = {*PRESENTATION_FIELDS, *(f"train.memory.{f}" for f in MEMORY_PLACEMENT_FIELDS)}
        expected_change = path[0] in RESULT_SECTIONS and name not in unhashed
        (changed if expected_change else kept).append(name)
        assert (params_hash(params) != base) == expected_change, name
    assert len(changed) >= 30 and kept  # enough of both kinds were really mutated
    assert {"contexts", "generate", "filter", "caption", "train", "evaluate"} <= tried
    if "cast" in raw:
        assert any(name.startswith("cast.") for name in changed)
        assert "cast.joint.images_per_prompt" in changed


@pytest.mark.parametrize(
    ("params_file", "branch"),
    [("examples/tiny.yaml", "params-bf9b732a"), ("examples/cast.yaml", "params-80f10fcb")],
)
def test_an_upgrade_keeps_existing_branches(params_file, branch):
    """A field added to the schema must not move unchanged projects to a new branch (their
    finished iterations would be orphaned and redone): new fields are hashed only away
    from the value that behaves as before (``LATER_RULE_FIELDS``, ``train.memory``). These
    branches were computed before ``filter: traits: keep_best`` existed."""
    from charloop.params.project import load_project

    assert load_project(REPO / params_file).branch == branch
