//! The local spool: where a message waits, durable on disk, while Supabase cannot take it.
//!
//! An append-only log split into segment files `NNNNNNNNNNNNNNNNNNNN.spool`. Each record is
//! `[length u32 LE][crc32 u32 LE][bytes]`, appended and fsynced before the request that carried it is
//! acknowledged. A crash can only tear the tail of the segment being written, and the checksum
//! tells a torn record from a whole one, so it is skipped and never misread. Segments are removed
//! whole, once every record in them is committed elsewhere.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

const SUFFIX: &str = ".spool";
const HEADER: usize = 8;
/// Far above any webhook the body limit lets in; a larger length can only be a torn header.
const MAX_RECORD: usize = 16 * 1024 * 1024;

enum Command {
    Append(Vec<u8>, oneshot::Sender<io::Result<()>>),
    Rotate(oneshot::Sender<io::Result<Vec<PathBuf>>>),
}

/// A handle on the spool; clones share one writer.
#[derive(Clone)]
pub struct Spool {
    commands: mpsc::Sender<Command>,
    depth: Arc<AtomicU64>,
}

/// The records of one closed segment, as far as they could be read intact.
#[derive(Debug)]
pub struct Segment {
    pub path: PathBuf,
    pub records: Vec<Vec<u8>>,
    /// Bytes at the end that did not form a whole record: a write torn by a crash.
    pub torn_bytes: usize,
}

impl Spool {
    /// Opens the spool in `dir`, creating it if need be. Segments left by an earlier process are
    /// kept, to be replayed.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let existing = segments(dir)?;
        let next_seq = existing.last().map_or(0, |(seq, _)| seq + 1);
        let mut depth = 0;
        for (_, path) in &existing {
            depth += read_segment(path)?.records.len() as u64;
        }
        let depth = Arc::new(AtomicU64::new(depth));
        let (commands, receiver) = mpsc::channel();
        let writer = Writer { dir: dir.to_owned(), next_seq, active: None, depth: depth.clone() };
        std::thread::Builder::new().name("spool-writer".into()).spawn(move || writer.run(receiver))?;
        Ok(Spool { commands, depth })
    }

    /// Appends one record and returns once it is on disk.
    pub async fn append(&self, record: Vec<u8>) -> io::Result<()> {
        let (reply, done) = oneshot::channel();
        self.commands.send(Command::Append(record, reply)).map_err(|_| writer_gone())?;
        done.await.map_err(|_| writer_gone())?
    }

    /// Closes the segment being written and returns every closed segment, oldest first.
    pub async fn rotate(&self) -> io::Result<Vec<PathBuf>> {
        let (reply, done) = oneshot::channel();
        self.commands.send(Command::Rotate(reply)).map_err(|_| writer_gone())?;
        done.await.map_err(|_| writer_gone())?
    }

    /// Removes a segment whose records are all committed elsewhere.
    pub fn remove(&self, segment: &Segment) -> io::Result<()> {
        fs::remove_file(&segment.path)?;
        self.depth.fetch_sub(segment.records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Records waiting in the spool.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }
}

fn writer_gone() -> io::Error {
    io::Error::other("the spool writer has stopped")
}

struct Writer {
    dir: PathBuf,
    next_seq: u64,
    active: Option<File>,
    depth: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        let mut waiting = Vec::new();
        while let Ok(first) = commands.recv() {
            let mut rotate = None;
            match first {
                Command::Append(record, reply) => waiting.push((record, reply)),
                Command::Rotate(reply) => rotate = Some(reply),
            }
            // Group commit: every append that queued up meanwhile shares one fsync.
            while rotate.is_none() {
                match commands.try_recv() {
                    Ok(Command::Append(record, reply)) => waiting.push((record, reply)),
                    Ok(Command::Rotate(reply)) => rotate = Some(reply),
                    Err(_) => break,
                }
            }
            if !waiting.is_empty() {
                let records: Vec<&[u8]> = waiting.iter().map(|(r, _)| r.as_slice()).collect();
                let result = self.append(&records);
                if result.is_ok() {
                    self.depth.fetch_add(waiting.len() as u64, Ordering::Relaxed);
                }
                for (_, reply) in waiting.drain(..) {
                    let _ = reply.send(result.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string())));
                }
            }
            if let Some(reply) = rotate {
                // Dropping the file closes it; every append to it was already fsynced.
                self.active = None;
                let _ = reply.send(segments(&self.dir).map(|s| s.into_iter().map(|(_, p)| p).collect()));
            }
        }
    }

    fn append(&mut self, records: &[&[u8]]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.len() + HEADER).sum());
        for record in records {
            if record.len() > MAX_RECORD {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "record too large for the spool"));
            }
            buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
            buf.extend_from_slice(record);
        }
        if self.active.is_none() {
            let path = self.dir.join(format!("{:020}{SUFFIX}", self.next_seq));
            let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
            // The new name must survive a crash too, not only the bytes in it.
            File::open(&self.dir)?.sync_all()?;
            self.next_seq += 1;
            self.active = Some(file);
        }
        let file = self.active.as_mut().expect("opened above");
        let written = file.write_all(&buf).and_then(|_| file.sync_data());
        if written.is_err() {
            // A failed write may have left a partial record; later appends go to a fresh segment.
            self.active = None;
        }
        written
    }
}

