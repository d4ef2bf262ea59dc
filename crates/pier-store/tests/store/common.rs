use std::path::Path;

use pier_store::{SegmentStore, StoreConfig};

/// Small segments so that a few hundred messages span several files.
pub fn small_config() -> StoreConfig {
    StoreConfig {
        segment_size: 64 << 10,
        ..StoreConfig::default()
    }
}

pub fn open(dir: &Path) -> SegmentStore {
    SegmentStore::open(dir, small_config()).unwrap()
}

pub fn files_with(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}
