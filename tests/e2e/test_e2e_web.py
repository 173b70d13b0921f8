"""The web page in a real headless Chromium (Debian's ``/usr/bin/chromium`` driven by
Playwright, no browser download) against ``wkd serve``: sign in with a key, upload a teacher
and submit a small job from the form, watch its accuracy curve grow, take a screenshot."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
PRESET = "cifar100/kd/resnet32x4_resnet8x4"
# Where screenshots go (kept for a person to look at); default: the test's tmp_path.
SHOTS = os.environ.get("WKD_SCREENSHOT_DIR")


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator:
    """A fresh headless Chromium context (its own user-data folder), external hosts blocked."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: see scripts/test_services.sh")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory) -> Path:
    """A randomly initialised resnet8 (the job is about the page, not about accuracy)."""
    import torch
    from safetensors.torch import save_file

    from wkd_core.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("web-teacher") / "teacher.safetensors"
    save_file(create_model("resnet8", num_classes=10).state_dict(), path)
    return path


def shot(page, tmp_path: Path, name: str, *, full_page: bool = True) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=full_page)
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / name)
    return path


def test_page_submits_a_job_and_its_curve_grows(embedded, teacher_weights, tmp_path):
    from playwright.sync_api import expect

    outside = []
    with chromium(tmp_path / "profile") as context:
        page = context.new_page()
        page.on("request", lambda r: None if r.url.startswith(embedded.base_url)
                else outside.append(r.url))  # fmt: skip
        page.goto(f"{embedded.base_url}/")
        assert page.url == f"{embedded.base_url}/ui/"

        # Sign in: a wrong key is refused, the right one is kept for this tab only.
        page.fill("#key-input", "wkd_wrong")
        page.click("#login-form button")
        page.wait_for_selector("text=This key is not valid.")
        page.fill("#key-input", embedded.key)
        page.click("#login-form button")
        page.wait_for_selector("#view-jobs:not([hidden])")
        assert page.evaluate("sessionStorage.getItem('wkd.apiKey')") == embedded.key
        assert page.evaluate("localStorage.length") == 0 and context.cookies() == []

        # Upload a teacher, then submit from a preset with the small overrides.
        page.click("text=New job")
        page.wait_for_selector(f"#f-preset option[value='{PRESET}']", state="attached")
        page.set_input_files("#u-file", str(teacher_weights))
        page.select_option("#u-arch", "resnet8")
        page.fill("#u-classes", "10")
        page.click("#upload-form button")
        uploaded = page.wait_for_selector("#upload-result:has-text('Uploaded ck_')").inner_text()
        checkpoint = re.search(r"ck_[0-9a-f]+", uploaded).group(0)
        assert page.input_value("#f-teacher") == checkpoint
        page.select_option("#f-preset", PRESET)
        page.select_option("#f-student", "resnet8")
        page.select_option("#f-dataset", "mnist5k")
        page.fill("#f-epochs", "2")
        page.fill("#f-batch", "10")
        # 60 digits a class: epochs of a few seconds, so that the page is seen with one point
        # before the second arrives (with 20 an idle machine sometimes finished both first).
        page.fill("#f-subset", "60")
        page.fill("#f-extra", '{"training": {"lr_milestones": [], "num_workers": 0}}')
        page.click("#submit-form button")
        page.wait_for_url(re.compile(r".*#/jobs/job_[0-9a-f]+$"))
        job_id = page.url.rsplit("/", 1)[1]
        assert page.inner_text("#job-title") == job_id
        what = "kd · resnet8 → resnet8 · mnist5k · 2 epochs"
        expect(page.locator("#job-what")).to_contain_text(what)

        # The curve grows as epochs arrive over the event stream (no reload).
        points = "#chart-acc circle.test"
        # (Locator waits: the page's CSP forbids the eval that wait_for_function needs.)
        expect(page.locator(points).first).to_be_attached(timeout=600_000)
        first = page.locator(points).count()
        shot(page, tmp_path, "job-running.png")
        expect(page.locator("#job-state")).to_have_text("succeeded", timeout=600_000)
        assert first < page.locator(points).count() == 2
        assert page.inner_text("#job-progress") == "epoch 2/2"
        expect(page.locator("#job-cancel")).to_be_hidden()
        assert page.get_attribute("#chart-loss", "data-points") == "2"
        assert "best top-1" in page.inner_text("#job-best")
        assert "student.safetensors" in page.inner_text("#job-artifacts")
        assert '"preset": "cifar100/kd/resnet32x4_resnet8x4"' in page.inner_text("#job-spec")
        shot(page, tmp_path, "job-done.png")

        # What the page showed agrees with the API.
        job = embedded.client().get(f"/jobs/{job_id}").json()
        titles = page.locator(f"{points} title").all_text_contents()
        assert [float(t.rsplit(": ", 1)[1]) for t in titles] == [
            pytest.approx(row["test_top1"], abs=1e-3) for row in job["curve"]]  # fmt: skip

        # The jobs list shows the job with its state, method, models, dataset, best accuracy.
        page.click("nav >> text=Jobs")
        row = page.wait_for_selector(f"tr[data-job='{job_id}']")
        cells = row.inner_text().split("\t")
        assert cells[1:5] == ["succeeded", "kd", "resnet8 → resnet8", "mnist5k"]
        assert cells[5].strip() == "epoch 2/2" and cells[6] == f"{job['best_top1']:.2f}%"
        shot(page, tmp_path, "jobs.png")

        # The key lives in this tab's session storage only: a new tab asks for it again.
        fresh = context.new_page()
        fresh.goto(f"{embedded.base_url}/ui/")
        fresh.wait_for_selector("#login:not([hidden])")
    assert outside == []  # nothing fetched from anywhere but the service


