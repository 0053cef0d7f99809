"""The review desk's web app (FastAPI): pages, images from the iteration folders only, and
the two forms (a review, a promotion answer).

Safe by default: ``serve`` binds to 127.0.0.1; a shared token (``--token``) is required
for any other address and, when set, on every request (``?token=`` once, then a cookie);
images are served by name from an iteration's generated folder and nothing else.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures, and
# ``Request`` is imported inside ``create_app``.
import hmac
from typing import Any

from charloop.core.errors import BadInput, CharloopError
from charloop.params.project import Project
from charloop.stages.review import desk
from charloop_cli.desk import pages

LOOPBACK = ("127.0.0.1", "localhost", "::1")
COOKIE = "charloop_desk"


def create_app(project: Project, token: str | None = None) -> Any:
    """The desk for ``project`` (its loop's iterations, registry and Prefect API)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="charloop review desk", docs_url=None, redoc_url=None)
    workdir = project.workdir
    subject = project.params.subject
    members = project.params.members
    # the character the candidates should match (a cast's desk pins its first member)
    references = project.resolve(members[0].references) if members[0].references else None
    traits = list(members[0].traits)

    @app.middleware("http")
    async def check_token(request: Request, call_next: Any) -> Any:
        if token is None:
            return await call_next(request)
        given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given, token):
            return Response("a desk token is required (?token=...)", status_code=401)
        response = await call_next(request)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    def known(iteration: int) -> None:
        if iteration not in desk.iterations(workdir):
            raise HTTPException(404, f"iteration {iteration} has no filtered candidates")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        from charloop_cli.desk.prefect_link import promotions

        done = [(n, desk.reviewed_by(workdir, n)) for n in desk.iterations(workdir)]
        return pages.index(subject, done, _safe(lambda: promotions(project), []), token)

    @app.get("/iteration/{iteration}", response_class=HTMLResponse)
    def iteration_page(
        iteration: int, decision: str = "", context: str = "", message: str = ""
    ) -> str:
        known(iteration)
        view = desk.view(workdir, iteration, references, traits)
        return pages.iteration_page(view, subject, decision, context, token, message)

    @app.get("/reference/{name}")
    def reference(name: str) -> Any:
        path = desk.reference_path(references, name)
        if path is None:
            raise HTTPException(404, "no such reference image")
        return FileResponse(path)

    @app.get("/evaluation/{iteration}")
    def evaluation(iteration: int) -> Any:
        path = desk.evaluation_sheet(workdir, iteration)
        if path is None:
            raise HTTPException(404, f"iteration {iteration} has no evaluation contact sheet")
        return FileResponse(path, media_type="image/png")

    @app.get("/image/{iteration}/{name}")
    def image(iteration: int, name: str) -> Any:
        path = desk.image_path(workdir, iteration, name)
        if path is None:
            raise HTTPException(404, "no such image in this iteration")
        return FileResponse(path, media_type="image/png")

    @app.get("/sheet/{iteration}")
    def sheet(iteration: int) -> Any:
        known(iteration)
        path = desk.view(workdir, iteration).contact_sheet
        if path is None:
            raise HTTPException(404, "no contact sheet")
        return FileResponse(path, media_type="image/png")

    @app.post("/iteration/{iteration}/review")
    async def review(iteration: int, request: Request) -> Any:
        from charloop_cli.desk.prefect_link import resume_review

        known(iteration)
        form = await _form(request)
        verdicts = {str(k).removeprefix("verdict:"): str(v) for k, v in form.items()
                    if str(k).startswith("verdict:")}  # fmt: skip
        try:
            decisions = desk.record_web_decisions(
                workdir, iteration, verdicts, str(form.get("reviewer", "")),
                str(form.get("comment", "")),
            )  # fmt: skip
        except CharloopError as exc:
            raise HTTPException(400, str(exc)) from None
        # Prefect's sync API turns into coroutines inside an event loop: call it off the loop.
        resumed = await run_in_threadpool(
            _safe, lambda: resume_review(project, iteration, decisions), None
        )
        message = f"recorded: keep {len(decisions.keep)}, reject {len(decisions.reject)}; " + (
            f"the paused loop {resumed} resumed"
            if resumed
            else "no loop is paused here on the Prefect API (PREFECT_API_URL): the next run "
            "reads these decisions"
        )

        target = pages.link(f"/iteration/{iteration}", token, message=message)
        return RedirectResponse(target.replace("&amp;", "&"), status_code=303)

    @app.post("/promotions/{version}")
    async def promotion(version: str, request: Request) -> Any:
        from flows.approval import answer

        form = await _form(request)
        approve = form.get("decision") == "approve"
        try:
            await run_in_threadpool(
                answer, version, approve, str(form.get("approver", "")), str(form.get("reason", ""))
            )
        except BadInput as exc:
            raise HTTPException(400, str(exc)) from None
        return RedirectResponse(pages.link("/", token).replace("&amp;", "&"), status_code=303)

    return app


async def _form(request: Any) -> dict[str, str]:
    """An url-encoded form body (the desk's forms post nothing else), last value wins."""
    from urllib.parse import parse_qsl

    body = (await request.body()).decode("utf-8", errors="replace")
    return dict(parse_qsl(body, keep_blank_values=True))


def _safe(call: Any, default: Any) -> Any:
    """``call()``, or ``default`` when no Prefect API or registry answers (the desk still
    works on the files); charloop's own errors still surface."""
    try:
        return call()
    except CharloopError:
        raise
    except Exception:
        return default


def check_binding(host: str, token: str | None) -> None:
    """Refuse an address other than loopback without a shared token.

    Raises:
        BadInput: a non-loopback host and no token.
    """
    if host not in LOOPBACK and not token:
        raise BadInput(
            f"--host {host} exposes the desk beyond this machine; set --token (a shared "
            "secret every request must carry) or keep the default 127.0.0.1"
        )
