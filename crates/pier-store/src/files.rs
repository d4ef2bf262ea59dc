//! File naming, the 16-byte file header, and the few syscalls wrapped with their path for
//! error messages.
//!
//! ```text
//!  file header (every store file)
//!  +----------------------+-----------+-----------+
//!  | magic (8 bytes)      | version   | file id   |
//!  | "PIERSEG\0" segment  |  u32 LE   |  u32 LE   |
//!  | "PIERACK\0" acks     |  = 1      | segment   |
//!  | "PIERQUE\0" registry |           | id (or 0) |
//!  +----------------------+-----------+-----------+
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::StoreError;

pub const FILE_HEADER_LEN: usize = 16;
/// Version of ack files and the registry.
pub const VERSION: u32 = 1;
/// Version of the segments this store writes.
pub const SEGMENT_VERSION: u32 = 2;
/// Segment versions this store reads.
const SEGMENT_VERSIONS: [u32; 2] = [1, 2];
pub const SEGMENT_MAGIC: &[u8; 8] = b"PIERSEG\0";
pub const ACK_MAGIC: &[u8; 8] = b"PIERACK\0";
pub const REGISTRY_MAGIC: &[u8; 8] = b"PIERQUE\0";

/// The header a new file of this kind gets (segments: [`SEGMENT_VERSION`]).
pub fn header(magic: &[u8; 8], id: u32) -> [u8; FILE_HEADER_LEN] {
    let version = if magic == SEGMENT_MAGIC {
        SEGMENT_VERSION
    } else {
        VERSION
    };
    header_version(magic, version, id)
}

pub fn header_version(magic: &[u8; 8], version: u32, id: u32) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    let parts = magic
        .iter()
        .copied()
        .chain(version.to_le_bytes())
        .chain(id.to_le_bytes());
    for (dst, src) in h.iter_mut().zip(parts) {
        *dst = src;
    }
    h
}

/// Whether `buf` starts with a header this store reads for a file of this kind and id.
pub fn header_ok(buf: &[u8], magic: &[u8; 8], id: u32) -> bool {
    let versions: &[u32] = if magic == SEGMENT_MAGIC {
        &SEGMENT_VERSIONS
    } else {
        &[VERSION]
    };
    versions
        .iter()
        .any(|&v| buf.get(..FILE_HEADER_LEN) == Some(&header_version(magic, v, id)[..]))
}

pub fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08x}.seg"))
}

pub fn ack_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08x}.ack"))
}

/// Parses `0000002a.seg` / `0000002a.ack` into (id, is_ack).
pub fn parse_name(name: &str) -> Option<(u32, bool)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 8 {
        return None;
    }
    let id = u32::from_str_radix(stem, 16).ok()?;
    match ext {
        "seg" => Some((id, false)),
        "ack" => Some((id, true)),
        _ => None,
    }
}

/// Creates a new file holding just its header (fails if it exists: ids are never reused).
pub fn create_with_header(path: &Path, magic: &[u8; 8], id: u32) -> Result<File, StoreError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| StoreError::io("create", path, e))?;
    if let Err(e) = f.write_all(&header(magic, id)) {
        // Disk full: do not leave a headerless file behind, or the retry (same id) would
        // find it and fail forever.
        let _ = std::fs::remove_file(path);
        return Err(StoreError::io("write header", path, e));
    }
    Ok(f)
}

pub fn open_rw(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io("open", path, e))
}

/// fsync of a directory, so that file creations, renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("sync directory", dir, e))
}

pub fn datasync(file: &File, path: &Path) -> Result<(), StoreError> {
    file.sync_data()
        .map_err(|e| StoreError::io("fdatasync", path, e))
}

pub fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let dir = Path::new("/x");
        let p = segment_path(dir, 42);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "0000002a.seg");
        assert_eq!(parse_name(name), Some((42, false)));
        assert_eq!(parse_name("0000002a.ack"), Some((42, true)));
        assert_eq!(parse_name("2a.seg"), None);
        assert_eq!(parse_name("0000002a.tmp"), None);
        assert_eq!(parse_name("zzzzzzzz.seg"), None);
    }

    #[test]
    fn header_checks_magic_version_and_id() {
        let h = header(SEGMENT_MAGIC, 7);
        assert!(header_ok(&h, SEGMENT_MAGIC, 7));
        assert!(!header_ok(&h, SEGMENT_MAGIC, 8));
        assert!(!header_ok(&h, ACK_MAGIC, 7));
        assert!(!header_ok(&h[..10], SEGMENT_MAGIC, 7));
    }

    #[test]
    fn segments_of_both_versions_are_read_new_ones_are_version_2() {
        assert_eq!(header(SEGMENT_MAGIC, 1)[8], 2);
        assert_eq!(header(ACK_MAGIC, 1)[8], 1);
        for v in [1, 2] {
            assert!(header_ok(
                &header_version(SEGMENT_MAGIC, v, 3),
                SEGMENT_MAGIC,
                3
            ));
        }
        assert!(!header_ok(
            &header_version(SEGMENT_MAGIC, 3, 3),
            SEGMENT_MAGIC,
            3
        ));
        assert!(!header_ok(&header_version(ACK_MAGIC, 2, 3), ACK_MAGIC, 3));
    }
}
