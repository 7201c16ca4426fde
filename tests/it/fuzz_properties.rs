//! The fuzzing harnesses (`shardgate::fuzzing`) as property tests on stable, on every run of
//! the suite: each committed seed (`fuzz/seeds/<target>/`) is replayed, then each target gets
//! a short proptest run on seeds mutated at random (byte flips, insertions, cuts, splices of
//! two seeds). The deep, coverage-guided runs are `benches/fuzz.sh` (cargo fuzz, nightly).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shardgate::fuzzing::{Harness, TARGETS};
use std::path::PathBuf;

fn seeds_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = seeds_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("a seed file"))
        .collect()
}

fn harness(target: &str) -> Harness {
    TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, h)| *h)
        .expect("a target")
}

#[test]
fn every_seed_replays_and_every_target_has_seeds() {
    for (name, harness) in TARGETS {
        let all = seeds(name);
        assert!(all.len() >= 5, "{name}: only {} seeds", all.len());
        for seed in all {
            harness(&seed);
        }
    }
    // Every seed directory belongs to a target.
    for entry in std::fs::read_dir(seeds_dir("")).expect("fuzz/seeds") {
        let name = entry.expect("an entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/seeds/{name} is no target's"
        );
    }
}

/// The HTTP/2 seeds get past the handshake to streams (the harness checks each stream's
/// head; stopped at the handshake, it would check nothing of ours).
#[test]
fn h2_seeds_reach_streams() {
    let dir = seeds_dir("h2_frames");
    let streams = |name: &str| {
        shardgate::fuzzing::h2::streams(&std::fs::read(dir.join(name)).expect("a seed"))
    };
    assert_eq!(streams("get"), 1);
    assert_eq!(streams("post_length"), 1);
    assert_eq!(streams("two_streams_ping"), 2);
}

/// One change to a seed.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Cut(usize),
    Splice(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (
            any::<usize>(),
            prop::collection::vec(
                prop_oneof![
                    Just(b'\r'),
                    Just(b'\n'),
                    Just(b':'),
                    Just(b' '),
                    Just(b'0'),
                    Just(b'"'),
                    any::<u8>()
                ],
                1..6
            )
        )
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        (any::<usize>(), 1..8usize).prop_map(|(i, n)| Edit::Remove(i, n)),
        any::<usize>().prop_map(Edit::Cut),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(s, i, j)| Edit::Splice(s, i, j)),
    ]
}

fn apply(mut data: Vec<u8>, edits: &[Edit], all: &[Vec<u8>]) -> Vec<u8> {
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match e {
            Edit::Flip(i, b) if !data.is_empty() => {
                let i = i % data.len();
                data[i] ^= b | 1;
            }
            Edit::Insert(i, v) => {
                let i = at(*i, data.len());
                data.splice(i..i, v.iter().copied());
            }
            Edit::Remove(i, n) if !data.is_empty() => {
                let i = i % data.len();
                let end = (i + n).min(data.len());
                data.drain(i..end);
            }
            Edit::Cut(i) => data.truncate(at(*i, data.len())),
            Edit::Splice(s, i, j) => {
                // This seed's start, another seed's end.
                let other = &all[s % all.len()];
                data.truncate(at(*i, data.len()));
                data.extend_from_slice(&other[at(*j, other.len())..]);
            }
            _ => {}
        }
    }
    data
}

/// `cases` mutated seeds through the target's harness.
fn run(target: &str, cases: u32) {
    let all = seeds(target);
    let h = harness(target);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let inputs = (0..all.len(), prop::collection::vec(edit(), 0..6));
    runner
        .run(&inputs, |(i, edits)| {
            h(&apply(all[i].clone(), &edits, &all));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{target}: {e}"));
}

#[test]
fn request_head_properties() {
    run("request_head", 20000);
}

#[test]
fn chunked_properties() {
    run("chunked", 20000);
}

#[test]
fn response_head_properties() {
    run("response_head", 20000);
}

#[test]
fn vars_properties() {
    run("vars", 10000);
}

#[test]
fn config_toml_properties() {
    run("config_toml", 2000);
}

#[test]
fn resource_json_properties() {
    run("resource_json", 3000);
}

#[test]
fn admin_body_properties() {
    run("admin_body", 2000);
}

#[test]
fn h2_frames_properties() {
    run("h2_frames", 10000);
}
