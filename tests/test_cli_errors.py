"""Every CLI verb given a bad argument: one clear message, its exit code, no traceback.

Exit codes: 2 bad input, 3 refused by a gate or a check, 1 failure. The console entry
point (:func:`charloop_cli.main.main`) is called in-process, as the installed ``charloop``
script calls it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from charloop_cli.main import main
from tests.conftest import tiny_params, write_params


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stopped:
        main(list(args))
    captured = capsys.readouterr()
    code = stopped.value.code
    return (code if isinstance(code, int) else 1), captured.err + captured.out


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    write_params(folder, tiny_params())
    return folder


def _bad_cases(p: str, folder: Path) -> list[tuple[list[str], int, str]]:
    missing = str(folder / "nope")
    return [
        (["validate", missing], 2, "invalid params"),
        (["run", "-p", missing], 2, "invalid params"),
        (["stage", "generate", missing, "-p", p, "--adapter", missing], 2, "run that stage"),
        (["stage", "filter", missing, missing, "-p", p], 2, "no finished generate"),
        (["stage", "review", missing, missing, missing, "-p", p], 2, "cannot read stage input"),
        (["stage", "caption", missing, missing, missing, "-p", p], 2, "cannot read stage input"),
        (["stage", "train", missing, missing, "-p", p], 2, "cannot read stage input"),
        (["stage", "evaluate", missing, missing, missing, "-p", p], 2, "cannot read stage input"),
        (["stage", "log-run", missing, missing, missing, "-p", p], 2, "cannot read stage input"),
        (["stage", "deps", missing], 2, "no dvc.yaml"),
        (["review", "export", "-p", p, "-i", "7"], 2, "cannot read stage input"),
        (["review", "apply", missing, "--reviewer", "ana", "-p", p], 2, "does not exist"),
        (["report", "validity", "-p", p, "--oracle", missing], 2, ""),
        (["report", "spread", missing], 2, "at least two loops"),
        (["report", "spread", missing, p], 2, "validity.json is missing"),
        (["world", "build", "everything"], 2, "unknown target"),
        (["world", "references", missing, "--character", "wings=yes"], 2, "unknown attributes"),
        (["world", "references", missing, "--params", missing], 2, "no params file"),
        (["world", "references", missing, "--n", "0"], 2, "greater than or equal to 1"),
        (["lineage", "kira-lora", "-p", p], 2, "not found in the registry"),
        (["lineage", "kira's lora", "-p", p], 2, "bad model spec"),
        (["checkout", "kira-lora:1", "-p", p, "--out", p], 2, "--out exists"),
        (["checkout", "kira-lora:9", "-p", p], 2, "not found in the registry"),
        (["promote", "other-lora", "1", "-p", p], 2, "describes model 'kira-lora'"),
        (["promote", "kira-lora", "42", "-p", p], 2, "not found in the registry"),
        (["rollback", "kira-lora", "-p", p], 2, "no registered model"),
        (["generate", "zxq kira", "--model", "kira-lora@production", "-p", p], 2, "not found"),
        (["audit", "kira-lora", "-p", p], 2, "no registered model"),
        (["deploy", "-p", p], 2, "needs a Prefect server"),
        (["ingest", missing, "-p", p], 2, "does not exist"),
        (["build-tiny-models", "--seed", "many"], 2, "valid integer"),
    ]


def test_every_verb_with_a_bad_argument_exits_with_its_code_and_no_traceback(
    project_dir, capsys, monkeypatch
):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("CHARLOOP_DEBUG", raising=False)
    p = str(project_dir / "params.yaml")
    failures = []
    for args, code, message in _bad_cases(p, project_dir):
        got, text = _cli(capsys, *args)
        if got != code or message not in text or "Traceback" in text:
            failures.append(f"{' '.join(args)} -> {got}: {text.strip()[-300:]}")
    assert failures == []


def test_brackets_in_messages_survive_the_console(tmp_path, capsys):
    data = tiny_params()
    data["filter"]["discriminators"] = [{"type": "quality", "exposure_range": [0.9, 0.1]}]
    data["character"]["name"] = "kira*"
    code, text = _cli(capsys, "validate", str(write_params(tmp_path, data)))
    assert code == 2
    assert "exposure_range must be [low, high]" in text
    assert "'^[a-z0-9][a-z0-9_-]*$'" in text  # the name pattern, brackets included


def test_validate_checks_that_reference_folders_hold_images(tmp_path, capsys):
    data = tiny_params()
    data["character"]["references"] = "refs"
    params = write_params(tmp_path, data)
    code, text = _cli(capsys, "validate", str(params))
    assert code == 2 and "does not exist" in text
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "notes.txt").write_text("no images here")
    code, text = _cli(capsys, "validate", str(params))
    assert code == 2 and "holds no readable image" in text


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(
    tmp_path, capsys, monkeypatch
):
    import charloop_cli.main as cli

    def explode(*_: object, **__: object) -> None:
        raise RuntimeError("disk on fire [sda1]")

    monkeypatch.setattr("charloop.models.embedded.build_all", explode)
    code, text = _cli(capsys, "build-tiny-models", "--out", str(tmp_path))
    assert code == 1 and "RuntimeError: disk on fire [sda1]" in text
    assert "--debug" in text and "Traceback" not in text
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.main(["--debug", "build-tiny-models", "--out", str(tmp_path)])


def test_a_refused_check_exits_3(tmp_path, capsys):
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(
        yaml.safe_dump(
            {"stages": {"train": {"cmd": "charloop stage train", "deps": ["charloop/x.py"]}}}
        )
    )
    code, text = _cli(capsys, "stage", "deps", str(dvc_yaml))
    assert code == 3 and "stale code deps" in text and "--write" in text


def test_prefect_logs_no_traceback_for_charloop_errors_only():
    import logging
    import sys as _sys

    from charloop.core.errors import Refused
    from charloop_cli.common import _NoTracebackForExpectedErrors

    def record_of(error: Exception) -> logging.LogRecord:
        try:
            raise error
        except Exception:
            info = _sys.exc_info()
        return logging.LogRecord("prefect.flow_runs", 40, "f", 1, "failed", None, info)

    expected, unexpected = record_of(Refused("gate")), record_of(RuntimeError("bug"))
    check = _NoTracebackForExpectedErrors()
    assert check.filter(expected) and expected.exc_info is None
    assert check.filter(unexpected) and unexpected.exc_info is not None
