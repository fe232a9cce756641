"""`hifikit ui` in a real browser: Debian's headless Chromium, driven by selenium through chromedriver.

One user's way through the synthetic model (open the page with the token, start a proxy sweep, watch it
finish, open the strategy editor, change a tensor's type, see the predicted size change, save, quantize
with verify, see the run done and its KLD), and the refusals a browser meets: no token, a DNS-rebinding
Host, a request from a page of another origin. The screenshots go to $HIFIKIT_UI_SCREENSHOTS when it is
set (docs/ui.md shows them), else to the test's folder.

The server binds 127.0.0.1 on a free port and stops by itself after STOP_AFTER seconds at the latest.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("selenium", reason="selenium is part of the test extra: pip install '.[test]'")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from hifikit import db, jobs  # noqa: E402
from hifikit.ui import server  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TYPES = "q4_0,q5_0,q8_0,q4_K,q6_K"
STOP_AFTER = 900
REBIND = "rebind.test"

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    message = "Debian's chromium and chromium-driver are needed (.ci/run installs them)"
    if os.environ.get("HIFIKIT_CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


@pytest.fixture
def root(tmp_path, tiny_model, tiny_text) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    (r / "tiny-f16.gguf").write_bytes(Path(tiny_model).read_bytes())
    (r / "text.txt").write_text(Path(tiny_text).read_text())
    return r


@pytest.fixture
def ui(root, built):
    running = server.start(server.UIOptions(port=0, roots=[root], stop_after=STOP_AFTER))
    yield running
    running.stop()
    running.launcher.stop_all()


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # the flags a root, headless, offline machine needs; the resolver rule plays a DNS rebinding
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1100", f"--user-data-dir={tmp_path / 'profile'}",
                 f"--host-resolver-rules=MAP {REBIND} 127.0.0.1"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path) -> Path:
    out = Path(os.environ.get("HIFIKIT_UI_SCREENSHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def wait(driver, what, timeout: float = 60):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: what(d))


def text_of(driver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def summary_bytes(driver) -> int:
    value = driver.find_element(By.CSS_SELECTOR, '#summary [data-key="predicted size"] .value').text
    return int(value.split()[0])


def test_model_to_verified_file_in_the_browser(ui, browser, root, shots):
    d = browser
    base = ui.url.split("?")[0].rstrip("/")
    d.get(ui.url)                                    # the printed URL, with its token
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs tbody"))
    d.find_element(By.ID, "model-path").send_keys(str(root / "tiny-f16.gguf"))
    d.find_element(By.CSS_SELECTOR, "#open-model button").click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#tensors tbody tr"))

    # a proxy sweep, watched until its run is done
    d.find_element(By.CSS_SELECTOR, "#sweep-form input[name=types]").send_keys(TYPES)
    d.find_element(By.ID, "start-sweep").click()
    wait(d, lambda d: "sweep started" in text_of(d, "#message"))
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, '#sweeps tr[data-status="done"] a.open-editor'), 240)
    d.save_screenshot(str(shots / "model.png"))
    run_id = int(d.find_element(By.CSS_SELECTOR, '#sweeps tr[data-status="done"]').get_attribute("data-run"))

    # its curves, then the editor
    d.get(f"{base}/run/{run_id}")
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#curve-plot .main-svg"))
    d.save_screenshot(str(shots / "run-curves.png"))
    d.find_element(By.ID, "to-editor").click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#plan-table select"))
    planned = summary_bytes(d)

    # a hand edit (no re-plan): the predicted size moves by exactly the bytes between the two types
    d.find_element(By.CSS_SELECTOR, "#target-form input[name=replan]").click()
    # a tensor not at its smallest candidate goes one smaller (a smaller file always fits the budget)

    def bpw_of(option) -> float:
        return float(option.text.split(" · ")[1].split()[0])
    for row in d.find_elements(By.CSS_SELECTOR, "#plan-table tbody tr"):
        select = Select(row.find_element(By.TAG_NAME, "select"))
        now = bpw_of(select.first_selected_option)
        smaller = [o for o in select.options if bpw_of(o) < now]
        if smaller:
            break
    else:
        raise AssertionError("every tensor is at its smallest candidate")
    name = row.get_attribute("data-tensor")
    other = max(smaller, key=bpw_of).get_attribute("value")
    old_bytes = int(row.find_elements(By.TAG_NAME, "td")[3].text)
    select.select_by_value(other)
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, f'#plan-table tr.pinned[data-tensor="{name}"]'))
    new_row = d.find_element(By.CSS_SELECTOR, f'#plan-table tr[data-tensor="{name}"]')
    new_bytes = int(new_row.find_elements(By.TAG_NAME, "td")[3].text)
    assert new_bytes < old_bytes
    assert summary_bytes(d) == planned - old_bytes + new_bytes
    d.save_screenshot(str(shots / "editor.png"))

    # save, then quantize with verify from the saved strategy
    path = d.find_element(By.ID, "strategy-path")
    path.clear()
    path.send_keys(str(root / "edited.yaml"))
    d.find_element(By.ID, "save").click()
    wait(d, lambda d: "saved" in text_of(d, "#message"))
    assert (root / "edited.yaml").is_file()
    out = d.find_element(By.ID, "output-path")
    out.clear()
    out.send_keys(str(root / "edited.gguf"))
    d.find_element(By.ID, "text-path").send_keys(str(root / "text.txt"))
    ctx = d.find_element(By.ID, "ctx")
    ctx.clear()
    ctx.send_keys("128")
    d.find_element(By.ID, "chunks").send_keys("2")
    d.find_element(By.ID, "quantize").click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, '#quantize-status[data-status="done"] #quantize-kld'), 300)
    kld = float(text_of(d, "#quantize-kld").split("mean KLD")[1].split("±")[0])
    assert kld > 0 and (root / "edited.gguf").is_file()
    d.save_screenshot(str(shots / "editor-verified.png"))

    # the run page shows the same measurement
    d.find_element(By.ID, "quantize-run").click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, '#rows tr[data-role]:not([data-role="reference"]) .kld'))
    shown = float(d.find_element(By.CSS_SELECTOR, '#rows tr[data-role]:not([data-role="reference"]) .kld').text)
    assert shown == pytest.approx(kld, rel=1e-3)
    d.save_screenshot(str(shots / "run-verified.png"))


class Attacker(BaseHTTPRequestHandler):
    """A page of another origin on loopback that tries to start a job on the UI (CSRF)."""
    target = ""

    def do_GET(self) -> None:
        page = (f"<html><body><script>fetch('{self.target}/api/sweep', {{method: 'POST', mode: 'no-cors', "
                "credentials: 'include', body: JSON.stringify({model: 'tiny-f16.gguf'})})"
                ".then(() => document.title = 'sent', () => document.title = 'failed');</script></body></html>")
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(page.encode())

    def log_message(self, *args) -> None:
        pass


def test_the_browser_is_refused_without_token_from_a_rebinding_host_and_another_origin(
        ui, browser, caplog, shots):
    d = browser
    base = ui.url.split("?")[0].rstrip("/")
    d.get(base + "/")
    assert "missing or wrong token" in d.find_element(By.TAG_NAME, "body").text
    d.save_screenshot(str(shots / "refused-no-token.png"))

    port = ui.policy.port
    d.get(f"http://{REBIND}:{port}/?token={ui.policy.token}")     # resolves to 127.0.0.1: the server's own socket
    assert f"Host {REBIND}:{port} is not this server's address" in d.find_element(By.TAG_NAME, "body").text

    # a page on another port of 127.0.0.1 is the same site: the strict cookie goes with its request, the Origin
    # check is what refuses it
    d.get(ui.url)
    Attacker.target = base
    evil = ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    thread = threading.Thread(target=evil.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        with caplog.at_level("WARNING", logger="hifikit.ui.app"):
            d.get(f"http://127.0.0.1:{evil.server_address[1]}/")
            wait(d, lambda d: d.title in ("sent", "failed"))
            deadline = time.time() + 10
            while "refused POST /api/sweep" not in caplog.text and time.time() < deadline:
                time.sleep(0.1)
    finally:
        evil.shutdown()
        evil.server_close()
    assert f"Origin http://127.0.0.1:{evil.server_address[1]} is not this server's" in caplog.text
    assert ui.launcher.list(db.connect()) == [] and jobs.list_runs(db.connect()) == []
