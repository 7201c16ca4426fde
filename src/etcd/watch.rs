//! The watcher: one thread that follows the prefix and hands what changed to the control
//! loop. It watches from the revision after the last one delivered; when etcd has compacted
//! that revision it reads everything again; when etcd is unreachable it says so once, retries
//! every endpoint with backoff (100 ms doubling up to `resync_delay`, with jitter), and
//! resumes where it stopped. It never blocks the control loop: updates go through `send`.

use super::client::{Client, EtcdError, WatchMsg};
use super::Update;
use std::time::Duration;

/// Starts the watcher from `start` (the revision after the snapshot the gateway started
/// with). It stops when `send` returns false (the control loop is gone).
pub fn spawn(
    mut client: Client,
    start: i64,
    resync_delay: Duration,
    send: impl Fn(Update) -> bool + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("shardgate-etcd".into())
        .spawn(move || {
            let mut w = Watcher {
                next: start,
                full: false,
                down: false,
                failures: 0,
            };
            loop {
                match w.session(&mut client, &send) {
                    Ok(true) | Err(EtcdError::Idle) => {}
                    Ok(false) => return,
                    Err(EtcdError::Compacted(_)) => w.full = true,
                    Err(e) => {
                        if !w.down {
                            w.down = true;
                            if !send(Update::Down(e.to_string())) {
                                return;
                            }
                        }
                        std::thread::sleep(backoff(w.failures, resync_delay));
                        w.failures = w.failures.saturating_add(1);
                    }
                }
            }
        })?;
    Ok(())
}

struct Watcher {
    /// The revision to watch from.
    next: i64,
    /// Read everything before watching (after a compaction).
    full: bool,
    /// Down was reported and Up not yet.
    down: bool,
    failures: u32,
}

impl Watcher {
    /// One watch, until it breaks. `Ok(false)`: the control loop is gone.
    fn session(
        &mut self,
        client: &mut Client,
        send: &impl Fn(Update) -> bool,
    ) -> Result<bool, EtcdError> {
        if self.full {
            let (revision, kvs) = client.range_prefix()?;
            crate::info!(
                "etcd: read {} keys at revision {revision} again (resync)",
                kvs.len()
            );
            if !send(Update::Full { revision, kvs }) {
                return Ok(false);
            }
            self.next = revision + 1;
            self.full = false;
        }
        let mut watch = client.watch(self.next)?;
        if self.down {
            self.down = false;
            if !send(Update::Up(watch.endpoint.clone())) {
                return Ok(false);
            }
        }
        self.failures = 0;
        loop {
            match watch.message()? {
                WatchMsg::Events { revision, events } => {
                    let last = events
                        .iter()
                        .map(|e| e.kv.mod_revision)
                        .max()
                        .unwrap_or(revision);
                    if !events.is_empty()
                        && !send(Update::Changes {
                            revision: last,
                            events,
                        })
                    {
                        return Ok(false);
                    }
                    self.next = self.next.max(last + 1);
                }
                WatchMsg::Compacted(at) => {
                    crate::warn!(
                        "etcd: revision {} was compacted (now {at}): reading everything again",
                        self.next
                    );
                    self.full = true;
                    return Ok(true);
                }
            }
        }
    }
}

/// 100 ms, doubling, up to `cap`, plus up to 50% jitter.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1 << failures.min(16))
        .min(cap.max(Duration::from_millis(100)));
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1000);
    base + base * jitter / 2000
}
