//! The store's durable form under `data_dir`: a snapshot of every object
//! (`resources.json`) and a journal of the changes since (`resources.journal`).
//!
//! A change appends one line to the journal and syncs it: a few hundred bytes, however many
//! objects there are. A change is acknowledged only once its line is durable. Each line
//! carries a CRC-32 of its JSON, so a line torn by a crash is recognised, dropped and cut off
//! (it was never acknowledged). When the journal outgrows the snapshot (and 1 MiB), the
//! snapshot is written again: to a temporary file, synced, renamed over the old one and the
//! directory synced, so after a crash it is the old version or the new one, never a mix;
//! then the journal is emptied. Loading reads the snapshot and replays the journal lines
//! newer than it.

use super::{Kind, Object, Objects};
use serde::Serialize;
use serde_json::Value;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The journal is compacted into the snapshot once it is larger than the snapshot and this.
const COMPACT_AFTER: u64 = 1 << 20;

/// The durable copy of the objects under `data_dir`.
#[derive(Debug)]
pub struct StoreFile {
    path: PathBuf,
    journal: PathBuf,
    dir: PathBuf,
    /// Sizes now, to know when to compact.
    snapshot_len: Cell<u64>,
    journal_len: Cell<u64>,
}

impl StoreFile {
    pub fn new(data_dir: &Path) -> StoreFile {
        StoreFile {
            path: data_dir.join("resources.json"),
            journal: data_dir.join("resources.journal"),
            dir: data_dir.to_path_buf(),
            snapshot_len: Cell::new(0),
            journal_len: Cell::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored objects; `None` when there is no store yet (first start).
    pub fn load(&self) -> Result<Option<Objects>, String> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        self.snapshot_len.set(text.len() as u64);
        let v: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", self.path.display()))?;
        let mut objects = from_snapshot(&v)
            .ok_or_else(|| format!("{} is not a Shardgate store", self.path.display()))?;
        self.replay(&mut objects)?;
        Ok(Some(objects))
    }

    /// Applies the journal's lines newer than the snapshot; cuts off a torn last line.
    fn replay(&self, objects: &mut Objects) -> Result<(), String> {
        let text = match std::fs::read(&self.journal) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", self.journal.display())),
        };
        let mut good = 0;
        for line in text.split_inclusive(|&b| b == b'\n') {
            let Some(record) = parse_line(line) else {
                break;
            };
            if !apply(objects, &record) {
                break;
            }
            good += line.len();
        }
        if good < text.len() {
            crate::warn!(
                "{}: {} bytes at the end were not a whole change (cut short by a crash) and are dropped",
                self.journal.display(),
                text.len() - good
            );
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.journal)
                .and_then(|f| {
                    f.set_len(good as u64)?;
                    f.sync_all()
                });
            f.map_err(|e| format!("cannot repair {}: {e}", self.journal.display()))?;
        }
        self.journal_len.set(good as u64);
        Ok(())
    }

    /// Makes the change from `old` to `new` durable: one journal line, or a new snapshot
    /// when the journal has grown past it.
    pub fn save_change(&self, old: &Objects, new: &Objects) -> Result<(), String> {
        if !self.path.exists() {
            return self.save(new);
        }
        let changes: Vec<ChangeOut<'_>> = old
            .changes_to(new)
            .into_iter()
            .map(|(kind, id, o)| ChangeOut {
                kind: kind.name(),
                id,
                item: o.map(ItemOut::of),
            })
            .collect();
        let record = RecordOut {
            revision: new.revision,
            last_generated: new.last_generated,
            changes,
        };
        let json = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
        line.extend_from_slice(&json);
        line.push(b'\n');
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", self.journal.display());
        let created = !self.journal.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)
            .map_err(fail)?;
        f.write_all(&line).map_err(fail)?;
        f.sync_data().map_err(fail)?;
        if created {
            sync_dir(&self.dir).map_err(fail)?;
        }
        let len = self.journal_len.get() + line.len() as u64;
        self.journal_len.set(len);
        if len > COMPACT_AFTER.max(self.snapshot_len.get()) {
            self.save(new)?;
        }
        Ok(())
    }

    /// Writes every object as the new snapshot (temporary file, fsync, rename, directory
    /// fsync), then empties the journal.
    pub fn save(&self, objects: &Objects) -> Result<(), String> {
        let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", self.path.display());
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| fail("cannot create the directory of", e))?;
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&to_snapshot(objects)).map_err(|e| e.to_string())?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(|e| fail("cannot write", e))?;
            f.write_all(&bytes).map_err(|e| fail("cannot write", e))?;
            f.sync_all().map_err(|e| fail("cannot sync", e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| fail("cannot replace", e))?;
        sync_dir(&self.dir).map_err(|e| fail("cannot sync the directory of", e))?;
        self.snapshot_len.set(bytes.len() as u64);
        // The snapshot has every change: the journal's lines are all older now.
        if self.journal_len.get() > 0 || self.journal.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&self.journal)
                .and_then(|f| {
                    f.set_len(0)?;
                    f.sync_all()
                })
                .map_err(|e| fail("cannot empty the journal of", e))?;
        }
        self.journal_len.set(0);
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// A journal line's record, if the line is whole and its checksum matches.
fn parse_line(line: &[u8]) -> Option<Value> {
    let line = line.strip_suffix(b"\n")?;
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    (crc32fast::hash(json) == crc).then(|| serde_json::from_slice(json).ok())?
}

