//! Management HTTP API and /metrics, black-box: a real `pier` process, a real HTTP client
//! (ureq) for the API and lapin for the AMQP side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{enc, timed, unique, Broker};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};

const FIXTURE: &str =
    include_str!("../../pier-mgmt/tests/fixtures/rabbitmq-3.10.8-export-definitions.json");

/// A minimal management API client.
struct Api {
    base: String,
    agent: ureq::Agent,
    auth: Option<String>,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Api {
    fn new(broker: &Broker) -> Api {
        let base = broker.http_url().expect("a pier process").to_owned();
        // The HTTP listener is bound right after the AMQP one: wait for it too.
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
        Api {
            base,
            agent,
            auth: None,
        }
        .user("guest", "guest")
    }

    fn user(mut self, user: &str, password: &str) -> Api {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.auth = Some(format!("Basic {token}"));
        self
    }

    fn anonymous(mut self) -> Api {
        self.auth = None;
        self
    }

    fn as_user(&self, user: &str, password: &str) -> Api {
        Api {
            base: self.base.clone(),
            agent: self.agent.clone(),
            auth: None,
        }
        .user(user, password)
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(a) = &self.auth {
            builder = builder.header("Authorization", a);
        }
        for (k, v) in extra {
            builder = builder.header(*k, *v);
        }
        let resp = match body {
            Some(b) => self.agent.run(
                builder
                    .header("Content-Type", "application/json")
                    .body(b.to_string())
                    .unwrap(),
            ),
            None => self.agent.run(builder.body(()).unwrap()),
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
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

    fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None, &[])
    }

    fn get_ok(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    fn put(&self, path: &str, body: Value) -> Reply {
        self.call("PUT", path, Some(&body), &[])
    }

    fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(&body), &[])
    }

    fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, None, &[])
    }

    fn metrics(&self) -> String {
        let r = self.anonymous_get("/metrics");
        assert_eq!(r.status, 200);
        r.body
    }

    fn anonymous_get(&self, path: &str) -> Reply {
        Api {
            base: self.base.clone(),
            agent: self.agent.clone(),
            auth: None,
        }
        .get(path)
    }
}

/// Waits until `f` holds (the broker's state settles asynchronously after AMQP calls).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn amqp_url(broker: &Broker, user: &str, password: &str, vhost: &str) -> String {
    let port = broker
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    format!("amqp://{user}:{password}@127.0.0.1:{port}/{}", enc(vhost))
}

