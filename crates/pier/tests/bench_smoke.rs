//! `pier bench` end to end: the real binary loads a real broker (a fresh `pier` by default,
//! or the broker named by `PIER_TEST_AMQP_URL`) and must account for every message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::{unique, Broker};

fn bench(broker_url: &str, args: &[&str]) -> Output {
    let prefix = format!("{}-", unique("bench"));
    bench_on(broker_url, &prefix, &[&["--delete-queues"], args].concat())
}

/// A run on the queues named `<prefix>1..`, keeping them unless `args` says otherwise.
fn bench_on(broker_url: &str, prefix: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pier"))
        .arg("bench")
        .args(["--uri", broker_url, "--queue-prefix", prefix])
        .args(["--json", "--quiet"])
        .args(if args.contains(&"--drain-timeout") {
            &[][..]
        } else {
            &["--drain-timeout", "20"][..]
        })
        .args(args)
        .output()
        .expect("run pier bench")
}

fn summary(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pier bench failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}\n{stderr}"))
}

#[test]
fn pmessages_are_all_consumed() {
    let broker = Broker::start();
    let out = bench(broker.url(), &["--pmessages", "2000"]);
    let s = summary(&out);
    assert_eq!(s["all_consumed"], true, "{s}");
    assert_eq!(s["published"], 2000, "{s}");
    assert_eq!(s["consumed"], 2000, "{s}");
    assert_eq!(s["expected"], 2000, "{s}");
    assert_eq!(s["stale"], 0, "{s}");
    assert_eq!(s["latency_us"]["samples"], 2000, "{s}");
    assert!(s["bench_cpu_percent"].is_number(), "{s}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("all 2,000 messages consumed"));
}

#[test]
fn confirms_acks_and_several_queues() {
    let broker = Broker::start();
    let out = bench(
        broker.url(),
        &[
            "--producers",
            "2",
            "--consumers",
            "2",
            "--queues",
            "2",
            "--pmessages",
            "1500",
            "--size",
            "5000", // larger than the smallest frame_max (4 KiB) a broker may tune
            "--persistent",
            "--confirm",
            "100",
            "--prefetch",
            "50",
            "--multi-ack",
            "10",
        ],
    );
    let s = summary(&out);
    assert_eq!(s["all_consumed"], true, "{s}");
    assert_eq!(s["published"], 3000, "{s}");
    assert_eq!(s["confirmed"], 3000, "{s}");
    assert_eq!(s["nacked"], 0, "{s}");
    assert_eq!(s["consumed"], 3000, "{s}");
    assert_eq!(s["size"], 5000, "{s}");
}

#[test]
fn timed_run_with_a_rate_limit() {
    let broker = Broker::start();
    let out = bench(
        broker.url(),
        &["--time", "1", "--rate", "500", "--autoack", "--size", "0"],
    );
    let s = summary(&out);
    let published = s["published"].as_u64().unwrap();
    // 500 msg/s for about a second; generous bounds for a loaded machine.
    assert!((200..=700).contains(&published), "{s}");
    assert_eq!(s["size"], 16, "sizes under 8 are raised to 16: {s}");
    assert!(s["consumed"].as_u64().unwrap() > 0, "{s}");
    assert!(
        s["all_consumed"].is_null(),
        "no drain check without --pmessages: {s}"
    );
}

#[test]
fn publish_without_consumers_then_drain_with_cmessages() {
    let broker = Broker::start();
    let prefix = format!("{}-", unique("drain"));
    let publish = [
        "--consumers",
        "0",
        "--pmessages",
        "3000",
        "--size",
        "1024",
        "--persistent",
        "--confirm",
        "500",
    ];
    let s = summary(&bench_on(broker.url(), &prefix, &publish));
    assert_eq!(s["published"], 3000, "{s}");
    assert_eq!(s["confirmed"], 3000, "{s}");
    assert!(s["all_consumed"].is_null(), "nobody consumed: {s}");

    let drain = [
        "--producers",
        "0",
        "--cmessages",
        "3000",
        "--persistent",
        "--prefetch",
        "500",
        "--multi-ack",
        "50",
        "--delete-queues",
    ];
    let out = bench_on(broker.url(), &prefix, &drain);
    let s = summary(&out);
    assert_eq!(s["all_consumed"], true, "{s}");
    assert_eq!(s["expected"], 3000, "{s}");
    assert_eq!(s["stale"], 3000, "the first run's messages: {s}");
    assert_eq!(s["consumed"], 0, "{s}");
    assert!(s["receive_rate"].as_f64().unwrap() > 0.0, "{s}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("messages left in it"),
        "the drain acked everything: {stderr}"
    );

    // Nothing left: a drain of an empty queue fails after --drain-timeout.
    let empty = [
        "--producers",
        "0",
        "--cmessages",
        "1",
        "--drain-timeout",
        "1",
        "--delete-queues",
    ];
    let out = bench_on(broker.url(), &prefix, &empty);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(summary_unchecked(&out)["all_consumed"], false);
}

fn summary_unchecked(out: &Output) -> serde_json::Value {
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("one JSON object")
}

#[test]
fn bad_credentials_fail_with_exit_code_1() {
    let broker = Broker::start();
    let url = broker.url().replacen("guest:guest@", "guest:wrong@", 1);
    let out = bench(&url, &["--pmessages", "10"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "no summary for a run that never started"
    );
}
