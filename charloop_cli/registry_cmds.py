"""``charloop lineage|checkout|promote|rollback|generate``: the registry side of the CLI."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from charloop_cli.common import (
    EXIT_INVALID,
    EXIT_REFUSED,
    ParamsOption,
    fail,
    fail_with,
    load_or_exit,
    setup_logging,
)

SpecArgument = Annotated[str, typer.Argument(help="MODEL, MODEL@alias or MODEL:version.")]


def _client(project: Any) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(project.tracking_uri)


def _resolve(project: Any, spec: str) -> Any:
    from charloop.lineage.chain import LineageError, parse_spec, resolve_version

    try:
        return resolve_version(_client(project), parse_spec(spec))
    except LineageError as exc:  # UnknownVersion: exit 2
        fail_with(exc, "cannot resolve " + spec, "list versions with `charloop lineage MODEL`")


def lineage(
    spec: SpecArgument,
    params: ParamsOption = Path("params.yaml"),
    as_json: Annotated[
        bool, typer.Option("--json", help="Every field of every version, as JSON.")
    ] = False,
) -> None:
    """The chain from a version back to the base model: data, metrics, changed params."""
    import json

    from charloop.lineage.chain import LineageError, chain

    project = load_or_exit(params)
    version = _resolve(project, spec)
    try:
        steps = chain(_client(project), version.name, version)
    except LineageError as exc:
        fail_with(exc, "broken lineage")
    if as_json:
        rows = [
            {"version": s.version, "iteration": s.iteration, "parent": s.parent,
             "aliases": s.aliases, "tags": s.tags, "metrics": s.metrics,
             "changed_params": {k: list(v) for k, v in s.changed_params.items()}}
            for s in steps
        ]  # fmt: skip
        typer.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    table = Table(title=f"lineage of {spec}")
    for column in ("version", "parent", "aliases", "iter", "training data", "DVC md5",
                   "dataset sha256", "images", "from iterations", "params hash", "commit",
                   "identity", "ref. match", "params changed vs parent"):  # fmt: skip
        table.add_column(column)
    for step in steps:
        changed = "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in step.changed_params.items())
        match = step.metrics.get("reference_match")
        cells = (
            step.version,
            step.parent or "-",
            ",".join(step.aliases),
            str(step.iteration),
            step.tags.get("dataset_hash", "?")[:16],
            step.tags.get("dataset_dvc_md5", "?"),
            step.tags.get("dataset_sha256", "?")[:16],
            step.tags.get("dataset_images", "?"),
            step.tags.get("dataset_sources") or "-",
            step.tags.get("params_hash", "?"),
            step.tags.get("git_commit", "?")[:12],
            f"{step.metrics.get('identity_consistency', float('nan')):.4f}",
            "-" if match is None else f"{match:.4f}",
            changed or ("(root)" if step.parent is None else "-"),
        )
        table.add_row(*map(escape, cells))  # params values hold brackets
    base = steps[-1].tags
    Console(width=240).print(table)
    typer.echo(f"base model: {base.get('base_model')} ({base.get('base_model_hash', '?')[:16]})")


def checkout(
    spec: SpecArgument,
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="Destination (inside the project).")] = None,
) -> None:
    """Restore a version's exact training dataset and adapter from the DVC cache or remote."""
    from charloop.lineage.release import RestoreError, verify_restored
    from charloop.lineage.versioning import restore

    project = load_or_exit(params)
    setup_logging(False)
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail("--out exists", f"{out} is not an empty folder", EXIT_INVALID,
             "name a new or empty folder")  # fmt: skip
    version = _resolve(project, spec)
    dest = out or project.root / "checkouts" / f"{version.name}-v{version.version}"
    from charloop.lineage.versioning import remote_url

    remote = version.tags.get("dvc_remote")  # where this version was pushed
    remote = remote_url(project.root, remote) if remote else None
    # DVC's md5 of the folder (versions registered before it had its own tag: dataset_hash).
    dvc_md5 = version.tags.get("dataset_dvc_md5") or version.tags["dataset_hash"]
    dataset = restore(dvc_md5, dest / "dataset", remote)
    adapter = restore(version.tags["adapter_hash"], dest / "adapter", remote)
    try:
        verify_restored(dict(version.tags), dataset, adapter)
    except RestoreError as exc:
        fail_with(exc, "restored data does not match the registry")
    typer.echo(f"restored {version.name} v{version.version}: {dataset} and {adapter} (verified)")


