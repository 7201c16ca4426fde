//! The `shardgate` command: `run` the gateway, `upgrade` its binary, `check` a config,
//! `export` / `import` resources, print the `version`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "shardgate",
    version,
    about = "A thread-per-core io_uring API gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Write the pid here once serving (replaced by the new process's on an upgrade;
        /// removed at exit while it names this process).
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Upgrade the binary with no downtime: signal the gateway named in the pid file (SIGUSR2),
    /// which starts the binary at the path it was started from with the same arguments,
    /// hands it the listening sockets and drains once it serves; waits for that.
    Upgrade {
        /// The running gateway's `--pid-file`.
        #[arg(long)]
        pid_file: PathBuf,
        /// Seconds to wait for the new process to serve.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Validate a config file (like `nginx -t`): exit 0 if it would load, 1 with the reason if not.
    Check {
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Print the resources (from the store, etcd, or the config file with the file provider) as
    /// APISIX JSON, apisix.yaml or TOML.
    Export {
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Write TOML (`[[routes]]`, as config.toml) instead of JSON.
        #[arg(long, conflicts_with = "yaml")]
        toml: bool,
        /// Write APISIX's standalone `apisix.yaml` instead of JSON.
        #[arg(long)]
        yaml: bool,
    },
    /// Replace the store's (or etcd's) resources with a file's (APISIX JSON; TOML or
    /// apisix.yaml by extension), once they compile. With the store, run it with the gateway
    /// stopped; gateways on etcd apply it live.
    Import {
        file: PathBuf,
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, pid_file } => {
            ExitCode::from(shardgate::control::run(config, pid_file) as u8)
        }
        Command::Upgrade { pid_file, timeout } => {
            let timeout = std::time::Duration::from_secs(timeout);
            match shardgate::control::upgrade::request(&pid_file, timeout) {
                Ok((old, new)) => {
                    println!("shardgate: upgraded: pid {new} serves, pid {old} drains");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shardgate: upgrade: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match shardgate::control::check(&config) {
            Ok(s) => {
                println!(
                    "shardgate: the configuration file {} syntax is ok ({} routes, {} upstreams)",
                    config.display(),
                    s.router.len(),
                    s.upstreams.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shardgate: {}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Export { config, toml, yaml } => {
            use shardgate::control::transfer::Format;
            let format = match (toml, yaml) {
                (true, _) => Format::Toml,
                (_, true) => Format::Yaml,
                _ => Format::Json,
            };
            match shardgate::control::transfer::export(&config, format) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shardgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Import { file, config } => {
            match shardgate::control::transfer::import(&config, &file) {
                Ok(n) => {
                    println!("shardgate: imported {n} objects from {}", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shardgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Version => {
            println!("shardgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
