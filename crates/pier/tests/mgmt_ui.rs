//! The management server's web UI routes and `/api/policies`, black-box against a real `pier`
//! process with a real HTTP client. (The UI itself is driven in Chromium by
//! tests/python/test_ui.py.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::Broker;
use serde_json::{json, Value};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

struct Http {
    base: String,
    agent: ureq::Agent,
}

impl Http {
    fn new(broker: &Broker) -> Http {
        let base = broker.http_url().unwrap().to_owned();
        let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "management port not listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Http { base, agent }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some((u, p)) = auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            b = b.header("Authorization", format!("Basic {token}"));
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let resp = match body {
            Some(v) => self.agent.run(
                b.header("Content-Type", "application/json")
                    .body(v.to_string())
                    .unwrap(),
            ),
            None => self.agent.run(b.body(()).unwrap()),
        }
        .unwrap();
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = resp.into_body().read_to_string().unwrap_or_default();
        Reply {
            status,
            headers,
            body,
        }
    }

    fn guest(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.call(method, path, Some(("guest", "guest")), body, &[])
    }
}

#[test]
fn ui_files_are_served_without_credentials() {
    let broker = Broker::start();
    let http = Http::new(&broker);
    for (path, kind, needle) in [
        ("/", "text/html", "/ui/app.js"),
        ("/index.html", "text/html", "login-form"),
        ("/ui/app.js", "text/javascript", "sessionStorage"),
        ("/ui/app.css", "text/css", "--accent"),
        ("/ui/favicon.svg", "image/svg+xml", "<svg"),
        ("/favicon.ico", "image/svg+xml", "<svg"),
    ] {
        let r = http.call("GET", path, None, None, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap_or("").starts_with(kind),
            "{path}: {:?}",
            r.header("content-type")
        );
        assert!(r.body.contains(needle), "{path} lacks {needle}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    let index = http.call("GET", "/", None, None, &[]);
    let csp = index.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(
        http.call("GET", "/ui/nothing.js", None, None, &[]).status,
        404
    );

    // The API still needs credentials. A browser's script gets its 401 without the
    // challenge (no native login dialog); other clients get RabbitMQ's challenge.
    let plain = http.call("GET", "/api/overview", None, None, &[]);
    assert_eq!(plain.status, 401);
    assert!(plain.header("www-authenticate").is_some());
    let scripted = http.call(
        "GET",
        "/api/whoami",
        Some(("guest", "wrong")),
        None,
        &[("X-Requested-With", "XMLHttpRequest")],
    );
    assert_eq!(scripted.status, 401);
    assert_eq!(scripted.header("www-authenticate"), None);
    assert_eq!(scripted.json()["reason"], "Login failed");
    let ok = http.call(
        "GET",
        "/api/whoami",
        Some(("guest", "guest")),
        None,
        &[("X-Requested-With", "XMLHttpRequest")],
    );
    assert_eq!(ok.status, 200);
}

#[test]
fn policies_api() {
    let broker = Broker::start();
    let http = Http::new(&broker);
    let body = json!({"pattern": "^orders\\.", "definition": {"max-length": 10, "message-ttl": 5000},
                      "apply-to": "queues", "priority": 2});
    assert_eq!(
        http.guest("PUT", "/api/policies/%2F/orders", Some(body.clone()))
            .status,
        201
    );
    assert_eq!(
        http.guest("PUT", "/api/policies/%2F/orders", Some(body))
            .status,
        204
    );
    let expected = json!({"vhost": "/", "name": "orders", "pattern": "^orders\\.",
                          "apply-to": "queues", "definition": {"max-length": 10, "message-ttl": 5000},
                          "priority": 2});
    assert_eq!(
        http.guest("GET", "/api/policies", None).json(),
        json!([expected])
    );
    assert_eq!(
        http.guest("GET", "/api/policies/%2F", None).json(),
        json!([expected])
    );
    assert_eq!(
        http.guest("GET", "/api/policies/%2F/orders", None).json(),
        expected
    );
    assert_eq!(
        http.guest("GET", "/api/policies/%2F/none", None).status,
        404
    );
    assert_eq!(
        http.guest("GET", "/api/policies/no-such-vhost", None)
            .status,
        404
    );

    // The policy shapes queues declared afterwards.
    assert_eq!(
        http.guest(
            "PUT",
            "/api/queues/%2F/orders.eu",
            Some(json!({"durable": false}))
        )
        .status,
        201
    );
    for i in 0..15 {
        let r = http.guest(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(
                json!({"routing_key": "orders.eu", "payload": format!("{i}"),
                        "payload_encoding": "string", "properties": {}}),
            ),
        );
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        http.guest("GET", "/api/queues/%2F/orders.eu", None).json()["messages"],
        10
    );

    // Validation, with RabbitMQ's wording where it has one.
    let r = http.guest(
        "PUT",
        "/api/policies/%2F/bad",
        Some(json!({"definition": {}})),
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("key_missing,pattern"), "{}", r.body);
    let r = http.guest(
        "PUT",
        "/api/policies/%2F/bad",
        Some(json!({"pattern": ".*", "definition": {"ha-mode": "all"}})),
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("not recognised"), "{}", r.body);
    let r = http.guest(
        "PUT",
        "/api/policies/%2F/bad",
        Some(json!({"pattern": "(", "definition": {}})),
    );
    assert_eq!(r.status, 400);
    let r = http.guest(
        "PUT",
        "/api/policies/no-such-vhost/p",
        Some(json!({"pattern": ".*", "definition": {}})),
    );
    assert_eq!(r.status, 404);

    // Tags: management users may read but not set; policymakers set where they have a
    // permission.
    for (user, tags) in [("mgmt", "management"), ("maker", "policymaker")] {
        assert_eq!(
            http.guest(
                "PUT",
                &format!("/api/users/{user}"),
                Some(json!({"password": "pw", "tags": tags}))
            )
            .status,
            201
        );
    }
    let policy = json!({"pattern": "^x", "definition": {"expires": 60000}});
    let r = http.call(
        "PUT",
        "/api/policies/%2F/p",
        Some(("mgmt", "pw")),
        Some(policy.clone()),
        &[],
    );
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Not policymaker user"), "{}", r.body);
    let r = http.call(
        "PUT",
        "/api/policies/%2F/p",
        Some(("maker", "pw")),
        Some(policy.clone()),
        &[],
    );
    assert_eq!(r.status, 401, "no permission on / yet: {}", r.body);
    for user in ["mgmt", "maker"] {
        assert_eq!(
            http.guest(
                "PUT",
                &format!("/api/permissions/%2F/{user}"),
                Some(json!({"configure": ".*", "write": ".*", "read": ".*"}))
            )
            .status,
            201
        );
    }
    let r = http.call(
        "PUT",
        "/api/policies/%2F/p",
        Some(("maker", "pw")),
        Some(policy),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = http.call("GET", "/api/policies/%2F", Some(("mgmt", "pw")), None, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    let r = http.call(
        "DELETE",
        "/api/policies/%2F/p",
        Some(("mgmt", "pw")),
        None,
        &[],
    );
    assert_eq!(r.status, 401);

    assert_eq!(
        http.guest("DELETE", "/api/policies/%2F/orders", None)
            .status,
        204
    );
    assert_eq!(
        http.guest("DELETE", "/api/policies/%2F/orders", None)
            .status,
        404
    );
}

#[test]
fn definitions_carry_policies() {
    let broker = Broker::start();
    let http = Http::new(&broker);
    // A RabbitMQ-style file: one policy Pier applies in part (ha-mode is not applied), one
    // it applies whole, both before the queues they shape.
    let defs = json!({
        "vhosts": [{"name": "defs"}],
        "permissions": [{"user": "guest", "vhost": "defs", "configure": ".*", "write": ".*",
                         "read": ".*"}],
        "policies": [
            {"vhost": "defs", "name": "ha", "pattern": "^ha\\.", "apply-to": "all",
             "definition": {"ha-mode": "all", "max-length": 1}, "priority": 0},
            {"vhost": "defs", "name": "ttl", "pattern": "^t\\.", "apply-to": "queues",
             "definition": {"message-ttl": 1000}, "priority": 1},
        ],
        "queues": [{"name": "ha.q", "vhost": "defs", "durable": true, "auto_delete": false,
                    "arguments": {}}],
    });
    let r = http.guest("POST", "/api/definitions", Some(defs));
    assert_eq!(r.status, 204, "{}", r.body);
    let policies = http.guest("GET", "/api/policies/defs", None).json();
    assert_eq!(policies.as_array().unwrap().len(), 2, "{policies}");
    assert_eq!(policies[0]["definition"], json!({"max-length": 1}));
    assert!(broker.log_contents().contains("ha-mode"));
    for i in 0..3 {
        http.guest(
            "POST",
            "/api/exchanges/defs/amq.default/publish",
            Some(json!({"routing_key": "ha.q", "payload": format!("{i}"),
                        "payload_encoding": "string", "properties": {}})),
        );
    }
    assert_eq!(
        http.guest("GET", "/api/queues/defs/ha.q", None).json()["messages"],
        1
    );
    let export = http.guest("GET", "/api/definitions", None).json();
    assert_eq!(export["policies"].as_array().unwrap().len(), 2);
    let vhost_export = http.guest("GET", "/api/definitions/defs", None).json();
    assert_eq!(vhost_export["policies"][1]["name"], "ttl");
    assert!(vhost_export["policies"][1].get("vhost").is_none());
}
