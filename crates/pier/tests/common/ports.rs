//! Free loopback ports for test brokers. Also used by `crates/pier-cluster/tests` (through
//! `#[path]`): one copy of the rule for every test that starts a listener.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};

/// A port free now, below the kernel's ephemeral range (32768 and up by default): a port
/// picked by binding :0 and released could be taken, before the broker binds it, by an
/// outgoing connection of a test running beside this one. Ports below that range are never
/// handed to outgoing connections, and this process hands each out once.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 1000) as u16 * 10,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_000, "no free port left below the ephemeral range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
