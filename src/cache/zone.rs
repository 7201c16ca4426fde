//! A cache zone's index: key digest to entry, shared by every worker (or one per worker,
//! `per_worker`), lock-free to read.
//!
//! - The map is papaya's lock-free hash map: a hit takes no lock and writes nothing shared
//!   but the entry's CLOCK bit (and only when it was clear).
//! - A response that varies (`Vary`) is stored as one variant per set of request header
//!   values: the key's own slot says which headers it varies on, and each variant has its
//!   own digest (at most [`MAX_VARIANTS`] per key, oldest dropped first, as APISIX).
//! - Fills: a key being fetched has a fill marker; other requests for it wait for the fill
//!   instead of going upstream too (nginx's `proxy_cache_lock`).
//! - Eviction is least-recently-used: past the zone's size (or entry count), a sweep drops
//!   entries past their stale window, then the least recently read (to the second; ties
//!   oldest stored first) until the zone is under 90% of its size. A sweep sorts the index,
//!   so it runs once per 10% of the zone stored, off the hit path.

use super::disk::Disk;
use super::entry::{now, Body, Entry};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Variants kept per key at most (APISIX's bound, so a `Vary: User-Agent` cannot grow one
/// key's variants without end).
pub const MAX_VARIANTS: usize = 64;

/// A key's digest: the first 128 bits of the SHA-256 of its text (also the file name).
pub type Digest = u128;

pub fn digest(parts: &[&[u8]]) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    finish(ctx)
}

/// The first 128 bits of a SHA-256.
fn finish(ctx: ring::digest::Context) -> Digest {
    let d = ctx.finish();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    u128::from_be_bytes(b)
}

/// The digest of one variant of `key`: the key and the values of the headers it varies on.
pub fn variant_digest<'v>(key: &[u8], values: impl Iterator<Item = &'v [u8]>) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(key);
    ctx.update(b"\0vary");
    for v in values {
        ctx.update(b"\0");
        ctx.update(v);
    }
    finish(ctx)
}

/// What a key's slot holds.
#[derive(Clone)]
pub enum Slot {
    Entry(Arc<Entry>),
    /// The key's responses vary on these request headers; its variants are elsewhere.
    Vary(Arc<VaryIndex>),
}

pub struct VaryIndex {
    /// Lower-case header names, sorted.
    pub names: Vec<String>,
    /// The variants stored, oldest first.
    variants: Mutex<Vec<Digest>>,
}

/// Counters of a zone, for the metrics and the README's measurements. Hits and misses are
/// counted on every request: each thread adds to its own cache line (a shared zone must not
/// make its workers write one line), the scrape sums them.
#[derive(Default)]
pub struct Stats {
    hits: PerThread,
    misses: PerThread,
    pub stored: AtomicU64,
    pub evicted: AtomicU64,
}

impl Stats {
    pub fn hit(&self) {
        self.hits.add();
    }

    pub fn miss(&self) {
        self.misses.add();
    }

    pub fn hits(&self) -> u64 {
        self.hits.sum()
    }

    pub fn misses(&self) -> u64 {
        self.misses.sum()
    }
}

/// A counter with one cache line per thread (threads past [`SLOTS`] share).
#[derive(Default)]
struct PerThread([Line; SLOTS]);

const SLOTS: usize = 16;

#[derive(Default)]
#[repr(align(128))]
struct Line(AtomicU64);

thread_local! {
    static SLOT: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) as usize % SLOTS
    };
}

impl PerThread {
    fn add(&self) {
        let line = &self.0[SLOT.with(|s| *s)].0;
        line.store(line.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|l| l.0.load(Ordering::Relaxed)).sum()
    }
}

pub struct Zone {
    pub name: String,
    pub disk: Option<Disk>,
    map: papaya::HashMap<Digest, Slot>,
    fills: papaya::HashMap<Digest, ()>,
    /// Bytes the entries account for, and the most allowed.
    bytes: AtomicU64,
    capacity: u64,
    max_entries: usize,
    evicting: AtomicBool,
    /// Stores so far (orders entries stored within the same second).
    seq: AtomicU64,
    /// Disk zones: bytes of bodies kept in memory too, and the most allowed.
    hot_bytes: AtomicU64,
    hot_capacity: u64,
    pub stats: Stats,
}

