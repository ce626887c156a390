//! The local spool: where a message waits, durable on disk, while Supabase cannot take it.
//!
//! An append-only log split into segment files `NNNNNNNNNNNNNNNNNNNN.records`, each at most about
//! [`SEGMENT_TARGET`] long so that replay holds one small segment at a time. A record is
//!
//! ```text
//! [magic FF 'T' 'I' '1'][length u32 LE][crc32 of length + bytes, u32 LE][bytes]
//! ```
//!
//! appended and fsynced before the request that carried it is acknowledged. The magic cannot occur
//! in a record's bytes (they are JSON, valid UTF-8, which never holds 0xFF), so a reader that meets
//! damage finds the next record by looking for it, and the checksum covers the length, so neither
//! zeros (what a filesystem may leave after a crash) nor garbage can pass for a record. Damage
//! anywhere costs only the damaged bytes: they are moved aside to `quarantine/`, never deleted, and
//! every whole record around them is replayed. Segments are removed whole, once every record in
//! them is committed elsewhere.
//!
//! One process owns a spool directory at a time, since replay removes segments another writer
//! could still be appending to. The lock is on the directory itself, not on a file in it: there is
//! nothing an operator can delete to break it, and nothing a command run as root leaves behind
//! that the service's own user could not open. (Releases before this one locked `.lock`, which is
//! now left alone.) Should something remove the segment being written all the same, the writer
//! notices before it acknowledges anything written to it, and writes those records again to a new
//! segment.
//!
//! Segments written before this format (`NNNN.spool`, `[length][crc32][bytes]`) are still read, so
//! an upgrade with a non-empty spool loses nothing.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;

const SUFFIX: &str = ".records";
const LEGACY_SUFFIX: &str = ".spool";
const MAGIC: [u8; 4] = [0xFF, b'T', b'I', b'1'];
const HEADER: usize = 12;
const LEGACY_HEADER: usize = 8;
/// Far above any webhook the body limit lets in; a larger length can only be damage.
const MAX_RECORD: usize = 16 * 1024 * 1024;
/// A segment is closed once it is this long, so a replay reads a few MiB at a time however long
/// the outage was.
const SEGMENT_TARGET: u64 = 4 * 1024 * 1024;
/// Below this much free space the spool is reported unhealthy: it could not take an outage's worth
/// of messages for long.
pub const MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;
const QUARANTINE: &str = "quarantine";

enum Command {
    Append(Vec<u8>, oneshot::Sender<io::Result<()>>),
    Rotate(oneshot::Sender<io::Result<Vec<PathBuf>>>),
}

/// A handle on the spool; clones share one writer.
#[derive(Clone)]
pub struct Spool {
    dir: PathBuf,
    commands: mpsc::Sender<Command>,
    ledger: Arc<Mutex<Ledger>>,
}

/// How many whole records each segment on disk holds: the spool's depth is their sum, derived from
/// what is on disk rather than kept by adding and subtracting, so no failure can make it drift.
#[derive(Default, Debug)]
struct Ledger {
    segments: BTreeMap<PathBuf, u64>,
}

impl Ledger {
    fn depth(&self) -> u64 {
        self.segments.values().sum()
    }
}

/// The records of one closed segment that could be read, and what could not.
#[derive(Debug)]
pub struct Segment {
    pub path: PathBuf,
    pub records: Vec<Vec<u8>>,
    pub damage: Vec<Damage>,
}

/// Bytes of a segment that form no whole record: a write torn by a crash, zeros, or corruption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// What `twilio-ingest spool status` reports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Status {
    pub depth: u64,
    pub segments: usize,
    pub bytes: u64,
    pub damaged_bytes: u64,
    /// The first record's bytes, to show the oldest message waiting.
    pub oldest: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("SPOOL_DIR {0} is in use by another twilio-ingest process (stop it, or use `spool status`)")]
    Locked(String),
    #[error("cannot use SPOOL_DIR {dir}: {source}")]
    Io { dir: String, source: io::Error },
}

