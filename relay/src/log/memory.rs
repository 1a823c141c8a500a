//! The log in memory: for tests of what sits on the seam, and runs that need no file.

use protocol::{Counter, LogCursor, LogEntry, PeerId, Version};
use std::sync::RwLock;

/// Entries in a vector; gone with the process.
#[derive(Default)]
pub struct MemoryLog {
    entries: RwLock<Vec<LogEntry>>,
}

impl MemoryLog {
    pub fn head(&self) -> Version {
        Version(
            self.entries
                .read()
                .expect("no panics while holding it")
                .len() as u64,
        )
    }

    pub fn append(&self, entries: &[LogEntry]) {
        self.entries
            .write()
            .expect("no panics while holding it")
            .extend_from_slice(entries);
    }

    pub fn read(&self, from: Version, to: Version) -> Vec<LogEntry> {
        let entries = self.entries.read().expect("no panics while holding it");
        let to = (to.0 as usize).min(entries.len());
        entries[(from.0 as usize).min(to)..to].to_vec()
    }

    pub fn counter_table(&self, at: Version) -> Vec<(PeerId, Counter)> {
        let mut cursor = LogCursor::new(Version(0), []);
        for entry in self.read(Version(0), at) {
            cursor.pack_one(&entry);
        }
        cursor.table()
    }
}
