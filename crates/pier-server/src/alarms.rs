//! Resource alarms, as RabbitMQ raises them: the memory high watermark (resident set size
//! against a fraction of RAM) and the disk free limit (free space on the data directory's file
//! system). While either is set, connections that publish are blocked (flow.rs): they get
//! `connection.blocked` and their sockets are not read until the alarm clears.
//!
//! ```text
//!  tick task ─every 50 ms──► /proc/self/statm (RSS) ─┐
//!            ─every 1 s────► statvfs(data_dir) ──────┴─► Alarms (watch channel) ─► blocked readers
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use procfs::{Current as _, FromRead as _};
use tokio::sync::watch;

use crate::config::{MemoryWatermark, ServerConfig};

/// Which alarms are set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmState {
    pub memory: bool,
    pub disk: bool,
}

impl AlarmState {
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The `connection.blocked` reason, in RabbitMQ's words.
    pub fn reason(self) -> &'static str {
        match (self.memory, self.disk) {
            (true, true) => "low on memory & low on disk",
            (true, false) => "low on memory",
            (false, true) => "low on disk",
            (false, false) => "",
        }
    }
}

/// The node's alarms and the figures behind them (shown by management).
#[derive(Debug)]
pub struct Alarms {
    state: watch::Sender<AlarmState>,
    memory_used: AtomicU64,
    memory_limit: AtomicU64,
    disk_free: AtomicU64,
    disk_free_limit: AtomicU64,
}

impl Default for Alarms {
    fn default() -> Self {
        Alarms {
            state: watch::Sender::new(AlarmState::default()),
            memory_used: AtomicU64::new(0),
            memory_limit: AtomicU64::new(u64::MAX),
            disk_free: AtomicU64::new(u64::MAX),
            disk_free_limit: AtomicU64::new(0),
        }
    }
}

impl Alarms {
    pub fn state(&self) -> AlarmState {
        *self.state.borrow()
    }

    /// Resident memory in bytes at the last sample.
    pub fn memory_used(&self) -> u64 {
        self.memory_used.load(Ordering::Relaxed)
    }

    /// The memory high watermark in bytes (`u64::MAX`: not monitored).
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit.load(Ordering::Relaxed)
    }

    /// Free bytes on the data directory's file system at the last sample.
    pub fn disk_free(&self) -> u64 {
        self.disk_free.load(Ordering::Relaxed)
    }

    pub fn disk_free_limit(&self) -> u64 {
        self.disk_free_limit.load(Ordering::Relaxed)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<AlarmState> {
        self.state.subscribe()
    }

    fn set_memory(&self, on: bool) {
        self.state.send_if_modified(|s| {
            let changed = s.memory != on;
            s.memory = on;
            changed
        });
    }

    fn set_disk(&self, on: bool) {
        self.state.send_if_modified(|s| {
            let changed = s.disk != on;
            s.disk = on;
            changed
        });
    }
}

/// Samples memory and disk from the server's tick task and sets or clears the alarms.
pub(crate) struct ResourceMonitor {
    alarms: std::sync::Arc<Alarms>,
    memory_limit: Option<u64>,
    data_dir: Option<PathBuf>,
    disk_free_limit: u64,
    page_size: u64,
    ticks: u64,
}

/// Memory is sampled on every tick (50 ms: a fast publisher can add tens of MB between
/// samples), the disk every `DISK_EVERY` ticks.
const DISK_EVERY: u64 = 20;

impl ResourceMonitor {
    pub fn new(alarms: std::sync::Arc<Alarms>, config: &ServerConfig) -> Self {
        let memory_limit = match config.memory_high_watermark {
            MemoryWatermark::Absolute(bytes) => Some(bytes),
            MemoryWatermark::Relative(fraction) => match total_memory() {
                Some(total) => Some((total as f64 * fraction.max(0.0)) as u64),
                None => {
                    tracing::warn!("cannot read the machine's memory size: no memory alarm");
                    None
                }
            },
        };
        if let Some(limit) = memory_limit {
            alarms.memory_limit.store(limit, Ordering::Relaxed);
            tracing::info!(
                "memory high watermark set to {} MiB ({limit} bytes)",
                limit / (1024 * 1024)
            );
        }
        alarms
            .disk_free_limit
            .store(config.disk_free_limit, Ordering::Relaxed);
        let mut monitor = ResourceMonitor {
            alarms,
            memory_limit,
            data_dir: config.data_dir.clone(),
            disk_free_limit: config.disk_free_limit,
            page_size: rustix::param::page_size() as u64,
            ticks: 0,
        };
        monitor.check_memory();
        monitor.check_disk();
        monitor
    }

