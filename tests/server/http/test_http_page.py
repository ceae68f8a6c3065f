"""The try-it page in a real browser: Debian's headless Chromium, driven by Selenium.

Upload a bundled photo, read the top-1 label the page shows, check the zoo
table lists every served model, that the page asks nothing of any other host,
and that it fits a phone's width. Screenshots are kept as artefacts (the
pytest tmp dir, copied to results/http_page/).
"""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from exporter.samples import EXPECTED
from tests.kit.http_kit import call
from tests.kit.serving import ROOT, ServerProcess
from tests.kit.triton_helpers import LITE0, labels_of

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTEFACTS = ROOT / "results" / "http_page"
PHOTO = "chelsea.png"
EVIL = "evil.example"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (make check-tools installs them)",
)


def _chromium(tmp_path: Path, *extra: str) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1800",
        *extra,
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    yield from _chromium(tmp_path)


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A browser in which the attacker's DNS name evil.example resolves to this machine."""
    yield from _chromium(tmp_path, f"--host-resolver-rules=MAP {EVIL} 127.0.0.1")


def _keep(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot)), "the browser made no screenshot"
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTEFACTS / name)
    return shot


def test_page_classifies_a_photo_and_lists_the_zoo(
    browser: webdriver.Chrome,
    http_server: ServerProcess,
    photos: dict[str, Path],
    triton_repository: Path,
    tmp_path: Path,
) -> None:
    wait = WebDriverWait(browser, 120)
    browser.get(http_server.http_url + "/")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-zoo-loaded"))
    served = {m["name"] for m in call(f"{http_server.http_url}/v2/repository/index", b"").json()}
    rows = browser.find_elements(By.CSS_SELECTOR, "#zoo tbody tr")
    assert {r.get_attribute("data-model") for r in rows} == served
    lite0_row = browser.find_element(By.CSS_SELECTOR, f'#zoo tr[data-model="{LITE0}"]')
    cells = [c.text for c in lite0_row.find_elements(By.TAG_NAME, "td")]
    assert cells[3] == "4.65" and cells[4] == "0.385", cells  # params (M), GMACs: export.json

    Select(browser.find_element(By.ID, "model")).select_by_value(LITE0)
    browser.find_element(By.ID, "file").send_keys(str(photos[PHOTO]))
    wait.until(lambda d: d.find_element(By.ID, "top1").text)
    top1 = browser.find_element(By.ID, "top1").text
    labels = labels_of(triton_repository, LITE0)
    assert top1 in {labels[i] for i in EXPECTED[PHOTO]}, top1
    top5 = browser.find_elements(By.CSS_SELECTOR, "#top5 li")
    assert len(top5) == 5 and top5[0].text.startswith(top1) and "%" in top5[0].text
    latency = browser.find_element(By.ID, "latency").text
    for part in ("network", "queue", "compute", "round trip"):
        assert part in latency, latency
    _keep(browser, tmp_path, "desktop.png")

    origin = http_server.http_url
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert fetched and all(url.startswith(origin) for url in fetched), fetched
    assert any("/charts/" in url for url in fetched) == bool(
        call(f"{origin}/zoo.json").json()["charts"]
    )


def test_page_fits_a_phone(
    browser: webdriver.Chrome, http_server: ServerProcess, tmp_path: Path
) -> None:
    browser.set_window_size(390, 844)
    browser.get(http_server.http_url + "/")
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-zoo-loaded")
    )
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than a 390px phone"
    _keep(browser, tmp_path, "phone.png")


class _EvilSite(http.server.BaseHTTPRequestHandler):
    """The attacker's site: a page that fires a cross-site request, and a log of what
    browsers send to it (to see the same request land on a server that accepts it)."""

    page = b""
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's spelling)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.page)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append({k.lower(): v for k, v in self.headers.items()} | {"path": self.path})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def evil_site() -> Iterator[tuple[type[_EvilSite], int]]:
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EvilSite)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield _EvilSite, site.server_address[1]
    site.shutdown()
    site.server_close()


def _ready(srv: ServerProcess, model: str) -> bool:
    return call(f"{srv.http_url}/v2/models/{model}/ready").status == 200


def test_a_page_of_another_site_cannot_unload_a_model(
    victim: webdriver.Chrome, http_server: ServerProcess, evil_site: tuple[type[_EvilSite], int]
) -> None:
    """The visitor of evil.example runs its script: a no-cors text/plain POST (no
    preflight) to the server on their machine, and the same page rebound to its port."""
    site, port = evil_site
    targets = [
        f"http://{EVIL}:{port}/probe",
        f"{http_server.http_url}/v2/repository/models/{LITE0}/unload",
    ]
    site.page = (
        "<script>Promise.all(" + repr(targets) + ".map(u => fetch(u, {method: 'POST', "
        "mode: 'no-cors', body: '{}'}).catch(() => null)))"
        ".then(() => { document.title = 'sent'; });</script>"
    ).encode()
    assert _ready(http_server, LITE0)
    victim.get(f"http://{EVIL}:{port}/")
    WebDriverWait(victim, 60).until(lambda d: d.title == "sent")
    # What the browser sent (seen on the attacker's own server): a simple request.
    probe = site.seen[-1]
    assert probe["origin"] == f"http://{EVIL}:{port}"
    assert probe["content-type"].startswith("text/plain")
    assert _ready(http_server, LITE0)  # the same request to the model server: refused
    # DNS rebinding: evil.example now resolves to the server's port; its page is refused.
    victim.get(f"http://{EVIL}:{http_server.http_port}/")
    assert "is not a name this server answers to" in victim.page_source
    assert _ready(http_server, LITE0)
