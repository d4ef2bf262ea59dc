"""Management HTTP API endpoints whose answers Pier shares with RabbitMQ 3.10: the smaller
endpoints (cluster name, extensions, auth, parameters, operator policies, vhost limits,
health checks, cluster actions), list paging and its errors, a queue's `policy` field.

Against Pier the API of the session's Pier process is used; against an external RabbitMQ
its management API, whose base URL must be given in PIER_TEST_MGMT_URL (e.g.
http://guest:guest@127.0.0.1:15673); without it these tests skip."""

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from conftest import EXTERNAL_URL
from helpers import wait_until


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


class Api:
    def __init__(self, base: str):
        parsed = urllib.parse.urlparse(base)
        self.base = f"{parsed.scheme}://{parsed.hostname}:{parsed.port}"
        user = urllib.parse.unquote(parsed.username or "guest")
        password = urllib.parse.unquote(parsed.password or "guest")
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def call(self, method: str, path: str, body=None, auth: bool = True):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if auth:
            req.add_header("Authorization", self.auth)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read().decode()
                status = r.status
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            status = e.code
        return status, (json.loads(text) if text else None)

    def get(self, path: str, **kw):
        return self.call("GET", path, **kw)


@pytest.fixture(scope="module")
def api(broker):
    if EXTERNAL_URL:
        base = os.environ.get("PIER_TEST_MGMT_URL")
        if not base:
            pytest.skip("PIER_TEST_MGMT_URL is not set")
        return Api(base)
    return Api(f"http://guest:guest@127.0.0.1:{broker.process.http_port}")


@pytest.fixture
def vhost(api):
    name = f"pier-test.mgmt-{uuid.uuid4().hex[:8]}"
    assert api.call("PUT", f"/api/vhosts/{q(name)}", {})[0] == 201
    yield name
    api.call("DELETE", f"/api/vhosts/{q(name)}")


def node_name(api) -> str:
    return api.get("/api/overview")[1]["node"]


def test_small_endpoints(api):
    status, body = api.get("/api/cluster-name")
    assert status == 200 and isinstance(body["name"], str)
    assert api.call("PUT", "/api/cluster-name", {}) == (
        400, {"error": "bad_request", "reason": "[{key_missing,name}]"})
    assert isinstance(api.get("/api/extensions")[1], list)
    # No credentials needed for /api/auth.
    assert api.get("/api/auth", auth=False) == (
        200, {"enable_uaa": False, "uaa_client_id": "", "uaa_location": ""})
    status, body = api.get("/api/parameters")
    assert status == 200 and isinstance(body, list)
    assert api.get("/api/operator-policies") == (200, [])
    assert api.get("/api/operator-policies/%2F/pier-test-none")[0] == 404
    status, body = api.call("PUT", "/api/parameters/pier-test-nothing/%2F/x", {"value": 1})
    assert (status, body["reason"]) == (
        400, "Validation failed\n\ncomponent pier-test-nothing not found\n")
    assert api.call("POST", "/api/rebalance/queues", {})[0] == 204


@pytest.mark.single_node("asserts a single node's health-check answers ('single node cluster')")
def test_health_checks(api, broker):
    status, body = api.get(f"/api/health/checks/port-listener/{broker.port}")
    assert (status, body) == (200, {"status": "ok", "port": broker.port})
    status, body = api.get("/api/health/checks/port-listener/1")
    assert status == 503
    assert (body["status"], body["reason"], body["missing"]) == ("failed", "No active listener", 1)
    assert broker.port in body["ports"]
    assert api.get("/api/health/checks/port-listener/abc") == (
        400, {"error": "bad_request", "reason": "Invalid port"})
    assert api.get("/api/health/checks/protocol-listener/amqp") == (
        200, {"status": "ok", "protocol": "amqp"})
    status, body = api.get("/api/health/checks/protocol-listener/pier-test")
    assert status == 503 and body["missing"] == "pier-test"
    for check in ("node-is-quorum-critical", "node-is-mirror-sync-critical"):
        assert api.get(f"/api/health/checks/{check}") == (
            200, {"status": "ok", "reason": "single node cluster"})
    assert api.get("/api/health/checks/virtual-hosts") == (200, {"status": "ok"})


