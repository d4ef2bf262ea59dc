"""The web UI, driven end to end in a real headless Chromium (Selenium WebDriver).

Each test starts a private Pier, opens http://127.0.0.1:<http_port>/, logs in and works the
UI as a user would, then checks the broker through the HTTP API. Screenshots are written to
tests/python/artifacts/ (or $PIER_UI_ARTIFACTS) so a person can look at what the UI shows.

Needs Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them) and the
`selenium` package (tests/python/requirements.txt). Without them the tests are skipped,
unless PIER_UI_TESTS_REQUIRED=1 (set by .ci/run), where a missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pika
import pytest

from helpers import MgmtApi

pytestmark = [pytest.mark.pier_only, pytest.mark.timeout(180)]

ARTIFACTS = Path(os.environ.get("PIER_UI_ARTIFACTS") or Path(__file__).parent / "artifacts")
REQUIRED = os.environ.get("PIER_UI_TESTS_REQUIRED") == "1"

# Flags that work for Debian's chromium in containers and on CI machines.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1440,1100",
]


def _which(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (PIER_UI_TESTS_REQUIRED=1)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"management port {port} is not listening")


@pytest.fixture
def browser(tmp_path):
    chromium = os.environ.get("PIER_CHROMIUM") or _which("chromium", "chromium-browser")
    driver_path = os.environ.get("PIER_CHROMEDRIVER") or _which("chromedriver")
    if not chromium or not driver_path:
        _unavailable("chromium and chromedriver are not installed "
                     "(apt-get install -y chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -r tests/python/requirements.txt)")
    options = Options()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def pier_ui(pier_factory):
    proc = pier_factory()
    wait_for_port(proc.http_port)
    return proc


def wait_until(driver, predicate, timeout: float = 15.0, what: str = "condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    def attempt(d):
        try:
            return predicate(d)
        except Exception:  # noqa: BLE001 - not there yet (no element, no alert, ...)
            return False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(attempt)
    except Exception as e:  # noqa: BLE001 - re-raised with the page state
        raise AssertionError(f"timed out waiting for {what}; page text:\n"
                             f"{driver.find_element('tag name', 'body').text[:3000]}") from e


def by_id(driver, element_id: str):
    return driver.find_element("id", element_id)


def click(driver, element) -> None:
    """Clicks like a user who first scrolls the element to the middle of the window."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def click_row(driver, selector: str, what: str) -> None:
    """Finds and clicks an element of a live-refreshed list in one step, again if a refresh
    replaced it in between (stale element: wait_until retries on any exception)."""
    wait_until(driver, lambda d: click(d, d.find_element("css selector", selector)) or True,
               what=what)


def text_of(driver, element_id: str) -> str:
    try:
        return by_id(driver, element_id).text
    except Exception:  # noqa: BLE001 - not rendered yet
        return ""


def shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # The whole page, not just the window: size the window to the document first.
    for _ in range(4):
        page, inner = driver.execute_script(
            "return [document.documentElement.scrollHeight, window.innerHeight]")
        if page <= inner:
            break
        outer = driver.get_window_size()["height"]
        driver.set_window_size(1440, min(outer + page - inner + 8, 8000))
        time.sleep(0.3)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)  # the resize redraws the charts
    driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1100)
    assert path.stat().st_size > 10_000, "screenshot looks empty"
    return path


def login(driver, port: int, user: str = "guest", password: str = "guest") -> None:
    driver.get(f"http://127.0.0.1:{port}/")
    wait_until(driver, lambda d: by_id(d, "login-user").is_displayed(), what="the login form")
    by_id(driver, "login-user").clear()
    by_id(driver, "login-user").send_keys(user)
    by_id(driver, "login-password").clear()
    by_id(driver, "login-password").send_keys(password)
    by_id(driver, "login-submit").click()


def type_into(driver, element_id: str, text: str) -> None:
    el = by_id(driver, element_id)
    el.clear()
    el.send_keys(text)


