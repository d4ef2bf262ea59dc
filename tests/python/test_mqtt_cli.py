"""Smoke test of the MQTT server with mosquitto's command-line clients (Debian
mosquitto-clients). Skipped when they are missing, unless PIER_MQTT_CLI_REQUIRED=1."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest


@pytest.fixture
def cli():
    missing = [t for t in ("mosquitto_pub", "mosquitto_sub") if shutil.which(t) is None]
    if missing:
        if os.environ.get("PIER_MQTT_CLI_REQUIRED") == "1":
            pytest.fail(f"missing {', '.join(missing)} (PIER_MQTT_CLI_REQUIRED=1)")
        pytest.skip(f"missing {', '.join(missing)} (apt-get install mosquitto-clients)")


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_pub_sub(broker, cli, version):
    if version == "mqttv5" and broker.external:
        pytest.skip("RabbitMQ 3.10 has no MQTT 5")
    topic = f"cli/{uuid.uuid4().hex[:8]}"
    common = ["-h", broker.host, "-p", str(broker.mqtt_port), "-u", "guest", "-P", "guest",
              "-V", version]
    sub = subprocess.Popen(["mosquitto_sub", *common, "-t", f"{topic}/#", "-q", "1", "-C", "2",
                            "-v", "-W", "15"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # subscribed
        for i, qos in enumerate(("0", "1")):
            subprocess.run(["mosquitto_pub", *common, "-t", f"{topic}/m{i}", "-q", qos,
                            "-m", f"hello {i}"], check=True, timeout=15)
        out, err = sub.communicate(timeout=20)
    finally:
        if sub.poll() is None:
            sub.kill()
    assert sub.returncode == 0, err
    assert out.splitlines() == [f"{topic}/m0 hello 0", f"{topic}/m1 hello 1"]


def test_mosquitto_retained(broker, cli):
    topic = f"cli/{uuid.uuid4().hex[:8]}/r"
    common = ["-h", broker.host, "-p", str(broker.mqtt_port), "-u", "guest", "-P", "guest"]
    subprocess.run(["mosquitto_pub", *common, "-t", topic, "-q", "1", "-r", "-m", "kept"],
                   check=True, timeout=15)
    time.sleep(0.3)
    out = subprocess.run(["mosquitto_sub", *common, "-t", topic, "-C", "1", "-W", "10"],
                         check=True, timeout=15, capture_output=True, text=True).stdout
    assert out.strip() == "kept"