def test_vhost_limits(api, vhost):
    path = f"/api/vhost-limits/{q(vhost)}"
    assert api.get(path) == (200, [])
    assert api.call("PUT", f"{path}/max-queues", {}) == (
        400, {"error": "bad_request", "reason": "[{key_missing,value}]"})
    status, body = api.call("PUT", f"{path}/max-queues", {"value": "x"})
    assert status == 400 and "should be a number" in body["reason"]
    status, body = api.call("PUT", f"{path}/pier-test-bogus", {"value": 1})
    assert status == 400 and "Unrecognised terms" in body["reason"]
    assert api.call("PUT", "/api/vhost-limits/pier-test-no-such-vhost/max-queues",
                    {"value": 1}) == (404, {"error": "not_found", "reason": "vhost_not_found"})
    assert api.call("PUT", f"{path}/max-queues", {"value": 1})[0] == 204
    assert api.call("PUT", f"{path}/max-connections", {"value": 7})[0] == 204
    assert api.get(path) == (
        200, [{"vhost": vhost, "value": {"max-queues": 1, "max-connections": 7}}])
    assert {"vhost": vhost, "value": {"max-queues": 1, "max-connections": 7}} in \
        api.get("/api/vhost-limits")[1]
    # The API's own declarations count against max-queues.
    assert api.call("PUT", f"/api/queues/{q(vhost)}/q1", {})[0] == 201
    status, body = api.call("PUT", f"/api/queues/{q(vhost)}/q2", {})
    assert (status, body["reason"]) == (
        400, f"cannot declare queue 'q2': queue limit in vhost '{vhost}' (1) is reached")
    assert api.call("DELETE", f"{path}/max-queues")[0] == 204
    assert api.call("DELETE", f"{path}/max-connections")[0] == 204
    assert api.get(path) == (200, [])

    # The same limits as the runtime parameter vhost-limits/{vhost}/limits.
    param = f"/api/parameters/vhost-limits/{q(vhost)}/limits"
    # 201 or 204: RabbitMQ keeps an emptied parameter after the DELETEs above, Pier does not.
    assert api.call("PUT", param, {"value": {"max-queues": 3}})[0] in (201, 204)
    assert api.call("PUT", param, {"value": {"max-connections": 4}})[0] == 204
    expected = {"value": {"max-connections": 4}, "vhost": vhost,
                "component": "vhost-limits", "name": "limits"}
    assert api.get(param) == (200, expected)
    assert api.get(f"/api/parameters/vhost-limits/{q(vhost)}") == (200, [expected])
    assert api.get(path) == (200, [{"vhost": vhost, "value": {"max-connections": 4}}])
    assert api.call("DELETE", param)[0] == 204
    assert api.call("DELETE", param)[0] == 404


def test_queue_actions_and_vhost_start(api, vhost):
    assert api.call("PUT", f"/api/queues/{q(vhost)}/aq", {})[0] == 201
    for action in ("sync", "cancel_sync"):
        assert api.call("POST", f"/api/queues/{q(vhost)}/aq/actions",
                        {"action": action})[0] == 204
    assert api.call("POST", f"/api/queues/{q(vhost)}/aq/actions", {"action": "bogus"}) == (
        400, {"error": "bad_request", "reason": ["unknown", "bogus"]})
    node = node_name(api)
    assert api.call("POST", f"/api/vhosts/{q(vhost)}/start/{q(node)}", {})[0] == 204
    status, body = api.call("POST", f"/api/vhosts/{q(vhost)}/start/pier-test@nowhere", {})
    assert (status, body["reason"]) == (400, "Request to node pier-test@nowhere failed with nodedown")


def test_paging(api, vhost):
    for name in ("Alpha", "beta", "gamma"):
        assert api.call("PUT", f"/api/queues/{q(vhost)}/{name}", {})[0] == 201
    base = f"/api/queues/{q(vhost)}?columns=name"
    status, body = api.get(base + "&page=1&page_size=2")
    assert status == 200
    assert [i["name"] for i in body["items"]] == ["Alpha", "beta"]
    assert (body["page_count"], body["total_count"], body["filtered_count"]) == (2, 3, 3)
    # Case-insensitive name filter, regular expressions with use_regex.
    status, body = api.get(base + "&page=1&name=ALPH")
    assert [i["name"] for i in body["items"]] == ["Alpha"]
    status, body = api.get(base + "&page=1&use_regex=true&name=" + q("^(beta|gamma)$"))
    assert [i["name"] for i in body["items"]] == ["beta", "gamma"]
    status, body = api.get(base + "&page=1&name=zzz")
    assert (status, body["page_count"], body["items"]) == (200, 0, [])
    assert api.get(base + "&page=3&page_size=2") == (
        400, {"error": "page_out_of_range",
              "reason": "Page out of range, page: 3 page size: 2, len: 3"})
    assert api.get(base + "&page=1&page_size=600") == (
        400, {"error": "invalid_pagination_parameters",
              "reason": "Invalid pagination parameters: page number 1, page size 600"})
    assert api.get(base + "&page=x") == (
        400, {"error": "bad_request", "reason": "Pagination parameters are invalid"})


def test_queue_policy_field(api, vhost):
    policy = {"pattern": "^pol-", "definition": {"max-length": 10}, "apply-to": "queues"}
    assert api.call("PUT", f"/api/policies/{q(vhost)}/pier-test-pol", policy)[0] == 201
    assert api.call("PUT", f"/api/queues/{q(vhost)}/pol-q", {})[0] == 201
    assert api.call("PUT", f"/api/queues/{q(vhost)}/other-q", {})[0] == 201
    expected = [{"name": "other-q", "policy": None}, {"name": "pol-q", "policy": "pier-test-pol"}]
    # RabbitMQ fills the field in with its first statistics of the queue (within seconds).
    wait_until(lambda: sorted(api.get(f"/api/queues/{q(vhost)}?columns=name,policy")[1],
                              key=lambda i: i["name"]) == expected,
               timeout=15, message="queue policy fields")
    _, queue = api.get(f"/api/queues/{q(vhost)}/pol-q")
    assert queue["policy"] == "pier-test-pol"
    assert queue["operator_policy"] is None
    assert queue["effective_policy_definition"] == {"max-length": 10}