impl Zone {
    /// `hot_capacity`: for a disk zone, the memory its small bodies may take.
    pub fn new(
        name: String,
        capacity: u64,
        max_entries: usize,
        disk: Option<Disk>,
        hot_capacity: u64,
    ) -> Zone {
        Zone {
            name,
            disk,
            map: papaya::HashMap::new(),
            fills: papaya::HashMap::new(),
            bytes: AtomicU64::new(0),
            capacity,
            max_entries,
            evicting: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            hot_bytes: AtomicU64::new(0),
            hot_capacity,
            stats: Stats::default(),
        }
    }

    /// Finds `key`'s entry (the variant matching the request when the key varies;
    /// `header` reads a request header by lower-case name) and hands it to `f` with the
    /// digest it is (or would be) stored under, without taking a reference to it: a hit on a
    /// body in memory writes nothing shared. `t`: now, in Unix seconds (the entry's last use).
    pub fn lookup<'h, R>(
        &self,
        key: &[u8],
        t: u64,
        header: impl Fn(&str) -> Option<&'h [u8]>,
        f: impl FnOnce(Digest, Option<&Arc<Entry>>) -> R,
    ) -> R {
        let base = digest(&[key]);
        let map = self.map.pin();
        let (digest, slot) = match map.get(&base) {
            Some(Slot::Vary(index)) => {
                let d = variant_digest(
                    key,
                    index.names.iter().map(|n| header(n).unwrap_or_default()),
                );
                (d, map.get(&d))
            }
            other => (base, other),
        };
        let entry = match slot {
            Some(Slot::Entry(e)) if e.meta.key.as_bytes() == key => {
                e.touch(t);
                Some(e)
            }
            _ => None,
        };
        f(digest, entry)
    }

    /// The entry stored under `digest`, if any.
    pub fn lookup_digest(&self, digest: Digest) -> Option<Arc<Entry>> {
        match self.map.pin().get(&digest) {
            Some(Slot::Entry(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Stores `entry` under `digest`; when it varies, `base` is its key's digest.
    pub fn insert(&self, base: Digest, digest: Digest, entry: Entry) {
        let map = self.map.pin();
        if !entry.meta.vary.is_empty() {
            let index = match map.get(&base) {
                Some(Slot::Vary(i)) if i.names == entry.meta.vary => i.clone(),
                old => {
                    let index = Arc::new(VaryIndex {
                        names: entry.meta.vary.clone(),
                        variants: Mutex::new(Vec::new()),
                    });
                    match old {
                        Some(Slot::Vary(i)) => self.drop_variants(i),
                        Some(Slot::Entry(e)) => self.forget(base, e),
                        None => {}
                    }
                    map.insert(base, Slot::Vary(index.clone()));
                    index
                }
            };
            let dropped = {
                let mut v = index.variants.lock().unwrap_or_else(|e| e.into_inner());
                v.retain(|&d| d != digest);
                v.push(digest);
                (v.len() > MAX_VARIANTS).then(|| v.remove(0))
            };
            if let Some(d) = dropped {
                if let Some(Slot::Entry(e)) = map.remove(&d) {
                    self.forget(d, e);
                }
            }
        } else if let Some(Slot::Vary(i)) = map.get(&base) {
            // The key stopped varying: its variants go.
            self.drop_variants(i);
        }
        self.bytes.fetch_add(entry.size, Ordering::Relaxed);
        entry
            .seq
            .store(self.seq.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        if let Some(Slot::Entry(old)) = map.insert(digest, Slot::Entry(Arc::new(entry))) {
            self.bytes.fetch_sub(old.size, Ordering::Relaxed);
        }
        self.stats.stored.fetch_add(1, Ordering::Relaxed);
        drop(map);
        if self.bytes.load(Ordering::Relaxed) > self.capacity || self.map.len() > self.max_entries {
            self.evict();
        }
    }

    fn drop_variants(&self, index: &VaryIndex) {
        let variants =
            std::mem::take(&mut *index.variants.lock().unwrap_or_else(|e| e.into_inner()));
        let map = self.map.pin();
        for d in variants {
            if let Some(Slot::Entry(e)) = map.remove(&d) {
                self.forget(d, e);
            }
        }
    }

    /// An entry left the index: its bytes are freed, and its file removed.
    fn forget(&self, digest: Digest, entry: &Arc<Entry>) {
        self.bytes.fetch_sub(entry.size, Ordering::Relaxed);
        if let (Some(disk), Body::Disk { hot, .. }) = (&self.disk, &entry.body) {
            if let Some(h) = hot {
                self.hot_bytes.fetch_sub(h.len() as u64, Ordering::Relaxed);
            }
            disk.remove(digest);
        }
    }

    /// Takes `n` bytes of the disk zone's memory for a body kept in memory too; false when
    /// the memory is spent (the body is then read from its file on each hit).
    pub fn reserve_hot(&self, n: usize) -> bool {
        let n = n as u64;
        if self.hot_bytes.fetch_add(n, Ordering::Relaxed) + n > self.hot_capacity {
            self.hot_bytes.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Replaces `digest`'s entry by `new` if it is still `old` (a body now kept in memory
    /// too); otherwise gives back the memory `new` reserved.
    pub fn replace(&self, digest: Digest, old: &Entry, new: Entry) {
        let new = Arc::new(new);
        let map = self.map.pin();
        let swapped = map.compute(digest, |slot| match slot {
            Some((_, Slot::Entry(e))) if std::ptr::eq(Arc::as_ptr(e), old) => {
                papaya::Operation::Insert(Slot::Entry(new.clone()))
            }
            _ => papaya::Operation::Abort(()),
        });
        if matches!(swapped, papaya::Compute::Aborted(())) {
            if let Body::Disk { hot: Some(h), .. } = &new.body {
                self.hot_bytes.fetch_sub(h.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Removes `digest`'s entry if it is still `entry` (a newer one stays).
    pub fn remove_entry(&self, digest: Digest, entry: &Arc<Entry>) {
        let map = self.map.pin();
        let same = matches!(map.get(&digest), Some(Slot::Entry(e)) if Arc::ptr_eq(e, entry));
        if same {
            if let Some(Slot::Entry(e)) = map.remove(&digest) {
                self.forget(digest, e);
            }
        }
    }

    /// PURGE: removes `key` and all its variants; whether there was anything.
    pub fn purge(&self, key: &[u8]) -> bool {
        let base = digest(&[key]);
        let map = self.map.pin();
        match map.remove(&base) {
            Some(Slot::Entry(e)) => {
                self.forget(base, e);
                true
            }
            Some(Slot::Vary(i)) => {
                self.drop_variants(i);
                true
            }
            None => false,
        }
    }

    /// Claims the fill of `digest`: `None` when another request is fetching it.
    pub fn try_fill(&'static self, digest: Digest) -> Option<Fill> {
        let fills = self.fills.pin();
        match fills.try_insert(digest, ()) {
            Ok(_) => Some(Fill { zone: self, digest }),
            Err(_) => None,
        }
    }

    pub fn filling(&self, digest: Digest) -> bool {
        self.fills.pin().contains_key(&digest)
    }

    /// The most bytes the zone holds.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Entries and bytes held.
    pub fn usage(&self) -> (usize, u64) {
        (self.map.len(), self.bytes.load(Ordering::Relaxed))
    }

    /// Sweeps until the zone is under 90% of its size and entry count (see the module doc).
    fn evict(&self) {
        if self.evicting.swap(true, Ordering::Acquire) {
            return; // another thread is at it
        }
        let low_bytes = self.capacity / 10 * 9;
        let low_entries = self.max_entries / 10 * 9;
        let t = now();
        let map = self.map.pin();
        let over = || self.bytes.load(Ordering::Relaxed) > low_bytes || map.len() > low_entries;
        let mut candidates: Vec<((u64, u64), Digest, Arc<Entry>)> = Vec::new();
        for (d, slot) in map.iter() {
            if let Slot::Entry(e) = slot {
                if !e.meta.usable_stale(t) {
                    // Past any use: first to go.
                    candidates.push(((0, 0), *d, e.clone()));
                } else {
                    candidates.push((e.recency(), *d, e.clone()));
                }
            }
        }
        candidates.sort_unstable_by_key(|c| c.0);
        for (_, d, e) in candidates {
            if !over() {
                break;
            }
            self.remove_entry(d, &e);
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        self.evicting.store(false, Ordering::Release);
    }
}

/// The claim on fetching one key: dropped when the response is stored, turned out not
/// cacheable, or the fetch failed; waiting requests then look again.
pub struct Fill {
    zone: &'static Zone,
    digest: Digest,
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.zone.fills.pin().remove(&self.digest);
    }
}
