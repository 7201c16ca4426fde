//! The keyed cells of one limit, shared by every core.
//!
//! Keys are 64-bit digests of the key text under a per-process random SipHash key: a client
//! who chooses keys (an `apikey` header, a query argument) cannot make them collide, and two
//! distinct keys share a cell with probability about n²/2⁶⁵ (n live keys).
//!
//! The map is papaya's lock-free hash map: lookups and updates take no lock; the first
//! request of a key allocates its cell once, later ones allocate nothing.
//!
//! Memory is bounded twice over:
//! - a sweeper thread visits every table once a second and removes the cells that hold
//!   nothing worth keeping (an expired window, a drained bucket, no connection), so a key
//!   lives at most its window (or drain time) plus a second after its last request;
//! - a table never holds more than [`MAX_KEYS`] keys: a request whose key would be one more
//!   is refused as over its limit (nginx refuses too when a `limit_req` zone is full). At
//!   about 64 bytes per key, that is 64 MiB per limit at worst.
//!
//! Retiring is a compare-and-swap on the cell itself (to a value no update accepts) before
//! the sweeper unlinks it, so a request that raced the sweeper sees [`Retired`], looks the
//! key up again and counts on a fresh cell: no count is ever lost to the sweeper.

use super::Retired;
use crate::fold_hash::FoldHash;
use std::any::Any;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, Mutex, Weak};

/// The most keys one table holds (see the module doc).
pub const MAX_KEYS: usize = 1_000_000;

/// One key's state in a table.
pub trait Cell: Send + Sync + 'static {
    /// What the table's cells share (a rate), for deciding when a cell is idle.
    type Params: Send + Sync + 'static;
    /// The state of a key never seen (or forgotten).
    fn fresh() -> Self;
    /// Retires the cell if it holds nothing a new cell would not (at monotonic ms `now`);
    /// returns whether it did. A retired cell refuses every update with [`Retired`].
    fn retire_if_idle(&self, now: u64, params: &Self::Params) -> bool;
    fn is_retired(&self) -> bool;
}

/// Why a request could not be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The cells of one limit, by key digest. (The map hashes a digest with one multiply: the
/// digest is already keyed, so a client cannot aim at its buckets.)
pub struct Table<C: Cell> {
    cells: papaya::HashMap<u64, C, FoldHash>,
    hasher: RandomState,
    pub params: C::Params,
}

impl<C: Cell> Table<C> {
    pub fn new(params: C::Params) -> Table<C> {
        Table {
            cells: papaya::HashMap::with_hasher(FoldHash),
            hasher: RandomState::new(),
            params,
        }
    }

    /// A hasher for a key's text; [`Hasher::finish`] gives the key.
    pub fn hasher(&self) -> impl Hasher {
        self.hasher.build_hasher()
    }

    /// Runs `update` on the cell of `key`, made on first use; [`Full`] when the key is new
    /// and the table holds [`MAX_KEYS`] keys already.
    pub fn update<R>(
        &self,
        key: u64,
        mut update: impl FnMut(&C) -> Result<R, Retired>,
    ) -> Result<R, Full> {
        let cells = self.cells.pin();
        loop {
            let cell = match cells.get(&key) {
                Some(cell) => cell,
                None if cells.len() >= MAX_KEYS => return Err(Full),
                None => cells.get_or_insert_with(key, C::fresh),
            };
            match update(cell) {
                Ok(r) => return Ok(r),
                // The sweeper retired it and has not unlinked it yet: unlink it ourselves.
                Err(Retired) => {
                    let _ = cells.remove_if(&key, |_, c| c.is_retired());
                }
            }
        }
    }

    /// Runs `read` on the cell of `key` if there is one (no cell is made).
    pub fn read<R>(&self, key: u64, read: impl FnOnce(&C) -> R) -> Option<R> {
        self.cells.pin().get(&key).map(read)
    }
}

/// What the sweeper calls on each live table.
trait Sweep: Send + Sync {
    fn sweep(&self, now: u64);
}

impl<C: Cell> Sweep for Table<C> {
    fn sweep(&self, now: u64) {
        self.cells
            .pin()
            .retain(|_, cell| !cell.retire_if_idle(now, &self.params));
    }
}

/// Live tables by identity (control plane only: taken when a snapshot's plugins are built).
struct Registry {
    tables: HashMap<String, Weak<dyn Any + Send + Sync>>,
    sweep: Vec<Weak<dyn Sweep>>,
    sweeper_started: bool,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// The table called `id`, shared with every instance that asks for the same id while it is
/// alive (another snapshot's instance of an unchanged plugin, another route of a `group`);
/// made by `make` otherwise. `id` must name the cell type too (one id, one type).
pub fn shared<C: Cell>(id: &str, make: impl FnOnce() -> Table<C>) -> Arc<Table<C>> {
    let mut guard = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let registry = guard.get_or_insert_with(|| Registry {
        tables: HashMap::new(),
        sweep: Vec::new(),
        sweeper_started: false,
    });
    registry.tables.retain(|_, t| t.strong_count() > 0);
    registry.sweep.retain(|t| t.strong_count() > 0);
    if let Some(table) = registry.tables.get(id).and_then(Weak::upgrade) {
        if let Ok(table) = table.downcast::<Table<C>>() {
            return table;
        }
    }
    let table = Arc::new(make());
    let any: Arc<dyn Any + Send + Sync> = table.clone();
    registry.tables.insert(id.to_string(), Arc::downgrade(&any));
    let sweep: Arc<dyn Sweep> = table.clone();
    registry.sweep.push(Arc::downgrade(&sweep));
    if !registry.sweeper_started {
        registry.sweeper_started = true;
        start_sweeper();
    }
    table
}

/// Once a second, retires and unlinks the idle cells of every live table.
fn start_sweeper() {
    let spawned = std::thread::Builder::new()
        .name("limit-sweeper".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let tables: Vec<Arc<dyn Sweep>> = {
                let guard = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
                match guard.as_ref() {
                    Some(r) => r.sweep.iter().filter_map(Weak::upgrade).collect(),
                    None => Vec::new(),
                }
            };
            let now = super::now_ms();
            for table in tables {
                table.sweep(now);
            }
        });
    if let Err(e) = spawned {
        // Without the sweeper, tables still stop at MAX_KEYS.
        eprintln!("limit: cannot start the sweeper thread: {e}");
    }
}
