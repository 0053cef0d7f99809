"""The review desk: its pages and safety rules (FastAPI's test client), and a real browser
reviewing a paused loop with the keyboard (headless Chromium through Selenium)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from charloop.core import atomic
from charloop.core.errors import BadInput
from charloop.stages.layout import IterationPaths
from charloop.stages.review.stage import load_decisions
from charloop_cli.desk.app import check_binding, create_app
from tests.test_review import _gate_flow, _ids, _reviewable

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
REQUIRED = os.environ.get("CHARLOOP_REQUIRE_BROWSER") == "1"  # set by .ci/run


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    return _reviewable(tmp_path_factory.mktemp("desk"))


def _world_reviewable(folder: Path, **review: object):
    """Iteration 1 of the shipped world loop (kira on world-sd15, her references), small:
    a real character on the desk, so the screenshot shows what a reviewer sees."""
    import yaml

    from charloop.params.project import load_project
    from charloop.stages.filter.stage import run_filter
    from charloop.stages.generate.stage import run_generate
    from tests.conftest import REPO, write_params

    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["character"]["references"] = str(REPO / "references" / "kira")
    data["base_model"]["path"] = str(REPO / "models" / "world-sd15")
    for section in ("filter", "evaluate"):
        data[section]["embedder"]["path"] = str(REPO / "models" / "world-embedder")
    data["traits"]["scorer"]["path"] = str(REPO / "models" / "world-tagger")
    data["generate"] |= {"images_per_prompt": 2, "max_prompts": 6}
    data["filter"] |= {
        "min_kept": 2,
        "discriminators": [
            {"type": "duplicates"},
            {"type": "identity", "max_outlier_z": None, "keep_best": 0.5},
        ],
    }
    data["review"] = dict(review)
    project = load_project(write_params(folder, data))
    paths = IterationPaths.of(project.workdir, 1)
    generated = run_generate(project, 1, None, paths.generated)
    return project, generated, run_filter(project, generated, paths.filtered)


@pytest.fixture(scope="module")
def world_staged(tmp_path_factory):
    return _world_reviewable(tmp_path_factory.mktemp("world-desk"))


def test_the_character_is_pinned_beside_the_grid_with_each_nearest_reference(world_staged):
    project, _, filtered = world_staged
    client = _client(project)
    page = client.get("/iteration/1").text
    refs = sorted(p.name for p in Path(project.params.character.references).glob("*.png"))
    assert len(refs) == 8 and "id='references'" in page
    for name in refs:
        assert f"/reference/{name}'" in page
    for trait in project.params.character.traits:
        assert f"<li class='declared'>{trait} " in page
    assert "<li class='discovered'>green eyes " in page  # read off the references
    rows = atomic.read_jsonl(Path(filtered.path) / "report.jsonl")
    assert rows and all(r["nearest_reference"] in refs for r in rows)
    assert page.count("nearest: ") == len(rows)
    assert page.count("<ul class='traits'") == len(rows)  # each card's trait verdicts
    image = client.get(f"/reference/{refs[0]}")
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    for bad in ("ref_000.txt", "identity.json", "..%2F..%2Fparams.yaml", "nope.png"):
        assert client.get(f"/reference/{bad}").status_code == 404, bad
    assert client.get("/evaluation/1").status_code == 404  # not evaluated yet


def test_the_previous_evaluation_sheet_is_served_at_full_size(world_staged):
    from dataclasses import replace

    from charloop.stages.review import desk
    from charloop_cli.desk import pages

    project, _, _ = world_staged
    evaluation = IterationPaths.of(project.workdir, 1).evaluation
    evaluation.mkdir(parents=True, exist_ok=True)
    shutil.copy(_any_png(project), evaluation / "contact_sheet.png")
    try:
        response = _client(project).get("/evaluation/1")
        assert response.status_code == 200 and response.content[:4] == b"\x89PNG"
        view = desk.view(project.workdir, 1)
        html = pages.iteration_page(replace(view, iteration=2, evaluation_sheet=evaluation),
                                    "kira", "", "", None)  # fmt: skip
        assert "id='evaluation'" in html and "src='/evaluation/1'" in html
    finally:
        shutil.rmtree(evaluation)


def _any_png(project) -> Path:
    return next(Path(project.params.character.references).glob("*.png"))


def _client(project, token=None):
    from fastapi.testclient import TestClient

    return TestClient(create_app(project, token))


def test_pages_show_every_candidate_with_its_verdict_reasons_and_scores(staged):
    project, _, filtered = staged
    client = _client(project)
    index = client.get("/")
    assert index.status_code == 200 and "iteration 1" in index.text
    page = client.get("/iteration/1")
    assert page.status_code == 200
    assert page.text.count("class='card ") == filtered.candidates
    rejected = _ids(filtered, "reject")[0]
    assert f"id='card-{rejected}'" in page.text and "quality: contrast:" in page.text
    only = client.get("/iteration/1", params={"decision": "reject"})
    assert only.text.count("class='card ") == len(_ids(filtered, "reject"))
    row = atomic.read_jsonl(Path(filtered.path) / "report.jsonl")[0]
    image = client.get(f"/image/1/{row['file']}")
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    assert client.get("/iteration/9").status_code == 404


@pytest.mark.parametrize(
    "name", ["..%2F..%2Fparams.yaml", "..%2F02_filtered%2Fcontact_sheet.png", "report.jsonl"]
)
def test_only_generated_images_are_served(staged, name):
    project, _, _ = staged
    assert _client(project).get(f"/image/1/{name}").status_code == 404


def test_a_review_is_validated_and_recorded_like_review_apply(staged):
    project, _, filtered = staged
    client = _client(project)
    kept = _ids(filtered, "keep")
    form = {f"verdict:{kept[0]}": "reject", f"verdict:{kept[1]}": "keep"}
    assert client.post("/iteration/1/review", data=form).status_code == 400  # no reviewer
    bad = client.post("/iteration/1/review", data={"reviewer": "ana", "verdict:zzz": "reject"})
    assert bad.status_code == 400 and "unknown image ids" in bad.text
    done = client.post("/iteration/1/review", data={**form, "reviewer": "ana"})
    assert done.status_code == 200 and "recorded: keep 0, reject 1" in done.text
    decisions = load_decisions(IterationPaths.of(project.workdir, 1).review_desk)
    assert decisions is not None and decisions.reject == (kept[0],) and decisions.via == "web"
    (IterationPaths.of(project.workdir, 1).review_desk / "decisions.json").unlink()


def test_a_token_guards_every_request_and_other_hosts_need_one(staged):
    project, _, _ = staged
    client = _client(project, token="s3cret")
    assert client.get("/").status_code == 401
    assert client.get("/", params={"token": "wrong"}).status_code == 401
    assert client.get("/", params={"token": "s3cret"}).status_code == 200
    assert client.get("/iteration/1").status_code == 200  # the cookie carries it on
    check_binding("127.0.0.1", None)
    with pytest.raises(BadInput, match="--token"):
        check_binding("0.0.0.0", None)
    check_binding("0.0.0.0", "s3cret")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    args += ["--disable-background-networking", "--no-first-run", "--window-size=1280,900"]
    for arg in args:
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.mark.browser
def test_a_person_rejects_two_images_with_the_keyboard_and_the_loop_resumes(
    tmp_path, prefect_harness
):
    if not (CHROMIUM and CHROMEDRIVER):
        if REQUIRED:
            pytest.fail("chromium and chromedriver are required here (.ci/run installs them)")
        pytest.skip("no chromium/chromedriver on this machine")
    pytest.importorskip("selenium")
    import uvicorn
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from charloop.stages.caption.stage import run_caption
    from charloop.stages.results import Generated
    from charloop.stages.review.stage import run_review  # noqa: F401  (the gate runs it)

    project, generated, filtered = _world_reviewable(
        tmp_path, enabled=True, timeout_s=300, poll_interval_s=1
    )
    result: dict[str, object] = {}
    loop = threading.Thread(
        target=lambda: result.update(out=_gate_flow(str(project.params_file))), daemon=True
    )
    loop.start()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(project), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    from charloop_cli.desk.prefect_link import paused_review

    for _ in range(240):  # the loop reaches its review gate
        if paused_review(project, 1) is not None:
            break
        time.sleep(0.25)
    assert paused_review(project, 1) is not None, "the loop never paused at the gate"
    browser = _browser()
    try:
        browser.get(f"http://127.0.0.1:{port}/iteration/1?decision=keep")
        cards = browser.find_elements(By.CSS_SELECTOR, ".card")
        targets = [c.get_attribute("id").removeprefix("card-") for c in cards[:2]]
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("x")  # reject the first kept image, move on
        body.send_keys("x")  # and the second
        changed = browser.find_elements(By.CSS_SELECTOR, ".card.reject.changed")
        assert len(changed) == 2
        panel = browser.find_element(By.ID, "references")  # the character, beside the grid
        shown = panel.find_elements(By.CSS_SELECTOR, "img")
        assert len(shown) == 8 and all(
            browser.execute_script("return arguments[0].naturalWidth", img) > 0 for img in shown
        )
        cards = browser.find_elements(By.CSS_SELECTOR, ".card")
        ids = [c.get_attribute("id").removeprefix("card-") for c in cards]
        cards[3].find_element(By.CSS_SELECTOR, ".cmp").click()  # compare two candidates:
        body.send_keys("c")  # the fourth by its button, the current (third) by the key
        compared = browser.find_elements(By.CSS_SELECTOR, "#compare.open figure.compared")
        assert sorted(f.text.split(":")[0] for f in compared) == sorted(ids[2:4])
        browser.save_screenshot(str(tmp_path / "review-desk.png"))
        browser.find_element(By.ID, "reviewer").send_keys("ana")
        browser.find_element(By.ID, "comment").send_keys("off model", Keys.ENTER)
        for _ in range(40):
            if "resumed" in browser.page_source:
                break
            time.sleep(0.25)
        assert "the paused loop" in browser.find_element(By.ID, "message").text
    finally:
        browser.quit()
        server.should_exit = True
    loop.join(120)
    reviewed = result["out"]
    assert reviewed.via == "web" and reviewed.reviewer == "ana"  # type: ignore[attr-defined]
    kept = {r["id"] for r in atomic.read_jsonl(Path(reviewed.path) / "kept.jsonl")}  # type: ignore[attr-defined]
    assert not set(targets) & kept and len(kept) == filtered.kept - 2
    dataset = run_caption(project, generated, reviewed, tmp_path / "data")  # type: ignore[arg-type]
    rows = atomic.read_jsonl(Path(dataset.path) / "manifest.jsonl")
    assert rows and not {r["id"] for r in rows} & set(targets)
    assert isinstance(generated, Generated)
    if os.environ.get("CHARLOOP_DESK_SCREENSHOT"):  # refresh the README's picture
        shutil.copy(tmp_path / "review-desk.png", os.environ["CHARLOOP_DESK_SCREENSHOT"])


def test_promotions_are_listed_and_answered_through_the_prefect_api(staged, prefect_harness):
    """No promotion is paused: the front page says so, and an answer is refused (400)
    naming the version, as `charloop approve` refuses it."""
    project, _, _ = staged
    client = _client(project)
    assert "No promotion is waiting for approval" in client.get("/").text
    refused = client.post("/promotions/7", data={"approver": "ana", "decision": "approve"})
    assert refused.status_code == 400 and "no promotion of version 7" in refused.text
    nameless = client.post("/promotions/7", data={"approver": " ", "decision": "approve"})
    assert nameless.status_code == 400 and "--approver is required" in nameless.text