impl Spool {
    /// Opens the spool in `dir`, creating it if need be, and takes the directory for this process.
    /// Segments left by an earlier process are kept, to be replayed.
    pub fn open(dir: &Path) -> Result<Spool, OpenError> {
        let io_error = |source| OpenError::Io { dir: dir.display().to_string(), source };
        fs::create_dir_all(dir).map_err(io_error)?;
        // The lock no longer writes anything: make sure the directory can take a record.
        probe_writable(dir, b"").map_err(io_error)?;
        let lock = File::open(dir).map_err(io_error)?;
        // A moment's grace: an owner in this process (an app being rebuilt) lets go of the lock
        // when its writer thread ends, just after its last handle is dropped.
        let mut tries = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(dir.display().to_string())),
                Err(fs::TryLockError::Error(e)) => return Err(io_error(e)),
            }
        }
        let existing = segments(dir).map_err(io_error)?;
        let next_seq = existing.last().map_or(0, |(seq, _)| seq + 1);
        let mut ledger = Ledger::default();
        for (_, path) in &existing {
            ledger.segments.insert(path.clone(), read_segment(path).map_err(io_error)?.records.len() as u64);
        }
        let ledger = Arc::new(Mutex::new(ledger));
        let (commands, receiver) = mpsc::channel();
        let writer = Writer { dir: dir.to_owned(), next_seq, active: None, ledger: ledger.clone(), _lock: lock };
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(io_error)?;
        Ok(Spool { dir: dir.to_owned(), commands, ledger })
    }

    /// Appends one record and returns once it is on disk. An error means the record is not in
    /// the spool: the writer cuts a failed write back off the segment.
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

    /// Moves a segment's damaged bytes aside, into `quarantine/`, before the segment is removed:
    /// what could not be read is kept for a person to look at, never deleted.
    pub fn quarantine(&self, segment: &Segment) -> io::Result<()> {
        if segment.damage.is_empty() {
            return Ok(());
        }
        let dir = self.dir.join(QUARANTINE);
        fs::create_dir_all(&dir)?;
        let name = segment.path.file_name().and_then(|n| n.to_str()).unwrap_or("segment");
        for damage in &segment.damage {
            let path = dir.join(format!("{name}.{}.damaged", damage.offset));
            let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
            file.write_all(&damage.bytes)?;
            file.sync_all()?;
            tracing::error!(
                segment = %segment.path.display(),
                offset = damage.offset,
                bytes = damage.bytes.len(),
                moved_to = %path.display(),
                "damaged spool bytes: not a record; moved aside, the records around them are replayed"
            );
            metrics::counter!("spool_damaged_bytes_total").increment(damage.bytes.len() as u64);
            metrics::counter!("spool_damaged_regions_total").increment(1);
        }
        File::open(&dir)?.sync_all()
    }

    /// Removes a segment whose records are all committed elsewhere (and whose damage, if any, is
    /// quarantined).
    pub fn remove(&self, segment: &Segment) -> io::Result<()> {
        fs::remove_file(&segment.path)?;
        self.ledger.lock().expect("the ledger is never poisoned").segments.remove(&segment.path);
        Ok(())
    }

    /// Records waiting in the spool.
    pub fn depth(&self) -> u64 {
        self.ledger.lock().expect("the ledger is never poisoned").depth()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn writer_gone() -> io::Error {
    io::Error::other("the spool writer has stopped")
}

struct Writer {
    dir: PathBuf,
    next_seq: u64,
    active: Option<Active>,
    ledger: Arc<Mutex<Ledger>>,
    /// Held while the writer runs: the directory, locked.
    _lock: File,
}

struct Active {
    path: PathBuf,
    file: File,
    len: u64,
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
                for (_, reply) in waiting.drain(..) {
                    let _ =
                        reply.send(result.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string())));
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
        self.append_records(records, false)
    }

    fn append_records(&mut self, records: &[&[u8]], retried: bool) -> io::Result<()> {
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.len() + HEADER).sum());
        for record in records {
            if record.is_empty() || record.len() > MAX_RECORD {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "a spool record must hold 1 byte to 16 MiB"));
            }
            encode(record, &mut buf);
        }
        if self.active.as_ref().is_some_and(|a| a.len >= SEGMENT_TARGET) {
            self.active = None;
        }
        if self.active.is_none() {
            let path = self.dir.join(format!("{:020}{SUFFIX}", self.next_seq));
            let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
            self.next_seq += 1;
            // The new name must survive a crash too, not only the bytes in it.
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
            self.ledger.lock().expect("the ledger is never poisoned").segments.insert(path.clone(), 0);
            self.active = Some(Active { path, file, len: 0 });
        }
        let active = self.active.as_mut().expect("opened above");
        match active.file.write_all(&buf).and_then(|()| active.file.sync_data()) {
            Ok(()) if removed(&active.file) => {
                // Durable in a file no directory holds: nothing would ever replay it. Write the
                // group again to a new segment before anyone is told it is stored.
                tracing::error!(
                    segment = %active.path.display(),
                    "the spool's active segment was removed by something else; what it held is lost; \
                     writing to a new segment"
                );
                metrics::counter!("spool_segments_removed_total").increment(1);
                let path = active.path.clone();
                self.active = None;
                self.ledger.lock().expect("the ledger is never poisoned").segments.remove(&path);
                if retried {
                    return Err(io::Error::other("the spool's segments are being removed as they are written"));
                }
                self.append_records(records, true)
            }
            Ok(()) => {
                active.len += buf.len() as u64;
                *self
                    .ledger
                    .lock()
                    .expect("the ledger is never poisoned")
                    .segments
                    .entry(active.path.clone())
                    .or_default() += records.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A full disk may have taken part of the group. Cut it off, so that what the callers
                // are told (not stored) is true, and write later appends to a fresh segment. If even
                // that fails, a reader skips the partial record as damage; a whole one would be
                // replayed although its caller was answered 503, which costs a duplicate at most.
                let _ = active.file.set_len(active.len).and_then(|()| active.file.sync_data());
                self.active = None;
                Err(e)
            }
        }
    }
}

