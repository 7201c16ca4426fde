//! Python test peers (Debian's python3 with python3-websockets, python3-h2, python3-grpcio,
//! installed by tests/run.sh): servers that print their port and serve until killed, and
//! clients run to completion. The scripts are in tests/py/.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

/// Debian's interpreter, which has the packages (a pyenv or venv `python3` first on PATH may
/// not).
pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// The path of a script in tests/py/.
pub fn script(name: &str) -> String {
    format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A Python server: started with `args`, its port read from its first line of output;
/// killed when dropped.
pub struct PyServer {
    child: Child,
    pub port: u16,
}

impl PyServer {
    pub fn start(name: &str, args: &[&str]) -> PyServer {
        let mut child = Command::new(python())
            .arg(script(name))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a python test server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} {args:?} printed no port: {line:?}"));
        PyServer { child, port }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python client script to completion; its output.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(python())
        .arg(script(name))
        .args(args)
        .output()
        .expect("run a python test client")
}

/// Starts a Python client in the background (its stdout piped).
pub fn spawn(name: &str, args: &[&str]) -> Child {
    Command::new(python())
        .arg(script(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a python test client")
}

/// Runs a Python client that prints one JSON object; the object (panics with its output if
/// the script fails).
pub fn report(name: &str, args: &[&str]) -> serde_json::Value {
    let out = run(name, args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("{name} {args:?}: {text}"))
}
