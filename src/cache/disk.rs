//! A disk zone's files: one per entry, written by the zone's own thread so that no worker
//! ever waits on the disk to store (workers read hits with io_uring, `monoio::fs`).
//!
//! A response being stored goes to `<name>.<pid>-<id>.tmp` beside its final name, piece by
//! piece as it streams to the client, and is renamed into place only once complete; only
//! then does the index learn of it. A crash, an upstream reset or a client abort therefore
//! leaves at most a `.tmp` file, which no lookup can reach and the next start deletes,
//! unless the process named in it still runs: during a binary upgrade the old process goes
//! on storing while the new one indexes the same directory. The two do not share an index:
//! a file one replaces or removes is a miss for the other (its read finds it gone or not
//! the entry's), and each counts only its own files against `max_size` until the old exits.
//!
//! A body of at most 64 KiB is also kept in memory while the zone's `memory_size` allows
//! (what the index does not need of it): hits on it read no file, as nginx's hits on a
//! file in the page cache read no disk.
//!
//! File: `SGCACHE1`, the metadata's length (u32 LE), the body's length (u64 LE), the
//! metadata (JSON: key, status, headers, times), the body. At start the thread walks the
//! zone's directory and indexes every complete file (the disk cache survives a restart);
//! files that are truncated, unreadable or past their stale window are deleted.

use super::entry::{now, Body, Entry, Meta, HOT_MAX};
use super::zone::{Digest, Fill, Zone};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"SGCACHE1";
const PREFIX: usize = 8 + 4 + 8;

/// What a worker asks the zone's thread to do.
pub enum Job {
    Begin {
        id: u64,
        base: Digest,
        digest: Digest,
        meta: Box<Meta>,
    },
    Piece {
        id: u64,
        data: Vec<u8>,
    },
    Commit {
        id: u64,
        fill: Option<Fill>,
    },
    Abort {
        id: u64,
    },
    Remove(Digest),
}

pub struct Disk {
    pub root: PathBuf,
    levels: Vec<usize>,
    jobs: Sender<Job>,
    next_id: AtomicU64,
}

impl Disk {
    pub fn new(root: PathBuf, levels: Vec<usize>) -> (Disk, Receiver<Job>) {
        let (jobs, rx) = channel();
        let disk = Disk {
            root,
            levels,
            jobs,
            next_id: AtomicU64::new(1),
        };
        (disk, rx)
    }

    /// The file of `digest`: its hex under `levels` directories named by its last digits,
    /// as nginx lays out `proxy_cache_path`.
    pub fn path(&self, digest: Digest) -> PathBuf {
        let hex = format!("{digest:032x}");
        let mut p = self.root.clone();
        let mut end = hex.len();
        for &l in &self.levels {
            p.push(&hex[end - l..end]);
            end -= l;
        }
        p.push(&hex);
        p
    }

    /// Starts storing a response; pieces follow through the returned writer.
    pub fn begin(&self, base: Digest, digest: Digest, meta: Meta) -> Writing {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.jobs.send(Job::Begin {
            id,
            base,
            digest,
            meta: Box::new(meta),
        });
        Writing {
            id,
            jobs: self.jobs.clone(),
            done: false,
        }
    }

    pub fn remove(&self, digest: Digest) {
        let _ = self.jobs.send(Job::Remove(digest));
    }
}

/// A response on its way to disk; dropped before [`Writing::commit`], it is abandoned.
pub struct Writing {
    id: u64,
    jobs: Sender<Job>,
    done: bool,
}

impl Writing {
    pub fn piece(&self, data: &[u8]) {
        let _ = self.jobs.send(Job::Piece {
            id: self.id,
            data: data.to_vec(),
        });
    }

    /// The body is complete: the thread renames the file into place, indexes it, and then
    /// releases the fill.
    pub fn commit(mut self, fill: Option<Fill>) {
        self.done = true;
        let _ = self.jobs.send(Job::Commit { id: self.id, fill });
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.jobs.send(Job::Abort { id: self.id });
        }
    }
}

/// One file being written.
struct Open {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    base: Digest,
    digest: Digest,
    meta: Box<Meta>,
    body: u64,
    failed: bool,
    /// The body so far, while it is small enough to be kept in memory too.
    hot: Option<Vec<u8>>,
}

