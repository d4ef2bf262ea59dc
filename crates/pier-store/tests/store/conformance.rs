use pier_store::conformance::{run_suite, Backend};
use pier_store::{MemoryDisk, MemoryStore, MessageStore, SegmentStore};

use super::common::small_config;

struct Segments {
    dir: Option<tempfile::TempDir>,
}

impl Backend for Segments {
    fn fresh(&mut self) {
        self.dir = Some(tempfile::tempdir().unwrap());
    }
    fn open(&mut self) -> Box<dyn MessageStore> {
        let dir = self.dir.as_ref().unwrap().path();
        Box::new(SegmentStore::open(dir, small_config()).unwrap())
    }
}

struct Memory {
    disk: MemoryDisk,
}

impl Backend for Memory {
    fn fresh(&mut self) {
        self.disk = MemoryDisk::new();
    }
    fn open(&mut self) -> Box<dyn MessageStore> {
        Box::new(MemoryStore::open(self.disk.clone()))
    }
}

#[test]
fn segment_store_conforms() {
    run_suite(&mut Segments { dir: None });
}

#[test]
fn memory_store_conforms() {
    run_suite(&mut Memory {
        disk: MemoryDisk::new(),
    });
}
