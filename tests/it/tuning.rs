//! The operator tuning scripts in `tuning/` (see tuning/README.md), run with bash.
//!
//! Dry runs (the scripts' default) run against the real machine and against a sandbox, and must
//! print what they would change and change nothing. `--apply` and `--undo --apply` only ever run
//! inside a sandbox: SHARDGATE_TUNING_ROOT puts every /proc, /sys and /etc path the scripts use
//! below a temp dir (filled here with fake kernel files) and makes them print commands such as
//! `systemctl` instead of running them. CI runs these tests as root, so `bash()` refuses
//! `--apply` without a sandbox; the one test that runs `--apply` outside of one does it as
//! `nobody` (to check the scripts' own refusal).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const SCRIPTS: [&str; 6] = [
    "sysctl.sh",
    "limits.sh",
    "irq-affinity.sh",
    "cpu-governor.sh",
    "halt-poll.sh",
    "pin-workers.sh",
];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh private directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("shardgate-tuning-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tuning")
        .join(name)
}

/// What a script run printed.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn assert_ok(&self) -> &Out {
        assert_eq!(self.code, Some(0), "expected exit 0:\n{self}");
        self
    }

    fn assert_code(&self, code: i32) -> &Out {
        assert_eq!(self.code, Some(code), "expected exit {code}:\n{self}");
        self
    }

    /// Asserts that stdout has exactly this line.
    fn line(&self, line: &str) -> &Out {
        assert!(
            self.stdout.lines().any(|l| l == line),
            "no line {line:?} in:\n{self}"
        );
        self
    }

    /// Asserts that stdout has a line starting with this.
    fn line_starting(&self, prefix: &str) -> &Out {
        assert!(
            self.stdout.lines().any(|l| l.starts_with(prefix)),
            "no line starting with {prefix:?} in:\n{self}"
        );
        self
    }

    fn stdout_has(&self, text: &str) -> &Out {
        assert!(
            self.stdout.contains(text),
            "{text:?} not in stdout:\n{self}"
        );
        self
    }

    fn stdout_lacks(&self, text: &str) -> &Out {
        assert!(!self.stdout.contains(text), "{text:?} in stdout:\n{self}");
        self
    }

    fn stderr_has(&self, text: &str) -> &Out {
        assert!(
            self.stderr.contains(text),
            "{text:?} not in stderr:\n{self}"
        );
        self
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `bash tuning/NAME ARGS` with its saved state in `state`, inside the sandbox `root` if
/// given, else on the real system (dry runs only).
fn bash(name: &str, args: &[&str], state: &Path, root: Option<&Path>) -> Out {
    let mut cmd = Command::new("bash");
    cmd.arg(script(name))
        .args(args)
        .env("SHARDGATE_TUNING_STATE", state)
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    match root {
        Some(root) => {
            cmd.env("SHARDGATE_TUNING_ROOT", root);
        }
        None => {
            assert!(
                !args.contains(&"--apply"),
                "--apply runs only in a sandbox here"
            );
            cmd.env_remove("SHARDGATE_TUNING_ROOT");
        }
    }
    let out = cmd.output().expect("run bash");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A dry run on the real machine, with a fresh (and afterwards checked empty) state dir.
fn dry_run_here(name: &str, args: &[&str]) -> Out {
    let tmp = TempDir::new("real");
    let state = tmp.path().join("state");
    fs::create_dir(&state).unwrap();
    let out = bash(name, args, &state, None);
    assert!(dir_is_empty(&state), "a dry run saved state:\n{out}");
    out
}

fn dir_is_empty(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().next().is_none()
}

/// Every file, directory and symlink below `dir`, with file contents and link targets.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(base: &Path, dir: &Path, map: &mut BTreeMap<PathBuf, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                map.insert(rel, format!("-> {}", target.display()));
            } else if meta.is_dir() {
                map.insert(rel, "<dir>".to_string());
                walk(base, &path, map);
            } else {
                map.insert(rel, fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut map = BTreeMap::new();
    walk(dir, dir, &mut map);
    map
}

/// A fake root (`root/proc/...`, `root/sys/...`, `root/etc/...`) and a state dir.
struct Sandbox {
    _dir: TempDir,
    root: PathBuf,
    state: PathBuf,
}

impl Sandbox {
    fn new(tag: &str) -> Sandbox {
        let dir = TempDir::new(tag);
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&state).unwrap();
        Sandbox {
            _dir: dir,
            root,
            state,
        }
    }

    /// Writes `root/REL` (REL without a leading slash).
    fn put(&self, rel: &str, content: &str) {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.root.join(rel)).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root.join(rel)).unwrap()
    }

    fn exists(&self, rel: &str) -> bool {
        self.root.join(rel).exists()
    }

    fn run(&self, name: &str, args: &[&str]) -> Out {
        bash(name, args, &self.state, Some(&self.root))
    }

    fn tree(&self) -> BTreeMap<PathBuf, String> {
        snapshot(&self.root)
    }

    fn state_is_empty(&self) -> bool {
        dir_is_empty(&self.state)
    }

    /// Runs a dry run and checks that it changed nothing, in the sandbox or the state dir.
    fn dry(&self, name: &str, args: &[&str]) -> Out {
        assert!(!args.contains(&"--apply"));
        let before = self.tree();
        let out = self.run(name, args);
        assert_eq!(self.tree(), before, "a dry run changed files:\n{out}");
        assert!(self.state_is_empty(), "a dry run saved state:\n{out}");
        out
    }
}

