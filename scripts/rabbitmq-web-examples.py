#!/usr/bin/env python3
"""Runs RabbitMQ's own Web-MQTT and Web-STOMP example pages, unchanged, against Pier.

The pages ship with RabbitMQ (the `rabbitmq_web_mqtt_examples` and
`rabbitmq_web_stomp_examples` plugins of the Debian package); this script takes them from an
installed RabbitMQ, serves them as the plugins do, starts a Pier with its default WebSocket
ports (15675 for MQTT, 15674 for STOMP: the ports the pages hard-code) and drives them in
headless Chromium:

  Web-MQTT echo.html        Paho JS: CONNECT, SUBSCRIBE "test" QoS 1, a typed line is
                            published to "test" and must come back
  Web-STOMP echo.html       stomp.js: a typed line sent to /topic/test must come back
  Web-STOMP temp-queue.html a line sent to /queue/test with reply-to /temp-queue/foo; the
                            page's own subscriber answers with the reversed text, which
                            must arrive through the temporary queue

The pages load jQuery from code.jquery.com; with no internet the browser's resolver maps
that host to a local HTTPS server that answers with Debian's libjs-jquery (needs root for
port 443). Not part of the test command (it needs RabbitMQ's files and root); its result is
quoted in issue notes. Usage:

  sudo .venv/bin/python scripts/rabbitmq-web-examples.py [PIER_BIN]
"""

from __future__ import annotations

import glob
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

JQUERY = Path("/usr/share/javascript/jquery/jquery.min.js")


def find(plugin: str) -> Path:
    hits = sorted(glob.glob(f"/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/{plugin}-*/priv"))
    if not hits:
        sys.exit(f"{plugin} not found: install rabbitmq-server (its example pages are used)")
    return Path(hits[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_):
        pass


def serve(directory: Path, port: int) -> None:
    handler = partial(Quiet, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()


class JQuery(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = JQUERY.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/javascript")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


def serve_jquery(tmp: Path) -> None:
    cert, key = tmp / "cdn.pem", tmp / "cdn.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=code.jquery.com", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 443), JQuery)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_text(driver, css: str, text: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while text not in driver.find_element(By.CSS_SELECTOR, css).text:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in {css}: "
                                 f"{driver.find_element(By.CSS_SELECTOR, css).text!r}")
        time.sleep(0.1)


def type_line(driver, text: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, "#first input")
    box.click()
    box.clear()
    box.send_keys(text + Keys.ENTER)


def main() -> int:
    pier_bin = sys.argv[1] if len(sys.argv) > 1 else "target/debug/pier"
    mqtt_pages, stomp_pages = find("rabbitmq_web_mqtt_examples"), find("rabbitmq_web_stomp_examples")
    tmp = Path(tempfile.mkdtemp(prefix="pier-web-examples-"))
    amqp, http_port, mqtt_web, stomp_web = free_port(), free_port(), free_port(), free_port()
    log = open(tmp / "pier.log", "w")
    pier = subprocess.Popen([pier_bin, "server", "--bind", "127.0.0.1", "--amqp-port", str(amqp),
                             "--http-port", str(http_port), "--stream-port", "0",
                             "--mqtt-port", "0", "--stomp-port", "0",
                             "--web-mqtt-port", "15675", "--web-stomp-port", "15674",
                             "--data-dir", str(tmp / "data")], stdout=log, stderr=log)
    results = []
    driver = None
    try:
        wait_port(15675)
        wait_port(15674)
        serve(mqtt_pages, mqtt_web)
        serve(stomp_pages, stomp_web)
        serve_jquery(tmp)
        opts = webdriver.ChromeOptions()
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                  "--host-resolver-rules=MAP code.jquery.com 127.0.0.1",
                  "--ignore-certificate-errors"):
            opts.add_argument(a)
        if shutil.which("chromium"):
            opts.binary_location = shutil.which("chromium")
        driverpath = shutil.which("chromedriver")
        service = webdriver.ChromeService(executable_path=driverpath) if driverpath else None
        driver = webdriver.Chrome(options=opts, service=service)

        driver.get(f"http://127.0.0.1:{mqtt_web}/echo.html")
        wait_text(driver, "#second div", "CONNECTION SUCCESS")
        type_line(driver, "hello from the Web-MQTT example")
        wait_text(driver, "#second div", "RECEIVE ON test PAYLOAD hello from the Web-MQTT example")
        wait_text(driver, "#first div", "hello from the Web-MQTT example")
        results.append("Web-MQTT echo.html: connected, published, received its echo")

        driver.get(f"http://127.0.0.1:{stomp_web}/echo.html")
        wait_text(driver, "#second div", "CONNECTED")
        type_line(driver, "hello from the Web-STOMP example")
        wait_text(driver, "#first div", "hello from the Web-STOMP example")
        results.append("Web-STOMP echo.html: connected, sent to /topic/test, received its echo")

        driver.get(f"http://127.0.0.1:{stomp_web}/temp-queue.html")
        wait_text(driver, "#second div", "CONNECTED")
        type_line(driver, "pier")
        wait_text(driver, "#first div", "reip")
        results.append("Web-STOMP temp-queue.html: the reversed reply came back through "
                       "/temp-queue/foo")
    except Exception as e:  # noqa: BLE001 - reported below
        results.append(f"FAILED: {e}")
        if driver is not None:
            driver.save_screenshot(str(tmp / "failure.png"))
            results.append(f"screenshot: {tmp / 'failure.png'}; Pier log: {tmp / 'pier.log'}")
    finally:
        if driver is not None:
            driver.quit()
        pier.terminate()
        pier.wait(timeout=20)
    for r in results:
        print(r)
    failed = any(r.startswith("FAILED") for r in results)
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("needs root (a local HTTPS server on port 443 stands in for code.jquery.com)")
    sys.exit(main())