def promote(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    approver: Annotated[str, typer.Option(help="Who approves (audit tag).")] = "",
    reason: Annotated[str, typer.Option(help="Why (audit tag).")] = "",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Run the promotion flow: gates, optional approval, production alias, release export."""
    from charloop.lineage.promotion import PromotionRefused

    project = load_or_exit(params)
    if model != project.params.model_name:
        fail(
            f"{params} describes model {project.params.model_name!r}, not {model!r}",
            code=EXIT_INVALID,
            hint="pass the params file of that model with --params",
        )
    _resolve(project, f"{model}:{version}")  # an unknown version: exit 2 before any flow
    setup_logging(False)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.promote import promote as promote_flow

    try:
        result = promote_flow(str(project.params_file), version, approver, reason)
    except PromotionRefused as exc:
        fail_with(exc, "promotion refused", "see the audit: `charloop audit MODEL`")
    typer.echo(f"{model} v{result['production']} is production (previous: {result['previous']})")
    typer.echo(f"release: {result['release']}")


def rollback(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    approver: Annotated[str, typer.Option(help="Who rolls back (audit tag).")] = "",
    reason: Annotated[str, typer.Option(help="Why (audit tag).")] = "",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Make the 'previous' version production again (the demoted one becomes 'previous')."""
    from charloop.lineage.chain import LineageError
    from charloop.lineage.promotion import rollback as do_rollback
    from charloop.lineage.release import point_production

    project = load_or_exit(params)
    try:
        restored, demoted = do_rollback(_client(project), model, approver or "unspecified", reason)
    except LineageError as exc:
        fail_with(exc, "rollback refused")
    point_production(project.resolve(project.params.promote.release_dir), model, restored)
    typer.echo(f"{model} v{restored} is production again (v{demoted or '-'} is previous)")


def generate(
    prompt: Annotated[str, typer.Argument(help="Prompt; put the trigger first.")],
    model: Annotated[str, typer.Option("--model", help="MODEL@alias or MODEL:version.")],
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Output PNG (suffixed -N for several).")] = Path(
        "generated.png"
    ),
    count: int = 1,
    seed: int = 0,
) -> None:
    """Generate with a registered adapter after verifying its hash against the registry."""
    from charloop.lineage.promotion import AdapterMismatch, verified_adapter

    project = load_or_exit(params)
    setup_logging(False)
    version = _resolve(project, model)
    with ExitStack() as scratch:  # the verified download is removed on the way out
        try:
            folder = scratch.enter_context(
                verified_adapter(_client(project), version, project.artifact_location)
            )
        except AdapterMismatch as exc:
            fail(f"refusing to use {model}", "; ".join(exc.problems), EXIT_REFUSED)
        except Exception as exc:  # the artifact store cannot be reached
            fail(f"refusing to use {model}", f"adapter not retrievable: {exc}", EXIT_REFUSED)
        _render_with(project, version, model, folder, prompt, out, count, seed)


def _render_with(
    project: Any, version: Any, model: str, folder: Path, prompt: str, out: Path,
    count: int, seed: int,
) -> None:  # fmt: skip
    """Render ``count`` images of ``prompt`` with a verified adapter folder on its base."""
    from charloop.families.detect import FamilyMismatch, resolve_base
    from charloop.families.single_file import base_model_ref
    from charloop.models.pipeline import load_pipeline, lora_applied
    from charloop.scenes.render import ImageJob, png_bytes, render

    spec = project.params.base_model
    try:  # the params' base family: a LoRA of another family cannot load on it
        family = resolve_base(spec, base_model_ref(project)).family.name
    except FamilyMismatch as exc:
        fail_with(exc, "base model does not match")
    base_ref = base_model_ref(project, version.tags.get("base_model", spec.path))
    trained_on = version.tags.get("base_model_family", "sd15")  # older versions: SD1.5 only
    if trained_on != family:
        fail(
            f"{model} is an {trained_on} LoRA",
            f"these params' base model is {family}; a LoRA loads only on its own family",
            EXIT_INVALID,
            f"use params whose base_model is the {trained_on} base it was trained on",
        )
    pipe = load_pipeline(base_ref, spec)
    gen = project.params.generate
    jobs = [ImageJob(f"g{k}", prompt, gen.negative_prompt, seed + k, {}) for k in range(count)]
    with lora_applied(pipe, folder, gen.lora_scale):
        images = render(pipe, jobs, gen.model_copy(update={"controlnet": None}))
    for k, image in enumerate(images):
        path = out if count == 1 else out.with_name(f"{out.stem}-{k}{out.suffix}")
        path.write_bytes(png_bytes(image))
        typer.echo(f"{path} ({model} v{version.version}, adapter hash checked)")


def audit(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Print the model's audit log: every promotion, refusal, approval and rollback."""
    from mlflow.exceptions import MlflowException

    from charloop.lineage.audit import events

    project = load_or_exit(params)
    try:
        found = events(_client(project), model)
    except MlflowException as exc:
        fail(f"no registered model {model!r}", exc.message, EXIT_INVALID)
    table = Table(title=f"audit log of {model}")
    for column in ("#", "at (UTC)", "event", "version", "by", "reason", "detail"):
        table.add_column(column)
    for e in found:
        cells = (str(e.seq), e.at, e.event, e.version, e.by, e.reason, e.detail)
        table.add_row(*map(escape, cells))
    Console(width=200).print(table)
    typer.echo(f"{len(found)} event(s)")


def _answer(
    model: str, version: str, approve: bool, approver: str, reason: str, params: Path
) -> None:
    from mlflow.exceptions import MlflowException

    from charloop.core.errors import CharloopError
    from flows.approval import answer

    project = load_or_exit(params)
    try:  # a model that is not registered has no promotion to answer: say so first
        _client(project).get_model_version(model, version)
    except MlflowException as exc:
        fail(f"no version {version} of a registered model {model!r}", exc.message, EXIT_INVALID,
             "`charloop lineage` lists the registered versions")  # fmt: skip
    try:
        answer(version, approve, approver, reason)
    except CharloopError as exc:
        fail_with(exc, "no answer sent")
    word = "approved" if approve else "rejected"
    typer.echo(f"{model} v{version}: {word} by {approver}; the paused promotion continues")


def approve(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version whose promotion is paused.")],
    approver: Annotated[str, typer.Option(help="Who approves (recorded in the audit log).")],
    reason: Annotated[str, typer.Option(help="Why.")] = "",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Approve a promotion paused for approval (needs the PREFECT_API_URL it printed)."""
    _answer(model, version, True, approver, reason, params)


def reject(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version whose promotion is paused.")],
    approver: Annotated[str, typer.Option(help="Who rejects (recorded in the audit log).")],
    reason: Annotated[str, typer.Option(help="Why.")] = "",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Reject a promotion paused for approval; production stays as it is."""
    _answer(model, version, False, approver, reason, params)


def register(app: typer.Typer) -> None:
    """Add the registry commands to the top-level app."""
    for command in (lineage, checkout, promote, rollback, generate, audit, approve, reject):
        app.command()(command)