// ---------------------------------------------------------------------------------------------
// All scripts

#[test]
fn every_script_has_help_and_rejects_bad_flags() {
    for name in SCRIPTS {
        let help = dry_run_here(name, &["--help"]);
        help.assert_ok()
            .stdout_has("Usage:")
            .stdout_has("--dry-run")
            .stdout_has("--apply")
            .stdout_has("--undo");
        assert!(help.stderr.is_empty(), "{name} --help:\n{help}");

        dry_run_here(name, &["--bogus"])
            .assert_code(2)
            .stderr_has("unknown argument: --bogus");
        let sb = Sandbox::new("contradict");
        sb.run(name, &["--dry-run", "--apply"])
            .assert_code(2)
            .stderr_has("contradict");
        assert!(sb.tree().is_empty() && sb.state_is_empty());
        dry_run_here(name, &["--force"])
            .assert_code(2)
            .stderr_has("--force only means something with --undo");
    }
}

#[test]
fn undo_without_saved_state_has_nothing_to_do() {
    for name in SCRIPTS {
        let sb = Sandbox::new("undo-nothing");
        sb.run(name, &["--undo", "--apply"])
            .assert_ok()
            .stdout_has("nothing to undo");
        assert!(sb.state_is_empty());
    }
}

#[test]
fn apply_outside_a_sandbox_needs_root() {
    // As root (CI), run the scripts as `nobody` from a world-readable copy; as another user,
    // directly. Either way the script must refuse before touching anything.
    // SAFETY: geteuid(2) cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 && !Path::new("/usr/bin/setpriv").exists() && !Path::new("/bin/setpriv").exists() {
        eprintln!("skipped: running as root and setpriv (util-linux) is not installed");
        return;
    }
    let tmp = TempDir::new("noroot");
    let dir = tmp.path().join("tuning");
    fs::create_dir(&dir).unwrap();
    for entry in fs::read_dir(script("")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sh") {
            let copy = dir.join(path.file_name().unwrap());
            fs::copy(&path, &copy).unwrap();
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    for d in [tmp.path(), dir.as_path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let state = tmp.path().join("state");
    fs::create_dir(&state).unwrap();
    let cases: [(&str, &[&str]); 5] = [
        ("sysctl.sh", &["--apply"]),
        ("limits.sh", &["--apply"]),
        ("cpu-governor.sh", &["--apply"]),
        ("halt-poll.sh", &["--apply"]),
        ("irq-affinity.sh", &["--cores", "0", "--apply"]),
    ];
    for (name, args) in cases {
        let mut cmd = if euid == 0 {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"]);
            c
        } else {
            Command::new("bash")
        };
        let out = cmd
            .arg(dir.join(name))
            .args(args)
            .env("SHARDGATE_TUNING_STATE", &state)
            .env_remove("SHARDGATE_TUNING_ROOT")
            .stdin(Stdio::null())
            .output()
            .expect("run setpriv/bash");
        let out = Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        out.assert_code(1).stderr_has("must run as root");
        assert!(!out.stdout.contains("would "), "{out}");
    }
    assert!(dir_is_empty(&state));
}

// ---------------------------------------------------------------------------------------------
// sysctl.sh

const SYSCTL_KEYS: [&str; 9] = [
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_reuse",
    "fs.file-max",
    "fs.nr_open",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_slow_start_after_idle",
];

/// A fake /proc/sys with typical defaults; tcp_slow_start_after_idle is missing (a key this
/// "kernel" does not have) and fs.file-max is already higher than the script's target.
fn sysctl_sandbox() -> Sandbox {
    let sb = Sandbox::new("sysctl");
    for (key, value) in [
        ("net/core/somaxconn", "4096"),
        ("net/ipv4/tcp_max_syn_backlog", "512"),
        ("net/core/netdev_max_backlog", "1000"),
        ("net/ipv4/ip_local_port_range", "32768\t60999"),
        ("net/ipv4/tcp_tw_reuse", "2"),
        ("fs/file-max", "9223372036854775807"),
        ("fs/nr_open", "1048576"),
        ("net/ipv4/tcp_fin_timeout", "60"),
        ("net/core/busy_poll", "0"),
        ("net/core/busy_read", "0"),
    ] {
        sb.put(&format!("proc/sys/{key}"), &format!("{value}\n"));
    }
    sb
}

#[test]
fn sysctl_dry_run_prints_each_change_and_changes_nothing() {
    let sb = sysctl_sandbox();
    let out = sb.dry("sysctl.sh", &["--dry-run"]);
    out.assert_ok()
        .line_starting("sysctl.sh: dry run: nothing is changed")
        .line("would set: net.core.somaxconn = 65535 (now 4096)")
        .line("would set: net.ipv4.tcp_max_syn_backlog = 65535 (now 512)")
        .line("would set: net.core.netdev_max_backlog = 16384 (now 1000)")
        .line("would set: net.ipv4.ip_local_port_range = 10000 65535 (now 32768 60999)")
        .line("would set: net.ipv4.tcp_tw_reuse = 1 (now 2)")
        .line("would set: net.ipv4.tcp_fin_timeout = 15 (now 60)")
        .line("ok: fs.file-max = 9223372036854775807 (wanted at least 2097152)")
        .line("ok: fs.nr_open = 1048576 (wanted at least 1048576)")
        .line("note: skipped net.ipv4.tcp_slow_start_after_idle: this kernel does not have it")
        .line("sysctl.sh: dry run: 6 change(s) shown, none made")
        .stdout_lacks("busy_poll =")
        .stdout_lacks("would write:");
    // Every change says why.
    assert_eq!(out.stdout.matches("\n    why: ").count(), 6, "{out}");
}

#[test]
fn sysctl_busy_poll_and_persist_are_opt_in() {
    let sb = sysctl_sandbox();
    // No --dry-run: a dry run is the default.
    sb.dry("sysctl.sh", &["--busy-poll", "--persist"])
        .assert_ok()
        .line_starting("sysctl.sh: dry run")
        .line("would set: net.core.busy_poll = 50 (now 0)")
        .line("would set: net.core.busy_read = 50 (now 0)")
        .line("would write: /etc/sysctl.d/90-shardgate.conf")
        .line("    | net.core.somaxconn = 65535")
        .line("    | net.core.busy_poll = 50")
        .stdout_lacks("    | fs.file-max");
}

#[test]
fn sysctl_dry_run_on_this_machine() {
    let somaxconn = fs::read_to_string("/proc/sys/net/core/somaxconn").ok();
    let out = dry_run_here("sysctl.sh", &[]);
    out.assert_ok();
    for key in SYSCTL_KEYS {
        let accounted = out.stdout.lines().any(|l| {
            l.starts_with(&format!("would set: {key} = "))
                || l.starts_with(&format!("ok: {key} = "))
                || l.starts_with(&format!("note: skipped {key}:"))
        });
        assert!(accounted, "{key} not reported:\n{out}");
    }
    assert_eq!(
        fs::read_to_string("/proc/sys/net/core/somaxconn").ok(),
        somaxconn
    );
}

#[test]
fn sysctl_apply_then_undo_restores_every_value() {
    let sb = sysctl_sandbox();
    let before = sb.tree();
    sb.run("sysctl.sh", &["--apply", "--persist"])
        .assert_ok()
        .line("set: net.core.somaxconn = 65535 (now 4096)")
        .line("wrote: /etc/sysctl.d/90-shardgate.conf")
        .line("sysctl.sh: 7 change(s) made");
    assert_eq!(sb.read("proc/sys/net/core/somaxconn"), "65535\n");
    assert_eq!(
        sb.read("proc/sys/net/ipv4/ip_local_port_range"),
        "10000 65535\n"
    );
    assert_eq!(sb.read("proc/sys/net/ipv4/tcp_tw_reuse"), "1\n");
    // A limit already above the target is never lowered, nor persisted.
    assert_eq!(sb.read("proc/sys/fs/file-max"), "9223372036854775807\n");
    assert_eq!(sb.read("proc/sys/net/core/busy_poll"), "0\n");
    let persisted = sb.read("etc/sysctl.d/90-shardgate.conf");
    assert!(
        persisted.contains("\nnet.core.somaxconn = 65535\n"),
        "{persisted}"
    );
    assert!(!persisted.contains("fs.file-max"), "{persisted}");

    // Applying again changes nothing, and keeps the values saved the first time.
    sb.run("sysctl.sh", &["--apply"])
        .assert_ok()
        .line("sysctl.sh: nothing to change");

    sb.run("sysctl.sh", &["--undo"])
        .assert_ok()
        .line("would restore: net.core.somaxconn = 4096 (now 65535)")
        .line("would remove: /etc/sysctl.d/90-shardgate.conf (written by --apply)");
    assert_eq!(sb.read("proc/sys/net/core/somaxconn"), "65535\n");

    sb.run("sysctl.sh", &["--undo", "--apply"])
        .assert_ok()
        .line("restored: net.core.somaxconn = 4096")
        .line("removed: /etc/sysctl.d/90-shardgate.conf");
    // The kernel takes "32768 60999" and prints a tab: the fake file keeps what was written.
    let port_range = PathBuf::from("proc/sys/net/ipv4/ip_local_port_range");
    let mut after = sb.tree();
    after.insert(
        port_range.clone(),
        sb.read("proc/sys/net/ipv4/ip_local_port_range")
            .replace(' ', "\t"),
    );
    assert_eq!(after, before);
    assert!(sb.state_is_empty());
}

// ---------------------------------------------------------------------------------------------
// limits.sh

fn limits_sandbox(systemd: bool) -> Sandbox {
    let sb = Sandbox::new("limits");
    sb.put("proc/sys/fs/nr_open", "1048576\n");
    sb.mkdir("etc/security/limits.d");
    if systemd {
        sb.mkdir("run/systemd/system");
        sb.mkdir("etc/systemd/system");
    }
    sb
}

#[test]
fn limits_dry_run_prints_the_limits_file() {
    let sb = limits_sandbox(false);
    sb.dry("limits.sh", &["--dry-run"])
        .assert_ok()
        .line("would write: /etc/security/limits.d/90-shardgate.conf")
        .line("    | *        soft nofile 1048576")
        .line("    | *        hard nofile 1048576")
        .line("    | root     soft nofile 1048576")
        .line("    | root     hard nofile 1048576")
        .stdout_has("ulimit -n")
        .stdout_lacks("LimitNOFILE");
}

#[test]
fn limits_on_systemd_suggests_limitnofile() {
    let sb = limits_sandbox(true);
    sb.dry("limits.sh", &["--nofile", "524288"])
        .assert_ok()
        .line("    | *        soft nofile 524288")
        .line("    LimitNOFILE=524288");
    sb.dry("limits.sh", &["--unit", "shardgate"])
        .assert_ok()
        .line("would write: /etc/systemd/system/shardgate.service.d/90-shardgate-limits.conf")
        .line("    | LimitNOFILE=1048576")
        .line("would run: systemctl daemon-reload");
}

#[test]
fn limits_refuses_a_limit_above_nr_open() {
    let sb = limits_sandbox(false);
    sb.dry("limits.sh", &["--nofile", "2000000"])
        .assert_ok()
        .stdout_has("warning: --nofile 2000000 is above fs.nr_open (1048576)");
    sb.run("limits.sh", &["--nofile", "2000000", "--apply"])
        .assert_code(1)
        .stderr_has("above fs.nr_open");
    assert!(!sb.exists("etc/security/limits.d/90-shardgate.conf"));
    dry_run_here("limits.sh", &["--nofile", "12"])
        .assert_code(2)
        .stderr_has("invalid --nofile value '12'");
}

#[test]
fn limits_apply_then_undo_removes_what_it_wrote() {
    let sb = limits_sandbox(true);
    let before = sb.tree();
    sb.run(
        "limits.sh",
        &["--apply", "--unit", "shardgate", "--user", "gw"],
    )
    .assert_ok()
    .line("wrote: /etc/security/limits.d/90-shardgate.conf")
    .line("sandbox: not run: systemctl daemon-reload");
    let conf = sb.read("etc/security/limits.d/90-shardgate.conf");
    assert!(conf.contains("gw       soft nofile 1048576\n"), "{conf}");
    assert!(!conf.contains("root"), "{conf}");
    let dropin = sb.read("etc/systemd/system/shardgate.service.d/90-shardgate-limits.conf");
    assert!(
        dropin.contains("[Service]\nLimitNOFILE=1048576\n"),
        "{dropin}"
    );

    sb.run("limits.sh", &["--undo", "--apply"])
        .assert_ok()
        .line("removed: /etc/security/limits.d/90-shardgate.conf")
        .line("sandbox: not run: systemctl daemon-reload");
    assert_eq!(sb.tree(), before);
    assert!(sb.state_is_empty());
}

#[test]
fn limits_dry_run_on_this_machine() {
    dry_run_here("limits.sh", &[])
        .assert_ok()
        .line_starting("limits.sh: dry run")
        .stdout_has("ulimit -n");
}

// ---------------------------------------------------------------------------------------------
// irq-affinity.sh

/// 8 CPUs; NIC queues (virtio-net of eth0, mlx5, an ixgbe-style name) among other IRQs that
/// must be left alone (timer, NVMe, virtio config, virtio-rng).
fn irq_sandbox() -> Sandbox {
    let sb = Sandbox::new("irq");
    sb.put("sys/devices/system/cpu/online", "0-7\n");
    let mut interrupts = String::from(
        "            CPU0       CPU1       CPU2       CPU3       CPU4       CPU5       CPU6       CPU7\n",
    );
    for (irq, rest) in [
        ("0", "IO-APIC   2-edge      timer"),
        ("24", "PCI-MSI 65536-edge      nvme0q0"),
        ("40", "PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0"),
        ("41", "PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0"),
        ("42", "PCI-MSIX-0000:00:03.0   0-edge      virtio2-config"),
        (
            "50",
            "IR-PCI-MSI 1048576-edge      mlx5_comp0@pci:0000:3b:00.0",
        ),
        ("51", "IR-PCI-MSI 1048577-edge      eth1-TxRx-0"),
        ("60", "PCI-MSI 2-edge      virtio4-input"),
    ] {
        interrupts.push_str(&format!(
            "{irq:>4}:        100          0          0          0          0          0          0          0  {rest}\n"
        ));
        let affinity = if irq == "51" { "0-1\n" } else { "0-7\n" };
        sb.put(&format!("proc/irq/{irq}/smp_affinity_list"), affinity);
    }
    interrupts.push_str("NMI:          0          0          0          0          0          0          0          0   Non-maskable interrupts\nERR:          0\n");
    sb.put("proc/interrupts", &interrupts);
    // eth0 is the virtio-net device virtio2.
    sb.mkdir("sys/devices/pci0000:00/0000:00:03.0/virtio2");
    sb.mkdir("sys/class/net/eth0");
    std::os::unix::fs::symlink(
        "../../../devices/pci0000:00/0000:00:03.0/virtio2",
        sb.root.join("sys/class/net/eth0/device"),
    )
    .unwrap();
    sb
}

#[test]
fn irq_affinity_dry_run_moves_only_nic_irqs_off_the_gateway_cores() {
    let sb = irq_sandbox();
    let out = sb.dry("irq-affinity.sh", &["--cores", "2-7"]);
    out.assert_ok()
        .line("gateway cores: 2-7; NIC interrupts go to: 0-1")
        .line("found 4 NIC interrupt(s): 40 41 50 51")
        .line("would set: /proc/irq/40/smp_affinity_list = 0-1 (now 0-7)")
        .line("would set: /proc/irq/41/smp_affinity_list = 0-1 (now 0-7)")
        .line("would set: /proc/irq/50/smp_affinity_list = 0-1 (now 0-7)")
        .line("ok: irq 51 (eth1-TxRx-0) already on 0-1")
        .line("irq-affinity.sh: dry run: 3 change(s) shown, none made");
    for other in [
        "/proc/irq/0/",
        "/proc/irq/24/",
        "/proc/irq/42/",
        "/proc/irq/60/",
    ] {
        out.stdout_lacks(other);
    }
}

#[test]
fn irq_affinity_dry_run_for_one_interface() {
    let sb = irq_sandbox();
    sb.dry("irq-affinity.sh", &["--cores", "2-4,6", "--iface", "eth0"])
        .assert_ok()
        .line("gateway cores: 2-4,6; NIC interrupts go to: 0-1,5,7")
        .line("found 2 NIC interrupt(s) of eth0: 40 41")
        .line("would set: /proc/irq/40/smp_affinity_list = 0-1,5,7 (now 0-7)")
        .line("would set: /proc/irq/41/smp_affinity_list = 0-1,5,7 (now 0-7)")
        .stdout_lacks("/proc/irq/50/");
    sb.dry("irq-affinity.sh", &["--cores", "2-7", "--irq-cpus", "0"])
        .assert_ok()
        .line("would set: /proc/irq/50/smp_affinity_list = 0 (now 0-7)");
}

#[test]
fn irq_affinity_rejects_bad_arguments() {
    let sb = irq_sandbox();
    sb.dry("irq-affinity.sh", &[])
        .assert_code(2)
        .stderr_has("--cores LIST is required");
    sb.dry("irq-affinity.sh", &["--cores", "7-2"])
        .assert_code(2)
        .stderr_has("invalid --cores value '7-2'");
    sb.dry("irq-affinity.sh", &["--cores", "0-7"])
        .assert_code(1)
        .stderr_has("no CPU left for the NIC's interrupts");
    sb.dry("irq-affinity.sh", &["--cores", "1", "--iface", "nope0"])
        .assert_code(1)
        .stderr_has("no network interface 'nope0'");
    sb.dry("irq-affinity.sh", &["--cores", "1", "--irq-cpus", "9"])
        .assert_code(1)
        .stderr_has("CPU 9 is not online");
}

#[test]
fn irq_affinity_apply_then_undo_restores_the_first_saved_affinities() {
    let sb = irq_sandbox();
    let before = sb.tree();
    sb.run("irq-affinity.sh", &["--cores", "2-7", "--apply"])
        .assert_ok()
        .line("irq-affinity.sh: 3 change(s) made");
    assert_eq!(sb.read("proc/irq/40/smp_affinity_list"), "0-1\n");
    assert_eq!(sb.read("proc/irq/50/smp_affinity_list"), "0-1\n");
    assert_eq!(sb.read("proc/irq/24/smp_affinity_list"), "0-7\n");
    // A second --apply with other cores: undo still goes back to the original values.
    sb.run(
        "irq-affinity.sh",
        &["--cores", "2-4,6", "--iface", "eth0", "--apply"],
    )
    .assert_ok();
    assert_eq!(sb.read("proc/irq/40/smp_affinity_list"), "0-1,5,7\n");
    sb.run("irq-affinity.sh", &["--undo", "--apply"])
        .assert_ok()
        .line("restored: /proc/irq/40/smp_affinity_list = 0-7")
        .line("restored: /proc/irq/50/smp_affinity_list = 0-7");
    assert_eq!(sb.tree(), before);
    assert!(sb.state_is_empty());
}

#[test]
fn irq_affinity_dry_run_on_this_machine() {
    let out = dry_run_here("irq-affinity.sh", &["--cores", "0"]);
    // A one-CPU machine has no core left for interrupts; any other must succeed.
    if out.code == Some(1) {
        out.stderr_has("no CPU left");
    } else {
        out.assert_ok()
            .line_starting("gateway cores: 0; NIC interrupts go to: ");
    }
}

// ---------------------------------------------------------------------------------------------
// cpu-governor.sh

/// CPUs 0-3 and 10 with cpufreq; cpu3 already runs `performance`.
fn governor_sandbox() -> Sandbox {
    let sb = Sandbox::new("governor");
    for cpu in [0, 1, 2, 3, 10] {
        let dir = format!("sys/devices/system/cpu/cpu{cpu}/cpufreq");
        let governor = if cpu == 3 { "performance" } else { "powersave" };
        sb.put(&format!("{dir}/scaling_governor"), &format!("{governor}\n"));
        sb.put(
            &format!("{dir}/scaling_available_governors"),
            "performance powersave\n",
        );
        sb.put(&format!("{dir}/scaling_driver"), "intel_pstate\n");
    }
    sb
}

#[test]
fn cpu_governor_dry_run_prints_each_cpu() {
    let sb = governor_sandbox();
    let out = sb.dry("cpu-governor.sh", &["--dry-run"]);
    out.assert_ok()
        .line("cpufreq driver: intel_pstate; wanted governor: performance")
        .line("would set: /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor = performance (now powersave)")
        .line("would set: /sys/devices/system/cpu/cpu10/cpufreq/scaling_governor = performance (now powersave)")
        .line("ok: cpu3 governor is already performance")
        .line("cpu-governor.sh: dry run: 4 change(s) shown, none made");
    // cpu10 comes after cpu3, not after cpu1.
    let at = |s: &str| out.stdout.find(s).unwrap();
    assert!(at("cpu3 governor") < at("cpu10/"), "{out}");

    sb.dry("cpu-governor.sh", &["--cores", "2-3,10"])
        .assert_ok()
        .line("cpu-governor.sh: dry run: 2 change(s) shown, none made")
        .stdout_lacks("cpu0/");
    sb.dry("cpu-governor.sh", &["--governor", "ondemand"])
        .assert_code(1)
        .stderr_has("does not offer the 'ondemand' governor");
}

#[test]
fn cpu_governor_without_cpufreq_says_so() {
    let sb = Sandbox::new("no-cpufreq");
    sb.dry("cpu-governor.sh", &[])
        .assert_ok()
        .stdout_has("note: cpufreq is not available here")
        .line("cpu-governor.sh: nothing to change");
}

#[test]
fn cpu_governor_apply_then_undo() {
    let sb = governor_sandbox();
    let before = sb.tree();
    sb.run("cpu-governor.sh", &["--apply"]).assert_ok();
    for cpu in [0, 1, 2, 3, 10] {
        assert_eq!(
            sb.read(&format!(
                "sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
            )),
            "performance\n"
        );
    }
    sb.run("cpu-governor.sh", &["--undo", "--apply"])
        .assert_ok()
        .line("restored: /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor = powersave");
    assert_eq!(sb.tree(), before);
    assert!(sb.state_is_empty());
}

#[test]
fn cpu_governor_dry_run_on_this_machine() {
    let out = dry_run_here("cpu-governor.sh", &[]);
    out.assert_ok();
    assert!(
        out.stdout.contains("cpufreq is not available")
            || out.stdout.contains("would set: ")
            || out.stdout.contains(" governor is already "),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// halt-poll.sh

const HALT_POLL: &str = "sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// A KVM guest's view: the haltpoll cpuidle driver, polling off.
fn halt_poll_sandbox() -> Sandbox {
    let sb = Sandbox::new("haltpoll");
    sb.put(
        "sys/devices/system/cpu/cpuidle/current_driver",
        "haltpoll\n",
    );
    sb.put(HALT_POLL, "0\n");
    sb
}

#[test]
fn halt_poll_dry_run_prints_the_change_and_checks_its_value() {
    let sb = halt_poll_sandbox();
    sb.dry("halt-poll.sh", &[])
        .assert_ok()
        .line("cpuidle driver: haltpoll; guest_halt_poll_ns: 0, wanted 200000")
        .line("would set: /sys/module/haltpoll/parameters/guest_halt_poll_ns = 200000 (now 0)")
        .line("halt-poll.sh: dry run: 1 change(s) shown, none made");
    sb.dry("halt-poll.sh", &["--ns", "0"])
        .assert_ok()
        .line("ok: guest_halt_poll_ns is already 0")
        .line("halt-poll.sh: nothing to change");
    for bad in ["abc", "-1", "10000001", "1e6"] {
        sb.dry("halt-poll.sh", &["--ns", bad])
            .assert_code(2)
            .stderr_has("invalid --ns value");
    }
    assert_eq!(sb.read(HALT_POLL), "0\n");
}

#[test]
fn halt_poll_without_the_haltpoll_driver_says_so() {
    let sb = Sandbox::new("no-haltpoll");
    sb.put(
        "sys/devices/system/cpu/cpuidle/current_driver",
        "intel_idle\n",
    );
    let before = sb.tree();
    sb.run("halt-poll.sh", &["--apply"])
        .assert_ok()
        .stdout_has(
            "note: the haltpoll cpuidle driver is not in use here (cpuidle driver: intel_idle)",
        )
        .line("halt-poll.sh: nothing to change");
    assert_eq!(sb.tree(), before);
    assert!(sb.state_is_empty());
}

#[test]
fn halt_poll_apply_then_undo() {
    let sb = halt_poll_sandbox();
    let before = sb.tree();
    sb.run("halt-poll.sh", &["--apply", "--ns", "50000"])
        .assert_ok();
    assert_eq!(sb.read(HALT_POLL), "50000\n");
    // A second apply keeps the first saved value: undo still gets back to 0.
    sb.run("halt-poll.sh", &["--apply"]).assert_ok();
    assert_eq!(sb.read(HALT_POLL), "200000\n");
    sb.run("halt-poll.sh", &["--undo", "--apply"])
        .assert_ok()
        .line("restored: /sys/module/haltpoll/parameters/guest_halt_poll_ns = 0");
    assert_eq!(sb.tree(), before);
    assert!(sb.state_is_empty());
}

#[test]
fn halt_poll_dry_run_on_this_machine() {
    let out = dry_run_here("halt-poll.sh", &[]);
    out.assert_ok();
    assert!(
        out.stdout.contains("haltpoll cpuidle driver is not in use")
            || out.stdout.contains("would set: /sys/module/haltpoll")
            || out.stdout.contains("guest_halt_poll_ns is already"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// pin-workers.sh

/// A copy of the shipped config.toml in a temp dir.
fn config_copy(tmp: &TempDir) -> PathBuf {
    let path = tmp.path().join("config.toml");
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"),
        &path,
    )
    .unwrap();
    path
}

#[test]
fn pin_workers_dry_run_prints_the_settings_and_leaves_the_config_alone() {
    let tmp = TempDir::new("pin");
    let config = config_copy(&tmp);
    let original = fs::read(&config).unwrap();
    let config_str = config.to_str().unwrap();
    let out = dry_run_here(
        "pin-workers.sh",
        &["--dry-run", "--cores", "2-4,6", "--config", config_str],
    );
    out.assert_ok()
        .line("    workers = 4")
        .line("    cpus = [2, 3, 4, 6]")
        .line(&format!(
            "would set: {config_str} [gateway] workers = 4 (now 0)"
        ))
        .line_starting(&format!(
            "would set: {config_str} [gateway] cpus = [2, 3, 4, 6] (not set now"
        ))
        .line(&format!(
            "    taskset -c 2-4,6 shardgate run -c {config_str}"
        ))
        .line("pin-workers.sh: dry run: 1 change(s) shown, none made");
    assert_eq!(fs::read(&config).unwrap(), original);
}

#[test]
fn pin_workers_without_a_config_only_prints() {
    dry_run_here("pin-workers.sh", &["--cores", "3,1"])
        .assert_ok()
        .line("    workers = 2")
        .line("    cpus = [3, 1]")
        .line("    taskset -c 1,3 shardgate run -c config.toml")
        .stdout_has("no --config given");
    dry_run_here("pin-workers.sh", &["--cores=0-1", "--workers", "4"])
        .assert_ok()
        .line("    workers = 4")
        .line("    cpus = [0, 1]");
}

#[test]
fn pin_workers_rejects_bad_cores() {
    for bad in ["x", "2-", "-2", "4-2", "1,,2", "2,", "1;2", "9999"] {
        let out = dry_run_here("pin-workers.sh", &["--cores", bad]);
        out.assert_code(2)
            .stderr_has(&format!("invalid --cores value '{bad}'"));
        assert!(!out.stdout.contains("would"), "{out}");
    }
    dry_run_here("pin-workers.sh", &["--cores", ""])
        .assert_code(2)
        .stderr_has("--cores needs a value");
    dry_run_here("pin-workers.sh", &[])
        .assert_code(2)
        .stderr_has("--cores LIST is required");
    dry_run_here("pin-workers.sh", &["--cores", "1", "--workers", "0"])
        .assert_code(2)
        .stderr_has("invalid --workers value '0'");
}

#[test]
fn pin_workers_apply_writes_a_valid_config_and_undo_restores_it() {
    let sb = Sandbox::new("pin-apply");
    let tmp = TempDir::new("pin-apply");
    let config = config_copy(&tmp);
    let original = fs::read_to_string(&config).unwrap();
    let config_str = config.to_str().unwrap();
    sb.run(
        "pin-workers.sh",
        &["--cores", "2-4,6", "--config", config_str, "--apply"],
    )
    .assert_ok()
    .line(&format!("wrote: {config_str}"));
    let edited = fs::read_to_string(&config).unwrap();
    assert!(edited.contains("\nworkers = 4\n"), "{edited}");
    assert!(edited.contains("\ncpus = [2, 3, 4, 6]\n"), "{edited}");
    assert!(!edited.contains("workers = 0"), "{edited}");
    // Everything else is as it was.
    fn kept(s: &str) -> Vec<&str> {
        s.lines()
            .filter(|l| !l.starts_with("workers") && !l.starts_with("cpus"))
            .collect()
    }
    assert_eq!(kept(&edited), kept(&original));
    // The gateway accepts it.
    let check = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["check", "-c", config_str])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "shardgate check: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    sb.run("pin-workers.sh", &["--undo", "--apply"])
        .assert_ok()
        .line(&format!("restored: {config_str}"));
    assert_eq!(fs::read_to_string(&config).unwrap(), original);
    assert!(sb.state_is_empty());
}

#[test]
fn pin_workers_edits_tricky_configs() {
    let sb = Sandbox::new("pin-tricky");
    let tmp = TempDir::new("pin-tricky");
    // pin_cores off, a multi-line cpus array, a multi-line string and nested arrays that look
    // like table headers or keys, and a `workers` key in another table.
    let config = tmp.path().join("tricky.toml");
    fs::write(
        &config,
        "[gateway]\nlisten = [\"127.0.0.1:9080\"]\npin_cores = false # off\ncpus = [\n  0,  # first\n  1,\n]\n\n[[routes]]\nid = \"r\"\nuri = \"/\"\nvars = [\n  [\"uri\", \"~~\", \"^/a[0-9]+\"],\n  [\"http_x\", \"==\", \"]\"],\n]\nupstream = { nodes = { \"127.0.0.1:9001\" = 1 } }\n",
    )
    .unwrap();
    let config_str = config.to_str().unwrap();
    sb.run(
        "pin-workers.sh",
        &["--cores", "1", "--config", config_str, "--apply"],
    )
    .assert_ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        "[gateway]\nworkers = 1\nlisten = [\"127.0.0.1:9080\"]\npin_cores = true\ncpus = [1]\n\n[[routes]]\nid = \"r\"\nuri = \"/\"\nvars = [\n  [\"uri\", \"~~\", \"^/a[0-9]+\"],\n  [\"http_x\", \"==\", \"]\"],\n]\nupstream = { nodes = { \"127.0.0.1:9001\" = 1 } }\n"
    );

    // No [gateway] table at all: one is added at the end.
    let bare = tmp.path().join("bare.toml");
    fs::write(&bare, "[[routes]]\nid = \"r\"\nuri = \"/\"\n").unwrap();
    let bare_str = bare.to_str().unwrap();
    sb.run(
        "pin-workers.sh",
        &["--cores", "0,2", "--config", bare_str, "--apply"],
    )
    .assert_ok();
    assert_eq!(
        fs::read_to_string(&bare).unwrap(),
        "[[routes]]\nid = \"r\"\nuri = \"/\"\n\n[gateway]\nworkers = 2\ncpus = [0, 2]\n"
    );
}

#[test]
fn pin_workers_undo_refuses_a_config_edited_since() {
    let sb = Sandbox::new("pin-edited");
    let tmp = TempDir::new("pin-edited");
    let config = config_copy(&tmp);
    let original = fs::read_to_string(&config).unwrap();
    let config_str = config.to_str().unwrap();
    sb.run(
        "pin-workers.sh",
        &["--cores", "1", "--config", config_str, "--apply"],
    )
    .assert_ok();
    let edited = format!("{}# edited by hand\n", fs::read_to_string(&config).unwrap());
    fs::write(&config, &edited).unwrap();
    sb.run("pin-workers.sh", &["--undo", "--apply"])
        .assert_code(1)
        .stderr_has("was changed after --apply");
    assert_eq!(fs::read_to_string(&config).unwrap(), edited);
    sb.run("pin-workers.sh", &["--undo", "--apply", "--force"])
        .assert_ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), original);
}