/// Creates a file in `dir` and removes it, writing and syncing `bytes` in between: what a spooled
/// message will need of it. With no bytes, it asks only whether the directory may be written
/// (a full disk may still start, to answer 503 truthfully until it has room).
fn probe_writable(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let written = OpenOptions::new().create(true).truncate(true).write(true).open(&probe).and_then(|mut f| {
        if bytes.is_empty() {
            Ok(())
        } else {
            f.write_all(bytes).and_then(|()| f.sync_all())
        }
    });
    let _ = fs::remove_file(&probe);
    written
}

/// Whether `file` has been unlinked from every directory (a file's link count is read from the
/// open file, so this holds whatever became of its name).
fn removed(file: &File) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    file.metadata().is_ok_and(|m| m.nlink() == 0)
}

fn encode(record: &[u8], buf: &mut Vec<u8>) {
    let len = (record.len() as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(record);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(record);
}

/// The spool's segments (both formats), oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SUFFIX).or_else(|| n.strip_suffix(LEGACY_SUFFIX)))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Reads a segment: every whole record, and every stretch of bytes that is not one.
pub fn read_segment(path: &Path) -> io::Result<Segment> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let (records, damage) = if path.extension().is_some_and(|e| format!(".{}", e.to_string_lossy()) == LEGACY_SUFFIX) {
        decode_legacy(&bytes)
    } else {
        decode(&bytes)
    };
    Ok(Segment { path: path.to_owned(), records, damage })
}

/// The length of the whole, intact record at `at`, if there is one.
fn record_at(bytes: &[u8], at: usize) -> Option<usize> {
    let header = bytes.get(at..at + HEADER)?;
    if header[..4] != MAGIC {
        return None;
    }
    let len_bytes: [u8; 4] = header[4..8].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let record = bytes.get(at + HEADER..at + HEADER + len)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_bytes);
    hasher.update(record);
    (hasher.finalize() == crc).then_some(len)
}

