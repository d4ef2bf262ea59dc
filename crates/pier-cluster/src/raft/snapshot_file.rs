//! A group's current snapshot on disk: one file, `snapshot.bin` — a magic, the meta as JSON
//! (length-prefixed), then the data (length-prefixed, CRC-32 after it) — written to a temporary file, fsync'd and renamed, so a
//! crash leaves either the old snapshot or the new one, never the meta of one with the data
//! of the other. (Data directories of earlier versions keep `meta.json` and `data.json`:
//! read once, replaced by the next snapshot.)

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{SnapshotMeta, StorageError};
use openraft::{AnyError, StorageIOError};

const MAGIC: &[u8; 8] = b"PIERSNAP";
const FILE: &str = "snapshot.bin";

/// A snapshot's meta and its bytes.
pub(crate) type Current = Option<(SnapshotMeta, Arc<Vec<u8>>)>;

pub(crate) fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

/// The current snapshot, on disk and in memory.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    current: Arc<Mutex<Current>>,
}

fn parse(bytes: &[u8]) -> Option<(SnapshotMeta, Vec<u8>)> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    let meta = rest.get(..len)?;
    let rest = rest.get(len..)?;
    let (dlen, data) = rest.split_first_chunk::<8>()?;
    let dlen = usize::try_from(u64::from_le_bytes(*dlen)).ok()?;
    let crc = data.get(dlen..dlen.checked_add(4)?)?;
    let data = data.get(..dlen)?;
    if crc != crc32c::crc32c(data).to_le_bytes() {
        return None;
    }
    Some((serde_json::from_slice(meta).ok()?, data.to_vec()))
}

impl SnapshotFiles {
    pub(crate) fn open(dir: PathBuf) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&dir).map_err(snap_err)?;
        let current = match std::fs::read(dir.join(FILE)) {
            Ok(b) => match parse(&b) {
                Some((m, d)) => Some((m, Arc::new(d))),
                None => {
                    tracing::warn!("ignoring an unreadable snapshot in {}", dir.display());
                    None
                }
            },
            Err(_) => match (
                std::fs::read(dir.join("meta.json")),
                std::fs::read(dir.join("data.json")),
            ) {
                (Ok(m), Ok(d)) => serde_json::from_slice::<SnapshotMeta>(&m)
                    .ok()
                    .map(|m| (m, Arc::new(d))),
                _ => None,
            },
        };
        Ok(SnapshotFiles {
            dir,
            current: Arc::new(Mutex::new(current)),
        })
    }

    pub(crate) fn current(&self) -> Current {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes the snapshot (atomically, durably) and makes it the current one.
    pub(crate) fn store(&self, meta: &SnapshotMeta, data: Arc<Vec<u8>>) -> std::io::Result<()> {
        let meta_bytes = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
        let len = u32::try_from(meta_bytes.len()).map_err(std::io::Error::other)?;
        // Written in three pieces: the data (a queue's bodies) is not copied into a buffer
        // of the whole file first.
        let mut head = Vec::with_capacity(20 + meta_bytes.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&len.to_le_bytes());
        head.extend_from_slice(&meta_bytes);
        head.extend_from_slice(&(data.len() as u64).to_le_bytes());
        let crc = crc32c::crc32c(&data).to_le_bytes();
        write_atomic(&self.dir, FILE, &[&head, &data, &crc])?;
        for legacy in ["meta.json", "data.json"] {
            let _ = std::fs::remove_file(self.dir.join(legacy));
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), data));
        Ok(())
    }
}

fn write_atomic(dir: &Path, name: &str, pieces: &[&[u8]]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    for p in pieces {
        f.write_all(p)?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_snapshot_comes_back_and_damage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path().join("s")).unwrap();
        assert!(files.current().is_none());
        let meta = SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id(2, 1, 9)),
            last_membership: Default::default(),
            snapshot_id: "2-9-1".into(),
        };
        files.store(&meta, Arc::new(b"data".to_vec())).unwrap();
        let again = SnapshotFiles::open(dir.path().join("s")).unwrap();
        let (m, d) = again.current().unwrap();
        assert_eq!(m, meta);
        assert_eq!(d.as_slice(), b"data");
        // A cut or damaged file is ignored, never half-read.
        let path = dir.path().join("s").join(FILE);
        let b = std::fs::read(&path).unwrap();
        for cut in 0..b.len() {
            assert!(parse(&b[..cut]).is_none(), "cut at {cut}");
        }
        let mut flipped = b.clone();
        let at = flipped.len() - 6;
        flipped[at] ^= 1;
        assert!(parse(&flipped).is_none());
    }
}
