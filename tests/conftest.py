"""Shared fixtures: tiny projects on the embedded models, one Prefect harness per session."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# Before prefect is imported anywhere: no telemetry, results kept out of ~/.prefect.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
if "PREFECT_LOCAL_STORAGE_PATH" not in os.environ:
    # Removed when the session ends: each session used to leave one folder in /tmp.
    _RESULTS = tempfile.mkdtemp(prefix="charloop-results-")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = _RESULTS
    atexit.register(shutil.rmtree, _RESULTS, ignore_errors=True)
os.environ.setdefault("GIT_AUTHOR_NAME", "charloop-tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@charloop.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "charloop-tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@charloop.invalid")

from charloop.params.project import Project, load_project

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def bench_script(name: str) -> Any:
    """``bench/<name>.py`` imported as a module (the bench folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_params(**sections: dict[str, Any]) -> dict[str, Any]:
    """A small, fast params dict on the embedded models; ``sections`` override whole keys."""
    data: dict[str, Any] = {
        "character": {
            "name": "kira",
            "trigger": "zxq kira",
            "traits": ["teal hair", "green eyes"],
        },
        "contexts": {
            "styles": ["flat colors", "watercolor"],
            "settings": ["in a forest", "on a beach"],
            "expressions": ["smiling"],
        },
        "base_model": {"path": str(MODELS / "tiny-sd15"), "device": "cpu"},
        "generate": {"images_per_prompt": 2, "batch_size": 4, "num_inference_steps": 2},
        "filter": {
            "min_kept": 2,
            "embedder": {"type": "clip", "path": str(MODELS / "tiny-clip")},
            "discriminators": [
                {"type": "duplicates"},
                {"type": "quality"},
                {"type": "identity"},
                {"type": "prompt_adherence"},
            ],
        },
        "train": {"max_train_steps": 6, "batch_size": 2},
        "evaluate": {
            "contexts": [
                {"style": "sketch", "setting": "in a library"},
                {"style": "anime", "setting": "in a desert"},
            ],
            "seeds": [7],
            "embedder": {"type": "clip", "path": str(MODELS / "tiny-clip")},
        },
        "loop": {"max_iterations": 2, "convergence_epsilon": 0.0},
    }
    data.update(sections)
    return data


FAMILY_MODELS = {"sd15": "tiny-sd15", "sdxl": "tiny-sdxl", "flux": "tiny-flux"}
"""The embedded tiny model of each family."""
FAMILY_IDS = list(FAMILY_MODELS)
"""Every family, for tests parametrised over them."""


def base_model(model: str, **extra: Any) -> dict[str, Any]:
    """The ``base_model`` section for the embedded tiny model of family ``model`` (on CPU);
    ``extra`` sets other fields (a declared ``family`` among them)."""
    return {"path": str(MODELS / FAMILY_MODELS[model]), "device": "cpu", **extra}


def write_params(folder: Path, data: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def captioned_dataset(folder: Path, family: str) -> Any:
    """One tiny generate, filter, review and caption pass on ``family``'s embedded model:
    a dataset to train on."""
    from charloop.stages.caption.stage import run_caption
    from charloop.stages.filter.stage import run_filter
    from charloop.stages.generate.stage import run_generate
    from charloop.stages.review.stage import run_review

    project = load_project(write_params(folder, tiny_params(base_model=base_model(family))))
    generated = run_generate(project, 1, None, folder / "gen")
    filtered = run_filter(project, generated, folder / "filt")
    reviewed = run_review(generated, filtered, None, folder / "rev")
    return run_caption(project, generated, reviewed, folder / "data")


@pytest.fixture
def make_project(tmp_path: Path):
    """Factory: a validated Project in a fresh temp folder."""

    def make(**sections: dict[str, Any]) -> Project:
        return load_project(write_params(tmp_path, tiny_params(**sections)))

    return make


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for every flow test in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the reliability and hardening suites' counts when they ran."""
    summary: dict[str, int] = {}
    for name in ("tests.test_reliability", "tests.test_hardening"):
        summary.update(getattr(sys.modules.get(name), "SUMMARY", None) or {})
    if any(summary.values()):
        terminalreporter.write_sep("=", "reliability summary")
        for name, count in summary.items():
            terminalreporter.write_line(f"{name}: {count}")