def sign_in(page, stack) -> None:
    page.goto(f"{stack.base_url}/ui/")
    page.fill("#key-input", stack.key)
    page.click("#login-form button")
    page.wait_for_selector("#view-jobs:not([hidden])")


def test_page_submits_a_study_and_shows_its_summary(embedded, teacher_weights, tmp_path):
    """New study from the form (kd and wkd_l × seed 0, one epoch), its members' states and
    progress, the summary table as the API computes it, and the studies list."""
    from playwright.sync_api import expect

    with teacher_weights.open("rb") as weights:
        uploaded = embedded.client().post(
            "/checkpoints", data={"arch": "resnet8", "num_classes": "10"},
            files={"file": ("study-teacher.safetensors", weights.read())},
        )  # fmt: skip
    assert uploaded.status_code == 201, uploaded.text
    teacher = uploaded.json()["id"]
    outside = []
    with chromium(tmp_path / "profile") as context:
        page = context.new_page()
        page.on("request", lambda r: None if r.url.startswith(embedded.base_url)
                else outside.append(r.url))  # fmt: skip
        sign_in(page, embedded)
        page.click("nav >> text=New study")
        page.wait_for_selector("#view-new-study:not([hidden])")
        # A released pair fills the student and the dataset, and says which teacher it wants.
        pair = "cifar100/resnet32x4_resnet8x4"
        page.wait_for_selector(f"#s-pair option[value='{pair}']", state="attached")
        page.select_option("#s-pair", pair)
        assert (page.input_value("#s-student"), page.input_value("#s-dataset")) == (
            "resnet8x4", "cifar100")  # fmt: skip
        expect(page.locator("#s-hint")).to_contain_text("for a resnet32x4 teacher")
        # The study itself: our resnet8 teacher and student on mnist5k, two methods, one seed.
        page.select_option("#s-teacher", teacher)
        page.select_option("#s-student", "resnet8")
        page.select_option("#s-dataset", "mnist5k")
        for box in page.locator("#s-methods input").all():
            box.set_checked(box.get_attribute("value") in ("kd", "wkd_l"))
        page.fill("#s-seeds", "0")
        page.fill("#s-epochs", "1")
        page.fill("#s-batch", "20")
        page.fill("#s-subset", "20")
        page.fill("#s-extra", '{"training": {"num_workers": 0}}')
        page.select_option("#s-student", "resnet8")  # a change event: the hint follows
        expect(page.locator("#s-hint")).to_contain_text("With the method's defaults: kd, wkd_l")
        expect(page.locator("#s-hint")).to_contain_text("2 jobs.")
        shot(page, tmp_path, "study-form.png")
        page.click("#study-form button[type=submit]")
        page.wait_for_url(re.compile(r".*#/studies/study_[0-9a-f]+$"))
        study_id = page.url.rsplit("/", 1)[1]
        assert page.inner_text("#study-title") == study_id
        what = "resnet8 → resnet8 · mnist5k · 2 methods × 1 seed (0) · 1 epoch"
        expect(page.locator("#study-what")).to_contain_text(what)
        rows = page.locator("#study-jobs tr")
        expect(rows).to_have_count(2)
        cells = [r.inner_text().split("\t") for r in rows.all()]
        assert [c[1:3] for c in cells] == [["kd", "0"], ["wkd_l", "0"]]
        states = page.locator("#study-jobs .state")
        # One worker runs one job at a time: WKD-L waits for KD.
        expect(states.nth(1)).to_have_text("queued")

        # The members move on without a reload; the summary appears once they succeed.
        expect(states.first).to_have_text(re.compile("preparing|running"), timeout=600_000)
        expect(page.locator("#summary-empty")).to_be_visible()
        shot(page, tmp_path, "study-running.png")
        expect(page.locator("#study-state")).to_have_text("succeeded", timeout=600_000)
        expect(states).to_have_text(["succeeded", "succeeded"])
        assert [r.inner_text().split("\t")[4].strip() for r in rows.all()] == ["epoch 1/1"] * 2
        expect(page.locator("#summary")).to_be_visible()
        assert page.inner_text("#study-progress") == "2/2 jobs ended"
        shot(page, tmp_path, "study-done.png")

        # What the page shows is the API's summary, formatted.
        study = embedded.client().get(f"/studies/{study_id}").json()
        kd, wkd_l = study["summary"]
        shown = [r.inner_text().split("\t") for r in page.locator("#summary-body tr").all()]
        assert shown == [
            ["kd", "1", f"{kd['best_top1']['mean']:.2f}", f"{kd['last_top1']['mean']:.2f}",
             "+0.00", "+0.00"],
            ["wkd_l", "1", f"{wkd_l['best_top1']['mean']:.2f}",
             f"{wkd_l['last_top1']['mean']:.2f}",
             signed(wkd_l["delta_vs_kd"]["best_top1"]), signed(wkd_l["delta_vs_kd"]["last_top1"])],
        ]  # fmt: skip
        assert "one interrelation matrix" in page.inner_text("#study-ir")

        # A member's link opens its job page; the studies list shows the study.
        page.click(f"#study-jobs a[href='#/jobs/{study['jobs'][1]['id']}']")
        expect(page.locator("#job-what")).to_contain_text("wkd_l · resnet8 → resnet8 · mnist5k")
        page.click("nav >> text=Studies")
        row = page.wait_for_selector(f"tr[data-study='{study_id}']").inner_text()
        cells = [cell.strip() for cell in row.split("\t")]
        assert cells[1:7] == ["succeeded", "resnet8 → resnet8", "mnist5k", "kd, wkd_l × 1 seed",
                              "1", "2/2"]  # fmt: skip
        shot(page, tmp_path, "studies.png")
    assert outside == []


