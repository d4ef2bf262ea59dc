//! Health checks (`/api/health/checks/*`, `/api/aliveness-test/{vhost}`): `{"status": "ok"}`
//! or `{"status": "failed", "reason": …}` with the details of each check.

use serde::Serialize;

/// `{"status": …}`, with a reason when there is one.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl Status {
    pub fn ok() -> Status {
        Status {
            status: "ok",
            reason: None,
        }
    }

    pub fn ok_because(reason: &'static str) -> Status {
        Status {
            status: "ok",
            reason: Some(reason),
        }
    }

    pub fn failed(reason: &'static str) -> Status {
        Status {
            status: "failed",
            reason: Some(reason),
        }
    }
}

/// A resource alarm in effect on a node.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Alarm {
    pub node: String,
    pub resource: &'static str,
}

/// `alarms` / `local-alarms` when an alarm is in effect (503).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AlarmsFailed {
    pub status: &'static str,
    pub reason: &'static str,
    pub alarms: Vec<Alarm>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PortListening {
    pub status: &'static str,
    pub port: u16,
}

/// `port-listener/{port}` without such a listener (503).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PortNotListening {
    pub status: &'static str,
    pub reason: &'static str,
    pub missing: u16,
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProtocolListening {
    pub status: &'static str,
    pub protocol: String,
}

/// `protocol-listener/{protocol}` without such a listener (503).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProtocolNotListening {
    pub status: &'static str,
    pub reason: &'static str,
    pub missing: String,
    pub protocols: Vec<&'static str>,
}

/// `node-is-quorum-critical` when it is (503).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QuorumCritical {
    pub status: &'static str,
    pub reason: &'static str,
    pub queues: Vec<CriticalQueue>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CriticalQueue {
    pub name: String,
    pub readable_name: String,
    pub virtual_host: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}
