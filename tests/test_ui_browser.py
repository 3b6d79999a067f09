"""`coroseg ui` as users see it: the fixture run in MLflow's UI, in a real (headless) browser.

Drives Debian's chromium (/usr/bin/chromium, `apt-get install -y chromium`; .ci/run installs it) through
Playwright's Python package; Playwright's own browser download is not used. Without either, the test skips and
says why. Screenshots of each step go to the test's tmp_path; `pytest -s` prints where.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coroseg.tracking.layout import MODEL_NAME, TRAINING, artifact_dir
from tests.conftest import free_port, stop, wait_http


def _chromium() -> str | None:
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


CHROMIUM = _chromium()
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="browser test skipped: the Python package playwright is not "
                       "installed (pip install playwright, part of the test extra)"),
    pytest.mark.skipif(CHROMIUM is None, reason="browser test skipped: no chromium on this machine "
                       "(apt-get install -y chromium)"),
]


def _all_files(client, run_id: str, path: str) -> list[str]:
    files = []
    for item in client.list_artifacts(run_id, path):
        files += _all_files(client, run_id, item.path) if item.is_dir else [item.path]
    return files


def _wait_for_line(log: Path, prefix: str, process: subprocess.Popen, timeout: float = 60.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith(prefix):
                return line
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"no {prefix!r} line from `coroseg ui`:\n{log.read_text()}")


@pytest.fixture()
def browser_page(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)        # expect's own default is 5 s
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def test_ui_shows_the_run_its_overlays_and_the_model(trained, browser_page, tmp_path):
    from mlflow import MlflowClient
    from playwright.sync_api import expect

    page = browser_page
    client = MlflowClient(tracking_uri=trained.store)
    run_id = trained.run_id
    exp_id = client.get_run(run_id).info.experiment_id
    experiment = client.get_experiment(exp_id).name

    # What the UI should show, from the store itself.
    layout_tops = {folder.split("/", 1)[0] for folder in TRAINING.values()}
    listed_tops = {item.path for item in client.list_artifacts(run_id) if item.is_dir}
    expected_tops = sorted(layout_tops & listed_tops)
    predictions = artifact_dir("epoch_predictions", 1)
    assert predictions.split("/", 1)[0] in expected_tops, (layout_tops, listed_tops)
    overlay = next((f for f in _all_files(client, run_id, predictions) if f.endswith(".png")), None)
    assert overlay is not None, f"no overlay PNG under {predictions}"
    models = [m for m in client.search_logged_models(experiment_ids=[exp_id])
              if m.source_run_id == run_id and m.name == MODEL_NAME]
    assert len(models) == 1, models
    model = models[0]

    port = free_port()
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        ui = subprocess.Popen([sys.executable, "-m", "coroseg", "ui", "--port", str(port)], cwd=trained.workdir,
                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "MLFLOW_TRACKING_URI": trained.store})
    shots: list[Path] = []

    def shot(name: str) -> None:
        path = tmp_path / f"{len(shots)}_{name}.png"
        page.screenshot(path=str(path))
        shots.append(path)
        print(f"screenshot: {path}")         # shown with pytest -s

    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        base = f"http://127.0.0.1:{port}"

        # 0. The address `coroseg ui` says to open shows MLflow's model-training view, not its GenAI one:
        #    the side bar has the model registry and not the GenAI pages (prompts, AI gateway).
        view = _wait_for_line(log, "Model training view: http://", ui).split(": ", 1)[1]
        assert view.startswith(f"http://localhost:{port}/#/"), view
        page.goto(view)
        expect(page.get_by_role("link", name="Model registry")).to_be_visible()
        expect(page.get_by_role("link", name="Prompts")).to_have_count(0)
        expect(page.get_by_role("link", name=experiment, exact=True)).to_be_visible()
        shot("model_training_view")

        # a. The run's artifacts: the layout's top folders in the tree.
        page.goto(f"{base}/#/experiments/{exp_id}/runs/{run_id}/artifacts")

        def node(name: str):
            return page.locator(f'[data-testid="artifact-tree-node"][artifact-name="{name}"]')

        for top in expected_tops:
            expect(node(top)).to_be_visible()
        shot("artifact_tree")

        # b. An overlay PNG, opened by clicking through the tree: its preview is a loaded image.
        for folder in overlay.split("/")[:-1]:       # only one branch is open, so each name is one node
            node(folder).click()
        node(overlay.rsplit("/", 1)[1]).click()
        image = page.locator(f'img[alt="{overlay}"]')
        expect(image).to_be_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                               timeout=TIMEOUT_MS)
        width = image.evaluate("img => img.naturalWidth")
        assert width > 0
        shot("overlay_preview")

        # c. The logged model's page, with its metrics. The page first renders "Metrics (0)" and fills the
        #    table once the source run has loaded, so wait for the Dice row itself.
        page.goto(f"{base}/#/experiments/{exp_id}/models/{model.model_id}")
        expect(page.get_by_text(model.model_id, exact=True).first).to_be_visible()
        heading = page.get_by_role("heading", name=re.compile(r"^Metrics \(\d+\)$"))
        expect(heading).to_be_visible()
        table = page.get_by_test_id("logged-model-details-metrics-table")
        names = table.locator('[role="row"]:not(.table-isHeader) > [role="cell"]:first-child')
        try:
            expect(names.filter(has_text=re.compile("dice", re.IGNORECASE)).first).to_be_visible()
        except AssertionError:
            pass                                      # told below, once the server is down and its log read
        metric_names = [name.strip() for name in names.all_inner_texts()]
        shown = f"{heading.inner_text()}; metric names shown: {metric_names}"
        print(f"model page {model.model_id}: {shown}")
        heading.scroll_into_view_if_needed()
        shot("logged_model")
    finally:
        stop(ui)

    # Quiet: the server wrote no line per HTTP request while the browser made dozens of them.
    requests = [line for line in log.read_text().splitlines() if re.search(r'"(GET|POST) /', line)]
    assert not requests, "`coroseg ui` logged HTTP requests:\n" + "\n".join(requests[:5])

    linked = sorted(m.key for m in client.get_logged_model(model.model_id).metrics or [])
    assert any("dice" in name.lower() for name in metric_names), (
        f"the page of logged model {MODEL_NAME} ({model.model_id}) shows no Dice metric ({shown}); "
        f"the store links these metrics to it: {linked}")
