"""The human review gate: sheets, decisions, the review stage, the CLI and the Prefect pause."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest
from prefect import flow
from typer.testing import CliRunner

from charloop.core import atomic
from charloop.params.project import Project, load_project
from charloop.stages.contract import read_output
from charloop.stages.filter.stage import NotEnoughImages, run_filter
from charloop.stages.generate.stage import run_generate
from charloop.stages.layout import IterationPaths
from charloop.stages.results import Filtered, Generated, Reviewed
from charloop.stages.review.stage import (
    HumanDecisions,
    ReviewError,
    ReviewTimedOut,
    load_decisions,
    read_sheet,
    run_review,
)
from charloop_cli.main import app
from tests.conftest import tiny_params, write_params


def _mixed_filter(generated: Generated) -> dict[str, object]:
    """A quality rule that rejects about half of these images (its contrast bar is their
    median), so both directions can be overridden whatever the tiny model draws."""
    from PIL import Image

    from charloop.stages.filter.imagestats import quality_scores

    rows = atomic.read_jsonl(Path(generated.path) / "manifest.jsonl")
    contrasts = sorted(
        quality_scores(Image.open(Path(generated.path) / r["file"]))["contrast"] for r in rows
    )
    bar = (contrasts[len(contrasts) // 2 - 1] + contrasts[len(contrasts) // 2]) / 2
    return {
        "min_kept": 1,
        "discriminators": [{"type": "duplicates"}, {"type": "quality", "min_contrast": bar}],
    }


def _reviewable(folder: Path, **review: object) -> tuple[Project, Generated, Filtered]:
    # A first draw (same seeds, so the same images) sets the bar; the project is then loaded
    # with it, and its run folder (keyed by the params) holds every stage.
    draft = load_project(write_params(folder / "draft", tiny_params(review={**review})))
    drawn = run_generate(draft, 1, None, IterationPaths.of(draft.workdir, 1).generated)
    mixed = tiny_params(filter=_mixed_filter(drawn), review={**review})
    project = load_project(write_params(folder, mixed))
    paths = IterationPaths.of(project.workdir, 1)
    generated = run_generate(project, 1, None, paths.generated)
    filtered = run_filter(project, generated, paths.filtered)
    return project, generated, filtered


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    return _reviewable(tmp_path_factory.mktemp("review"))


def _ids(filtered: Filtered, decision: str) -> list[str]:
    rows = atomic.read_jsonl(Path(filtered.path) / "report.jsonl")
    return [r["id"] for r in rows if r["decision"] == decision]


def test_read_sheet_takes_changed_rows_and_names_bad_lines(tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("id,decision,automatic\na,keep,keep\nb,REJECT,keep\nc,keep,reject\n")
    decisions = read_sheet(sheet, "ana", "too blurry")
    assert decisions == HumanDecisions(("c",), ("b",), "ana", "too blurry", "cli")
    sheet.write_text("id,decision,automatic\na,keep,keep\nb,maybe,keep\n")
    with pytest.raises(ReviewError, match=r"sheet.csv:3: decision 'maybe' for b"):
        read_sheet(sheet, "ana")
    sheet.write_text("id,automatic\na,keep\n")
    with pytest.raises(ReviewError, match="missing columns"):
        read_sheet(sheet, "ana")


def test_decisions_must_name_known_ids_once():
    with pytest.raises(ReviewError, match="unknown image ids"):
        HumanDecisions(keep=("zzz",)).validate({"a"})
    with pytest.raises(ReviewError, match="both keep and reject"):
        HumanDecisions(keep=("a",), reject=("a",)).validate({"a"})


def test_review_stage_applies_and_records_human_overrides(staged, tmp_path):
    _, generated, filtered = staged
    kept, rejected = _ids(filtered, "keep"), _ids(filtered, "reject")
    assert kept and rejected, "the fixture's filter should keep some images and reject some"
    decisions = HumanDecisions(keep=(rejected[0],), reject=(kept[0],), reviewer="ana")
    output = run_review(generated, filtered, decisions, tmp_path / "reviewed")
    records = {r["id"]: r for r in atomic.read_jsonl(tmp_path / "reviewed/decisions.jsonl")}
    assert records[kept[0]] | {"reasons": [], "scores": {}} == {
        "id": kept[0],
        "automatic": "keep",
        "final": "reject",
        "decided_by": "human:ana",
        "reasons": [],
        "scores": {},
    }
    assert records[kept[0]]["scores"]  # the filter's scores travel with the decision
    assert records[rejected[0]]["final"] == "keep"
    assert records[kept[-1]]["decided_by"] == "filter" or len(kept) == 1
    kept_rows = atomic.read_jsonl(tmp_path / "reviewed/kept.jsonl")
    assert {r["id"] for r in kept_rows} == (set(kept) - {kept[0]}) | {rejected[0]}
    assert all("prompt" in r and "review" in r for r in kept_rows)  # full manifest rows
    assert output.overridden == 2 and output.via == "cli"


def test_review_that_rejects_everything_stops_the_iteration(staged, tmp_path):
    _, generated, filtered = staged
    everyone = HumanDecisions(reject=tuple(_ids(filtered, "keep")), reviewer="ana")
    with pytest.raises(NotEnoughImages, match="review kept 0 images"):
        run_review(generated, filtered, everyone, tmp_path / "reviewed")
    assert not (tmp_path / "reviewed").exists()  # nothing half-written


def test_cli_review_export_then_apply(tmp_path):
    project, _, filtered = _reviewable(tmp_path)
    params = str(project.params_file)
    runner = CliRunner()
    result = runner.invoke(app, ["review", "export", "-p", params, "-i", "1"])
    assert result.exit_code == 0, result.output
    desk = IterationPaths.of(project.workdir, 1).review_desk
    rows = list(csv.DictReader((desk / "review_sheet.csv").open()))
    assert len(rows) == filtered.candidates and (desk / "contact_sheet.png").is_file()
    flipped = rows[0]["id"]
    rows[0]["decision"] = "reject" if rows[0]["automatic"] == "keep" else "keep"
    bad = [dict(r) for r in rows]
    bad[1]["decision"] = "dunno"
    for name, content in (("edited.csv", rows), ("bad.csv", bad)):
        with (tmp_path / name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(content)
    result = runner.invoke(app, ["review", "apply", str(tmp_path / "bad.csv"), "--reviewer", "x"])
    assert result.exit_code == 2 and load_decisions(desk) is None
    result = runner.invoke(
        app,
        ["review", "apply", str(tmp_path / "edited.csv"), "--reviewer", "ana", "-p", params],
    )
    assert result.exit_code == 0, result.output
    decisions = load_decisions(desk)
    assert decisions is not None and decisions.reviewer == "ana"
    assert flipped in decisions.keep + decisions.reject


@flow(name="review-gate-test")
def _gate_flow(params_file: str) -> Reviewed:
    from flows.review_gate import review_gate

    project = load_project(params_file)
    paths = IterationPaths.of(project.workdir, 1)
    return review_gate(
        project, 1, read_output(paths.generated, Generated), read_output(paths.filtered, Filtered)
    )


def _resume_when_paused(run_input: dict[str, object], found: list[str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    with get_client(sync_client=True) as client:
        for _ in range(240):
            paused = [r for r in client.read_flow_runs() if r.state and r.state.is_paused()]
            if paused:
                found.append(str(paused[0].id))
                resume_flow_run(paused[0].id, run_input=run_input)
                return
            time.sleep(0.25)


def test_gate_pauses_for_a_person_and_records_the_answer(tmp_path, prefect_harness):
    project, _, filtered = _reviewable(tmp_path, enabled=True, timeout_s=120, poll_interval_s=1)
    victim = _ids(filtered, "keep")[0]
    found: list[str] = []
    answer = {"reviewer": "ana", "reject": [victim], "comment": "off model"}
    resumer = threading.Thread(target=_resume_when_paused, args=(answer, found))
    resumer.start()
    output = _gate_flow(str(project.params_file))
    resumer.join(5)
    assert found, "the flow never paused"
    assert output.via == "prefect" and output.reviewer == "ana"
    kept = {r["id"] for r in atomic.read_jsonl(Path(output.path) / "kept.jsonl")}
    assert victim not in kept and len(kept) == filtered.kept - 1
    desk = IterationPaths.of(project.workdir, 1).review_desk
    assert (desk / "review_sheet.csv").is_file()
    assert load_decisions(desk) == HumanDecisions((), (victim,), "ana", "off model", "prefect")
    # A second run finds the recorded decisions and does not pause again.
    started = time.monotonic()
    assert _gate_flow(str(project.params_file)).digest == output.digest
    assert time.monotonic() - started < 30


def test_gate_timeout_keeps_automatic_decisions_or_fails(tmp_path, prefect_harness):
    project, _, filtered = _reviewable(
        tmp_path / "keep", enabled=True, timeout_s=1, poll_interval_s=1
    )
    output = _gate_flow(str(project.params_file))
    assert output.via == "timeout"
    assert output.kept == filtered.kept
    strict, _, _ = _reviewable(
        tmp_path / "fail", enabled=True, timeout_s=1, poll_interval_s=1, on_timeout="fail"
    )
    with pytest.raises(ReviewTimedOut, match="charloop review apply"):
        _gate_flow(str(strict.params_file))
    assert not IterationPaths.of(strict.workdir, 1).reviewed.exists()