def signed(value: float) -> str:
    """As the page writes a difference: sign, two decimals, a real minus sign."""
    return f"{'+' if value >= 0 else '−'}{abs(value):.2f}"


def test_api_reference_pages_render_offline(embedded, tmp_path):
    """/docs (Swagger UI) and /redoc render the API from vendored files; nothing leaves the
    machine: the one request for another host (ReDoc's logo) is refused by the pages' CSP."""
    from playwright.sync_api import expect

    outside, blocked = [], []
    own = (embedded.base_url, f"blob:{embedded.base_url}/")  # ReDoc's search worker is a blob
    with chromium(tmp_path / "profile") as context:
        page = context.new_page()
        page.on("request", lambda r: None if r.url.startswith(own) else outside.append(r.url))
        page.on("requestfailed", lambda r: blocked.append(r.url) if r.failure == "csp" else None)
        page.goto(f"{embedded.base_url}/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text(
            "WKD distillation service", timeout=60_000)  # fmt: skip
        expect(page.locator(".opblock-summary-path[data-path='/studies']").first).to_be_visible()
        shot(page, tmp_path, "docs.png", full_page=False)
        assert outside == [] and blocked == []
        page.goto(f"{embedded.base_url}/redoc")
        expect(page.locator("h1").first).to_contain_text("WKD distillation service",
                                                         timeout=60_000)  # fmt: skip
        expect(page.get_by_text("/studies/{study_id}").first).to_be_attached()
        shot(page, tmp_path, "redoc.png", full_page=False)
    assert set(outside) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}
    assert blocked == outside  # refused by the browser before any connection


def test_the_lists_page_past_their_first_hundred(embedded, tmp_path):
    """The jobs list shows the newest 100 and a "Show older jobs" button that follows
    next_page_token (it once showed 100 and said nothing); a link whose id is not an id
    never reaches the API; a refresh that fails says so."""
    from playwright.sync_api import expect

    from cli.keys import create_key

    key = create_key("pager", data_dir=embedded.data_dir)  # its own list
    body = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
            "training": {"epochs": 1}}  # fmt: skip
    with embedded.client(key) as client:
        for _ in range(101):  # cancelled at once: the key's queued limit is 100
            job = client.post("/jobs", json=body)
            assert job.status_code == 202, job.text
            client.post(f"/jobs/{job.json()['id']}/cancel")
    requested = []
    with chromium(tmp_path / "profile") as context:
        page = context.new_page()
        page.on("request", lambda r: requested.append(r.url))
        page.goto(f"{embedded.base_url}/ui/")
        page.fill("#key-input", key)
        page.click("#login-form button")
        rows = page.locator("#jobs-body tr")
        expect(rows).to_have_count(100)
        expect(page.locator("#jobs-more")).to_be_visible()
        page.click("#jobs-more")
        expect(rows).to_have_count(101)
        expect(page.locator("#jobs-more")).to_be_hidden()

        page.goto(f"{embedded.base_url}/ui/#/jobs/..%2Fstudies%2Fx")  # not an id: the list
        page.wait_for_selector("#view-jobs:not([hidden])")
        assert not any("studies/x" in url or "%2F" in url for url in requested), requested
