//! The write-ahead log that makes writes durable: every applied write is appended here and
//! made durable with one `fdatasync` per group commit. sled holds the indexed state and is
//! flushed in the background; before each sled flush the log is rotated (`wal.log` →
//! `wal.old`), and after it `wal.old` is dropped, since everything in it is then in sled.
//!
//! Record: `len:u32le | crc32(rev|event):u32le | rev:i64le | event` (event as in `codec`).
//! A torn or corrupt tail (a crash mid-append) ends replay at the last whole record.

use crate::{Result, Revision, StoreError};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub struct Wal {
    dir: PathBuf,
    file: File,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

pub fn encode_record(rev: Revision, event: &[u8], out: &mut Vec<u8>) {
    let mut h = crc32fast::Hasher::new();
    h.update(&rev.to_le_bytes());
    h.update(event);
    out.extend_from_slice(&((8 + event.len()) as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&rev.to_le_bytes());
    out.extend_from_slice(event);
}

/// Reads whole, valid records from a log file; stops at the first torn or corrupt one.
pub fn read_records(path: &Path) -> Result<Vec<(Revision, Vec<u8>)>> {
    let mut buf = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut buf)
                .map_err(|e| io_err("reading", path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("opening", path, e)),
    }
    let mut out = Vec::new();
    let mut p = 0;
    while p + 8 <= buf.len() {
        let len = u32::from_le_bytes(buf[p..p + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(buf[p + 4..p + 8].try_into().unwrap());
        if len < 8 || p + 8 + len > buf.len() {
            break;
        }
        let body = &buf[p + 8..p + 8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        let rev = i64::from_le_bytes(body[..8].try_into().unwrap());
        out.push((rev, body[8..].to_vec()));
        p += 8 + len;
    }
    Ok(out)
}

impl Wal {
    pub fn log_path(dir: &Path) -> PathBuf {
        dir.join("wal.log")
    }
    pub fn old_path(dir: &Path) -> PathBuf {
        dir.join("wal.old")
    }

    pub fn open(dir: &Path) -> Result<Wal> {
        let path = Self::log_path(dir);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err("opening", &path, e))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
        })
    }

    /// Appends encoded records and makes them durable.
    pub fn append_sync(&mut self, bytes: &[u8]) -> Result<()> {
        let path = Self::log_path(&self.dir);
        self.file
            .write_all(bytes)
            .map_err(|e| io_err("appending to", &path, e))?;
        self.file
            .sync_data()
            .map_err(|e| io_err("syncing", &path, e))
    }

    /// Moves the current log aside as `wal.old` (appending to an existing `wal.old`, which
    /// only exists if an earlier sled flush failed) and starts a new, empty log.
    pub fn rotate(&mut self) -> Result<()> {
        let log = Self::log_path(&self.dir);
        let old = Self::old_path(&self.dir);
        if old.exists() {
            let mut existing = OpenOptions::new()
                .append(true)
                .open(&old)
                .map_err(|e| io_err("opening", &old, e))?;
            let mut cur = Vec::new();
            File::open(&log)
                .and_then(|mut f| f.read_to_end(&mut cur))
                .map_err(|e| io_err("reading", &log, e))?;
            existing
                .write_all(&cur)
                .and_then(|_| existing.sync_data())
                .map_err(|e| io_err("appending to", &old, e))?;
            std::fs::remove_file(&log).map_err(|e| io_err("removing", &log, e))?;
        } else {
            std::fs::rename(&log, &old).map_err(|e| io_err("renaming", &log, e))?;
        }
        *self = Wal::open(&self.dir)?;
        sync_dir(&self.dir)
    }

    /// Drops `wal.old` once sled holds everything in it.
    pub fn drop_old(&self) -> Result<()> {
        let old = Self::old_path(&self.dir);
        match std::fs::remove_file(&old) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &old, e)),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_torn_tails_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path()).unwrap();
        let mut buf = Vec::new();
        encode_record(1, b"one", &mut buf);
        encode_record(2, b"two", &mut buf);
        w.append_sync(&buf).unwrap();
        // A torn third record.
        w.append_sync(&[20, 0, 0, 0, 1, 2]).unwrap();
        let recs = read_records(&Wal::log_path(dir.path())).unwrap();
        assert_eq!(recs, vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
        w.rotate().unwrap();
        assert_eq!(read_records(&Wal::old_path(dir.path())).unwrap().len(), 2);
        assert!(read_records(&Wal::log_path(dir.path())).unwrap().is_empty());
        w.drop_old().unwrap();
        assert!(!Wal::old_path(dir.path()).exists());
    }
}
