//! Reporting: the text summary, the JSON record, HdrHistogram's `.hgrm` percentile
//! distribution, and an SVG latency-by-percentile chart (the picture HdrHistogram users know:
//! percentiles on a log scale of 1/(1-p), so the tail gets most of the width).

use crate::conn::Errors;
use crate::Args;
use hdrhistogram::Histogram;
use std::fmt::Write;
use std::time::Duration;

pub struct Summary {
    text_head: String,
    requests: u64,
    errors: Errors,
    seconds: f64,
    /// (label, microseconds)
    percentiles: Vec<(&'static str, f64)>,
    mean_us: f64,
}

const POINTS: [(&str, f64); 6] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
    ("max", 100.0),
];

impl Summary {
    pub fn new(args: &Args, hist: &Histogram<u64>, errors: &Errors, elapsed: Duration) -> Summary {
        let model = match args.rate {
            Some(r) => format!("open loop at {r} req/s (coordinated-omission corrected)"),
            None => "closed loop".into(),
        };
        let text_head = format!(
            "sg-load {}: {} connections, {} thread(s), {}, {}\n",
            args.url,
            args.connections,
            args.threads,
            model,
            if args.new_conn {
                "new connection per request"
            } else {
                "keep-alive"
            }
        );
        let percentiles = POINTS
            .iter()
            .map(|&(label, p)| {
                let v = if p >= 100.0 {
                    hist.max()
                } else {
                    hist.value_at_percentile(p)
                };
                (label, v as f64)
            })
            .collect();
        Summary {
            text_head,
            requests: hist.len(),
            errors: errors.clone(),
            seconds: elapsed.as_secs_f64(),
            percentiles,
            mean_us: hist.mean(),
        }
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    pub fn text(&self) -> String {
        let mut s = self.text_head.clone();
        let _ = writeln!(
            s,
            "  requests  {} in {:.2} s = {:.0} req/s",
            self.requests,
            self.seconds,
            self.rps()
        );
        let e = &self.errors;
        let _ = writeln!(
            s,
            "  errors    {} (connect {}, write {}, read {}, timeout {}, protocol {}, status>=400 {})",
            e.total(),
            e.connect,
            e.write,
            e.read,
            e.timeout,
            e.protocol,
            e.status
        );
        let _ = write!(s, "  latency   mean {}", fmt_us(self.mean_us));
        for (label, v) in &self.percentiles {
            let _ = write!(s, "  {label} {}", fmt_us(*v));
        }
        s.push('\n');
        s
    }

    pub fn json(&self) -> String {
        let mut v = serde_json::json!({
            "requests": self.requests,
            "errors": self.errors.total(),
            "errors_by_kind": {
                "connect": self.errors.connect,
                "write": self.errors.write,
                "read": self.errors.read,
                "timeout": self.errors.timeout,
                "protocol": self.errors.protocol,
                "status": self.errors.status,
            },
            "duration_s": self.seconds,
            "rps": self.rps(),
            "mean_us": self.mean_us,
        });
        for (label, val) in &self.percentiles {
            let key = match *label {
                "p50" => "p50_us",
                "p90" => "p90_us",
                "p99" => "p99_us",
                "p99.9" => "p999_us",
                "p99.99" => "p9999_us",
                _ => "max_us",
            };
            v[key] = serde_json::json!(val);
        }
        v.to_string() + "\n"
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2}s", us / 1_000_000.0)
    } else if us >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.0}µs")
    }
}

/// The percentile distribution in HdrHistogram's text format (values in milliseconds).
pub fn hgrm(hist: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in hist.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value_ms = v.value_iterated_to() as f64 / 1000.0;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(
                s,
                "{:>12.3} {:>2.12} {:>10} {:>14.2}",
                value_ms,
                q,
                total,
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(s, "{:>12.3} {:>2.12} {:>10}", value_ms, q, total);
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        hist.mean() / 1000.0,
        hist.stdev() / 1000.0
    );
    let _ = writeln!(
        s,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        hist.max() as f64 / 1000.0,
        hist.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        hist.buckets(),
        // HdrHistogram's sub-bucket count for this precision (2048 at 3 significant digits).
        2u64.pow((2.0 * 10f64.powi(hist.sigfig() as i32)).log2().ceil() as u32)
    );
    s
}

/// Latency (ms, linear) by percentile (log scale of 1/(1-p), 0% .. 99.9999%), as SVG.
pub fn svg(hist: &Histogram<u64>, title: &str) -> String {
    const W: f64 = 900.0;
    const H: f64 = 480.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 45.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    const DECADES: f64 = 6.0;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let max_ms = (hist.max() as f64 / 1000.0).max(0.001);
    let y_top = nice_ceiling(max_ms);
    let x_of = |q: f64| {
        let d = (1.0 / (1.0 - q.min(0.999_999_9)))
            .log10()
            .clamp(0.0, DECADES);
        LEFT + d / DECADES * plot_w
    };
    let y_of = |ms: f64| TOP + plot_h - (ms / y_top).min(1.0) * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Latency by percentile: {}</text>"#,
        W / 2.0,
        xml_escape(title)
    );
    for (d, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]
        .iter()
        .enumerate()
    {
        let x = LEFT + d as f64 / DECADES * plot_w;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    for i in 0..=5 {
        let ms = y_top * i as f64 / 5.0;
        let y = y_of(ms);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            trim_float(ms)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text><text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">latency (ms)</text>"#,
        LEFT + plot_w / 2.0,
        H - 8.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    let mut points = String::new();
    for v in hist.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let _ = write!(
            points,
            "{:.1},{:.1} ",
            x_of(q),
            y_of(v.value_iterated_to() as f64 / 1000.0)
        );
    }
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
        points.trim_end()
    );
    s.push_str("</svg>\n");
    s
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
