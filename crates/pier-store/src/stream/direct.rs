//! Appending to the active segment with `O_DIRECT` (when the stream fsyncs).
//!
//! Why: a buffered `write` copies every byte into the page cache, and on the machines Pier
//! was measured on that copy (new page-cache pages, at about 500 MB/s per core) was half of
//! the stream writer's time at 1 KiB messages; a direct write moves the bytes from this
//! buffer to the device (1.8 GB/s there, almost no CPU), and the fsync that follows has
//! no dirty pages left to flush. Readers are unaffected: they read committed chunks with
//! ordinary reads (the kernel keeps direct writes and the page cache coherent).
//!
//! Direct I/O needs the buffer, the file offset and the length aligned to the device's
//! block. The writer keeps the segment's last partial block in an aligned buffer: each
//! append writes that block again with the new bytes after it and zeros up to the next
//! block boundary. The file is therefore up to one block longer than its chunks until it
//! is trimmed ([`DirectAppender::trim`], when the segment is sealed or the log closes);
//! after a crash recovery cuts the zeros like any torn tail.
//!
//! Filesystems without `O_DIRECT` (tmpfs) and devices with larger blocks fall back to
//! buffered writes; nothing else changes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// File offsets, lengths and buffer addresses of direct writes are multiples of this (the
/// largest logical block size in common use).
pub(crate) const ALIGN: usize = 4096;

/// A zeroed byte buffer whose usable part starts at an `ALIGN`-aligned address: a `Vec`
/// with `ALIGN` spare bytes, used from its first aligned byte (no unsafe code needed).
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn with_capacity(cap: usize) -> AlignedBuf {
        let cap = cap.next_multiple_of(ALIGN).max(ALIGN);
        let raw = vec![0u8; cap + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf { raw, start, len: 0 }
    }

    fn capacity(&self) -> usize {
        self.raw.len() - ALIGN
    }

    fn bytes(&self, len: usize) -> &[u8] {
        self.raw.get(self.start..self.start + len).unwrap_or(&[])
    }

    /// Appends `data`, growing (and moving what it holds) when it does not fit.
    fn extend(&mut self, data: &[u8]) {
        let need = self.len + data.len() + ALIGN;
        if need > self.capacity() {
            let mut bigger = AlignedBuf::with_capacity(need.max(self.capacity() * 2));
            let held = self.len;
            bigger.put(0, self.bytes(held));
            bigger.len = held;
            *self = bigger;
        }
        let at = self.len;
        self.put(at, data);
        self.len += data.len();
    }

    fn put(&mut self, at: usize, data: &[u8]) {
        let from = self.start + at;
        if let Some(dst) = self.raw.get_mut(from..from + data.len()) {
            dst.copy_from_slice(data);
        }
    }

    /// Zeros from `len` to the next block boundary; returns that padded length.
    fn pad(&mut self) -> usize {
        let padded = self.len.next_multiple_of(ALIGN);
        let (from, to) = (self.start + self.len, self.start + padded);
        if let Some(tail) = self.raw.get_mut(from..to) {
            tail.fill(0);
        }
        padded
    }

    /// Drops the first `n` bytes (a multiple of `ALIGN`), keeping the rest at the front.
    fn drop_front(&mut self, n: usize) {
        let (from, to) = (self.start + n, self.start + self.len);
        self.raw.copy_within(from..to, self.start);
        self.len -= n;
    }
}

/// Why [`DirectAppender::append_built_with`] did not write.
#[derive(Debug)]
pub(crate) enum DirectError<E> {
    /// The block is not laid out for a direct write (nothing was done).
    Refused,
    /// The write could not be handed on.
    Write(E),
}