async fn connect_as(
    broker: &Broker,
    user: &str,
    password: &str,
    vhost: &str,
) -> lapin::Result<Connection> {
    timed(Connection::connect(
        &amqp_url(broker, user, password, vhost),
        ConnectionProperties::default(),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_rules_and_overview() {
    let broker = Broker::start();
    let api = Api::new(&broker);

    // No credentials: 401, empty body, a Basic challenge.
    let r = api.as_user("x", "y").anonymous().get("/api/overview");
    assert_eq!(r.status, 401);
    assert!(r.body.is_empty());
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"RabbitMQ Management\"")
    );
    // Wrong password.
    let r = api.as_user("guest", "nope").get("/api/overview");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"error": "not_authorized", "reason": "Login failed"})
    );

    let who = api.get_ok("/api/whoami");
    assert_eq!(who, json!({"name": "guest", "tags": ["administrator"]}));

    for (name, tags) in [
        ("it-mon", "monitoring"),
        ("it-mgr", "management"),
        ("it-app", ""),
    ] {
        let r = api.put(
            &format!("/api/users/{name}"),
            json!({"password": format!("{name}-pw"), "tags": tags}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    assert_eq!(
        api.put(
            "/api/users/it-mgr",
            json!({"password": "it-mgr-pw", "tags": "management"})
        )
        .status,
        204
    );
    let app = api.as_user("it-app", "it-app-pw");
    let r = app.get("/api/overview");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"error": "not_authorised", "reason": "Not management user"})
    );
    let mgr = api.as_user("it-mgr", "it-mgr-pw");
    assert_eq!(mgr.get_ok("/api/whoami")["tags"], json!(["management"]));
    let r = mgr.get("/api/users");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "Not administrator user");
    let r = mgr.get("/api/nodes");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "Not monitor user");
    // No permission on "/": its queues are not visible.
    let r = mgr.get("/api/queues/%2F");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["reason"],
        "User not authorised to access virtual host"
    );
    assert_eq!(mgr.get_ok("/api/queues"), json!([]));
    let r = mgr.put("/api/queues/%2F/x", json!({}));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "Access refused.");
    // With a permission it is.
    let r = api.put(
        "/api/permissions/%2F/it-mgr",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(mgr.get("/api/queues/%2F").status, 200);
    let mon = api.as_user("it-mon", "it-mon-pw");
    let nodes = mon.get_ok("/api/nodes");
    assert_eq!(nodes[0]["running"], true);
    let node = nodes[0]["name"].as_str().unwrap().to_owned();
    assert_eq!(
        mon.get_ok(&format!("/api/nodes/{}", enc(&node)))["name"],
        node.as_str()
    );

    let ov = api.get_ok("/api/overview");
    assert_eq!(ov["product_name"], "Pier");
    assert_eq!(ov["node"], node.as_str());
    assert_eq!(ov["object_totals"]["exchanges"], 6);
    assert_eq!(ov["object_totals"]["connections"], 0);
    assert!(ov["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["protocol"] == "amqp"));
    assert_eq!(
        api.get_ok("/api/health/checks/alarms"),
        json!({"status": "ok"})
    );
    assert_eq!(
        api.get_ok("/api/aliveness-test/%2F"),
        json!({"status": "ok"})
    );

    // Users, permissions, deletion.
    let users = api.get_ok("/api/users");
    let mgr_user = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "it-mgr")
        .unwrap()
        .clone();
    assert_eq!(
        mgr_user["hashing_algorithm"],
        "rabbit_password_hashing_sha256"
    );
    assert_eq!(mgr_user["tags"], json!(["management"]));
    let perm = api.get_ok("/api/permissions/%2F/it-mgr");
    assert_eq!(
        perm,
        json!({"user": "it-mgr", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"})
    );
    let r = api.put("/api/permissions/%2F/it-mgr", json!({"configure": ".*"}));
    assert_eq!(r.status, 400);
    assert_eq!(api.delete("/api/permissions/%2F/it-mgr").status, 204);
    assert_eq!(api.get("/api/permissions/%2F/it-mgr").status, 404);
    assert_eq!(api.delete("/api/users/it-app").status, 204);
    assert_eq!(api.delete("/api/users/it-app").status, 404);
    assert_eq!(api.get("/api/users/it-app").status, 404);
    // A user created from a hash logs in with the password behind it (RabbitMQ's docs example).
    let r = api.put(
        "/api/users/it-hash",
        json!({
            "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": ["administrator"],
        }),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        api.as_user("it-hash", "test12").get("/api/whoami").status,
        200
    );
    let r = api.put(
        "/api/users/it-md5",
        json!({"password_hash": "abc", "hashing_algorithm": "rabbit_password_hashing_md5", "tags": ""}),
    );
    assert_eq!(r.status, 400);

    // Vhosts.
    let vh = unique("vh");
    let r = api.put(
        &format!("/api/vhosts/{}", enc(&vh)),
        json!({"description": "test vhost", "tags": "a,b"}),
    );
    assert_eq!(r.status, 201);
    let got = api.get_ok(&format!("/api/vhosts/{}", enc(&vh)));
    assert_eq!(got["description"], "test vhost");
    assert_eq!(got["tags"], json!(["a", "b"]));
    assert_eq!(api.delete(&format!("/api/vhosts/{}", enc(&vh))).status, 204);
    assert_eq!(api.get(&format!("/api/vhosts/{}", enc(&vh))).status, 404);
    assert_eq!(api.get("/api/no-such-thing").status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_activity_shows_in_queues_connections_channels_consumers() {
    let broker = Broker::start();
    let api = Api::new(&broker);
    let connection = timed(Connection::connect(
        broker.url(),
        ConnectionProperties::default().with_connection_name("it-connection".into()),
    ))
    .await
    .unwrap();
    let publisher = timed(connection.create_channel()).await.unwrap();
    let consumer_ch = timed(connection.create_channel()).await.unwrap();
    let queue = unique("mgmt-q");
    timed(publisher.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(publisher.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for i in 0..3 {
        timed(publisher.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
    assert!(timed(publisher.wait_for_confirms())
        .await
        .unwrap()
        .is_empty());
    timed(consumer_ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let _consumer = timed(consumer_ch.basic_consume(
        queue.as_str().into(),
        "it-ctag".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();

    let path = format!("/api/queues/%2F/{}", enc(&queue));
    eventually("one message unacked", || {
        api.get_ok(&path)["messages_unacknowledged"] == 1
    });
    let q = api.get_ok(&path);
    assert_eq!(q["name"], queue.as_str());
    assert_eq!(q["vhost"], "/");
    assert_eq!(q["durable"], true);
    assert_eq!(q["auto_delete"], false);
    assert_eq!(q["exclusive"], false);
    assert_eq!(q["arguments"], json!({}));
    assert_eq!(q["state"], "running");
    assert_eq!(q["messages"], 3);
    assert_eq!(q["messages_ready"], 2);
    assert_eq!(q["consumers"], 1);
    let cd = &q["consumer_details"][0];
    assert_eq!(cd["consumer_tag"], "it-ctag");
    assert_eq!(cd["prefetch_count"], 1);
    assert_eq!(cd["ack_required"], true);
    assert_eq!(cd["channel_details"]["number"], 2);
    // The list shows it too, with columns= and pagination.
    let listed = api.get_ok("/api/queues/%2F?columns=name,messages");
    assert_eq!(listed, json!([{"name": queue.as_str(), "messages": 3}]));
    let paged = api.get_ok("/api/queues?page=1&page_size=10");
    assert_eq!(paged["total_count"], 1);
    assert_eq!(paged["items"][0]["name"], queue.as_str());

    let conns = api.get_ok("/api/connections");
    let conn = &conns[0];
    assert_eq!(conn["user"], "guest");
    assert_eq!(conn["vhost"], "/");
    assert_eq!(conn["channels"], 2);
    assert_eq!(conn["protocol"], "AMQP 0-9-1");
    assert_eq!(conn["user_provided_name"], "it-connection");
    assert_eq!(conn["client_properties"]["product"], "lapin");
    assert!(conn["recv_oct"].as_u64().unwrap() > 0);
    assert!(conn["send_oct"].as_u64().unwrap() > 0);
    let conn_name = conn["name"].as_str().unwrap().to_owned();
    assert!(conn_name.contains(" -> 127.0.0.1:"), "{conn_name}");

    let channels = api.get_ok("/api/channels");
    assert_eq!(channels.as_array().unwrap().len(), 2);
    let ch2 = channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["number"] == 2)
        .unwrap();
    assert_eq!(ch2["name"], format!("{conn_name} (2)"));
    assert_eq!(ch2["consumer_count"], 1);
    assert_eq!(ch2["messages_unacknowledged"], 1);
    assert_eq!(ch2["connection_details"]["name"], conn_name.as_str());

    let consumers = api.get_ok("/api/consumers");
    assert_eq!(
        consumers[0]["queue"],
        json!({"name": queue.as_str(), "vhost": "/"})
    );
    assert_eq!(
        consumers[0]["channel_details"]["connection_name"],
        conn_name.as_str()
    );

    let ov = api.get_ok("/api/overview");
    assert_eq!(ov["object_totals"]["connections"], 1);
    assert_eq!(ov["object_totals"]["channels"], 2);
    assert_eq!(ov["object_totals"]["consumers"], 1);
    assert_eq!(ov["queue_totals"]["messages"], 3);
    assert_eq!(ov["message_stats"]["publish"], 3);

    // Metrics carry the same figures under RabbitMQ's names.
    let m = api.metrics();
    let label = format!("{{vhost=\"/\",queue=\"{queue}\"}}");
    for line in [
        format!("rabbitmq_queue_messages_ready{label} 2"),
        format!("rabbitmq_queue_messages_unacked{label} 1"),
        format!("rabbitmq_queue_messages{label} 3"),
        format!("rabbitmq_queue_consumers{label} 1"),
        "rabbitmq_connections 1".to_owned(),
        "rabbitmq_channels 2".to_owned(),
        "rabbitmq_consumers 1".to_owned(),
        "rabbitmq_queues 1".to_owned(),
        "rabbitmq_global_messages_received_total 3".to_owned(),
        "# TYPE rabbitmq_queue_messages_ready gauge".to_owned(),
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
    }
    assert!(m.contains("rabbitmq_connection_incoming_bytes_total{vhost=\"/\",connection=\""));

    // DELETE /api/connections/name closes the lapin connection with RabbitMQ's reason.
    let error: Arc<Mutex<Option<lapin::Error>>> = Arc::default();
    let seen = Arc::clone(&error);
    let mut events = connection.events_listener();
    tokio::spawn(async move {
        use futures_lite::StreamExt;
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                *seen.lock().unwrap() = Some(e);
            }
        }
    });
    let r = api.delete(&format!("/api/connections/{}", enc(&conn_name)));
    assert_eq!(r.status, 204, "{}", r.body);
    eventually("the connection reports its closure", || {
        error.lock().unwrap().is_some()
    });
    let e = error.lock().unwrap().take().unwrap();
    common::assert_amqp_error(&e, 320, "CONNECTION_FORCED - Closed via management plugin");
    eventually("the connection is gone", || {
        api.get_ok("/api/connections") == json!([])
    });
    // Its unacked message went back.
    eventually("message requeued", || {
        api.get_ok(&path)["messages_ready"] == 3
    });
    assert_eq!(
        api.delete(&format!("/api/connections/{}", enc(&conn_name)))
            .status,
        404
    );
    let m = api.metrics();
    assert!(
        m.lines()
            .any(|l| l == "rabbitmq_connections_closed_total 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_delete_bind_publish_get_purge_via_api() {
    let broker = Broker::start();
    let api = Api::new(&broker);
    let q = "api.q";
    let qp = format!("/api/queues/%2F/{q}");
    assert_eq!(
        api.put(
            &qp,
            json!({"durable": true, "arguments": {"x-max-length": 10}})
        )
        .status,
        201
    );
    assert_eq!(
        api.put(
            &qp,
            json!({"durable": true, "arguments": {"x-max-length": 10}})
        )
        .status,
        204
    );
    let r = api.put(
        &qp,
        json!({"durable": false, "arguments": {"x-max-length": 10}}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["reason"],
        "inequivalent arg 'durable' for queue 'api.q' in vhost '/': received 'false' but current is 'true'"
    );
    assert_eq!(api.put(&qp, json!({"durable": "yes"})).status, 400);
    let r = api.call("PUT", &qp, None, &[]);
    assert_eq!(r.status, 400, "an empty body redeclares with durable=false");
    let got = api.get_ok(&qp);
    assert_eq!(got["arguments"], json!({"x-max-length": 10}));
    assert_eq!(api.get("/api/queues/%2F/nope").status, 404);
    assert_eq!(api.get("/api/queues/no-such-vhost").status, 404);
    assert_eq!(
        api.get("/api/queues/%2F/nope").json(),
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );

    // Exchanges.
    let xp = "/api/exchanges/%2F/api.x";
    assert_eq!(
        api.put(xp, json!({"type": "topic", "durable": true}))
            .status,
        201
    );
    assert_eq!(
        api.put(xp, json!({"type": "topic", "durable": true}))
            .status,
        204
    );
    let r = api.put("/api/exchanges/%2F/api.bad", json!({"type": "bogus"}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["reason"], "unknown exchange type 'bogus'");
    assert_eq!(
        api.put("/api/exchanges/%2F/amq.mine", json!({"type": "direct"}))
            .status,
        401
    );
    assert_eq!(api.delete("/api/exchanges/%2F/amq.direct").status, 401);
    let x = api.get_ok(xp);
    assert_eq!(x["type"], "topic");
    assert_eq!(x["durable"], true);
    assert_eq!(api.get_ok("/api/exchanges/%2F/amq.default")["name"], "");

    // Bindings: create, list, look up by properties key, delete.
    let r = api.post(
        &format!("/api/bindings/%2F/e/api.x/q/{q}"),
        json!({"routing_key": "a.b c", "arguments": {}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("location"), Some("api.q/a.b%2Bc"));
    let r = api.post(
        "/api/bindings/%2F/e/nope/q/api.q",
        json!({"routing_key": "k"}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"error": "not_found", "reason": "no exchange 'nope' in vhost '/'"})
    );
    let listed = api.get_ok(&format!("/api/bindings/%2F/e/api.x/q/{q}"));
    assert_eq!(listed[0]["properties_key"], "a.b+c");
    assert_eq!(listed[0]["destination_type"], "queue");
    let qb = api.get_ok(&format!("/api/queues/%2F/{q}/bindings"));
    assert_eq!(qb.as_array().unwrap().len(), 2, "default + api.x: {qb}");
    assert_eq!(qb[0]["source"], "");
    assert_eq!(
        api.get_ok("/api/exchanges/%2F/api.x/bindings/source")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.get(&format!("/api/bindings/%2F/e/api.x/q/{q}/a.b%2Bc"))
            .status,
        200
    );
    assert_eq!(
        api.post(xp.replace("api.x", "api.x2").as_str(), json!({}))
            .status,
        405
    );
    assert_eq!(
        api.put("/api/exchanges/%2F/api.x2", json!({"type": "fanout"}))
            .status,
        201
    );
    let r = api.post(
        "/api/bindings/%2F/e/api.x/e/api.x2",
        json!({"routing_key": "#", "arguments": {"k": 1}}),
    );
    assert_eq!(r.status, 201);
    let e2e = api.get_ok("/api/bindings/%2F/e/api.x/e/api.x2");
    let props = e2e[0]["properties_key"].as_str().unwrap().to_owned();
    assert!(props.starts_with("%23~"), "{props}");
    assert_eq!(
        api.delete(&format!(
            "/api/bindings/%2F/e/api.x/e/api.x2/{}",
            enc(&props)
        ))
        .status,
        204
    );
    assert_eq!(api.get_ok("/api/bindings/%2F/e/api.x/e/api.x2"), json!([]));

    // Publish through the topic exchange and the default exchange, then get.
    let r = api.post(
        "/api/exchanges/%2F/api.x/publish",
        json!({"properties": {"delivery_mode": 2, "headers": {"h": "v"}, "content_type": "text/plain"},
               "routing_key": "a.b c", "payload": "hello", "payload_encoding": "string"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"routed": true}));
    let r = api.post(
        "/api/exchanges/%2F/amq.default/publish",
        json!({"properties": {}, "routing_key": q, "payload": base64::engine::general_purpose::STANDARD.encode([0xff, 0, 1]), "payload_encoding": "base64"}),
    );
    assert_eq!(r.json(), json!({"routed": true}));
    let r = api.post(
        "/api/exchanges/%2F/api.x/publish",
        json!({"properties": {}, "routing_key": "nowhere", "payload": "x", "payload_encoding": "string"}),
    );
    assert_eq!(r.json(), json!({"routed": false}));
    let r = api.post(
        "/api/exchanges/%2F/nope/publish",
        json!({"properties": {}, "routing_key": "k", "payload": "x", "payload_encoding": "string"}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["reason"],
        "404 NOT_FOUND - no exchange 'nope' in vhost '/'"
    );
    assert_eq!(api.get_ok(&qp)["messages"], 2);

    let got = api.post(
        &format!("{qp}/get"),
        json!({"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 50000}),
    );
    assert_eq!(got.status, 200, "{}", got.body);
    let got = got.json();
    assert_eq!(got.as_array().unwrap().len(), 2);
    assert_eq!(got[0]["payload"], "hello");
    assert_eq!(got[0]["payload_encoding"], "string");
    assert_eq!(got[0]["payload_bytes"], 5);
    assert_eq!(got[0]["exchange"], "api.x");
    assert_eq!(got[0]["routing_key"], "a.b c");
    assert_eq!(got[0]["message_count"], 1);
    assert_eq!(got[0]["redelivered"], false);
    assert_eq!(
        got[0]["properties"],
        json!({"delivery_mode": 2, "headers": {"h": "v"}, "content_type": "text/plain"})
    );
    assert_eq!(got[1]["payload_encoding"], "base64");
    assert_eq!(got[1]["payload"], "/wAB");
    // Requeued: still there, now redelivered.
    assert_eq!(api.get_ok(&qp)["messages_ready"], 2);
    let got = api
        .post(
            &format!("{qp}/get"),
            json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "base64"}),
        )
        .json();
    assert_eq!(got[0]["redelivered"], true);
    assert_eq!(got[0]["payload"], "aGVsbG8=");
    assert_eq!(api.get_ok(&qp)["messages"], 1);
    assert_eq!(
        api.post(
            &format!("{qp}/get"),
            json!({"count": 1, "ackmode": "bogus", "encoding": "auto"})
        )
        .status,
        400
    );

    // Purge, then conditional and plain deletes.
    assert_eq!(api.delete(&format!("{qp}/contents")).status, 204);
    assert_eq!(api.get_ok(&qp)["messages"], 0);
    api.post(
        "/api/exchanges/%2F/amq.default/publish",
        json!({"properties": {}, "routing_key": q, "payload": "again", "payload_encoding": "string"}),
    );
    let r = api.delete(&format!("{qp}?if-empty=true"));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["reason"], "queue 'api.q' in vhost '/' not empty");
    assert_eq!(api.delete(&qp).status, 204);
    assert_eq!(api.get(&qp).status, 404);
    assert_eq!(api.delete(&qp).status, 404);
    assert_eq!(api.delete(xp).status, 204);
    assert_eq!(api.get(xp).status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_export_imports_into_a_fresh_broker() {
    let source = Broker::start();
    let api = Api::new(&source);
    assert_eq!(
        api.put("/api/vhosts/defs-vh", json!({"description": "exported"}))
            .status,
        201
    );
    assert_eq!(
        api.put(
            "/api/users/defs-user",
            json!({"password": "defs-pw", "tags": "management"})
        )
        .status,
        201
    );
    assert_eq!(
        api.put(
            "/api/permissions/defs-vh/defs-user",
            json!({"configure": ".*", "write": ".*", "read": ".*"})
        )
        .status,
        201
    );
    assert_eq!(
        api.put(
            "/api/exchanges/defs-vh/defs.x",
            json!({"type": "headers", "durable": true, "arguments": {"alternate-exchange": "defs.ae"}})
        )
        .status,
        201
    );
    assert_eq!(
        api.put(
            "/api/exchanges/defs-vh/defs.ae",
            json!({"type": "fanout", "durable": true, "internal": true})
        )
        .status,
        201
    );
    assert_eq!(
        api.put(
            "/api/queues/defs-vh/defs.q",
            json!({"durable": true, "arguments": {"x-message-ttl": 60000, "x-dead-letter-exchange": "defs.ae"}})
        )
        .status,
        201
    );
    assert_eq!(
        api.post(
            "/api/bindings/defs-vh/e/defs.x/q/defs.q",
            json!({"routing_key": "", "arguments": {"x-match": "any", "kind": "a"}})
        )
        .status,
        201
    );
    assert_eq!(
        api.post(
            "/api/bindings/defs-vh/e/defs.ae/q/defs.q",
            json!({"routing_key": ""})
        )
        .status,
        201
    );
    assert_eq!(
        api.put(
            "/api/topic-permissions/defs-vh/defs-user",
            json!({"exchange": "amq.topic", "write": "^{username}\\.", "read": ".*"})
        )
        .status,
        201
    );
    let exported = api.get_ok("/api/definitions");
    assert_eq!(exported["product_name"], "Pier");
    assert_eq!(
        exported["topic_permissions"],
        json!([{"user": "defs-user", "vhost": "defs-vh", "exchange": "amq.topic", "write": "^{username}\\.", "read": ".*"}])
    );
    assert!(exported["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "defs-user"
            && u["hashing_algorithm"] == "rabbit_password_hashing_sha256"));
    let vh_only = api.get_ok("/api/definitions/defs-vh");
    assert_eq!(
        vh_only["queues"][0],
        json!({"name": "defs.q", "durable": true, "auto_delete": false, "arguments": {"x-message-ttl": 60000, "x-dead-letter-exchange": "defs.ae"}})
    );

    let target = Broker::start();
    let api2 = Api::new(&target);
    let r = api2.post("/api/definitions", exported.clone());
    assert_eq!(r.status, 204, "{}", r.body);
    let mut again = api2.get_ok("/api/definitions");
    let mut expected = exported;
    // Everything round-trips (guest's hash included).
    again.as_object_mut().unwrap().remove("product_version");
    expected.as_object_mut().unwrap().remove("product_version");
    assert_eq!(again, expected);
    // The imported user logs in over AMQP with the original password.
    let conn = connect_as(&target, "defs-user", "defs-pw", "defs-vh")
        .await
        .unwrap();
    assert!(connect_as(&target, "defs-user", "wrong", "defs-vh")
        .await
        .is_err());
    let ch = timed(conn.create_channel()).await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("kind".into(), AMQPValue::LongString(LongString::from("a")));
    timed(ch.basic_publish(
        "defs.x".into(),
        "".into(),
        BasicPublishOptions::default(),
        b"routed by headers",
        BasicProperties::default().with_headers(headers),
    ))
    .await
    .unwrap();
    eventually("message routed by the imported binding", || {
        api2.get_ok("/api/queues/defs-vh/defs.q")["messages"] == 1
    });

    // Malformed files and unsupported hashes are refused without changes.
    let r = api2.call("POST", "/api/definitions", None, &[]);
    assert_eq!(r.status, 400);
    let r = api2.post(
        "/api/definitions",
        json!({"users": [{"name": "md5", "password_hash": "x", "hashing_algorithm": "rabbit_password_hashing_md5", "tags": ""}]}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(api2.get("/api/users/md5").status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_export_fixture_imports() {
    let broker = Broker::start();
    let api = Api::new(&broker);
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    let r = api.post("/api/definitions", fixture);
    assert_eq!(r.status, 204, "{}", r.body);

    let vh = api.get_ok("/api/vhosts/fixture-vh");
    assert_eq!(vh["description"], "Fixture vhost");
    assert_eq!(vh["tags"], json!(["test", "fixture"]));
    let queues = api.get_ok("/api/queues/fixture-vh?columns=name,durable,arguments");
    assert_eq!(
        queues,
        json!([
            {"name": "app.dead", "durable": true, "arguments": {}},
            {"name": "app.limited", "durable": true, "arguments": {"x-dead-letter-exchange": "app.unrouted", "x-max-length": 1000, "x-message-ttl": 60000}},
            {"name": "app.orders", "durable": true, "arguments": {"x-queue-type": "classic"}},
        ])
    );
    let app_direct = api.get_ok("/api/exchanges/fixture-vh/app.direct");
    assert_eq!(
        app_direct["arguments"],
        json!({"alternate-exchange": "app.unrouted"})
    );
    let users = api.get_ok("/api/users?columns=name,tags");
    assert!(users
        .as_array()
        .unwrap()
        .contains(&json!({"name": "fx-monitor", "tags": ["monitoring"]})));
    let perm = api.get_ok("/api/permissions/fixture-vh/fx-app");
    assert_eq!(perm["configure"], "^app\\.");

    // Users keep their RabbitMQ passwords: over the API and over AMQP.
    assert_eq!(
        api.as_user("fx-monitor", "fx-monitor-pw")
            .get_ok("/api/whoami")["tags"],
        json!(["monitoring"])
    );
    assert_eq!(
        api.as_user("fx-admin", "wrong").get("/api/whoami").status,
        401
    );
    let conn = connect_as(&broker, "fx-app", "fx-app-pw", "fixture-vh")
        .await
        .unwrap();
    let ch = timed(conn.create_channel()).await.unwrap();
    timed(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    timed(ch.basic_publish(
        "app.events".into(),
        "order.created".into(),
        BasicPublishOptions::default(),
        b"an order",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert!(timed(ch.wait_for_confirms()).await.unwrap().is_empty());
    // The file's topic permission came in: fx-app may publish only "order." keys to
    // app.events (RabbitMQ refuses "limited" the same way).
    assert_eq!(
        api.get_ok("/api/topic-permissions/fixture-vh/fx-app"),
        json!([{"user": "fx-app", "vhost": "fixture-vh", "exchange": "app.events", "write": "^order\\.", "read": ".*"}])
    );
    let refused = timed(conn.create_channel()).await.unwrap();
    // In confirm mode the pending confirm carries the channel error (a follow-up method could
    // race the server's channel.close and fail with "channel closing" instead).
    timed(refused.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let confirm = timed(refused.basic_publish(
        "app.events".into(),
        "limited".into(),
        BasicPublishOptions::default(),
        b"refused",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let err = timed(confirm).await.unwrap_err();
    assert!(
        format!("{err:?}").contains(
            "ACCESS_REFUSED - access to topic 'limited' in exchange 'app.events' in vhost 'fixture-vh' refused for user 'fx-app'"
        ),
        "{err:?}"
    );
    // Through the exchange-to-exchange binding (routing key "limited") to app.limited, as a
    // user without topic permissions.
    let admin = connect_as(&broker, "fx-admin", "fx-admin-pw", "fixture-vh")
        .await
        .unwrap();
    let ach = timed(admin.create_channel()).await.unwrap();
    timed(ach.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    timed(ach.basic_publish(
        "app.events".into(),
        "limited".into(),
        BasicPublishOptions::default(),
        b"limited",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert!(timed(ach.wait_for_confirms()).await.unwrap().is_empty());
    assert_eq!(
        api.get_ok("/api/queues/fixture-vh/app.orders")["messages"],
        1
    );
    assert_eq!(
        api.get_ok("/api/queues/fixture-vh/app.limited")["messages"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_message_stats_and_queueing_figures() {
    let broker = Broker::start();
    let api = Api::new(&broker);
    let qp = "/api/queues/%2F/qf";
    assert_eq!(api.put(qp, json!({})).status, 201);
    // The first look starts the queue's rate history.
    let before = api.get_ok(qp);
    assert_eq!(before["message_stats"]["publish"], 0);
    assert_eq!(before["pier_queueing"]["arrival_rate"], 0.0);
    assert!(before["pier_queueing"]["utilisation"].is_null());

    let (_conn, ch) = broker.connect_channel().await;
    timed(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for i in 0..20 {
        timed(ch.basic_publish(
            "".into(),
            "qf".into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
    assert!(timed(ch.wait_for_confirms()).await.unwrap().is_empty());
    for _ in 0..10 {
        let got = timed(ch.basic_get(
            "qf".into(),
            lapin::options::BasicGetOptions { no_ack: true },
        ))
        .await
        .unwrap();
        assert!(got.is_some());
    }
    std::thread::sleep(Duration::from_millis(1100));
    let q = api.get_ok(qp);
    let stats = &q["message_stats"];
    assert_eq!(stats["publish"], 20);
    assert_eq!(stats["deliver_get"], 10);
    assert_eq!(stats["deliver_no_ack"], 10);
    assert_eq!(stats["ack"], 0);
    assert!(stats["publish_details"]["rate"].as_f64().unwrap() > 0.0);
    let f = &q["pier_queueing"];
    let lambda = f["arrival_rate"].as_f64().unwrap();
    let mu = f["service_rate"].as_f64().unwrap();
    assert!(lambda > 0.0 && mu > 0.0, "{f}");
    let rho = f["utilisation"].as_f64().unwrap();
    assert!((rho - 2.0).abs() < 0.01, "20 in, 10 served: {f}");
    assert_eq!(f["length"], 10);
    let w = f["time_in_queue_seconds"].as_f64().unwrap();
    assert!((w - 10.0 / lambda).abs() < 0.01, "{f}");
    assert!(f["mm1_predicted_length"].is_null(), "unstable queue: {f}");
    let vh = api.get_ok("/api/vhosts/%2F");
    assert_eq!(vh["pier_queueing"]["length"], 10);

    // Acks through the API's ack mode count as service.
    let got = api.post(
        &format!("{qp}/get"),
        json!({"count": 10, "ackmode": "ack_requeue_false", "encoding": "auto"}),
    );
    assert_eq!(got.json().as_array().unwrap().len(), 10);
    let q = api.get_ok(qp);
    assert_eq!(q["message_stats"]["ack"], 10);
    assert_eq!(q["message_stats"]["deliver_get"], 20);
    let ov = api.get_ok("/api/overview");
    assert_eq!(ov["message_stats"]["deliver_get"], 20);
    assert_eq!(ov["message_stats"]["ack"], 10);

    let m = api.metrics();
    let label = "{vhost=\"/\",queue=\"qf\"}";
    for line in [
        format!("rabbitmq_queue_messages_published_total{label} 20"),
        format!("pier_queue_messages_delivered_total{label} 20"),
        format!("pier_queue_messages_acked_total{label} 10"),
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
    }
    assert!(
        m.contains(&format!("pier_queue_arrival_rate{label} ")),
        "{m}"
    );
    assert!(
        m.contains(&format!("pier_queue_utilisation{label} ")),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_time_in_queue_from_enqueue_to_ack() {
    let broker = Broker::start();
    let api = Api::new(&broker);
    let qp = "/api/queues/%2F/wq";
    assert_eq!(api.put(qp, json!({})).status, 201);
    let m = &api.get_ok(qp)["pier_queueing"]["measured_time_in_queue"];
    assert_eq!(m["samples"], 0, "{m}");
    assert!(m["p50_seconds"].is_null(), "{m}");

    let (_conn, ch) = broker.connect_channel().await;
    timed(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for i in 0..3 {
        timed(ch.basic_publish(
            "".into(),
            "wq".into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
    assert!(timed(ch.wait_for_confirms()).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let got = timed(ch.basic_get(
            "wq".into(),
            lapin::options::BasicGetOptions { no_ack: false },
        ))
        .await
        .unwrap()
        .unwrap();
        // Held unacked for a while: the wait runs until the ack, not the delivery.
        tokio::time::sleep(Duration::from_millis(50)).await;
        timed(got.delivery.ack(lapin::options::BasicAckOptions::default()))
            .await
            .unwrap();
    }
    // Acks are asynchronous: wait until the queue has settled all three.
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let q = api.get_ok(qp);
        let m = q["pier_queueing"]["measured_time_in_queue"].clone();
        if m["samples"] == 3 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(m["samples"], 3, "{m}");
    assert_eq!(m["window_seconds"], 60, "{m}");
    let p50 = m["p50_seconds"].as_f64().unwrap();
    let p99 = m["p99_seconds"].as_f64().unwrap();
    let mean = m["mean_seconds"].as_f64().unwrap();
    assert!(p50 >= 0.15, "{m}");
    assert!(p99 >= p50 && (0.2..5.0).contains(&mean), "{m}");

    let vh = &api.get_ok("/api/vhosts/%2F")["pier_queueing"]["measured_time_in_queue"];
    assert_eq!(vh["samples"], 3, "{vh}");
    assert!(vh["p50_seconds"].as_f64().unwrap() >= 0.15, "{vh}");

    let metrics = api.metrics();
    let p50_line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "pier_queue_measured_time_in_queue_seconds{vhost=\"/\",queue=\"wq\",quantile=\"0.5\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no p50 sample in\n{metrics}"));
    let v: f64 = p50_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(v >= 0.15, "{p50_line}");
    assert!(metrics.contains(
        "pier_queue_measured_time_in_queue_seconds{vhost=\"/\",queue=\"wq\",quantile=\"0.99\"} "
    ));
    assert!(metrics
        .lines()
        .any(|l| l == "pier_queue_measured_time_in_queue_samples{vhost=\"/\",queue=\"wq\"} 3"));
}

/// The same definitions as exported by RabbitMQ's HTTP API (`GET /api/definitions`), which,
/// unlike `rabbitmqctl export_definitions` 3.10, keeps internal exchanges.
/// `/api/topic-permissions` and friends, with RabbitMQ 3.10.8's answers (checked against it):
/// PUT sets one exchange's patterns (201 when the user had none on the vhost, else 204),
/// GET on vhost/user lists them (404 when none), DELETE clears them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_permissions_api() {
    let broker = Broker::start();
    let api = Api::new(&broker);
    assert_eq!(api.put("/api/vhosts/tp-vh", json!({})).status, 201);
    assert_eq!(
        api.put(
            "/api/users/tp-user",
            json!({"password": "tp-pw", "tags": ""})
        )
        .status,
        201
    );
    assert_eq!(
        api.put(
            "/api/permissions/tp-vh/tp-user",
            json!({"configure": ".*", "write": ".*", "read": ".*"})
        )
        .status,
        201
    );
    let path = "/api/topic-permissions/tp-vh/tp-user";
    assert_eq!(api.get(path).status, 404);
    let r = api.put(path, json!({"exchange": "tp.x", "write": "^w"}));
    assert_eq!(r.status, 400);
    assert!(r.body.contains("{key_missing,read}"), "{}", r.body);
    let r = api.put(path, json!({"exchange": "tp.x", "write": "(", "read": ""}));
    assert_eq!(r.status, 400);
    assert!(r.body.contains("invalid_regexp"), "{}", r.body);
    let r = api.put(
        "/api/topic-permissions/tp-vh/nobody",
        json!({"exchange": "tp.x", "write": "", "read": ""}),
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("vhost_or_user_not_found"), "{}", r.body);
    let set = |x: &str, w: &str, status: u16| {
        let r = api.put(path, json!({"exchange": x, "write": w, "read": "^r\\."}));
        assert_eq!(r.status, status, "{}", r.body);
    };
    set("tp.x", "^{username}\\.", 201);
    set("tp.y", ".*", 204);
    let both = json!([
        {"user": "tp-user", "vhost": "tp-vh", "exchange": "tp.x", "write": "^{username}\\.", "read": "^r\\."},
        {"user": "tp-user", "vhost": "tp-vh", "exchange": "tp.y", "write": ".*", "read": "^r\\."},
    ]);
    assert_eq!(api.get_ok(path), both);
    assert_eq!(api.get_ok("/api/users/tp-user/topic-permissions"), both);
    assert_eq!(api.get_ok("/api/vhosts/tp-vh/topic-permissions"), both);
    assert_eq!(api.get_ok("/api/topic-permissions"), both);
    assert_eq!(api.get_ok("/api/users/guest/topic-permissions"), json!([]));
    assert_eq!(api.get("/api/users/nobody/topic-permissions").status, 404);
    assert_eq!(api.get("/api/vhosts/nope/topic-permissions").status, 404);

    // Enforced on the user's connections: publish checks write, bind checks read.
    let conn = connect_as(&broker, "tp-user", "tp-pw", "tp-vh")
        .await
        .unwrap();
    let ch = timed(conn.create_channel()).await.unwrap();
    timed(ch.exchange_declare(
        "tp.x".into(),
        lapin::ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    timed(ch.basic_publish(
        "tp.x".into(),
        "tp-user.ok".into(),
        BasicPublishOptions::default(),
        b"allowed",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert!(timed(ch.wait_for_confirms()).await.unwrap().is_empty());
    // The pending confirm carries the channel error (see rabbitmq_export_fixture_imports).
    let confirm = timed(ch.basic_publish(
        "tp.x".into(),
        "other.key".into(),
        BasicPublishOptions::default(),
        b"refused",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let err = timed(confirm).await.unwrap_err();
    assert!(
        format!("{err:?}").contains(
            "ACCESS_REFUSED - access to topic 'other.key' in exchange 'tp.x' in vhost 'tp-vh' refused for user 'tp-user'"
        ),
        "{err:?}"
    );

    // DELETE clears all of them; the user's connections see it at once.
    assert_eq!(api.delete(path).status, 204);
    assert_eq!(api.delete(path).status, 404);
    assert_eq!(api.get(path).status, 404);
    let ch = timed(conn.create_channel()).await.unwrap();
    timed(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    timed(ch.basic_publish(
        "tp.x".into(),
        "other.key".into(),
        BasicPublishOptions::default(),
        b"allowed now",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert!(timed(ch.wait_for_confirms()).await.unwrap().is_empty());

    // Deleting the user or the vhost takes its topic permissions along.
    set("tp.x", ".*", 201);
    assert_eq!(api.delete("/api/users/tp-user").status, 204);
    assert_eq!(api.get_ok("/api/topic-permissions"), json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_api_export_fixture_imports() {
    let broker = Broker::start();
    let api = Api::new(&broker);
    let fixture: Value = serde_json::from_str(include_str!(
        "../../pier-mgmt/tests/fixtures/rabbitmq-3.10.8-api-definitions.json"
    ))
    .unwrap();
    let r = api.post("/api/definitions", fixture);
    assert_eq!(r.status, 204, "{}", r.body);
    let x = api.get_ok("/api/exchanges/fixture-vh/app.internal");
    assert_eq!(x["internal"], true);
    assert_eq!(x["type"], "headers");
    let b = api.get_ok("/api/bindings/fixture-vh/e/app.internal/q/app.dead");
    assert_eq!(
        b[0]["arguments"],
        json!({"kind": "audit", "x-match": "all"})
    );
    assert_eq!(
        api.as_user("fx-admin", "fx-admin-pw").get_ok("/api/whoami")["tags"],
        json!(["administrator"])
    );
}

/// The smaller RabbitMQ endpoints: cluster name, extensions, feature flags, auth settings,
/// parameters, operator policies, user limits, health checks, node memory, cluster actions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_rabbitmq_endpoints() {
    let broker = Broker::start();
    let api = Api::new(&broker);

    // Cluster name: PUT (admin) changes it everywhere it shows.
    let node = api.get_ok("/api/overview")["node"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        api.put("/api/cluster-name", json!({})).json(),
        json!({"error": "bad_request", "reason": "[{key_missing,name}]"})
    );
    assert_eq!(
        api.put("/api/cluster-name", json!({"name": "pier-cov"}))
            .status,
        204
    );
    assert_eq!(api.get_ok("/api/cluster-name"), json!({"name": "pier-cov"}));
    assert_eq!(api.get_ok("/api/overview")["cluster_name"], "pier-cov");
    assert_eq!(
        api.get_ok("/api/global-parameters"),
        json!([{"name": "cluster_name", "value": "pier-cov"}])
    );
    assert_eq!(
        api.put(
            "/api/global-parameters/cluster_name",
            json!({"value": "pier-cov2"})
        )
        .status,
        204
    );
    assert_eq!(
        api.get_ok("/api/global-parameters/cluster_name")["value"],
        "pier-cov2"
    );
    assert_eq!(api.get("/api/global-parameters/other").status, 404);
    assert_eq!(
        api.put("/api/global-parameters/other", json!({"value": 1}))
            .status,
        400
    );
    assert!(api.metrics().contains("rabbitmq_cluster=\"pier-cov2\""));

    assert_eq!(api.get_ok("/api/extensions"), json!([]));
    // The deprecated alias of /api/definitions.
    assert_eq!(
        api.get_ok("/api/all-configuration")["rabbitmq_version"],
        api.get_ok("/api/definitions")["rabbitmq_version"]
    );
    let flags = api.get_ok("/api/feature-flags");
    let flag = |name: &str| {
        flags
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["state"].clone())
    };
    assert_eq!(flag("virtual_host_metadata"), Some(json!("enabled")));
    assert_eq!(flag("quorum_queue"), Some(json!("enabled")));
    // /api/auth needs no credentials, as RabbitMQ's (its login page reads it).
    let r = api.anonymous_get("/api/auth");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"enable_uaa": false, "uaa_client_id": "", "uaa_location": ""})
    );

    // Runtime parameters and operator policies: none, and writes refused.
    assert_eq!(api.get_ok("/api/parameters"), json!([]));
    assert_eq!(api.get_ok("/api/parameters/federation-upstream"), json!([]));
    assert_eq!(api.get_ok("/api/parameters/shovel/%2F"), json!([]));
    assert_eq!(api.get("/api/parameters/shovel/no-such-vh").status, 404);
    assert_eq!(api.get("/api/parameters/shovel/%2F/x").status, 404);
    let r = api.put("/api/parameters/shovel/%2F/x", json!({"value": {}}));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["reason"],
        "Validation failed\n\ncomponent shovel not found\n"
    );
    assert_eq!(api.get_ok("/api/operator-policies"), json!([]));
    assert_eq!(api.get_ok("/api/operator-policies/%2F"), json!([]));
    assert_eq!(api.get("/api/operator-policies/%2F/x").status, 404);
    assert_eq!(
        api.put(
            "/api/operator-policies/%2F/x",
            json!({"pattern": ".*", "definition": {"max-length": 1}})
        )
        .status,
        400
    );

    // User limits: none, not settable, clearing is a no-op.
    assert_eq!(api.get_ok("/api/user-limits"), json!([]));
    assert_eq!(api.get_ok("/api/user-limits/guest"), json!([]));
    assert_eq!(api.get("/api/user-limits/nobody").status, 404);
    assert_eq!(
        api.put("/api/user-limits/guest/max-channels", json!({"value": 1}))
            .status,
        400
    );
    assert_eq!(
        api.delete("/api/user-limits/guest/max-channels").status,
        204
    );

    // Health checks.
    let amqp_port: u16 = broker
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        api.get_ok(&format!("/api/health/checks/port-listener/{amqp_port}")),
        json!({"status": "ok", "port": amqp_port})
    );
    let r = api.get("/api/health/checks/port-listener/1");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["missing"], 1);
    assert!(r.json()["ports"]
        .as_array()
        .unwrap()
        .contains(&json!(amqp_port)));
    assert_eq!(
        api.get("/api/health/checks/port-listener/abc").json(),
        json!({"error": "bad_request", "reason": "Invalid port"})
    );
    assert_eq!(
        api.get_ok("/api/health/checks/protocol-listener/amqp"),
        json!({"status": "ok", "protocol": "amqp"})
    );
    let r = api.get("/api/health/checks/protocol-listener/stomp");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["reason"], "No active listener");
    for check in ["node-is-quorum-critical", "node-is-mirror-sync-critical"] {
        assert_eq!(
            api.get_ok(&format!("/api/health/checks/{check}")),
            json!({"status": "ok", "reason": "single node cluster"})
        );
    }

    // Node memory.
    let m = api.get_ok(&format!("/api/nodes/{}/memory", enc(&node)));
    assert_eq!(m["memory"]["strategy"], "rss");
    assert!(m["memory"]["total"]["rss"].as_u64().unwrap() > 0);
    assert_eq!(api.get("/api/nodes/nobody@nowhere/memory").status, 404);
    let n = api.get_ok(&format!("/api/nodes/{}?memory=true", enc(&node)));
    assert_eq!(n["memory"]["strategy"], "rss");
    assert!(api
        .get_ok(&format!("/api/nodes/{}", enc(&node)))
        .get("memory")
        .is_none());

    // Cluster actions a single node answers as RabbitMQ does.
    assert_eq!(api.post("/api/rebalance/queues", json!({})).status, 204);
    assert_eq!(
        api.post(&format!("/api/vhosts/%2F/start/{}", enc(&node)), json!({}))
            .status,
        204
    );
    assert_eq!(
        api.post("/api/vhosts/%2F/start/other@host", json!({}))
            .status,
        400
    );
    assert_eq!(api.put("/api/queues/%2F/cov-q", json!({})).status, 201);
    for action in ["sync", "cancel_sync"] {
        let r = api.post("/api/queues/%2F/cov-q/actions", json!({"action": action}));
        assert_eq!(r.status, 204, "{action}: {}", r.body);
    }
    assert_eq!(
        api.post("/api/queues/%2F/cov-q/actions", json!({"action": "bogus"}))
            .json(),
        json!({"error": "bad_request", "reason": ["unknown", "bogus"]})
    );
    assert_eq!(
        api.post("/api/queues/%2F/nope/actions", json!({"action": "sync"}))
            .status,
        404
    );

    // Overview fields dashboards read.
    let o = api.get_ok("/api/overview");
    assert!(o["queue_totals"]["messages_details"]["rate"].is_number());
    assert!(o["churn_rates"]["connection_created_details"]["rate"].is_number());
    assert_eq!(o["contexts"][0]["description"], "RabbitMQ Management");
    let n = api.get_ok(&format!("/api/nodes/{}", enc(&node)));
    assert!(n["connection_created"].is_u64(), "{n}");
    assert!(n["channel_closed_details"]["rate"].is_number(), "{n}");
    assert_eq!(n["mem_calculation_strategy"], "rss");
    let v = api.get_ok("/api/vhosts/%2F");
    assert!(v["messages_ready_details"]["rate"].is_number(), "{v}");

    // A monitoring user may not change the cluster name.
    assert_eq!(
        api.put(
            "/api/users/cov-mon",
            json!({"password": "pw", "tags": "monitoring"})
        )
        .status,
        201
    );
    let mon = api.as_user("cov-mon", "pw");
    assert_eq!(
        mon.put("/api/cluster-name", json!({"name": "x"})).status,
        401
    );
}

/// Vhost limits over the API are RabbitMQ's, and enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_limits_api() {
    let broker = Broker::start();
    let api = Api::new(&broker);
    assert_eq!(api.put("/api/vhosts/lim-vh", json!({})).status, 201);
    assert_eq!(api.get_ok("/api/vhost-limits/lim-vh"), json!([]));
    let r = api.put("/api/vhost-limits/lim-vh/max-queues", json!({}));
    assert_eq!(
        r.json(),
        json!({"error": "bad_request", "reason": "[{key_missing,value}]"})
    );
    let r = api.put("/api/vhost-limits/lim-vh/max-channels", json!({"value": 1}));
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Unrecognised terms"), "{}", r.body);
    let r = api.put("/api/vhost-limits/lim-vh/max-queues", json!({"value": "x"}));
    assert_eq!(r.status, 400);
    assert!(r.body.contains("should be a number"), "{}", r.body);
    assert_eq!(
        api.put("/api/vhost-limits/nope/max-queues", json!({"value": 1}))
            .json(),
        json!({"error": "not_found", "reason": "vhost_not_found"})
    );
    for (name, value) in [("max-queues", 1), ("max-connections", 5)] {
        let r = api.put(
            &format!("/api/vhost-limits/lim-vh/{name}"),
            json!({"value": value}),
        );
        assert_eq!(r.status, 204, "{}", r.body);
    }
    let expected = json!([{"vhost": "lim-vh", "value": {"max-queues": 1, "max-connections": 5}}]);
    assert_eq!(api.get_ok("/api/vhost-limits/lim-vh"), expected);
    assert_eq!(api.get_ok("/api/vhost-limits"), expected);
    // Enforced: a second queue is refused.
    assert_eq!(api.put("/api/queues/lim-vh/q1", json!({})).status, 201);
    assert_eq!(
        api.put("/api/queues/lim-vh/q2", json!({})).json(),
        json!({"error": "bad_request",
               "reason": "cannot declare queue 'q2': queue limit in vhost 'lim-vh' (1) is reached"})
    );
    // Negative means no limit, as in RabbitMQ; DELETE clears.
    assert_eq!(
        api.put("/api/vhost-limits/lim-vh/max-queues", json!({"value": -1}))
            .status,
        204
    );
    assert_eq!(api.put("/api/queues/lim-vh/q2", json!({})).status, 201);
    assert_eq!(
        api.delete("/api/vhost-limits/lim-vh/max-connections")
            .status,
        204
    );
    assert_eq!(api.get_ok("/api/vhost-limits/lim-vh"), json!([]));
    assert_eq!(api.get_ok("/api/vhost-limits"), json!([]));

    // The same limits as RabbitMQ's runtime parameter vhost-limits/{vhost}/limits.
    let param = "/api/parameters/vhost-limits/lim-vh/limits";
    assert_eq!(api.get(param).status, 404);
    assert_eq!(
        api.put(param, json!({"value": {"max-queues": 3}})).status,
        201
    );
    assert_eq!(
        api.put(param, json!({"value": {"max-connections": 4}}))
            .status,
        204
    );
    let expected = json!({"value": {"max-connections": 4}, "vhost": "lim-vh",
                          "component": "vhost-limits", "name": "limits"});
    assert_eq!(api.get_ok(param), expected);
    assert_eq!(api.get_ok("/api/parameters"), json!([expected]));
    assert_eq!(
        api.get_ok("/api/parameters/vhost-limits/lim-vh"),
        json!([expected])
    );
    assert_eq!(
        api.get_ok("/api/vhost-limits/lim-vh"),
        json!([{"vhost": "lim-vh", "value": {"max-connections": 4}}])
    );
    let r = api.put(param, json!({"value": {"max-channels": 1}}));
    assert_eq!(r.status, 400);
    assert_eq!(api.delete(param).status, 204);
    assert_eq!(api.delete(param).status, 404);
    assert_eq!(api.get_ok("/api/parameters"), json!([]));
}

/// `policy` and `effective_policy_definition` of queues and `policy` of exchanges come from
/// the policy actually applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_and_exchange_policy_fields() {
    let broker = Broker::start();
    let api = Api::new(&broker);
    assert_eq!(api.put("/api/queues/%2F/pol-before", json!({})).status, 201);
    let r = api.put(
        "/api/policies/%2F/cov-pol",
        json!({"pattern": "^pol-", "definition": {"max-length": 10}, "apply-to": "all"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(api.put("/api/queues/%2F/pol-q", json!({})).status, 201);
    assert_eq!(api.put("/api/queues/%2F/other-q", json!({})).status, 201);

    let q = api.get_ok("/api/queues/%2F/pol-q");
    assert_eq!(q["policy"], "cov-pol");
    assert_eq!(q["operator_policy"], Value::Null);
    assert_eq!(q["effective_policy_definition"], json!({"max-length": 10}));
    for key in [
        "messages_details",
        "messages_ready_details",
        "messages_unacknowledged_details",
    ] {
        assert!(q[key]["rate"].is_number(), "{key}: {q}");
    }
    for key in ["memory", "message_bytes_ram", "messages_paged_out"] {
        assert!(q[key].is_u64(), "{key}: {q}");
    }
    let other = api.get_ok("/api/queues/%2F/other-q");
    assert_eq!(other["policy"], Value::Null);
    assert_eq!(other["effective_policy_definition"], json!({}));
    // As in RabbitMQ, a policy reaches queues declared before it.
    let before = api.get_ok("/api/queues/%2F/pol-before");
    assert_eq!(before["policy"], "cov-pol");
    assert_eq!(
        before["effective_policy_definition"],
        json!({"max-length": 10})
    );
    let listed = api.get_ok("/api/queues/%2F?columns=name,policy");
    assert!(listed
        .as_array()
        .unwrap()
        .contains(&json!({"name": "pol-q", "policy": "cov-pol"})));

    // Exchanges follow policies as they change; the key is absent without one.
    assert_eq!(
        api.put("/api/exchanges/%2F/pol-x", json!({"type": "fanout"}))
            .status,
        201
    );
    assert_eq!(api.get_ok("/api/exchanges/%2F/pol-x")["policy"], "cov-pol");
    assert!(api
        .get_ok("/api/exchanges/%2F/amq.direct")
        .get("policy")
        .is_none());
    assert_eq!(api.delete("/api/policies/%2F/cov-pol").status, 204);
    assert!(api
        .get_ok("/api/exchanges/%2F/pol-x")
        .get("policy")
        .is_none());
    // Cleared: the queue shows no policy any more.
    let q = api.get_ok("/api/queues/%2F/pol-q");
    assert_eq!(q["policy"], Value::Null);
    assert_eq!(q["effective_policy_definition"], json!({}));
}

/// GET/DELETE /api/connections/username/{user}.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_by_username() {
    let broker = Broker::start();
    let api = Api::new(&broker);
    let conn = connect_as(&broker, "guest", "guest", "/").await.unwrap();
    eventually("connection listed", || {
        api.get_ok("/api/connections/username/guest")
            .as_array()
            .is_some_and(|a| a.len() == 1)
    });
    assert_eq!(api.get_ok("/api/connections/username/nobody"), json!([]));
    assert_eq!(api.delete("/api/connections/username/guest").status, 204);
    eventually("connection closed", || {
        api.get_ok("/api/connections/username/guest")
            .as_array()
            .is_some_and(|a| a.is_empty())
    });
    eventually("client sees the close", || !conn.status().connected());
}
