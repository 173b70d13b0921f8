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
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (see .ci/run)")
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


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
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
        page.fill("#f-subset", "20")
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