/// The zone's thread: indexes what is on disk, then serves the workers' jobs.
pub fn run(zone: &'static Zone, jobs: Receiver<Job>) {
    let Some(disk) = &zone.disk else { return };
    load(zone, disk);
    let mut open: HashMap<u64, Open> = HashMap::new();
    for job in jobs {
        match job {
            Job::Begin {
                id,
                base,
                digest,
                meta,
            } => match start(disk, digest, &meta) {
                Ok((file, tmp, path)) => {
                    open.insert(
                        id,
                        Open {
                            file,
                            tmp,
                            path,
                            base,
                            digest,
                            meta,
                            body: 0,
                            failed: false,
                            hot: Some(Vec::new()),
                        },
                    );
                }
                Err(e) => crate::warn!(
                    "proxy-cache zone {}: cannot create a file under {}: {e}",
                    zone.name,
                    disk.root.display()
                ),
            },
            Job::Piece { id, data } => {
                if let Some(o) = open.get_mut(&id) {
                    if !o.failed {
                        if let Err(e) = o.file.write_all(&data) {
                            crate::warn!("proxy-cache zone {}: write failed: {e}", zone.name);
                            o.failed = true;
                        }
                        o.body += data.len() as u64;
                        o.hot = o.hot.take().filter(|h| h.len() + data.len() <= HOT_MAX);
                        if let Some(h) = &mut o.hot {
                            h.extend_from_slice(&data);
                        }
                    }
                }
            }
            Job::Commit { id, fill } => {
                if let Some(o) = open.remove(&id) {
                    finish(zone, o);
                }
                drop(fill);
            }
            Job::Abort { id } => {
                if let Some(o) = open.remove(&id) {
                    let _ = fs::remove_file(&o.tmp);
                }
            }
            Job::Remove(digest) => {
                // Unless a newer response was stored under that digest meanwhile.
                if zone.lookup_digest(digest).is_none() {
                    let _ = fs::remove_file(disk.path(digest));
                }
            }
        }
    }
}

fn start(disk: &Disk, digest: Digest, meta: &Meta) -> std::io::Result<(File, PathBuf, PathBuf)> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let path = disk.path(digest);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}-{seq}.tmp", std::process::id()));
    let mut file = File::create(&tmp)?;
    let meta = serde_json::to_vec(meta).unwrap_or_default();
    let mut head = Vec::with_capacity(PREFIX + meta.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    head.extend_from_slice(&0u64.to_le_bytes());
    head.extend_from_slice(&meta);
    file.write_all(&head)?;
    Ok((file, tmp, path))
}

/// Seals a complete file (its body length in the prefix), renames it into place, indexes it.
fn finish(zone: &Zone, o: Open) {
    let sealed = !o.failed
        && o.file.write_all_at(&o.body.to_le_bytes(), 12).is_ok()
        && fs::rename(&o.tmp, &o.path).is_ok();
    if !sealed {
        let _ = fs::remove_file(&o.tmp);
        return;
    }
    let hot = o
        .hot
        .filter(|h| zone.reserve_hot(h.len()))
        .map(Arc::<[u8]>::from);
    let body = Body::Disk { len: o.body, hot };
    zone.insert(o.base, o.digest, Entry::new(*o.meta, body));
}

/// Whether `name` is a `.tmp` file another live process (an upgrade's old process) is
/// writing now.
fn being_written(name: &str) -> bool {
    let pid = name
        .strip_suffix(".tmp")
        .and_then(|n| n.split_once('.'))
        .and_then(|(_, id)| id.split_once('-'))
        .and_then(|(pid, _)| pid.parse::<i32>().ok());
    match pid {
        Some(pid) if pid > 0 && pid != std::process::id() as i32 => {
            // SAFETY: kill with signal 0 sends nothing; it only asks whether the pid exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        }
        _ => false,
    }
}

/// Parses a file's prefix and metadata; the body's offset and length.
pub fn parse(bytes: &[u8]) -> Option<(Meta, usize, u64)> {
    if bytes.len() < PREFIX || &bytes[..8] != MAGIC {
        return None;
    }
    let meta_len = u32::from_le_bytes(bytes[8..12].try_into().ok()?) as usize;
    let body_len = u64::from_le_bytes(bytes[12..20].try_into().ok()?);
    let meta: Meta = serde_json::from_slice(bytes.get(PREFIX..PREFIX + meta_len)?).ok()?;
    Some((meta, PREFIX + meta_len, body_len))
}

/// Indexes the complete files under the zone's directory; deletes the rest.
fn load(zone: &Zone, disk: &Disk) {
    let t = now();
    let mut files = Vec::new();
    walk(&disk.root, disk.levels.len(), &mut files);
    let mut loaded = 0usize;
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let digest = match Digest::from_str_radix(name, 16) {
            Ok(d) if name.len() == 32 && disk.path(d) == path => d,
            _ if being_written(name) => continue,
            _ => {
                let _ = fs::remove_file(&path); // a .tmp left by a crash, or a stranger
                continue;
            }
        };
        match read_meta(&path) {
            Some((meta, body)) if meta.usable_stale(t) => {
                let base = super::zone::digest(&[meta.key.as_bytes()]);
                let body = Body::Disk {
                    len: body,
                    hot: None,
                };
                zone.insert(base, digest, Entry::new(meta, body));
                loaded += 1;
            }
            _ => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    if loaded > 0 {
        crate::info!(
            "proxy-cache zone {}: {loaded} entries found on disk",
            zone.name
        );
    }
}

fn read_meta(path: &Path) -> Option<(Meta, u64)> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut prefix = [0u8; PREFIX];
    file.read_exact(&mut prefix).ok()?;
    let meta_len = u32::from_le_bytes(prefix[8..12].try_into().ok()?) as usize;
    let mut head = prefix.to_vec();
    head.resize(PREFIX + meta_len, 0);
    file.read_exact(&mut head[PREFIX..]).ok()?;
    let (meta, offset, body) = parse(&head)?;
    (offset as u64 + body == len).then_some((meta, body))
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() && depth > 0 => walk(&p, depth - 1, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}