class Traffic:
    """Publishes to a queue and consumes from it in the background, so rates are not zero."""

    def __init__(self, port: int, queue: str, seconds: float, rate: float = 40.0):
        self.port, self.queue, self.seconds, self.rate = port, queue, seconds, rate
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._guard(self._publish), daemon=True),
                        threading.Thread(target=self._guard(self._consume), daemon=True)]

    def _params(self):
        return pika.ConnectionParameters(host="127.0.0.1", port=self.port,
                                         credentials=pika.PlainCredentials("guest", "guest"),
                                         connection_attempts=1, socket_timeout=10)

    def _guard(self, fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported by join()
                self.errors.append(e)
        return run

    def _publish(self):
        conn = pika.BlockingConnection(self._params())
        ch = conn.channel()
        end = time.monotonic() + self.seconds
        i = 0
        while time.monotonic() < end:
            ch.basic_publish("", self.queue, f"load {i}".encode())
            i += 1
            conn.sleep(1.0 / self.rate)
        conn.close()

    def _consume(self):
        conn = pika.BlockingConnection(self._params())
        ch = conn.channel()
        ch.basic_qos(prefetch_count=5)
        end = time.monotonic() + self.seconds
        for method, _props, _body in ch.consume(self.queue, inactivity_timeout=0.2):
            if time.monotonic() > end:
                break
            if method is not None:
                ch.basic_ack(method.delivery_tag)
        ch.cancel()
        conn.close()

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def join(self):
        for t in self.threads:
            t.join(self.seconds + 20)
        assert not self.errors, self.errors


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


def test_static_files_are_served_without_credentials(pier_ui):
    base = f"http://127.0.0.1:{pier_ui.http_port}"
    for path, kind in (("/", "text/html"), ("/ui/app.js", "javascript"), ("/ui/app.css", "text/css"),
                       ("/ui/favicon.svg", "image/svg+xml")):
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            assert resp.status == 200
            assert kind in resp.headers["Content-Type"], (path, resp.headers["Content-Type"])
    # ...while the API still wants them.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "/api/overview", timeout=10)
    assert e.value.code == 401


def test_login_overview_queue_publish_get(pier_ui, browser):
    api = MgmtApi(pier_ui.http_port)
    node = api.get("/overview")["node"]

    # A wrong password is refused on the login form.
    login(browser, pier_ui.http_port, "guest", "wrong")
    wait_until(browser, lambda d: "Login failed" in text_of(d, "login-error"),
               what="the login error")

    # The overview shows the node, the totals and the charts.
    login(browser, pier_ui.http_port)
    wait_until(browser, lambda d: text_of(d, "node-name-cell") == node, what="the node name")
    assert "guest" in text_of(browser, "who")
    assert browser.find_element("id", "chart-overview-rates").is_displayed()
    wait_until(browser, lambda d: text_of(d, "total-queues") != "", what="the totals")

    # Create a queue through the form on the queues page.
    name = f"ui-test.{uuid.uuid4().hex[:8]}"
    browser.get(f"http://127.0.0.1:{pier_ui.http_port}/#/queues")
    wait_until(browser, lambda d: by_id(d, "queue-add-name").is_displayed(), what="the queue form")
    type_into(browser, "queue-add-name", name)
    type_into(browser, "queue-add-arguments", '{"x-max-length": 1000}')
    click(browser, by_id(browser, "queue-add-submit"))
    wait_until(browser, lambda d: "declared" in text_of(d, "queue-add-result"),
               what="the queue to be declared")
    status, body = api.call("GET", f"/queues/%2F/{q(name)}")
    assert status == 200, body
    assert body["durable"] is True and body["arguments"] == {"x-max-length": 1000}
    # The list shows it at the next refresh.
    wait_until(browser, lambda d: d.find_elements("css selector", f'tr[data-queue="{name}"]'),
               timeout=15, what="the queue in the list")

    # Open the queue page from the list.
    click_row(browser, f'tr[data-queue="{name}"] a', "the queue's link")
    wait_until(browser, lambda d: text_of(d, "queue-name") == name, what="the queue page")

    # Publish a message through the UI.
    payload = "hello from the web UI ✓"
    type_into(browser, "queue-publish-payload", payload)
    click(browser, by_id(browser, "queue-publish-submit"))
    wait_until(browser, lambda d: "Message published." in text_of(d, "queue-publish-result"),
               what="the publish confirmation")
    deadline = time.monotonic() + 10
    while api.get(f"/queues/%2F/{q(name)}")["messages"] != 1:
        assert time.monotonic() < deadline, "the published message did not arrive"
        time.sleep(0.1)
    wait_until(browser, lambda d: text_of(d, "queue-ready").endswith("1"), timeout=15,
               what="the ready count on the queue page")

    # Get it back through the UI (requeued: it stays in the queue).
    click(browser, by_id(browser, "get-submit"))
    wait_until(browser, lambda d: d.find_elements("css selector", "#get-result pre.payload"),
               what="the fetched message")
    assert browser.find_element("css selector", "#get-result pre.payload").text == payload
    assert api.get(f"/queues/%2F/{q(name)}")["messages"] == 1

    # Let traffic flow and watch it as a user would, moving between pages with the menu
    # (the page keeps its chart history while it is not reloaded).
    traffic = Traffic(pier_ui.amqp_port, name, seconds=22).start()
    browser.find_element("css selector", '#nav a[data-page="overview"]').click()
    wait_until(browser, lambda d: text_of(d, "node-name-cell") == node, what="the overview")
    time.sleep(12)
    wait_until(browser, lambda d: d.find_elements("css selector", "#overview-watch a"),
               what="the queue among the queues to watch")
    shot(browser, "ui-overview")
    browser.find_element("css selector", '#nav a[data-page="queues"]').click()
    wait_until(browser, lambda d: d.find_elements("css selector", f'tr[data-queue="{name}"] a'),
               what="the queue in the list")
    row = browser.find_element("css selector", f'tr[data-queue="{name}"]').text
    assert name in row and "/s" in row, row
    shot(browser, "ui-queues")
    click_row(browser, f'tr[data-queue="{name}"] a', "the queue's link")
    wait_until(browser, lambda d: text_of(d, "queue-name") == name, what="the queue page")
    time.sleep(6)
    wait_until(browser, lambda d: "/s" in text_of(d, "queue-figures"), what="the figures")
    # The consumer acks, so time in queue is measured per message (p50, p99 beside W).
    wait_until(browser, lambda d: "msgs" in text_of(d, "queue-wait-measured")
               and "p99" in text_of(d, "queue-wait-measured")
               and not text_of(d, "queue-wait-measured").startswith("W measured p50\n–"),
               what="the measured time in queue")
    shot(browser, "ui-queue")
    traffic.join()


def test_exchanges_admin_and_delete(pier_ui, browser):
    api = MgmtApi(pier_ui.http_port)
    base = f"http://127.0.0.1:{pier_ui.http_port}"
    login(browser, pier_ui.http_port)
    wait_until(browser, lambda d: text_of(d, "node-name-cell") != "", what="the overview")

    # Create an exchange, bind a queue to it from the exchange page, publish through it.
    xname = f"ui-x.{uuid.uuid4().hex[:8]}"
    qname = f"ui-q.{uuid.uuid4().hex[:8]}"
    assert api.call("PUT", f"/queues/%2F/{q(qname)}", {"durable": False})[0] == 201
    browser.get(base + "/#/exchanges")
    wait_until(browser, lambda d: by_id(d, "exchange-add-name").is_displayed(), what="the form")
    type_into(browser, "exchange-add-name", xname)
    from selenium.webdriver.support.ui import Select

    Select(by_id(browser, "exchange-add-type")).select_by_value("topic")
    click(browser, by_id(browser, "exchange-add-submit"))
    wait_until(browser, lambda d: "declared" in text_of(d, "exchange-add-result"),
               what="the exchange to be declared")
    assert api.get(f"/exchanges/%2F/{q(xname)}")["type"] == "topic"
    wait_until(browser, lambda d: d.find_elements("css selector", f'tr[data-exchange="{xname}"] a'),
               what="the exchange in the list")
    click_row(browser, f'tr[data-exchange="{xname}"] a', "the exchange's link")
    wait_until(browser, lambda d: text_of(d, "exchange-name") == xname, what="the exchange page")
    type_into(browser, "exchange-bind-destination", qname)
    type_into(browser, "exchange-bind-key", "orders.*")
    click(browser, browser.find_element("css selector", "#exchange-bind-form button"))
    wait_until(browser, lambda d: qname in text_of(d, "exchange-bindings"), what="the binding")
    type_into(browser, "exchange-publish-routing-key", "orders.eu")
    type_into(browser, "exchange-publish-payload", "routed through the UI")
    click(browser, by_id(browser, "exchange-publish-submit"))
    wait_until(browser, lambda d: "Message published." in text_of(d, "exchange-publish-result"),
               what="the publish confirmation")
    deadline = time.monotonic() + 10
    while api.get(f"/queues/%2F/{q(qname)}")["messages"] != 1:
        assert time.monotonic() < deadline, "the message was not routed"
        time.sleep(0.1)

    # Delete the exchange (a confirm() dialog first).
    click(browser, by_id(browser, "exchange-delete"))
    wait_until(browser, lambda d: d.switch_to.alert, what="the confirmation dialog").accept()
    wait_until(browser, lambda d: d.current_url.endswith("#/exchanges"), what="the exchanges list")
    assert api.call("GET", f"/exchanges/%2F/{q(xname)}")[0] == 404

    # Admin: add a user and a virtual host, then delete the user.
    user = f"ui-user-{uuid.uuid4().hex[:6]}"
    vhost = f"ui-vhost-{uuid.uuid4().hex[:6]}"
    browser.get(base + "/#/admin")
    wait_until(browser, lambda d: by_id(d, "user-add-name").is_displayed(), what="the admin page")
    type_into(browser, "user-add-name", user)
    type_into(browser, "user-add-password", "s3cret")
    type_into(browser, "user-add-tags", "monitoring")
    click(browser, by_id(browser, "user-add-submit"))
    wait_until(browser, lambda d: "saved" in text_of(d, "admin-result"), what="the user")
    assert api.get(f"/users/{q(user)}")["tags"] == ["monitoring"]
    type_into(browser, "vhost-add-name", vhost)
    click(browser, by_id(browser, "vhost-add-submit"))
    wait_until(browser, lambda d: "added" in text_of(d, "admin-result"), what="the vhost")
    assert api.get(f"/vhosts/{q(vhost)}")["name"] == vhost
    wait_until(browser, lambda d: d.find_elements("css selector", f'tr[data-user="{user}"] button'),
               what="the user in the list")
    shot(browser, "ui-admin")
    click_row(browser, f'tr[data-user="{user}"] button', "the user's delete button")
    wait_until(browser, lambda d: d.switch_to.alert, what="the confirmation dialog").accept()
    wait_until(browser, lambda d: "Deleted user" in text_of(d, "admin-result"), what="the deletion")
    assert api.call("GET", f"/users/{q(user)}")[0] == 404

    # Delete the queue from its page.
    browser.get(base + f"/#/queues/%2F/{q(qname)}")
    wait_until(browser, lambda d: text_of(d, "queue-name") == qname, what="the queue page")
    click(browser, by_id(browser, "queue-delete"))
    wait_until(browser, lambda d: d.switch_to.alert, what="the confirmation dialog").accept()
    wait_until(browser, lambda d: d.current_url.endswith("#/queues"), what="the queues list")
    assert api.call("GET", f"/queues/%2F/{q(qname)}")[0] == 404

    # Logging out returns to the login form.
    by_id(browser, "logout").click()
    wait_until(browser, lambda d: by_id(d, "login-user").is_displayed(), what="the login form")


def test_stream_and_quorum_queue_pages_show_their_log_and_members(pier_ui, browser):
    """A stream's page shows its log (segments, offsets, size, tracking), a quorum queue's its
    leader and members."""
    api = MgmtApi(pier_ui.http_port)
    stream = f"ui-stream.{uuid.uuid4().hex[:8]}"
    quorum = f"ui-quorum.{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=pier_ui.amqp_port,
        credentials=pika.PlainCredentials("guest", "guest")))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})
    ch.queue_declare(quorum, durable=True, arguments={"x-queue-type": "quorum"})
    for i in range(5):
        ch.basic_publish("", stream, f"s{i}".encode())
    conn.close()
    node = api.get("/overview")["node"]

    login(browser, pier_ui.http_port)
    browser.get(f"http://127.0.0.1:{pier_ui.http_port}/#/queues/%2F/{q(stream)}")
    wait_until(browser, lambda d: text_of(d, "queue-name") == stream, what="the stream page")
    wait_until(browser, lambda d: text_of(d, "queue-stream-offsets") == "0 – 4",
               timeout=15, what="the stream's offsets")
    assert text_of(browser, "queue-stream-segments") == "1"
    assert "consumer offsets" in text_of(browser, "queue-stream-tracking")
    # A named consumer stores its offset (stream protocol): the page shows it and its lag.
    rstream = pytest.importorskip("rstream")

    async def store():
        c = rstream.Consumer("127.0.0.1", port=pier_ui.stream_port, username="guest",
                             password="guest")
        await c.start()
        await c.store_offset(stream, "ui-reader", 3)
        await c.close()
    asyncio.run(store())
    browser.refresh()
    # The lag counts from the log's last offset (the stored offset's own tracking chunk
    # takes one too).
    wait_until(browser, lambda d: text_of(d, "queue-stream-consumer-offsets")
               .startswith("ui-reader: 3 (lag "), timeout=15, what="the stored consumer offset")
    shot(browser, "ui-stream")

    browser.get(f"http://127.0.0.1:{pier_ui.http_port}/#/queues/%2F/{q(quorum)}")
    wait_until(browser, lambda d: text_of(d, "queue-name") == quorum, what="the quorum page")
    wait_until(browser, lambda d: text_of(d, "queue-leader") == node, timeout=15,
               what="the quorum queue's leader")


def test_overview_lists_every_cluster_node(broker, browser):
    """On a cluster the overview has a table of the nodes, each with its state; from any
    node (here the first), every node of the cluster."""
    if len(broker.ports) < 2:
        pytest.skip("a cluster's page: runs in the 3-node run (PIER_TEST_CLUSTER=3)")
    port = broker.process.http_port
    names = sorted(n["name"] for n in MgmtApi(port).get("/nodes"))
    assert len(names) == len(broker.ports)
    login(browser, port)

    def listed(d):
        rows = [d.find_elements("css selector", f'tr[data-node="{n}"]') for n in names]
        return all(r and r[0].find_elements("tag name", "td")[1].text == "running"
                   for r in rows)

    wait_until(browser, listed, what="every node, running, in the cluster nodes table")