/// Applies a journal record newer than `objects` (older ones were in the snapshot).
fn apply(objects: &mut Objects, record: &Value) -> bool {
    let Some(revision) = record.get("revision").and_then(Value::as_u64) else {
        return false;
    };
    if revision <= objects.revision {
        return true;
    }
    let Some(changes) = record.get("changes").and_then(Value::as_array) else {
        return false;
    };
    for c in changes {
        let (Some(kind), Some(id)) = (
            c.get("kind").and_then(Value::as_str).and_then(Kind::parse),
            c.get("id").and_then(Value::as_str),
        ) else {
            return false;
        };
        match c.get("item") {
            Some(item) => match object_of(kind, item) {
                Some(o) => objects.set(kind, id, o),
                None => return false,
            },
            None => {
                objects.remove(kind, id);
            }
        }
    }
    objects.revision = revision;
    objects.last_generated = record
        .get("last_generated")
        .and_then(Value::as_u64)
        .unwrap_or(objects.last_generated);
    true
}

fn from_snapshot(v: &Value) -> Option<Objects> {
    let mut objects = Objects {
        revision: v.get("revision")?.as_u64()?,
        last_generated: v.get("last_generated")?.as_u64()?,
        ..Objects::default()
    };
    for (name, list) in v.get("objects")?.as_object()? {
        let kind = Kind::parse(name)?;
        for item in list.as_array()? {
            let o = object_of(kind, item)?;
            let id = o.value.get("id")?.as_str()?.to_string();
            objects.set(kind, &id, o);
        }
    }
    Some(objects)
}

/// An object as the file writes it (`ItemOut`).
fn object_of(kind: Kind, item: &Value) -> Option<Object> {
    Some(Object::new(
        kind,
        Arc::new(item.get("value")?.clone()),
        (
            item.get("create_time")?.as_i64()?,
            item.get("update_time")?.as_i64()?,
        ),
        (
            item.get("createdIndex")?.as_u64()?,
            item.get("modifiedIndex")?.as_u64()?,
        ),
    ))
}

/// The snapshot, written straight from the objects (no intermediate JSON tree).
#[derive(Serialize)]
struct SnapshotOut<'a> {
    revision: u64,
    last_generated: u64,
    objects: BTreeMap<&'static str, Vec<ItemOut<'a>>>,
}

/// One object: its JSON as serialized when it was stored, its times and indexes.
#[derive(Serialize)]
struct ItemOut<'a> {
    value: &'a serde_json::value::RawValue,
    create_time: i64,
    update_time: i64,
    #[serde(rename = "createdIndex")]
    created_index: u64,
    #[serde(rename = "modifiedIndex")]
    modified_index: u64,
}

impl<'a> ItemOut<'a> {
    fn of(o: &'a Object) -> ItemOut<'a> {
        ItemOut {
            value: &o.json,
            create_time: o.create_time,
            update_time: o.update_time,
            created_index: o.created_index,
            modified_index: o.modified_index,
        }
    }
}

/// One journal line: the revision it brings the store to, and what changed (an object
/// without `item` was deleted).
#[derive(Serialize)]
struct RecordOut<'a> {
    revision: u64,
    last_generated: u64,
    changes: Vec<ChangeOut<'a>>,
}

#[derive(Serialize)]
struct ChangeOut<'a> {
    kind: &'static str,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<ItemOut<'a>>,
}

fn to_snapshot(objects: &Objects) -> SnapshotOut<'_> {
    SnapshotOut {
        revision: objects.revision,
        last_generated: objects.last_generated,
        objects: objects
            .kinds
            .iter()
            .map(|(kind, map)| (kind.name(), map.values().map(ItemOut::of).collect()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sg-storefile-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn journal_replays_and_torn_lines_are_cut() {
        let d = dir("journal");
        let file = StoreFile::new(&d);
        let mut objects = Objects::default();
        objects.put(Kind::Routes, "1", serde_json::json!({"uri": "/a"}), 1);
        file.save(&objects).unwrap();
        let mut next = objects.clone();
        next.put(Kind::Routes, "2", serde_json::json!({"uri": "/b"}), 2);
        next.delete(Kind::Routes, "1");
        file.save_change(&objects, &next).unwrap();
        let loaded = StoreFile::new(&d).load().unwrap().unwrap();
        assert_eq!(loaded, next);
        // A torn line (a crash mid-write): dropped, and cut off so later lines follow a
        // whole one.
        let journal = d.join("resources.journal");
        let good = std::fs::read(&journal).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(b"0123abcd {\"revision\":9,\"chan");
        std::fs::write(&journal, &torn).unwrap();
        let loaded = StoreFile::new(&d).load().unwrap().unwrap();
        assert_eq!(loaded, next);
        assert_eq!(std::fs::read(&journal).unwrap(), good);
        // A line whose checksum does not match is not applied.
        let mut bad = good.clone();
        let at = bad.len() - 5;
        bad[at] ^= 1;
        std::fs::write(&journal, &bad).unwrap();
        assert_eq!(StoreFile::new(&d).load().unwrap().unwrap(), objects);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_growing_journal_is_folded_into_the_snapshot() {
        let d = dir("compact");
        let file = StoreFile::new(&d);
        let mut objects = Objects::default();
        file.save(&objects).unwrap();
        let big = "x".repeat(64 * 1024);
        for i in 0..20 {
            let mut next = objects.clone();
            next.put(
                Kind::Routes,
                "r",
                serde_json::json!({"uri": "/", "desc": big}),
                i,
            );
            file.save_change(&objects, &next).unwrap();
            objects = next;
        }
        let journal = std::fs::metadata(d.join("resources.journal"))
            .unwrap()
            .len();
        assert!(journal < COMPACT_AFTER, "compacted: {journal}");
        assert_eq!(StoreFile::new(&d).load().unwrap().unwrap(), objects);
        let _ = std::fs::remove_dir_all(&d);
    }
}