    /// Called on every tick of the server's timer task.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.check_memory();
        if self.ticks >= DISK_EVERY {
            self.ticks = 0;
            self.check_disk();
        }
    }

    fn check_memory(&mut self) {
        let Some(limit) = self.memory_limit else {
            return;
        };
        let Some(used) = resident_memory(self.page_size) else {
            return;
        };
        self.alarms.memory_used.store(used, Ordering::Relaxed);
        let was = self.alarms.state().memory;
        let now = used > limit;
        if now != was {
            if now {
                tracing::warn!(
                    "memory resource limit alarm set: memory used {used} bytes, allowed {limit} bytes; publishers will be blocked until this alarm clears"
                );
            } else {
                tracing::warn!(
                    "memory resource limit alarm cleared: memory used {used} bytes, allowed {limit} bytes"
                );
            }
            self.alarms.set_memory(now);
        }
    }

    fn check_disk(&mut self) {
        let Some(dir) = &self.data_dir else {
            return;
        };
        let Some(free) = free_disk_space(dir) else {
            return;
        };
        self.alarms.disk_free.store(free, Ordering::Relaxed);
        let limit = self.disk_free_limit;
        let was = self.alarms.state().disk;
        let now = free < limit;
        if now != was {
            if now {
                tracing::warn!(
                    "disk resource limit alarm set: free disk space {free} bytes, limit {limit} bytes; publishers will be blocked until this alarm clears"
                );
            } else {
                tracing::warn!(
                    "disk resource limit alarm cleared: free disk space {free} bytes, limit {limit} bytes"
                );
            }
            self.alarms.set_disk(now);
        }
    }
}

/// The machine's RAM in bytes (`MemTotal` in /proc/meminfo), or the cgroup v2 memory limit
/// when that is lower.
fn total_memory() -> Option<u64> {
    let ram = procfs::Meminfo::current().ok()?.mem_total;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(ram, |c| c.min(ram)))
}

/// This process's resident set size in bytes (/proc/self/statm counts pages). Read by path,
/// not through `Process::myself`, as it runs every 50 ms: one open, as before.
fn resident_memory(page_size: u64) -> Option<u64> {
    let statm = procfs::process::StatM::from_file("/proc/self/statm").ok()?;
    statm.resident.checked_mul(page_size)
}

/// Bytes available to unprivileged users on the file system holding `dir`.
fn free_disk_space(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    st.f_bavail.checked_mul(st.f_frsize)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    #[test]
    fn reads_proc_files() {
        assert!(resident_memory(4096).is_some_and(|m| m > 0));
        // Bytes, not the kB that /proc/meminfo shows.
        assert!(total_memory().is_some_and(|m| m > 1 << 20));
        assert!(free_disk_space(Path::new(".")).is_some());
    }

    #[test]
    fn alarms_follow_the_limits() {
        let alarms = Arc::new(Alarms::default());
        let mut config = ServerConfig {
            memory_high_watermark: MemoryWatermark::Absolute(1),
            disk_free_limit: u64::MAX,
            data_dir: Some(PathBuf::from(".")),
            ..ServerConfig::default()
        };
        let mut rx = alarms.subscribe();
        let _m = ResourceMonitor::new(Arc::clone(&alarms), &config);
        assert_eq!(
            alarms.state(),
            AlarmState {
                memory: true,
                disk: true
            }
        );
        assert!(rx.has_changed().unwrap());
        assert_eq!(alarms.state().reason(), "low on memory & low on disk");
        config.memory_high_watermark = MemoryWatermark::Absolute(u64::MAX);
        config.disk_free_limit = 0;
        let mut m = ResourceMonitor::new(Arc::clone(&alarms), &config);
        assert!(!alarms.state().any());
        for _ in 0..DISK_EVERY {
            m.tick();
        }
        assert!(!alarms.state().any());
        rx.mark_unchanged();
    }
}
