"""Prefect tasks called through ``.fn()`` and their content-keyed cache."""

from __future__ import annotations

from types import SimpleNamespace

from charloop.stages.generate.stage import generate_identity
from charloop.stages.layout import IterationPaths
from tasks.caching import stage_cache_key
from tasks.stages import caption_task, filter_task, generate_task, review_task


def test_cache_key_needs_a_finished_output_and_tracks_its_content(make_project, tmp_path):
    project = make_project()
    key_fn = stage_cache_key(
        lambda p: generate_identity(
            p["project"],
            p["iteration"],
            p["adapter"],
            IterationPaths.of(p["project"].workdir, p["iteration"]).generated,
        )
    )
    context = SimpleNamespace(task=SimpleNamespace(name="generate"))
    parameters = {"project": project, "iteration": 1, "adapter": None}
    assert key_fn(context, parameters) is None  # nothing on disk: never serve a cached result
    output = generate_task.fn(project, 1, None)
    first = key_fn(context, parameters)
    assert first and first == key_fn(context, parameters)
    assert key_fn(context, {**parameters, "iteration": 2}) is None
    image = next(p for p in IterationPaths.of(project.workdir, 1).generated.glob("*.png"))
    image.write_bytes(image.read_bytes() + b"\0")  # damaged output: no key, so the task runs
    assert key_fn(context, parameters) is None
    again = generate_task.fn(project, 1, None)  # redone with the same bytes: the same key
    assert key_fn(context, parameters) == first and again.digest == output.digest
    assert output.images == 8


def test_stage_tasks_chain_through_fn(make_project, prefect_harness):
    project = make_project()
    generated = generate_task.fn(project, 1, None)
    filtered = filter_task.fn(project, 1, generated)  # also publishes a table artifact
    assert filtered.candidates == 8
    reviewed = review_task.fn(project, 1, generated, filtered, None)
    assert reviewed.facts() == {
        "kept": filtered.kept,
        "overridden": 0,
        "reviewer": None,
        "via": "automatic",
        "comment": "",
    }
    dataset = caption_task.fn(project, 1, generated, reviewed)
    assert dataset.images == filtered.kept
    assert dataset.path == str(IterationPaths.of(project.workdir, 1).dataset)


def test_plan_round_task_starts_a_new_round_only_after_a_registration(make_project, tmp_path):
    from PIL import Image

    from charloop.lineage.rounds import read_rounds
    from charloop.stages.layout import PUBLISHED
    from tasks.rounds import plan_round_task

    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (32, 32), "teal").save(refs / "a.png")
    project = make_project(
        character={"name": "kira", "trigger": "zxq kira", "references": str(refs)}
    )
    first = plan_round_task.fn(project)
    assert (first.number, first.first_iteration, first.supersedes) == (1, 1, None)
    Image.new("RGB", (32, 32), "pink").save(refs / "b.png")
    # Nothing registered yet: the same round, re-keyed to the new references.
    again = plan_round_task.fn(project)
    assert (again.number, again.first_iteration) == (1, 1) and again.inputs != first.inputs
    root = IterationPaths.of(project.workdir, 1).root
    root.mkdir(parents=True)
    (root / PUBLISHED).write_text('{"model": "kira-lora", "version": "1"}')
    assert plan_round_task.fn(project) == again  # same inputs: the same round
    Image.new("RGB", (32, 32), "gold").save(refs / "c.png")
    second = plan_round_task.fn(project)
    assert (second.number, second.first_iteration) == (2, 2)
    assert [r.number for r in read_rounds(project.workdir)] == [1, 2]
