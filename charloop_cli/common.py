"""Helpers shared by the CLI's command groups."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from charloop.core.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_REFUSED, CharloopError
from charloop.params.project import ParamsError, Project, load_project

console = Console(stderr=True, soft_wrap=True)  # error lines stay whole (grep-able)

EXIT_INVALID = EXIT_BAD_INPUT
__all__ = ["EXIT_FAILURE", "EXIT_INVALID", "EXIT_REFUSED", "fail", "fail_with", "say"]


def say(text: str, style: str = "") -> None:
    """Print ``text`` to stderr as it is: brackets in it are never taken for rich markup."""
    console.print(escape(text), style=style or None)


def fail(headline: str, detail: str = "", code: int = EXIT_FAILURE, hint: str = "") -> NoReturn:
    """Print one error (headline in red, then the detail and what to do) and exit ``code``.

    Every piece is escaped, so ``[...]`` in a path or a pydantic message stays visible.
    """
    line = f"[red]{escape(headline)}[/red]" + (f": {escape(detail)}" if detail else "")
    console.print(line)
    if hint:
        say(hint)
    raise typer.Exit(code)


def fail_with(exc: CharloopError, headline: str = "", hint: str = "") -> NoReturn:
    """:func:`fail` for one of charloop's own errors, with the exit code its kind carries."""
    fail(headline or type(exc).__name__, str(exc), exc.exit_code, hint)


ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="Path to params.yaml.")]


class _NoTracebackForExpectedErrors(logging.Filter):
    """Drop the traceback Prefect logs when a flow or task stops on one of charloop's own
    errors (a refused gate, bad input): the CLI prints that error as one message."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, CharloopError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_tracebacks() -> None:
    """Install :class:`_NoTracebackForExpectedErrors` on Prefect's run loggers."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_NoTracebackForExpectedErrors())


IMPORT_NOISE = (
    "torch.utils._pytree",  # torchao 0.18 registers Enums torch 2.14 no longer needs
    "bitsandbytes.backends.cpu.ops",  # the optional 'kernels' package is not installed
    "diffusers.quantizers.torchao.torchao_quantizer",  # pre-quantized torchao checkpoints
)
"""Loggers of the ``lowmem`` extra that warn on every import of diffusers about things
charloop does not use; the CLI keeps them at ERROR."""


def quiet_import_noise() -> None:
    """Silence :data:`IMPORT_NOISE` (before diffusers is first imported)."""
    for name in IMPORT_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)


def setup_logging(verbose: bool) -> None:
    """Quiet by default: one line per task (Prefect's run loggers) and warnings. With
    ``verbose`` the library's own logs (what each stage reused, wrote, measured) too.
    Third-party chatter stays at WARNING either way."""
    if not verbose:  # MLflow's artifact download bars interleave with the table output
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow configures its own loggers when imported (after this): its INFO notes
    # ("Creating initial MLflow database tables...") only with --verbose.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for library in ("charloop", "charloop_world"):
        logging.getLogger(library).setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in ("httpx", "urllib3", "alembic", "dvc", "mlflow", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_or_exit(path: Path) -> Project:
    try:
        return load_project(path)
    except ParamsError as exc:
        console.print(f"[red]invalid params[/red] {escape(exc.source)}:")
        for problem in exc.problems:
            say(f"  - {problem}")
        raise typer.Exit(EXIT_INVALID) from None