/// The spool's segments, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Reads a segment's records up to the first that is not whole.
pub fn read_segment(path: &Path) -> io::Result<Segment> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(record) = bytes.get(at + HEADER..at + HEADER + len).filter(|_| len <= MAX_RECORD) else { break };
        if crc32fast::hash(record) != crc {
            break;
        }
        records.push(record.to_vec());
        at += HEADER + len;
    }
    Ok(Segment { path: path.to_owned(), records, torn_bytes: bytes.len() - at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spool-test-{name}-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn records_come_back_in_order_after_a_rotation() {
        let dir = temp_dir("order");
        let spool = Spool::open(&dir).unwrap();
        for i in 0..5u8 {
            spool.append(vec![i; 10]).await.unwrap();
        }
        assert_eq!(spool.depth(), 5);
        let segs = spool.rotate().await.unwrap();
        assert_eq!(segs.len(), 1);
        let seg = read_segment(&segs[0]).unwrap();
        assert_eq!(seg.records, (0..5u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
        spool.remove(&seg).unwrap();
        assert_eq!(spool.depth(), 0);
        assert!(spool.rotate().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_torn_last_record_is_skipped_and_the_rest_survive_a_restart() {
        let dir = temp_dir("torn");
        {
            let spool = Spool::open(&dir).unwrap();
            spool.append(b"first".to_vec()).await.unwrap();
            spool.append(b"second".to_vec()).await.unwrap();
        }
        let (_, path) = segments(&dir).unwrap().pop().unwrap();
        // A crash in the middle of a third append: a whole header, half the bytes.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&20u32.to_le_bytes()).unwrap();
        file.write_all(&crc32fast::hash(b"third record, whole!").to_le_bytes()).unwrap();
        file.write_all(b"third rec").unwrap();
        drop(file);

        let spool = Spool::open(&dir).unwrap();
        assert_eq!(spool.depth(), 2);
        spool.append(b"after restart".to_vec()).await.unwrap();
        let segs = spool.rotate().await.unwrap();
        assert_eq!(segs.len(), 2, "a restart writes to a new segment");
        let old = read_segment(&segs[0]).unwrap();
        assert_eq!(old.records, vec![b"first".to_vec(), b"second".to_vec()]);
        assert_eq!(old.torn_bytes, 17);
        assert_eq!(read_segment(&segs[1]).unwrap().records, vec![b"after restart".to_vec()]);
    }

    #[tokio::test]
    async fn a_flipped_bit_is_detected_not_misread() {
        let dir = temp_dir("crc");
        let spool = Spool::open(&dir).unwrap();
        spool.append(b"hello".to_vec()).await.unwrap();
        spool.append(b"world".to_vec()).await.unwrap();
        let path = spool.rotate().await.unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        let seg = read_segment(&path).unwrap();
        assert_eq!(seg.records, vec![b"hello".to_vec()]);
        assert_eq!(seg.torn_bytes, HEADER + 5);
    }

    #[tokio::test]
    async fn concurrent_appends_all_land() {
        let dir = temp_dir("concurrent");
        let spool = Spool::open(&dir).unwrap();
        let tasks: Vec<_> = (0..50u32)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.append(i.to_le_bytes().to_vec()).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let segs = spool.rotate().await.unwrap();
        let mut all: Vec<u32> = segs
            .iter()
            .flat_map(|p| read_segment(p).unwrap().records)
            .map(|r| u32::from_le_bytes(r.try_into().unwrap()))
            .collect();
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
    }
}