/// The active segment's direct-I/O writer.
pub(crate) struct DirectAppender {
    /// Shared with the stream's flusher, which writes from its own thread.
    file: Arc<File>,
    /// The bytes of the file from `base` (a block boundary) to the logical end.
    buf: AlignedBuf,
    base: u64,
    /// The file's length on disk is past the logical end (zeros after the last chunk).
    padded: bool,
    /// A direct write went through here: the device takes them (writes on another thread,
    /// whose failures cannot fall back, wait for this).
    proven: bool,
}

impl DirectAppender {
    /// Opens `path` for direct writes at logical length `len`, reading the partial block
    /// before it from `existing`. `None` when the filesystem refuses `O_DIRECT`.
    pub(crate) fn open(path: &Path, existing: &File, len: u64) -> Option<DirectAppender> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
            .ok()?;
        let base = len - len % ALIGN as u64;
        let partial = usize::try_from(len - base).ok()?;
        let mut head = vec![0u8; partial];
        existing.read_exact_at(&mut head, base).ok()?;
        let mut buf = AlignedBuf::with_capacity(1 << 20);
        buf.extend(&head);
        Some(DirectAppender {
            file: Arc::new(file),
            buf,
            base,
            padded: false,
            proven: false,
        })
    }

    /// Writes `parts`, one after the other, at the logical end. An error leaves the file's
    /// logical content as it was (the caller may fall back to buffered writes at the same
    /// end).
    pub(crate) fn append(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        let held = self.buf.len;
        for p in parts {
            self.buf.extend(p);
        }
        let padded = self.buf.pad();
        if let Err(e) = self.file.write_all_at(self.buf.bytes(padded), self.base) {
            self.buf.len = held;
            return Err(e);
        }
        self.padded = true;
        self.proven = true;
        let whole = self.buf.len - self.buf.len % ALIGN;
        self.buf.drop_front(whole);
        self.base += whole as u64;
        Ok(())
    }

    /// The bytes from the last block boundary to the logical end (fewer than `ALIGN`): what
    /// a chunk built in place must have before it ([`DirectAppender::append_built`]).
    pub(crate) fn tail(&self) -> &[u8] {
        self.buf.bytes(self.buf.len)
    }

    /// Writes `block` at the last block boundary: it starts at an `ALIGN`-aligned address
    /// with [`DirectAppender::tail`], then the new bytes up to `logical`, then zeros up to a
    /// multiple of `ALIGN`. The bytes are written from where they are (no copy but the new
    /// tail's). Refused with `InvalidInput`, nothing written, when `block` is not so laid out.
    pub(crate) fn append_built(&mut self, block: &[u8], logical: usize) -> std::io::Result<()> {
        self.check_built(block, logical)?;
        self.file.write_all_at(block, self.base)?;
        self.proven = true;
        self.built_written(block, logical);
        Ok(())
    }

    /// A direct write went through (see `proven`).
    pub(crate) fn proven(&self) -> bool {
        self.proven
    }

    /// As [`DirectAppender::append_built`], but the write is left to `write` (given the
    /// file and the offset: the stream's flusher writes it later, in order). The appender
    /// moves on as if it were written.
    pub(crate) fn append_built_with<E>(
        &mut self,
        block: &[u8],
        logical: usize,
        write: impl FnOnce(Arc<File>, u64) -> Result<(), E>,
    ) -> Result<(), DirectError<E>> {
        self.check_built(block, logical)
            .map_err(|_| DirectError::Refused)?;
        write(Arc::clone(&self.file), self.base).map_err(DirectError::Write)?;
        self.built_written(block, logical);
        Ok(())
    }

    /// Refuses with `InvalidInput` a block not laid out as a built chunk must be.
    fn check_built(&self, block: &[u8], logical: usize) -> std::io::Result<()> {
        let held = self.buf.len;
        if block.as_ptr().align_offset(ALIGN) != 0
            || block.len() % ALIGN != 0
            || logical > block.len()
            || logical < held
            || block.get(..held) != Some(self.tail())
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "chunk not built for a direct write",
            ));
        }
        Ok(())
    }

    /// Keeps the new partial block after a built block is written.
    fn built_written(&mut self, block: &[u8], logical: usize) {
        self.padded = true;
        let whole = logical - logical % ALIGN;
        self.buf.len = 0;
        self.buf
            .extend(block.get(whole..logical).unwrap_or_default());
        self.base += whole as u64;
    }

    /// The logical end of the file.
    pub(crate) fn len(&self) -> u64 {
        self.base + self.buf.len as u64
    }

    /// Cuts the zeros after the last chunk (the segment is sealed or the log closes).
    pub(crate) fn trim(&mut self, buffered: &File) -> std::io::Result<()> {
        if self.padded {
            buffered.set_len(self.len())?;
            self.padded = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// A new, empty segment file in `dir`, opened for buffered reads and writes.
    fn segment(dir: &tempfile::TempDir) -> (std::path::PathBuf, File) {
        let path = dir.path().join("seg");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    /// Whatever the write sizes, the file reads back as the bytes appended (after a trim),
    /// and before the trim only zeros follow them.
    #[test]
    fn appends_read_back_whatever_their_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let (path, buffered) = segment(&dir);
        buffered.write_all_at(b"HEADER!!", 0).unwrap();
        let Some(mut d) = DirectAppender::open(&path, &buffered, 8) else {
            return; // no O_DIRECT here (tmpfs): the buffered path is tested elsewhere
        };
        let mut want = b"HEADER!!".to_vec();
        for (i, n) in [1usize, 4095, 4096, 4097, 10_000, 3, 70_000, 1]
            .iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..*n).map(|j| (i * 31 + j) as u8).collect();
            d.append(&[&data[..n / 3], &data[n / 3..]]).unwrap();
            want.extend_from_slice(&data);
            assert_eq!(d.len(), want.len() as u64);
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(&on_disk[..want.len()], &want[..]);
            assert!(on_disk[want.len()..].iter().all(|b| *b == 0));
            assert_eq!(on_disk.len() % ALIGN, 0);
        }
        d.trim(&buffered).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
        // Reopened at its end, it goes on where it was.
        let mut d = DirectAppender::open(&path, &buffered, want.len() as u64).unwrap();
        d.append(&[b"more"]).unwrap();
        d.trim(&buffered).unwrap();
        want.extend_from_slice(b"more");
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    /// Blocks built in place (the tail, new bytes, zeros) and ordinary appends interleave;
    /// a block not so laid out is refused before anything is written.
    #[test]
    fn blocks_built_in_place_interleave_with_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (path, buffered) = segment(&dir);
        let Some(mut d) = DirectAppender::open(&path, &buffered, 0) else {
            return; // no O_DIRECT here (tmpfs)
        };
        let mut want = Vec::new();
        for (i, n) in [5000usize, 1, 4096, 12_345, 3].iter().enumerate() {
            let data: Vec<u8> = (0..*n).map(|j| (i * 7 + j) as u8).collect();
            if i % 2 == 0 {
                let mut block = AlignedBuf::with_capacity(d.tail().len() + n + ALIGN);
                block.extend(d.tail());
                block.extend(&data);
                let logical = block.len;
                let padded = block.pad();
                // Wrongly laid out: refused, nothing written.
                let held = std::fs::read(&path).unwrap();
                let bad = d.append_built(
                    block.bytes(padded).get(1..).unwrap_or_default(),
                    logical - 1,
                );
                assert_eq!(bad.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
                assert_eq!(std::fs::read(&path).unwrap(), held);
                d.append_built(block.bytes(padded), logical).unwrap();
            } else {
                d.append(&[&data]).unwrap();
            }
            want.extend_from_slice(&data);
            assert_eq!(d.len(), want.len() as u64);
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(&on_disk[..want.len()], &want[..]);
            assert!(on_disk[want.len()..].iter().all(|b| *b == 0));
        }
        d.trim(&buffered).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }
}
