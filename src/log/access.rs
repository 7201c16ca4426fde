//! The access log: one line per request, written by the core that served it.
//!
//! Each core formats into its own buffer and writes it out with one `write(2)` when it passes
//! 8 KiB or when the core's 100 ms flush tick comes, so logging costs no lock and no syscall
//! per request. Each core owns its own file descriptor (opened with O_APPEND, or a dup of
//! stdout/stderr); whole-buffer writes of complete lines keep lines from interleaving.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::time::Duration;

const FLUSH_AT: usize = 8 * 1024;

/// Where the access log goes and in which format.
#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    /// "stdout", "stderr", "off" or a path.
    pub target: String,
    pub json: bool,
}

/// One request, as the log records it.
pub struct Entry<'a> {
    pub remote: &'a str,
    pub method: &'a [u8],
    pub uri: &'a [u8],
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0` (nginx's `$server_protocol`).
    pub protocol: &'static str,
    pub host: &'a [u8],
    pub status: u16,
    /// Response bytes sent to the client (head and body).
    pub bytes: u64,
    pub latency: Duration,
    pub route: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub upstream_status: Option<u16>,
    pub upstream_latency: Option<Duration>,
    pub retries: u32,
}

struct Sink {
    file: File,
    buf: Vec<u8>,
    json: bool,
    /// Cached formatted time for `cached_sec`.
    cached_sec: i64,
    cached: [u8; 20],
}

/// A core's access log (a no-op when the log is off).
pub struct AccessLog {
    sink: Option<RefCell<Sink>>,
}

impl AccessLog {
    pub fn open(cfg: &AccessLogConfig) -> std::io::Result<AccessLog> {
        let file = match cfg.target.as_str() {
            "off" => return Ok(AccessLog { sink: None }),
            "stdout" => dup_fd(1)?,
            "stderr" => dup_fd(2)?,
            path => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        };
        Ok(AccessLog {
            sink: Some(RefCell::new(Sink {
                file,
                buf: Vec::with_capacity(FLUSH_AT * 2),
                json: cfg.json,
                cached_sec: -1,
                cached: [0; 20],
            })),
        })
    }

    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    pub fn log(&self, e: &Entry<'_>) {
        let Some(sink) = &self.sink else { return };
        let mut s = sink.borrow_mut();
        let now = super::now_secs();
        if now != s.cached_sec {
            let mut ts = [0u8; 20];
            iso8601_utc(now, &mut ts);
            s.cached = ts;
            s.cached_sec = now;
        }
        let Sink {
            buf, json, cached, ..
        } = &mut *s;
        let ts = std::str::from_utf8(cached).unwrap_or("");
        if *json {
            write_json(buf, ts, e);
        } else {
            write_text(buf, ts, e);
        }
        if buf.len() >= FLUSH_AT {
            flush_sink(&mut s);
        }
    }

    pub fn flush(&self) {
        if let Some(sink) = &self.sink {
            flush_sink(&mut sink.borrow_mut());
        }
    }
}

fn flush_sink(s: &mut Sink) {
    if !s.buf.is_empty() {
        // A failing log target must not take the gateway down; drop the lines.
        let _ = s.file.write_all(&s.buf);
        s.buf.clear();
    }
}

fn dup_fd(fd: i32) -> std::io::Result<File> {
    // SAFETY: dup returns a new descriptor we exclusively own (or -1, checked).
    let new = unsafe { libc::dup(fd) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` is a valid, owned, open descriptor.
    Ok(unsafe { File::from_raw_fd(new) })
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// `127.0.0.1 - [2026-11-26T08:49:46Z] "GET /api HTTP/1.1" 200 123 0.001 host="a" route="r1"
/// upstream=127.0.0.1:9001 upstream_status=200 upstream_time=0.001 retries=0`
///
/// Written piece by piece into the buffer: no temporary strings per request.
fn write_text(buf: &mut Vec<u8>, ts: &str, e: &Entry<'_>) {
    let _ = write!(
        buf,
        "{} - [{}] \"{} {} {}\" {} {} {:.3} host=\"{}\" route=\"{}\" upstream=",
        e.remote,
        ts,
        lossy(e.method),
        lossy(e.uri).escape_debug(),
        e.protocol,
        e.status,
        e.bytes,
        e.latency.as_secs_f64(),
        lossy(e.host).escape_debug(),
        e.route.unwrap_or("-"),
    );
    let _ = match e.upstream {
        Some(a) => write!(buf, "{a}"),
        None => write!(buf, "-"),
    };
    let _ = match e.upstream_status {
        Some(s) => write!(buf, " upstream_status={s}"),
        None => write!(buf, " upstream_status=-"),
    };
    let _ = match e.upstream_latency {
        Some(d) => write!(buf, " upstream_time={:.3}", d.as_secs_f64()),
        None => write!(buf, " upstream_time=-"),
    };
    let _ = writeln!(buf, " retries={}", e.retries);
}

fn write_json(buf: &mut Vec<u8>, ts: &str, e: &Entry<'_>) {
    let v = serde_json::json!({
        "time": ts,
        "remote_addr": e.remote,
        "method": lossy(e.method),
        "uri": lossy(e.uri),
        "protocol": e.protocol,
        "host": lossy(e.host),
        "status": e.status,
        "bytes": e.bytes,
        "latency": e.latency.as_secs_f64(),
        "route": e.route,
        "upstream": e.upstream.map(|a| a.to_string()),
        "upstream_status": e.upstream_status,
        "upstream_latency": e.upstream_latency.map(|d| d.as_secs_f64()),
        "retries": e.retries,
    });
    let _ = serde_json::to_writer(&mut *buf, &v);
    buf.push(b'\n');
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` into `out`.
pub fn iso8601_utc(secs: i64, out: &mut [u8; 20]) -> &str {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), after H. Hinnant's public-domain algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut cursor = std::io::Cursor::new(&mut out[..]);
    let _ = write!(
        cursor,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    std::str::from_utf8(&out[..]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time() {
        let mut b = [0u8; 20];
        assert_eq!(iso8601_utc(0, &mut b), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(1_795_654_186, &mut b), "2026-11-26T00:49:46Z");
    }
}
