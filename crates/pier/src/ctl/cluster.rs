//! `cluster_status`, `join_cluster` and `forget_cluster_node`, over Pier's
//! `/api/pier/cluster` endpoints. `cluster_status` prints rabbitmqctl's sections.

use serde_json::{json, Value};

use super::client::{enc, CtlError, CtlResult};
use super::output::{cell, emit, emit_json};
use super::Ctl;

fn names(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(cell).collect())
        .unwrap_or_default()
}

fn section(out: &mut String, title: &str, lines: &[String]) {
    out.push_str(title);
    out.push_str("\n\n");
    if lines.is_empty() {
        out.push_str("(none)\n");
    }
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out.push('\n');
}

fn purpose(protocol: &str) -> &'static str {
    match protocol {
        "amqp" => "AMQP 0-9-1 and AMQP 1.0",
        "http" => "HTTP API",
        "clustering" => "inter-node communication",
        _ => "",
    }
}

impl Ctl {
    pub(super) fn cluster_status(&self) -> CtlResult<()> {
        let st = self.client.get("/pier/cluster")?;
        if self.json {
            emit_json(&st);
            return Ok(());
        }
        let node = cell(st.get("node").unwrap_or(&Value::Null));
        self.info(&format!("Cluster status of node {node} ..."));
        let mut out = String::new();
        let mut basics = vec![format!(
            "Cluster name: {}",
            cell(st.get("cluster_name").unwrap_or(&Value::Null))
        )];
        if let Some(id) = st.get("cluster_id").and_then(Value::as_str) {
            basics.push(format!("Cluster id: {id}"));
        }
        match st.get("leader").and_then(Value::as_str) {
            Some(l) => basics.push(format!(
                "Metadata leader: {l} (term {})",
                cell(st.get("term").unwrap_or(&Value::Null))
            )),
            None if st.get("clustered") == Some(&Value::Bool(true)) => {
                basics.push("Metadata leader: (none: no majority reachable)".into())
            }
            None => {}
        }
        section(&mut out, "Basics", &basics);
        section(&mut out, "Disk Nodes", &names(&st, "disk_nodes"));
        section(&mut out, "Running Nodes", &names(&st, "running_nodes"));
        let versions: Vec<String> = st
            .get("versions")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(n, v)| {
                        format!(
                            "{n}: Pier {} (RabbitMQ {} compatible)",
                            cell(v.get("pier_version").unwrap_or(&Value::Null)),
                            cell(v.get("rabbitmq_version").unwrap_or(&Value::Null))
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        section(&mut out, "Versions", &versions);
        let alarms: Vec<String> = st
            .get("alarms")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| {
                        format!(
                            "Node {}: {} alarm",
                            cell(x.get("node").unwrap_or(&Value::Null)),
                            cell(x.get("resource").unwrap_or(&Value::Null))
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        section(&mut out, "Alarms", &alarms);
        let partitions: Vec<String> = st
            .get("partitions")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(n, v)| {
                        let cut: Vec<String> = v
                            .as_array()
                            .map(|a| a.iter().map(cell).collect())
                            .unwrap_or_default();
                        format!("Node {n} cannot communicate with {}", cut.join(", "))
                    })
                    .collect()
            })
            .unwrap_or_default();
        section(&mut out, "Network Partitions", &partitions);
        let listeners: Vec<String> = st
            .get("listeners")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|l| {
                        let protocol = cell(l.get("protocol").unwrap_or(&Value::Null));
                        format!(
                            "Node: {}, interface: {}, port: {}, protocol: {protocol}, purpose: {}",
                            cell(l.get("node").unwrap_or(&Value::Null)),
                            cell(l.get("ip_address").unwrap_or(&Value::Null)),
                            cell(l.get("port").unwrap_or(&Value::Null)),
                            purpose(&protocol)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        section(&mut out, "Listeners", &listeners);
        let members: Vec<String> = st
            .get("members")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|m| {
                        let flag = |k: &str, yes: &str, no: &str| {
                            if m.get(k) == Some(&Value::Bool(true)) {
                                yes.to_owned()
                            } else {
                                no.to_owned()
                            }
                        };
                        format!(
                            "Node: {}, address: {}, {}, {}, state: {}, last applied: {}",
                            cell(m.get("name").unwrap_or(&Value::Null)),
                            cell(m.get("address").unwrap_or(&Value::Null)),
                            flag("voter", "voter", "learner"),
                            flag("running", "running", "not running"),
                            cell(m.get("raft_state").unwrap_or(&Value::Null)),
                            cell(m.get("last_applied").unwrap_or(&Value::Null)),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if st.get("clustered") == Some(&Value::Bool(true)) {
            section(&mut out, "Metadata store (Raft)", &members);
        }
        emit(&out);
        Ok(())
    }

    pub(super) fn join_cluster(&self, node: &str) -> CtlResult<()> {
        if !node.contains(':') {
            return Err(CtlError::usage(format!(
                "give the cluster address of a node of the cluster to join (host:port, its \
                 --cluster-port), not '{node}'"
            )));
        }
        self.info(&format!("Clustering this node with {node} ..."));
        let r = self
            .client
            .post("/pier/cluster/join", &json!({ "node": node }))?;
        self.done(r);
        Ok(())
    }

    pub(super) fn forget_cluster_node(&self, node: &str) -> CtlResult<()> {
        self.info(&format!("Removing node {node} from the cluster ..."));
        self.client
            .delete(&format!("/pier/cluster/nodes/{}", enc(node)))
            .map_err(|e| Self::not_found(e, format!("no such node: {node}")))?;
        self.done(json!({ "node": node }));
        Ok(())
    }
}
