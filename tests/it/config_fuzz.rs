//! A property test of config validation: every numeric field, set to every awkward value
//! (negative, zero, huge, fractional, NaN, infinities, integer edges), either compiles into a
//! snapshot that every core can use or is refused with an error; nothing panics. For each
//! accepted snapshot the test also does what a worker does with it on arrival (the fuzzing
//! harness's `use_like_a_worker`): builds every balancer, picks a node, routes a few
//! requests, and computes a deadline from every duration.

use shardgate::config::Config;
use shardgate::dns::Names;
use shardgate::health::Registry;

/// Values each field is tried with (as TOML literals).
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "0.5",
    "1e-9",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "9.3e18",
    "1.8e19",
    "1e20",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "-inf",
];

/// A config with one `@` where the value goes.
fn templates() -> Vec<String> {
    let route = "[[routes]]\nuri = \"/*\"\nupstream_id = \"u\"\n";
    let mut out = Vec::new();
    for field in [
        "client_header_timeout",
        "client_body_timeout",
        "keepalive_timeout",
        "send_timeout",
        "max_request_line",
        "max_header_size",
        "max_headers",
        "graceful_shutdown_timeout",
        "io_uring_entries",
        "splice_lowat",
        "workers",
    ] {
        out.push(format!(
            "[gateway]\n{field} = @\n[[upstreams]]\nid = \"u\"\nnodes = {{ \"127.0.0.1:1\" = 1 }}\n{route}"
        ));
    }
    for kind in ["roundrobin", "least_conn", "ewma", "chash"] {
        let head = format!("[[upstreams]]\nid = \"u\"\ntype = \"{kind}\"\nkey = \"uri\"\n");
        for line in [
            "nodes = { \"127.0.0.1:1\" = @ }",
            "nodes = { \"127.0.0.1:1\" = 1, \"127.0.0.1:2\" = @ }",
            "nodes = { \"127.0.0.1:1\" = 0, \"127.0.0.1:2\" = @ }",
            "nodes = [{ host = \"127.0.0.1\", port = @, weight = 1 }]",
            "nodes = [{ host = \"127.0.0.1\", port = 1, weight = 1, priority = @ }, { host = \"127.0.0.1\", port = 2, weight = 3 }]",
        ] {
            out.push(format!("{head}{line}\n{route}"));
        }
        let nodes = "nodes = { \"127.0.0.1:1\" = 1, \"127.0.0.1:2\" = 2 }\n";
        for line in [
            "retries = @",
            "retry_timeout = @",
            "timeout = { connect = @, send = 1, read = 1 }",
            "timeout = { connect = 1, send = @, read = 1 }",
            "timeout = { connect = 1, send = 1, read = @ }",
            "keepalive_pool = { size = @, idle_timeout = 1, requests = 1 }",
            "keepalive_pool = { size = 1, idle_timeout = @, requests = 1 }",
            "keepalive_pool = { size = 1, idle_timeout = 1, requests = @ }",
        ] {
            out.push(format!("{head}{nodes}{line}\n{route}"));
        }
    }
    let checked = "[[upstreams]]\nid = \"u\"\nnodes = { \"127.0.0.1:1\" = 1 }\n";
    for section in [
        "[upstreams.checks.active]\ntimeout = @",
        "[upstreams.checks.active]\nconcurrency = @",
        "[upstreams.checks.active]\nport = @",
        "[upstreams.checks.active.healthy]\ninterval = @",
        "[upstreams.checks.active.healthy]\nsuccesses = @",
        "[upstreams.checks.active.healthy]\nhttp_statuses = [@]",
        "[upstreams.checks.active.unhealthy]\ninterval = @",
        "[upstreams.checks.active.unhealthy]\nhttp_failures = @",
        "[upstreams.checks.active.unhealthy]\ntcp_failures = @",
        "[upstreams.checks.active.unhealthy]\ntimeouts = @",
        "[upstreams.checks.active]\n[upstreams.checks.passive.healthy]\nsuccesses = @",
        "[upstreams.checks.active]\n[upstreams.checks.passive.unhealthy]\ntcp_failures = @",
        "[upstreams.checks.active]\n[upstreams.checks.passive.unhealthy]\nhttp_statuses = [@]",
    ] {
        out.push(format!("{checked}{section}\n{route}"));
    }
    let up = "[[upstreams]]\nid = \"u\"\nnodes = { \"127.0.0.1:1\" = 1 }\n[[routes]]\nuri = \"/*\"\nupstream_id = \"u\"\n";
    for line in [
        "priority = @",
        "status = @",
        "timeout = { connect = @, send = 1, read = 1 }",
        "timeout = { connect = 1, send = 1, read = @ }",
    ] {
        out.push(format!("{up}{line}\n"));
    }
    out
}

#[test]
fn no_numeric_value_can_panic_validation_or_a_core() {
    let mut accepted = 0;
    let mut refused = 0;
    for template in templates() {
        for value in VALUES {
            let text = template.replace('@', value);
            let outcome = std::panic::catch_unwind(|| {
                let file = match Config::parse(&text) {
                    Ok(c) => c.split(),
                    Err(_) => return false,
                };
                match shardgate::control::compile(
                    &file.gateway,
                    &file.resources,
                    &mut Names::default(),
                    1,
                    &mut Registry::default(),
                    &mut shardgate::snapshot::CompileCache::default(),
                ) {
                    Ok(s) => {
                        shardgate::fuzzing::config::use_like_a_worker(&s);
                        true
                    }
                    Err(e) => {
                        assert!(!e.to_string().is_empty());
                        false
                    }
                }
            });
            match outcome {
                Ok(true) => accepted += 1,
                Ok(false) => refused += 1,
                Err(_) => panic!("panicked on:\n{text}"),
            }
        }
    }
    // Both outcomes happen: the values are neither all refused nor all accepted.
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}
