//! Log shipping for `http-logger`, `tcp-logger`, `udp-logger` and `file-logger`: a request's
//! entry is made in its log phase, on its core, and handed to one shipper thread through a
//! bounded lock-free queue; the shipper batches entries as APISIX's batch processor does and
//! sends them, so no worker ever waits for a log sink.
//!
//! A full queue drops the entry (counted); a batch the sink refuses is tried again
//! `max_retry_count` times, `retry_delay` seconds apart, then dropped (counted). The counts
//! are in the metrics (`shardgate_logger_entries_total{logger, target, result}`).

pub mod entry;
pub mod sink;

use crossbeam_queue::ArrayQueue;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Entries a logger's queue holds at most before new ones are dropped.
pub const QUEUE: usize = 16 * 1024;

/// How often the shipper looks at the queues.
const TICK: Duration = Duration::from_millis(50);

/// APISIX's batch processor fields (its defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Batching {
    pub batch_max_size: usize,
    /// Seconds without a new entry after which a partial batch goes.
    pub inactive_timeout: u64,
    /// Seconds a batch's oldest entry waits at most.
    pub buffer_duration: u64,
    pub max_retry_count: u32,
    /// Seconds between tries of a refused batch.
    pub retry_delay: u64,
    pub name: Option<String>,
}

impl Default for Batching {
    fn default() -> Batching {
        Batching {
            batch_max_size: 1000,
            inactive_timeout: 5,
            buffer_duration: 60,
            max_retry_count: 0,
            retry_delay: 1,
            name: None,
        }
    }
}

/// What a logger delivered and lost, by logger and target (kept across reloads).
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
}

/// One logger instance's way to the shipper.
pub struct Channel {
    queue: ArrayQueue<String>,
    sink: sink::Sink,
    batching: Batching,
    counters: Arc<Counters>,
}

impl Channel {
    /// Hands an entry to the shipper; a full queue drops it (counted).
    pub fn push(&self, entry: String) {
        if self.queue.push(entry).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every logger's counters, by (logger, target), for the metrics.
pub fn counters() -> Vec<((String, String), Arc<Counters>)> {
    let reg = registry()
        .counters
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    reg.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

struct Registry {
    /// Channels the shipper serves (a channel no instance holds any more is served until
    /// its entries are out, then forgotten).
    channels: Mutex<Vec<Arc<Channel>>>,
    counters: Mutex<BTreeMap<(String, String), Arc<Counters>>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        std::thread::Builder::new()
            .name("shardgate-logs".into())
            .spawn(ship)
            .expect("log shipper thread");
        Registry {
            channels: Mutex::new(Vec::new()),
            counters: Mutex::new(BTreeMap::new()),
        }
    })
}

/// A channel for a logger instance (`logger` names the plugin), served by the shipper.
pub fn channel(logger: &str, sink: sink::Sink, batching: Batching) -> Arc<Channel> {
    let reg = registry();
    let key = (logger.to_string(), sink.target());
    let counters = reg
        .counters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .clone();
    let channel = Arc::new(Channel {
        queue: ArrayQueue::new(QUEUE),
        sink,
        batching,
        counters,
    });
    let mut channels = reg.channels.lock().unwrap_or_else(|e| e.into_inner());
    channels.push(channel.clone());
    channel
}

/// A channel's batch in the making, on the shipper thread.
struct Pending {
    entries: Vec<String>,
    first: Option<Instant>,
    last: Instant,
    /// A refused batch: the tries so far and when to try again.
    retry: Option<(Vec<String>, u32, Instant)>,
}

/// The shipper thread: drains every queue each tick and sends what is due.
fn ship() {
    let mut pending: Vec<(Arc<Channel>, Pending)> = Vec::new();
    loop {
        std::thread::sleep(TICK);
        let reg = registry();
        {
            let mut channels = reg.channels.lock().unwrap_or_else(|e| e.into_inner());
            for c in channels.drain(..) {
                pending.push((
                    c,
                    Pending {
                        entries: Vec::new(),
                        first: None,
                        last: Instant::now(),
                        retry: None,
                    },
                ));
            }
        }
        let now = Instant::now();
        for (c, p) in pending.iter_mut() {
            serve(c, p, now);
        }
        // A channel only the shipper holds, with nothing left, is done.
        pending.retain(|(c, p)| {
            Arc::strong_count(c) > 1
                || !c.queue.is_empty()
                || !p.entries.is_empty()
                || p.retry.is_some()
        });
    }
}

fn serve(c: &Channel, p: &mut Pending, now: Instant) {
    let b = &c.batching;
    while let Some(e) = c.queue.pop() {
        if p.entries.is_empty() {
            p.first = Some(now);
        }
        p.last = now;
        p.entries.push(e);
    }
    if let Some((batch, tries, at)) = p.retry.take() {
        if now < at {
            p.retry = Some((batch, tries, at));
            return;
        }
        deliver(c, p, batch, tries, now);
        if p.retry.is_some() {
            return;
        }
    }
    loop {
        let full = p.entries.len() >= b.batch_max_size;
        let due = !p.entries.is_empty()
            && (now.duration_since(p.last) >= Duration::from_secs(b.inactive_timeout)
                || p.first.is_some_and(|f| {
                    now.duration_since(f) >= Duration::from_secs(b.buffer_duration)
                })
                || c.sink.unbatched());
        if !(full || due) {
            return;
        }
        let n = p.entries.len().min(b.batch_max_size);
        let batch: Vec<String> = p.entries.drain(..n).collect();
        if p.entries.is_empty() {
            p.first = None;
        }
        deliver(c, p, batch, 0, now);
        if p.retry.is_some() {
            return;
        }
    }
}

/// Sends a batch; a refusal is kept for a retry while tries remain, else dropped.
fn deliver(c: &Channel, p: &mut Pending, batch: Vec<String>, tries: u32, now: Instant) {
    let b = &c.batching;
    match c.sink.send(&batch, b.batch_max_size) {
        Ok(()) => {
            c.counters
                .sent
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        Err(e) if tries < b.max_retry_count => {
            crate::warn!(
                "{}: sending {} log entries failed ({e}); trying again in {} s",
                c.sink.target(),
                batch.len(),
                b.retry_delay
            );
            let at = now + Duration::from_secs(b.retry_delay);
            p.retry = Some((batch, tries + 1, at));
        }
        Err(e) => {
            crate::error!(
                "{}: sending {} log entries failed ({e}); dropped",
                c.sink.target(),
                batch.len()
            );
            c.counters
                .dropped
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    }
}