fn decode(bytes: &[u8]) -> (Vec<Vec<u8>>, Vec<Damage>) {
    let mut records = Vec::new();
    let mut damage = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if let Some(len) = record_at(bytes, at) {
            records.push(bytes[at + HEADER..at + HEADER + len].to_vec());
            at += HEADER + len;
            continue;
        }
        // Not a record: the damage runs to the next place a whole record starts, or to the end.
        let mut next = at + 1;
        let resume = loop {
            match bytes[next.min(bytes.len())..].windows(MAGIC.len()).position(|w| w == MAGIC) {
                Some(found) if record_at(bytes, next + found).is_some() => break next + found,
                Some(found) => next += found + 1,
                None => break bytes.len(),
            }
        };
        damage.push(Damage { offset: at as u64, bytes: bytes[at..resume].to_vec() });
        at = resume;
    }
    (records, damage)
}

/// The format before magic numbers: records up to the first that is not whole, the rest damage.
fn decode_legacy(bytes: &[u8]) -> (Vec<Vec<u8>>, Vec<Damage>) {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= LEGACY_HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(record) =
            bytes.get(at + LEGACY_HEADER..at + LEGACY_HEADER + len).filter(|_| (1..=MAX_RECORD).contains(&len))
        else {
            break;
        };
        if crc32fast::hash(record) != crc {
            break;
        }
        records.push(record.to_vec());
        at += LEGACY_HEADER + len;
    }
    let damage =
        (at < bytes.len()).then(|| Damage { offset: at as u64, bytes: bytes[at..].to_vec() }).into_iter().collect();
    (records, damage)
}

/// What is in the spool in `dir`, read without taking it from the process that owns it.
pub fn status(dir: &Path) -> io::Result<Status> {
    let mut status = Status::default();
    for (_, path) in segments(dir)? {
        let segment = read_segment(&path)?;
        status.segments += 1;
        status.bytes += fs::metadata(&path)?.len();
        status.depth += segment.records.len() as u64;
        status.damaged_bytes += segment.damage.iter().map(|d| d.bytes.len() as u64).sum::<u64>();
        if status.oldest.is_none() {
            status.oldest = segment.records.into_iter().next();
        }
    }
    Ok(status)
}

