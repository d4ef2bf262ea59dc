//! `pier ctl`, black-box: the real binary run as a command against a real `pier` process,
//! every command at least once, table and `--json` output, exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{enc, timed, unique, Broker};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{json, Value};

const RABBITMQ_EXPORT: &str =
    include_str!("../../pier-mgmt/tests/fixtures/rabbitmq-3.10.8-export-definitions.json");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} / {:?}", self.stdout, self.stderr))
    }

    /// The table's rows (after the header), split on runs of two or more spaces.
    fn rows(&self) -> Vec<Vec<String>> {
        self.stdout
            .lines()
            .skip(1)
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .collect()
    }

    fn header(&self) -> Vec<String> {
        self.stdout
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

/// Runs `pier ctl --url <broker> ARGS`, optionally feeding `stdin`.
fn ctl_with(broker: &Broker, args: &[&str], stdin: Option<&str>) -> Out {
    let url = broker.http_url().expect("a pier process");
    wait_for_http(url);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pier"));
    cmd.arg("ctl").arg("--url").arg(url).args(args);
    for var in [
        "PIER_CTL_URL",
        "PIER_CTL_USER",
        "PIER_CTL_PASSWORD",
        "PIER_CTL_VHOST",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run pier ctl");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().expect("wait for pier ctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ctl(broker: &Broker, args: &[&str]) -> Out {
    ctl_with(broker, args, None)
}

/// Runs a command that must succeed.
#[track_caller]
fn ok(broker: &Broker, args: &[&str]) -> Out {
    let out = ctl(broker, args);
    assert_eq!(
        out.code, 0,
        "pier ctl {args:?} failed: stdout {:?} stderr {:?}",
        out.stdout, out.stderr
    );
    out
}

/// Runs a command that must fail with `code` and an error mentioning `text`.
#[track_caller]
fn fails(broker: &Broker, args: &[&str], code: i32, text: &str) -> Out {
    let out = ctl(broker, args);
    assert_eq!(
        out.code, code,
        "pier ctl {args:?}: stdout {:?} stderr {:?}",
        out.stdout, out.stderr
    );
    assert!(
        out.stderr.contains(text),
        "pier ctl {args:?}: {:?} lacks {text:?}",
        out.stderr
    );
    out
}

fn wait_for_http(url: &str) {
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "management port not listening");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET on the API as guest, for checks beside `pier ctl`.
fn api_get(broker: &Broker, path: &str) -> (u16, Value) {
    let url = format!("{}/api{path}", broker.http_url().unwrap());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .get(&url)
        .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        .call()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_help_and_failures() {
    let broker = Broker::start();
    let out = ok(&broker, &["status"]);
    assert!(out.stdout.contains("Node"), "{}", out.stdout);
    assert!(out.stdout.contains("pier@"), "{}", out.stdout);
    assert!(out.stdout.contains("Listeners"), "{}", out.stdout);
    assert!(out.stderr.contains("Status of node"), "{}", out.stderr);
    let js = ok(&broker, &["--json", "status"]).json();
    assert!(js["node"].as_str().unwrap().starts_with("pier@"));
    assert_eq!(js["product_name"], "Pier");
    assert!(js["uptime"].as_u64().is_some(), "{js}");
    // -q leaves out the informational line.
    let quiet = ok(&broker, &["-q", "status"]);
    assert!(quiet.stderr.is_empty(), "{}", quiet.stderr);

    // Credentials refused: 77. Nothing listening: 69. Bad column: 64. Unknown command: clap.
    fails(
        &broker,
        &["--password", "wrong", "status"],
        77,
        "Login failed",
    );
    let dead = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["ctl", "--url", "http://127.0.0.1:1", "status"])
        .output()
        .unwrap();
    assert_eq!(dead.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&dead.stderr).contains("unable to reach"));
    let q = unique("cols");
    ok(&broker, &["add_vhost", &q]);
    let declare = api_put(&broker, &format!("/queues/{}/q", enc(&q)), json!({}));
    assert_eq!(declare, 201);
    fails(
        &broker,
        &["-p", &q, "list_queues", "name", "no_such_item"],
        64,
        "Invalid queue info item: no_such_item",
    );
    let help = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["ctl", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["list_queues", "set_policy", "import_definitions"] {
        assert!(help.contains(command), "{help}");
    }
    let bogus = ctl(&broker, &["no_such_command"]);
    assert_eq!(bogus.code, 2, "{}", bogus.stderr);
    // Environment variables stand in for the flags.
    let env = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["ctl", "--json", "list_vhosts"])
        .env("PIER_CTL_URL", broker.http_url().unwrap())
        .env("PIER_CTL_USER", "guest")
        .env("PIER_CTL_PASSWORD", "guest")
        .output()
        .unwrap();
    assert!(env.status.success());
    let names: Value = serde_json::from_slice(&env.stdout).unwrap();
    assert!(names.as_array().unwrap().iter().any(|v| v["name"] == "/"));
}

fn api_put(broker: &Broker, path: &str, body: Value) -> u16 {
    let url = format!("{}/api{path}", broker.http_url().unwrap());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .put(&url)
        .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        .send_json(body)
        .unwrap()
        .status()
        .as_u16()
}

fn api_publish(broker: &Broker, vhost: &str, queue: &str, payload: &str) {
    let url = format!(
        "{}/api/exchanges/{}/amq.default/publish",
        broker.http_url().unwrap(),
        enc(vhost)
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .post(&url)
        .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        .send_json(
            json!({"routing_key": queue, "payload": payload, "properties": {},
                          "payload_encoding": "string"}),
        )
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn users_vhosts_and_permissions() {
    let broker = Broker::start();
    let user = unique("user");
    let vhost = unique("vhost");

    ok(
        &broker,
        &["add_user", &user, "first", "--tags", "management"],
    );
    fails(
        &broker,
        &["add_user", &user, "again"],
        70,
        "user_already_exists",
    );
    let users = ok(&broker, &["list_users"]);
    assert_eq!(users.header(), vec!["user", "tags"]);
    assert!(
        users
            .rows()
            .contains(&vec![user.clone(), "[management]".into()]),
        "{}",
        users.stdout
    );
    let js = ok(&broker, &["--json", "list_users"]).json();
    assert!(js
        .as_array()
        .unwrap()
        .contains(&json!({"user": user, "tags": ["management"]})));

    // A password from stdin, as rabbitmqctl reads it when it is not given.
    let other = unique("stdin-user");
    let out = ctl_with(&broker, &["add_user", &other], Some("from-stdin\n"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Its password works (the refusal is for the missing management tag, not the login).
    fails(
        &broker,
        &["--user", &other, "--password", "from-stdin", "status"],
        77,
        "Not management user",
    );
    fails(
        &broker,
        &["--user", &other, "--password", "wrong", "status"],
        77,
        "Login failed",
    );

    // Tags, then the password (the tags survive a password change).
    ok(
        &broker,
        &["set_user_tags", &user, "administrator", "monitoring"],
    );
    let js = ok(&broker, &["--json", "list_users", "name", "tags"]).json();
    assert!(js
        .as_array()
        .unwrap()
        .contains(&json!({"name": user, "tags": ["administrator", "monitoring"]})));
    ok(&broker, &["change_password", &user, "second"]);
    ok(
        &broker,
        &["--user", &user, "--password", "second", "status"],
    );
    fails(
        &broker,
        &["--user", &user, "--password", "first", "status"],
        77,
        "Login failed",
    );
    let (_, u) = api_get(&broker, &format!("/users/{}", enc(&user)));
    assert_eq!(u["tags"], json!(["administrator", "monitoring"]));
    fails(
        &broker,
        &["change_password", "no-such-user", "x"],
        70,
        "no_such_user: no-such-user",
    );
    fails(
        &broker,
        &["set_user_tags", "no-such-user", "x"],
        70,
        "no_such_user",
    );

    // Vhosts.
    ok(
        &broker,
        &["add_vhost", &vhost, "--description", "for the ctl test"],
    );
    fails(&broker, &["add_vhost", &vhost], 70, "vhost_already_exists");
    let vhosts = ok(&broker, &["list_vhosts", "name", "description"]);
    assert!(
        vhosts
            .rows()
            .contains(&vec![vhost.clone(), "for the ctl test".into()]),
        "{}",
        vhosts.stdout
    );

    // Permissions on the new vhost (an empty pattern is allowed).
    ok(
        &broker,
        &[
            "-p",
            &vhost,
            "set_permissions",
            &user,
            "^amq\\.gen",
            "",
            ".*",
        ],
    );
    let perms = ok(&broker, &["--json", "-p", &vhost, "list_permissions"]).json();
    assert!(
        perms
            .as_array()
            .unwrap()
            .contains(&json!({"user": user, "configure": "^amq\\.gen", "write": "", "read": ".*"})),
        "{perms}"
    );
    let table = ok(&broker, &["-p", &vhost, "list_permissions"]);
    assert_eq!(table.header(), vec!["user", "configure", "write", "read"]);
    let mine = ok(&broker, &["--json", "list_user_permissions", &user]).json();
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine[0]["vhost"], vhost);
    fails(
        &broker,
        &[
            "-p",
            "no-such-vhost",
            "set_permissions",
            &user,
            ".*",
            ".*",
            ".*",
        ],
        65,
        "vhost_or_user_not_found",
    );
    ok(&broker, &["-p", &vhost, "clear_permissions", &user]);
    let perms = ok(&broker, &["--json", "-p", &vhost, "list_permissions"]).json();
    assert!(!perms.to_string().contains(&user), "{perms}");
    fails(
        &broker,
        &["-p", &vhost, "clear_permissions", &user],
        70,
        "no permissions",
    );

    // Topic permissions: set (two exchanges), list per vhost and per user, clear one, clear
    // all; the user's deletion takes them along.
    ok(
        &broker,
        &[
            "-p",
            &vhost,
            "set_topic_permissions",
            &user,
            "amq.topic",
            "^{username}\\.",
            "",
        ],
    );
    ok(
        &broker,
        &[
            "-p",
            &vhost,
            "set_topic_permissions",
            &user,
            "t.x",
            ".*",
            "^r",
        ],
    );
    let table = ok(&broker, &["-p", &vhost, "list_topic_permissions"]);
    assert_eq!(table.header(), vec!["user", "exchange", "write", "read"]);
    assert!(
        table
            .rows()
            .contains(&vec![user.clone(), "t.x".into(), ".*".into(), "^r".into()]),
        "{}",
        table.stdout
    );
    let mine = ok(&broker, &["--json", "list_user_topic_permissions", &user]).json();
    assert_eq!(
        mine,
        json!([
            {"vhost": vhost, "exchange": "amq.topic", "write": "^{username}\\.", "read": ""},
            {"vhost": vhost, "exchange": "t.x", "write": ".*", "read": "^r"},
        ])
    );
    fails(
        &broker,
        &[
            "-p",
            &vhost,
            "set_topic_permissions",
            &user,
            "t.x",
            "(",
            ".*",
        ],
        65,
        "invalid_regexp",
    );
    fails(
        &broker,
        &[
            "-p",
            &vhost,
            "set_topic_permissions",
            "no-such-user",
            "t.x",
            ".*",
            ".*",
        ],
        65,
        "vhost_or_user_not_found",
    );
    ok(
        &broker,
        &["-p", &vhost, "clear_topic_permissions", &user, "amq.topic"],
    );
    let js = ok(&broker, &["--json", "-p", &vhost, "list_topic_permissions"]).json();
    assert_eq!(
        js,
        json!([{"user": user, "exchange": "t.x", "write": ".*", "read": "^r"}])
    );
    // Clearing what is not there succeeds, as with rabbitmqctl; unknown users do not.
    ok(
        &broker,
        &["-p", &vhost, "clear_topic_permissions", &user, "amq.topic"],
    );
    fails(
        &broker,
        &["-p", &vhost, "clear_topic_permissions", "no-such-user"],
        70,
        "no_such_user",
    );
    ok(&broker, &["-p", &vhost, "clear_topic_permissions", &user]);
    let js = ok(&broker, &["--json", "-p", &vhost, "list_topic_permissions"]).json();
    assert_eq!(js, json!([]));
    ok(
        &broker,
        &[
            "-p",
            &vhost,
            "set_topic_permissions",
            &user,
            "t.x",
            ".*",
            ".*",
        ],
    );

    // Deletions.
    ok(&broker, &["delete_user", &user]);
    let (_, tp) = api_get(&broker, "/topic-permissions");
    assert!(!tp.to_string().contains(&user), "{tp}");
    fails(&broker, &["delete_user", &user], 70, "no_such_user");
    ok(&broker, &["delete_vhost", &vhost]);
    fails(&broker, &["delete_vhost", &vhost], 70, "no_such_vhost");
    let js = ok(&broker, &["--json", "list_vhosts"]).json();
    assert!(!js.to_string().contains(&vhost));
    fails(&broker, &["-p", &vhost, "list_queues"], 70, "no_such_vhost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_exchanges_bindings_consumers_connections() {
    let broker = Broker::start();
    let queue = unique("q");
    let idle = unique("idle");
    let exchange = unique("x");
    let (conn, ch) = broker.connect_channel().await;
    timed(ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(ch.queue_declare(
        idle.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(ch.queue_bind(
        idle.as_str().into(),
        exchange.as_str().into(),
        "orders.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    for i in 0..3 {
        timed(ch.basic_publish(
            exchange.as_str().into(),
            "orders.eu".into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
    let consumer_ch = conn.create_channel().await.unwrap();
    let _consumer = timed(consumer_ch.basic_consume(
        queue.as_str().into(),
        "ctl-test-consumer".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let b = &broker;
    tokio::task::block_in_place(|| {
        eventually("3 messages in the bound queue", || {
            let (_, q) = api_get(b, &format!("/queues/%2F/{}", enc(&idle)));
            q["messages"] == 3
        });

        // list_queues with rabbitmqctl's default columns and with a selection.
        let out = ok(b, &["list_queues"]);
        assert_eq!(out.header(), vec!["name", "messages"]);
        assert!(
            out.rows().contains(&vec![idle.clone(), "3".into()]),
            "{}",
            out.stdout
        );
        assert!(out.stderr.contains("Listing queues for vhost / ..."));
        let out = ok(
            b,
            &["list_queues", "name", "messages", "consumers", "durable"],
        );
        assert_eq!(
            out.header(),
            vec!["name", "messages", "consumers", "durable"]
        );
        assert!(out
            .rows()
            .contains(&vec![queue.clone(), "0".into(), "1".into(), "false".into()]));
        assert!(out
            .rows()
            .contains(&vec![idle.clone(), "3".into(), "0".into(), "true".into()]));
        let js = ok(
            b,
            &[
                "--json",
                "list_queues",
                "name,messages_ready",
                "arrival_rate",
                "utilisation",
                "length",
                "time_in_queue_p50",
                "time_in_queue_p99",
            ],
        )
        .json();
        let row = js
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == idle.as_str())
            .cloned()
            .unwrap();
        assert_eq!(row["messages_ready"], 3);
        assert_eq!(row["length"], 3);
        assert!(row["arrival_rate"].is_number(), "{row}");
        assert!(row.get("utilisation").is_some(), "{row}");
        // Nothing acked yet: measured time in queue has no samples.
        assert!(row["time_in_queue_p50"].is_null(), "{row}");
        assert!(row.get("time_in_queue_p99").is_some(), "{row}");

        // Exchanges and bindings.
        let out = ok(b, &["list_exchanges"]);
        assert_eq!(out.header(), vec!["name", "type"]);
        assert!(out.rows().contains(&vec![exchange.clone(), "topic".into()]));
        let js = ok(b, &["--json", "list_exchanges", "name", "durable"]).json();
        assert!(js
            .as_array()
            .unwrap()
            .contains(&json!({"name": exchange, "durable": false})));
        let out = ok(b, &["list_bindings"]);
        assert_eq!(
            out.header(),
            vec![
                "source_name",
                "source_kind",
                "destination_name",
                "destination_kind",
                "routing_key",
                "arguments"
            ]
        );
        let js = ok(b, &["--json", "list_bindings"]).json();
        assert!(
            js.as_array().unwrap().contains(&json!({
                "source_name": exchange, "source_kind": "exchange", "destination_name": idle,
                "destination_kind": "queue", "routing_key": "orders.*", "arguments": {}
            })),
            "{js}"
        );

        // Consumers, channels, connections.
        let js = ok(b, &["--json", "list_consumers"]).json();
        let c = &js.as_array().unwrap()[0];
        assert_eq!(c["queue_name"], queue.as_str());
        assert_eq!(c["consumer_tag"], "ctl-test-consumer");
        assert_eq!(c["ack_required"], true);
        let out = ok(b, &["list_consumers", "queue_name", "consumer_tag"]);
        assert!(out
            .rows()
            .contains(&vec![queue.clone(), "ctl-test-consumer".into()]));
        let js = ok(b, &["--json", "list_channels"]).json();
        assert_eq!(js.as_array().unwrap().len(), 2, "{js}");
        assert!(js
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["consumer_count"] == 1));
        let out = ok(b, &["list_connections"]);
        assert_eq!(
            out.header(),
            vec!["user", "peer_host", "peer_port", "state"]
        );
        assert_eq!(out.rows().len(), 1, "{}", out.stdout);
        assert_eq!(out.rows()[0][0], "guest");
        let js = ok(b, &["--json", "list_connections", "name", "channels"]).json();
        assert_eq!(js[0]["channels"], 2);
        let name = js[0]["name"].as_str().unwrap().to_owned();

        // purge_queue and delete_queue (refused while not empty with --if-empty).
        ok(b, &["purge_queue", &idle]);
        eventually("the purge", || {
            api_get(b, &format!("/queues/%2F/{}", enc(&idle))).1["messages"] == 0
        });
        fails(b, &["purge_queue", "no-such-queue"], 70, "not found");
        api_publish(b, "/", &idle, "one more");
        fails(b, &["delete_queue", &idle, "--if-empty"], 65, "not empty");
        let out = ok(b, &["delete_queue", &idle]);
        assert!(
            out.stdout.contains("successfully deleted with 1 message"),
            "{}",
            out.stdout
        );
        assert_eq!(api_get(b, &format!("/queues/%2F/{}", enc(&idle))).0, 404);
        fails(b, &["delete_queue", &idle], 70, "not found");

        // close_connection: the client is told, and the list empties.
        ok(b, &["close_connection", &name, "go away"]);
        eventually("the connection to close", || {
            ok(b, &["--json", "list_connections"]).json() == json!([])
        });
        fails(
            b,
            &["close_connection", &name, "again"],
            70,
            "no_such_connection",
        );
    });
    eventually("lapin to see the close", || !conn.status().connected());
}

#[test]
fn policies() {
    let broker = Broker::start();
    ok(
        &broker,
        &[
            "set_policy",
            "capped",
            "^capped\\.",
            r#"{"max-length": 2, "overflow": "drop-head"}"#,
            "--apply-to",
            "queues",
            "--priority",
            "5",
        ],
    );
    let out = ok(&broker, &["list_policies"]);
    assert_eq!(
        out.header(),
        vec![
            "vhost",
            "name",
            "pattern",
            "apply-to",
            "definition",
            "priority"
        ]
    );
    let js = ok(&broker, &["--json", "list_policies"]).json();
    assert_eq!(
        js,
        json!([{"vhost": "/", "name": "capped", "pattern": "^capped\\.", "apply-to": "queues",
                "definition": {"max-length": 2, "overflow": "drop-head"}, "priority": 5}])
    );
    // The policy applies to a queue declared afterwards.
    assert_eq!(api_put(&broker, "/queues/%2F/capped.q", json!({})), 201);
    for i in 0..5 {
        api_publish(&broker, "/", "capped.q", &format!("m{i}"));
    }
    let (_, q) = api_get(&broker, "/queues/%2F/capped.q");
    assert_eq!(q["messages"], 2, "{q}");

    fails(
        &broker,
        &["set_policy", "bad", ".*", "{not json"],
        65,
        "not valid JSON",
    );
    fails(
        &broker,
        &["set_policy", "bad", ".*", r#"{"ha-mode": "all"}"#],
        65,
        "not recognised",
    );
    fails(
        &broker,
        &["set_policy", "bad", ".*", "{}", "--apply-to", "nothing"],
        65,
        "apply-to",
    );
    fails(
        &broker,
        &["-p", "no-such-vhost", "set_policy", "p", ".*", "{}"],
        70,
        "no_such_vhost",
    );
    ok(&broker, &["clear_policy", "capped"]);
    assert_eq!(ok(&broker, &["--json", "list_policies"]).json(), json!([]));
    fails(&broker, &["clear_policy", "capped"], 70, "no policy");
}

#[test]
fn definitions_export_and_import() {
    let source = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("defs.json");
    let file = file.to_str().unwrap();
    ok(
        &source,
        &["add_user", "exported-user", "pw", "--tags", "monitoring"],
    );
    ok(&source, &["add_vhost", "exported-vhost"]);
    ok(
        &source,
        &[
            "-p",
            "exported-vhost",
            "set_permissions",
            "exported-user",
            ".*",
            ".*",
            ".*",
        ],
    );
    ok(
        &source,
        &[
            "-p",
            "exported-vhost",
            "set_policy",
            "ttl",
            "^t\\.",
            r#"{"message-ttl": 60000}"#,
        ],
    );
    assert_eq!(
        api_put(
            &source,
            "/queues/exported-vhost/t.orders",
            json!({"durable": true})
        ),
        201
    );
    let out = ok(&source, &["export_definitions", file]);
    assert!(out.stderr.contains("Exported"), "{}", out.stderr);
    let defs: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert!(defs["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "exported-user"));
    assert!(defs["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["name"] == "t.orders" && q["vhost"] == "exported-vhost"));
    assert_eq!(
        defs["policies"],
        json!([{"vhost": "exported-vhost", "name": "ttl", "pattern": "^t\\.", "apply-to": "all",
                "definition": {"message-ttl": 60000}, "priority": 0}])
    );
    // To stdout with "-".
    let stdout = ok(&source, &["export_definitions", "-"]).json();
    assert_eq!(stdout["policies"], defs["policies"]);

    // Into a fresh broker: everything arrives, and the user logs in with its password.
    let target = Broker::start();
    let out = ok(&target, &["import_definitions", file]);
    assert!(out.stderr.contains("Imported"), "{}", out.stderr);
    let q = ok(&target, &["-p", "exported-vhost", "list_queues", "name"]);
    assert!(
        q.rows().contains(&vec!["t.orders".to_owned()]),
        "{}",
        q.stdout
    );
    let p = ok(
        &target,
        &["--json", "-p", "exported-vhost", "list_policies"],
    )
    .json();
    assert_eq!(p[0]["definition"], json!({"message-ttl": 60000}));
    ok(
        &target,
        &["--user", "exported-user", "--password", "pw", "list_vhosts"],
    );

    // From stdin, RabbitMQ's own export.
    let out = ctl_with(&target, &["import_definitions", "-"], Some(RABBITMQ_EXPORT));
    assert_eq!(out.code, 0, "{}", out.stderr);

    // Bad files.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{ nope").unwrap();
    fails(
        &target,
        &["import_definitions", bad.to_str().unwrap()],
        65,
        "not a JSON definitions file",
    );
    fails(
        &target,
        &["import_definitions", "/no/such/file.json"],
        66,
        "reading /no/such/file.json",
    );
    fails(
        &target,
        &["export_definitions", "/no/such/dir/defs.json"],
        73,
        "writing",
    );
}

#[test]
fn large_import_logs_progress() {
    let broker = Broker::start();
    let queues: Vec<Value> = (0..3000)
        .map(|i| {
            json!({"name": format!("bulk.{i}"), "vhost": "/", "durable": false,
                        "auto_delete": false, "arguments": {}})
        })
        .collect();
    let defs = json!({"queues": queues, "exchanges": [], "bindings": []});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bulk.json");
    std::fs::write(&file, defs.to_string()).unwrap();
    let out = ok(&broker, &["import_definitions", file.to_str().unwrap()]);
    assert!(out.stderr.contains("3000 objects"), "{}", out.stderr);
    let js = ok(&broker, &["--json", "list_queues", "name"]).json();
    assert_eq!(js.as_array().unwrap().len(), 3000);
    let log = broker.log_contents();
    assert!(
        log.contains("importing definitions: 3000 objects"),
        "no start line in:\n{log}"
    );
    let progress = log
        .lines()
        .filter(|l| l.contains("importing definitions: ") && l.contains("objects ("))
        .count();
    assert!(
        progress >= 9,
        "expected a progress line every 10%, got {progress}:\n{log}"
    );
    assert!(log.contains("definitions imported"), "{log}");
}

#[test]
fn vhost_limits_and_cluster_name() {
    let broker = Broker::start();
    assert_eq!(api_put(&broker, "/vhosts/lim", json!({})), 201);
    ok(
        &broker,
        &[
            "-p",
            "lim",
            "set_vhost_limits",
            r#"{"max-queues": 1, "max-connections": 10}"#,
        ],
    );
    let out = ok(&broker, &["-p", "lim", "list_vhost_limits"]);
    assert_eq!(
        serde_json::from_str::<Value>(out.stdout.trim()).unwrap(),
        json!({"max-queues": 1, "max-connections": 10})
    );
    let js = ok(&broker, &["--json", "list_vhost_limits", "--global"]).json();
    assert_eq!(
        js,
        json!([{"vhost": "lim", "limits": {"max-queues": 1, "max-connections": 10}}])
    );
    // Enforced.
    assert_eq!(api_put(&broker, "/queues/lim/q1", json!({})), 201);
    assert_eq!(api_put(&broker, "/queues/lim/q2", json!({})), 400);
    fails(
        &broker,
        &["-p", "lim", "set_vhost_limits", r#"{"max-channels": 1}"#],
        65,
        "Unrecognised",
    );
    fails(
        &broker,
        &["-p", "lim", "set_vhost_limits", "{not json"],
        65,
        "not valid JSON",
    );
    fails(
        &broker,
        &["-p", "nope", "set_vhost_limits", r#"{"max-queues": 1}"#],
        70,
        "no_such_vhost",
    );
    ok(&broker, &["-p", "lim", "clear_vhost_limits"]);
    ok(&broker, &["-p", "lim", "clear_vhost_limits"]);
    let out = ok(&broker, &["-p", "lim", "list_vhost_limits"]);
    assert_eq!(out.stdout.trim(), "{}");
    fails(
        &broker,
        &["-p", "nope", "clear_vhost_limits"],
        70,
        "no_such_vhost",
    );

    ok(&broker, &["set_cluster_name", "ctl-cluster"]);
    let (_, v) = api_get(&broker, "/cluster-name");
    assert_eq!(v, json!({"name": "ctl-cluster"}));
}

/// rabbitmq-streams' verbs: add_super_stream (partitions or routing keys, retention
/// arguments), list_streams, delete_super_stream, and their refusals.
#[test]
fn super_streams_and_stream_lists() {
    let broker = Broker::start();
    let vh = unique("ss");
    ok(&broker, &["add_vhost", &vh]);
    let out = ok(
        &broker,
        &[
            "-p",
            &vh,
            "add_super_stream",
            "invoices",
            "--partitions",
            "3",
            "--max-length-bytes",
            "1000000",
        ],
    );
    assert!(out.stdout.contains("3 partitions"), "{}", out.stdout);
    fails(
        &broker,
        &[
            "-p",
            &vh,
            "add_super_stream",
            "invoices",
            "--partitions",
            "2",
        ],
        65,
        "already exists",
    );
    fails(
        &broker,
        &[
            "-p",
            &vh,
            "add_super_stream",
            "x",
            "--partitions",
            "2",
            "--routing-keys",
            "a,b",
        ],
        64,
        "not both",
    );
    let js = ok(
        &broker,
        &[
            "-p",
            &vh,
            "--json",
            "add_super_stream",
            "geo",
            "--routing-keys",
            "amer,emea",
        ],
    )
    .json();
    assert_eq!(js["partitions"], json!(["geo-amer", "geo-emea"]));
    // The exchange and bindings are RabbitMQ's layout.
    let (status, x) = api_get(&broker, &format!("/exchanges/{}/invoices", enc(&vh)));
    assert_eq!(status, 200);
    assert_eq!(x["type"], "direct");
    assert_eq!(x["arguments"]["x-super-stream"], true);
    let (_, bindings) = api_get(
        &broker,
        &format!("/exchanges/{}/invoices/bindings/source", enc(&vh)),
    );
    let mut keys: Vec<(String, String, i64)> = bindings
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["destination"].as_str().unwrap().to_owned(),
                b["routing_key"].as_str().unwrap().to_owned(),
                b["arguments"]["x-stream-partition-order"].as_i64().unwrap(),
            )
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            ("invoices-0".into(), "0".into(), 0),
            ("invoices-1".into(), "1".into(), 1),
            ("invoices-2".into(), "2".into(), 2)
        ]
    );
    let (_, q) = api_get(&broker, &format!("/queues/{}/invoices-1", enc(&vh)));
    assert_eq!(q["type"], "stream");
    assert_eq!(q["arguments"]["x-max-length-bytes"], 1_000_000);
    let names = ok(&broker, &["-p", &vh, "--json", "list_streams", "name"]).json();
    let mut names: Vec<String> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "geo-amer",
            "geo-emea",
            "invoices-0",
            "invoices-1",
            "invoices-2"
        ]
    );
    let table = ok(&broker, &["-p", &vh, "list_streams"]);
    assert_eq!(
        table.header(),
        [
            "name",
            "messages",
            "segments",
            "first_offset",
            "last_offset"
        ]
    );
    ok(&broker, &["-p", &vh, "delete_super_stream", "invoices"]);
    let (status, _) = api_get(&broker, &format!("/queues/{}/invoices-0", enc(&vh)));
    assert_eq!(status, 404);
    let (status, _) = api_get(&broker, &format!("/exchanges/{}/invoices", enc(&vh)));
    assert_eq!(status, 404);
    fails(
        &broker,
        &["-p", &vh, "delete_super_stream", "invoices"],
        65,
        "does not exist",
    );
    // A plain exchange is not a super stream.
    assert_eq!(
        api_put(
            &broker,
            &format!("/exchanges/{}/plain", enc(&vh)),
            json!({"type": "direct"})
        ),
        201
    );
    fails(
        &broker,
        &["-p", &vh, "delete_super_stream", "plain"],
        65,
        "not a super stream",
    );
}

/// rabbitmq-streams' group, status and tracking verbs, with real stream-protocol consumers
/// (RabbitMQ's Rust stream client): two single-active consumers of one group and a plain
/// one, a named publisher and a stored offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_consumer_groups_status_and_tracking() {
    use rabbitmq_stream_client::types::{Message, OffsetSpecification};
    use rabbitmq_stream_client::Environment;

    let broker = Broker::start();
    let Some(port) = broker.stream_port() else {
        return;
    };
    let env = Environment::builder()
        .host("127.0.0.1")
        .port(port)
        .build()
        .await
        .unwrap();
    let s = unique("ctl-stream");
    env.stream_creator().create(&s).await.unwrap();
    let mut producer = env.producer().name("writer-a").build(&s).await.unwrap();
    for i in 0..3 {
        producer
            .send_with_confirm(Message::builder().body(format!("m{i}")).build())
            .await
            .unwrap();
    }
    let sac = |env: Environment, s: String| async move {
        env.consumer()
            .name("app")
            .enable_single_active_consumer(true)
            .offset(OffsetSpecification::First)
            .consumer_update(|_active, _ctx| async { OffsetSpecification::First })
            .build(&s)
            .await
            .unwrap()
    };
    let first = sac(env.clone(), s.clone()).await;
    let second = sac(env.clone(), s.clone()).await;
    let plain = env
        .consumer()
        .name("reader")
        .offset(OffsetSpecification::First)
        .build(&s)
        .await
        .unwrap();
    plain.store_offset(1).await.unwrap();
    // store_offset is fire-and-forget: wait until the stream wrote it (its tracking chunk
    // takes offset 3, after the three messages at 0..=2).
    let mut stored = plain.query_offset().await;
    for _ in 0..200 {
        if matches!(stored, Ok(1)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        stored = plain.query_offset().await;
    }
    assert!(matches!(stored, Ok(1)), "{stored:?}");

    // The ctl runs as a child process: block this worker thread for it.
    let run = |args: Vec<String>| {
        tokio::task::block_in_place(|| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ok(&broker, &args)
        })
    };
    let groups = run(vec!["--json".into(), "list_stream_consumer_groups".into()]).json();
    assert_eq!(
        groups,
        json!([{"stream": s, "reference": "app", "partition_index": -1, "consumers": 2}])
    );
    let members = run(vec![
        "--json".into(),
        "list_stream_group_consumers".into(),
        "--stream".into(),
        s.clone(),
        "--reference".into(),
        "app".into(),
    ])
    .json();
    let mut states: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    states.sort_unstable();
    assert_eq!(states, ["active", "inactive"]);
    let status = run(vec!["--json".into(), "stream_status".into(), s.clone()]).json();
    assert_eq!(status[0]["role"], "writer");
    assert_eq!(status[0]["offset"], 3);
    assert_eq!(status[0]["first_offset"], 0);
    assert_eq!(status[0]["readers"], 3);
    let tracking = run(vec![
        "--json".into(),
        "list_stream_tracking".into(),
        s.clone(),
    ])
    .json();
    let rows = tracking.as_array().unwrap();
    assert!(
        rows.contains(&json!({"type": "offset", "name": "reader", "tracking_value": 1})),
        "{tracking}"
    );
    assert!(
        rows.contains(&json!({"type": "writer", "name": "writer-a", "tracking_value": 2})),
        "{tracking}"
    );
    let writers = run(vec![
        "--json".into(),
        "list_stream_tracking".into(),
        s.clone(),
        "--writer".into(),
    ])
    .json();
    assert_eq!(writers.as_array().unwrap().len(), 1, "{writers}");
    // activate_stream_consumer (RabbitMQ 4.2): a group that is not stuck stays as it is; an
    // unknown group is a data error.
    run(vec![
        "activate_stream_consumer".into(),
        "--stream".into(),
        s.clone(),
        "--reference".into(),
        "app".into(),
    ]);
    let missing = tokio::task::block_in_place(|| {
        ctl(
            &broker,
            &[
                "activate_stream_consumer",
                "--stream",
                &s,
                "--reference",
                "no-such-app",
            ],
        )
    });
    assert_eq!(missing.code, 65, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("The group does not exist"),
        "{}",
        missing.stderr
    );
    drop((first, second, plain));
    producer.close().await.unwrap();
}
