//! Retained messages: one per topic per vhost, kept in memory and written through to
//! `<data dir>/mqtt/retained.bin` (whole file, written to a temporary file, fsync'd and
//! renamed), so they survive restarts. An empty retained payload deletes the topic's.
//!
//! File format: `PRT1` then records of `u16 vhost len, vhost, u16 topic len, topic, u8 qos,
//! u32 payload len, payload` (big-endian).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pier_mqtt_wire::{topic, QoS};

const MAGIC: &[u8; 4] = b"PRT1";

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub topic: String,
    pub qos: QoS,
    pub payload: Bytes,
}

/// The node's retained messages, by vhost then topic.
#[derive(Debug, Default)]
pub struct RetainedStore {
    messages: Mutex<HashMap<String, BTreeMap<String, Retained>>>,
    path: Option<PathBuf>,
    /// Serialises file writes; the number is the newest snapshot's, so a stale one is not
    /// written over a newer one.
    written: Arc<Mutex<u64>>,
    generation: std::sync::atomic::AtomicU64,
}

impl RetainedStore {
    /// A store kept under `data_dir` (none: memory only), loaded from what is there.
    pub fn open(data_dir: Option<&std::path::Path>) -> RetainedStore {
        let path = data_dir.map(|d| d.join("mqtt").join("retained.bin"));
        let mut messages = HashMap::new();
        if let Some(p) = &path {
            match std::fs::read(p) {
                Ok(bytes) => match decode(&bytes) {
                    Some(m) => messages = m,
                    None => {
                        tracing::warn!(path = %p.display(), "retained messages file is damaged; ignored")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %p.display(), "cannot read retained messages: {e}"),
            }
        }
        RetainedStore {
            messages: Mutex::new(messages),
            path,
            written: Arc::new(Mutex::new(0)),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, Retained>>> {
        self.messages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Retains `payload` for `topic` (an empty payload deletes); the file is written in the
    /// background before `done` is called.
    pub async fn set(&self, vhost: &str, topic_name: &str, qos: QoS, payload: Bytes) {
        let snapshot = {
            let mut m = self.lock();
            let topics = m.entry(vhost.to_owned()).or_default();
            if payload.is_empty() {
                topics.remove(topic_name);
            } else {
                topics.insert(
                    topic_name.to_owned(),
                    Retained {
                        topic: topic_name.to_owned(),
                        qos,
                        payload,
                    },
                );
            }
            encode(&m)
        };
        let Some(path) = self.path.clone() else {
            return;
        };
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        let written = Arc::clone(&self.written);
        let result = tokio::task::spawn_blocking(move || {
            let mut last = written.lock().unwrap_or_else(|p| p.into_inner());
            if *last > generation {
                return Ok(());
            }
            write_file(&path, &snapshot)?;
            *last = generation;
            Ok::<_, std::io::Error>(())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("writing retained messages failed: {e}"),
            Err(e) => tracing::warn!("retained messages writer failed: {e}"),
        }
    }

    /// The retained messages of `vhost` whose topic `filter` matches.
    pub fn matching(&self, vhost: &str, filter: &str) -> Vec<Retained> {
        let m = self.lock();
        let Some(topics) = m.get(vhost) else {
            return Vec::new();
        };
        topics
            .values()
            .filter(|r| topic::topic_matches(filter, &r.topic))
            .cloned()
            .collect()
    }
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn encode(m: &HashMap<String, BTreeMap<String, Retained>>) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_slice(MAGIC);
    for (vhost, topics) in m {
        for r in topics.values() {
            // Names longer than u16 cannot come from MQTT (topics are u16-length strings).
            let (Ok(vl), Ok(tl), Ok(pl)) = (
                u16::try_from(vhost.len()),
                u16::try_from(r.topic.len()),
                u32::try_from(r.payload.len()),
            ) else {
                continue;
            };
            out.put_u16(vl);
            out.put_slice(vhost.as_bytes());
            out.put_u16(tl);
            out.put_slice(r.topic.as_bytes());
            out.put_u8(r.qos as u8);
            out.put_u32(pl);
            out.put_slice(&r.payload);
        }
    }
    out.to_vec()
}

fn decode(bytes: &[u8]) -> Option<HashMap<String, BTreeMap<String, Retained>>> {
    let mut b = Bytes::copy_from_slice(bytes);
    if b.len() < 4 || &b[..4] != MAGIC {
        return None;
    }
    b.advance(4);
    let mut m: HashMap<String, BTreeMap<String, Retained>> = HashMap::new();
    let string = |b: &mut Bytes| -> Option<String> {
        if b.remaining() < 2 {
            return None;
        }
        let n = usize::from(b.get_u16());
        if b.remaining() < n {
            return None;
        }
        String::from_utf8(b.split_to(n).to_vec()).ok()
    };
    while b.has_remaining() {
        let vhost = string(&mut b)?;
        let topic_name = string(&mut b)?;
        if b.remaining() < 5 {
            return None;
        }
        let qos = QoS::from_u8(b.get_u8())?;
        let n = usize::try_from(b.get_u32()).ok()?;
        if b.remaining() < n {
            return None;
        }
        let payload = b.split_to(n);
        m.entry(vhost).or_default().insert(
            topic_name.clone(),
            Retained {
                topic: topic_name,
                qos,
                payload,
            },
        );
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let mut m: HashMap<String, BTreeMap<String, Retained>> = HashMap::new();
        m.entry("/".into()).or_default().insert(
            "a/b".into(),
            Retained {
                topic: "a/b".into(),
                qos: QoS::AtLeastOnce,
                payload: Bytes::from_static(b"hi"),
            },
        );
        let bytes = encode(&m);
        assert_eq!(decode(&bytes).unwrap(), m);
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode(b"nope").is_none());
    }

    #[tokio::test]
    async fn survives_reopen_and_empty_payload_deletes() {
        let dir = std::env::temp_dir().join(format!("pier-retained-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = RetainedStore::open(Some(&dir));
        s.set("/", "a/b", QoS::AtLeastOnce, Bytes::from_static(b"1"))
            .await;
        s.set("/", "a/c", QoS::AtMostOnce, Bytes::from_static(b"2"))
            .await;
        s.set("/", "a/c", QoS::AtMostOnce, Bytes::new()).await;
        let s = RetainedStore::open(Some(&dir));
        let got = s.matching("/", "a/#");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, Bytes::from_static(b"1"));
        assert!(s.matching("other", "#").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