/// Whether the spool in `dir` can take a message now: the directory is writable (a probe file is
/// written, fsynced and removed) and has at least [`MIN_FREE_BYTES`] free. Says why not.
pub fn health(dir: &Path) -> Result<(), String> {
    probe_writable(dir, b"probe").map_err(|e| format!("SPOOL_DIR {} is not writable: {e}", dir.display()))?;
    let stats =
        rustix::fs::statvfs(dir).map_err(|e| format!("SPOOL_DIR {}: cannot read free space: {e}", dir.display()))?;
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    if free < MIN_FREE_BYTES {
        return Err(format!(
            "SPOOL_DIR {} has {} MiB free, under the {} MiB an outage needs",
            dir.display(),
            free / (1024 * 1024),
            MIN_FREE_BYTES / (1024 * 1024)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spool-test-{name}-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn record(i: usize) -> Vec<u8> {
        format!(r#"{{"payload":{{"MessageSid":"SM{i:032}","Body":"message {i}"}}}}"#).into_bytes()
    }

    /// A closed segment of `n` records, and the offset at which each record starts.
    async fn segment_of(name: &str, n: usize) -> (PathBuf, Vec<usize>) {
        let dir = temp_dir(name);
        let spool = Spool::open(&dir).unwrap();
        for i in 0..n {
            spool.append(record(i)).await.unwrap();
        }
        let path = spool.rotate().await.unwrap().pop().unwrap();
        let mut offsets = vec![0];
        for i in 0..n {
            offsets.push(offsets[i] + HEADER + record(i).len());
        }
        (path, offsets)
    }

    fn read_back(bytes: &[u8]) -> (Vec<usize>, Vec<(u64, usize)>) {
        let (records, damage) = decode(bytes);
        let ids = records.iter().map(|r| (0..100).find(|&i| record(i) == *r).expect("a record written")).collect();
        (ids, damage.iter().map(|d| (d.offset, d.bytes.len())).collect())
    }

    #[tokio::test]
    async fn records_come_back_in_order_after_a_rotation() {
        let dir = temp_dir("order");
        let spool = Spool::open(&dir).unwrap();
        for i in 0..5 {
            spool.append(record(i)).await.unwrap();
        }
        assert_eq!(spool.depth(), 5);
        let segs = spool.rotate().await.unwrap();
        assert_eq!(segs.len(), 1);
        let seg = read_segment(&segs[0]).unwrap();
        assert_eq!(seg.records, (0..5).map(record).collect::<Vec<_>>());
        assert!(seg.damage.is_empty());
        spool.remove(&seg).unwrap();
        assert_eq!(spool.depth(), 0);
        assert!(spool.rotate().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_flipped_bit_costs_only_its_record_wherever_it_is() {
        for victim in [0, 5, 19] {
            let (path, offsets) = segment_of("bit", 20).await;
            let mut bytes = fs::read(&path).unwrap();
            bytes[offsets[victim] + HEADER + 3] ^= 0x10;
            let (ids, damage) = read_back(&bytes);
            assert_eq!(ids, (0..20).filter(|&i| i != victim).collect::<Vec<_>>(), "record {victim} damaged");
            assert_eq!(damage, [(offsets[victim] as u64, offsets[victim + 1] - offsets[victim])]);
        }
    }

    #[tokio::test]
    async fn a_damaged_header_costs_only_its_record() {
        for (victim, byte) in [(0, 0), (7, 5), (19, 9)] {
            let (path, offsets) = segment_of("header", 20).await;
            let mut bytes = fs::read(&path).unwrap();
            bytes[offsets[victim] + byte] ^= 0xFF;
            let (ids, damage) = read_back(&bytes);
            assert_eq!(ids, (0..20).filter(|&i| i != victim).collect::<Vec<_>>());
            assert_eq!(damage.len(), 1);
        }
    }

    #[tokio::test]
    async fn a_zero_filled_tail_is_damage_not_empty_records() {
        for zeros in [1, 4, 8, 12, 13, 4096, 65_536] {
            let (path, offsets) = segment_of("zeros", 5).await;
            let mut bytes = fs::read(&path).unwrap();
            bytes.extend(std::iter::repeat_n(0, zeros));
            let (ids, damage) = read_back(&bytes);
            assert_eq!(ids, (0..5).collect::<Vec<_>>(), "{zeros} zeros");
            assert_eq!(damage, [(offsets[5] as u64, zeros)], "{zeros} zeros");
        }
    }

    #[tokio::test]
    async fn zeros_or_garbage_between_records_cost_only_themselves() {
        let (path, offsets) = segment_of("between", 10).await;
        let bytes = fs::read(&path).unwrap();
        for filler in
            [vec![0u8; 100], b"\xffTI1 not a record at all, though it starts like one".to_vec(), vec![0xFF; 3]]
        {
            let mut damaged = bytes[..offsets[4]].to_vec();
            damaged.extend_from_slice(&filler);
            damaged.extend_from_slice(&bytes[offsets[4]..]);
            let (ids, damage) = read_back(&damaged);
            assert_eq!(ids, (0..10).collect::<Vec<_>>());
            assert_eq!(damage, [(offsets[4] as u64, filler.len())]);
        }
    }

    #[tokio::test]
    async fn a_truncated_segment_loses_only_its_torn_last_record() {
        let (path, offsets) = segment_of("truncated", 6).await;
        let bytes = fs::read(&path).unwrap();
        for cut in [offsets[5] + 1, offsets[5] + HEADER, offsets[6] - 1] {
            let (ids, damage) = read_back(&bytes[..cut]);
            assert_eq!(ids, (0..5).collect::<Vec<_>>());
            assert_eq!(damage, [(offsets[5] as u64, cut - offsets[5])]);
        }
        // Cut on a record boundary: nothing is damaged.
        assert_eq!(read_back(&bytes[..offsets[3]]), ((0..3).collect(), vec![]));
    }

    #[tokio::test]
    async fn damage_at_the_start_costs_only_the_first_record() {
        let (path, offsets) = segment_of("start", 4).await;
        let mut bytes = fs::read(&path).unwrap();
        bytes[..offsets[1]].fill(0);
        assert_eq!(read_back(&bytes), ((1..4).collect(), vec![(0, offsets[1])]));
    }

    #[tokio::test]
    async fn damaged_bytes_are_moved_aside_never_deleted() {
        let dir = temp_dir("quarantine");
        let spool = Spool::open(&dir).unwrap();
        spool.append(record(1)).await.unwrap();
        let path = spool.rotate().await.unwrap().pop().unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"garbage").unwrap();
        let segment = read_segment(&path).unwrap();
        spool.quarantine(&segment).unwrap();
        spool.remove(&segment).unwrap();
        let kept: Vec<Vec<u8>> =
            fs::read_dir(dir.join(QUARANTINE)).unwrap().map(|e| fs::read(e.unwrap().path()).unwrap()).collect();
        assert_eq!(kept, [b"garbage".to_vec()]);
    }

    #[tokio::test]
    async fn a_segment_in_the_old_format_is_still_read() {
        let dir = temp_dir("legacy");
        let mut bytes = Vec::new();
        for r in [b"first".as_slice(), b"second"] {
            bytes.extend_from_slice(&(r.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(r).to_le_bytes());
            bytes.extend_from_slice(r);
        }
        bytes.extend_from_slice(b"torn");
        fs::write(dir.join(format!("{:020}{LEGACY_SUFFIX}", 7)), &bytes).unwrap();
        let spool = Spool::open(&dir).unwrap();
        assert_eq!(spool.depth(), 2);
        spool.append(b"new".to_vec()).await.unwrap();
        let segs = spool.rotate().await.unwrap();
        assert_eq!(segs.len(), 2, "new records go to a new segment after the old ones");
        let old = read_segment(&segs[0]).unwrap();
        assert_eq!(old.records, [b"first".to_vec(), b"second".to_vec()]);
        assert_eq!(old.damage, [Damage { offset: bytes.len() as u64 - 4, bytes: b"torn".to_vec() }]);
        assert!(segs[1].to_string_lossy().ends_with(&format!("{:020}{SUFFIX}", 8)));
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_spool() {
        let dir = temp_dir("lock");
        let first = Spool::open(&dir).unwrap();
        match Spool::open(&dir) {
            Err(OpenError::Locked(named)) => assert_eq!(named, dir.display().to_string()),
            other => panic!("a second open succeeded or failed otherwise: {:?}", other.err()),
        }
        // The lock goes with the writer: once every handle is gone, the directory can be opened.
        drop(first);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while Spool::open(&dir).is_err() {
            assert!(std::time::Instant::now() < until, "the lock was never released");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn segments_stay_small_however_long_the_outage() {
        let dir = temp_dir("size");
        let spool = Spool::open(&dir).unwrap();
        let big = vec![b'x'; 512 * 1024];
        for _ in 0..20 {
            spool.append(big.clone()).await.unwrap();
        }
        let segs = spool.rotate().await.unwrap();
        assert!(segs.len() >= 2, "{} segments", segs.len());
        for seg in &segs {
            assert!(fs::metadata(seg).unwrap().len() <= SEGMENT_TARGET + big.len() as u64 + HEADER as u64);
        }
        assert_eq!(spool.depth(), 20);
    }

    #[tokio::test]
    async fn concurrent_appends_all_land() {
        let dir = temp_dir("concurrent");
        let spool = Spool::open(&dir).unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.append(record(i)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let segs = spool.rotate().await.unwrap();
        let mut all: Vec<usize> = segs.iter().flat_map(|p| read_back(&fs::read(p).unwrap()).0).collect();
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn a_writable_spool_with_room_is_healthy_and_a_missing_one_is_named() {
        let dir = temp_dir("health");
        assert_eq!(health(&dir), Ok(()));
        let gone = dir.join("not-there");
        let why = health(&gone).unwrap_err();
        assert!(why.contains("SPOOL_DIR") && why.contains("not-there"), "{why}");
    }
}
