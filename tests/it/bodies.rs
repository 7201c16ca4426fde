//! Large bodies stream through in bounded memory, byte for byte.

use crate::harness::backend::{fill_pattern, Fnv};
use crate::harness::*;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SIZE: u64 = 256 << 20;
/// The gateway's resident memory must stay under this while 256 MiB pass through.
const RSS_LIMIT_KIB: u64 = 96 * 1024;

/// Samples the gateway's RSS every 20 ms until stopped; returns the peak.
fn watch_rss(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let peak = Arc::new(AtomicU64::new(0));
    let handle = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak.fetch_max(kib, Ordering::SeqCst);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak.load(Ordering::SeqCst)
    });
    (stop, handle)
}

#[test]
fn large_upload_and_download_are_byte_identical_in_bounded_memory() {
    let be = Backend::start(|s| {
        if s.method == "POST" {
            Reply::ok(&format!("{} {:x}", s.body_len, s.body_hash))
        } else {
            Reply::Pattern(SIZE)
        }
    });
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nid = \"u\"\nnodes = {}\ntimeout = {{ connect = 5, send = 30, read = 30 }}\n[[routes]]\nuri = \"/*\"\nupstream_id = \"u\"\n",
        nodes_map(&[(&be.addr(), 1)])
    ));
    let (stop, peak) = watch_rss(gw.child.id());

    // Upload: streamed from a writer thread while the response is awaited.
    let mut c = gw.client();
    c.send_raw(
        format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes(),
    );
    let mut writer = c.stream.try_clone().unwrap();
    let uploader = std::thread::spawn(move || {
        let mut hash = Fnv::default();
        let mut piece = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < SIZE {
            fill_pattern(&mut piece, off);
            hash.update(&piece);
            writer.write_all(&piece).unwrap();
            off += piece.len() as u64;
        }
        hash.0
    });
    let r = c.read_response(false).unwrap();
    let sent_hash = uploader.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), format!("{SIZE} {sent_hash:x}"));

    // Download on the same connection.
    let r = c.get("/download");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, SIZE);
    let mut expect = vec![0u8; SIZE as usize];
    fill_pattern(&mut expect, 0);
    assert!(r.body == expect, "downloaded bytes differ");

    stop.store(true, Ordering::SeqCst);
    let peak = peak.join().unwrap();
    assert!(
        peak > 0 && peak < RSS_LIMIT_KIB,
        "gateway RSS peaked at {peak} KiB"
    );
}

#[test]
fn chunked_upload_streams_through() {
    let be = Backend::start(|s| Reply::ok(&format!("{} {:x}", s.body_len, s.body_hash)));
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nid = \"u\"\nnodes = {}\n[[routes]]\nuri = \"/*\"\nupstream_id = \"u\"\n",
        nodes_map(&[(&be.addr(), 1)])
    ));
    let mut c = gw.client();
    c.send_raw(b"POST /chunky HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut writer = c.stream.try_clone().unwrap();
    let total: u64 = 16 << 20;
    let uploader = std::thread::spawn(move || {
        let mut hash = Fnv::default();
        let mut off = 0u64;
        let mut piece = vec![0u8; 100_000];
        while off < total {
            let n = (total - off).min(piece.len() as u64) as usize;
            fill_pattern(&mut piece[..n], off);
            hash.update(&piece[..n]);
            writer.write_all(format!("{n:x}\r\n").as_bytes()).unwrap();
            writer.write_all(&piece[..n]).unwrap();
            writer.write_all(b"\r\n").unwrap();
            off += n as u64;
        }
        writer.write_all(b"0\r\n\r\n").unwrap();
        hash.0
    });
    let r = c.read_response(false).unwrap();
    let hash = uploader.join().unwrap();
    assert_eq!(r.text(), format!("{total} {hash:x}"));
    assert_eq!(c.get("/after").status, 200);
}
