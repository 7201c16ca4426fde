//! Building a worker's monoio runtime: io_uring with the setup flags that measured best,
//! falling back (with a log line) to plain io_uring and then to epoll.

use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};

pub type WorkerRuntime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// Which I/O driver and ring settings the workers use (`gateway.driver`, `io_uring_*`).
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// "auto", "io_uring" or "epoll".
    pub driver: String,
    /// COOP_TASKRUN + SINGLE_ISSUER: each ring is used only by its own thread, so the kernel
    /// can skip cross-thread task-work interrupts.
    pub uring_flags: bool,
    /// DEFER_TASKRUN on top: completions are processed only when the worker asks for them.
    pub defer_taskrun: bool,
    pub entries: u32,
}

impl Default for RuntimeOptions {
    /// The gateway's defaults: io_uring with COOP_TASKRUN + SINGLE_ISSUER, falling back to epoll.
    fn default() -> Self {
        RuntimeOptions {
            driver: "auto".into(),
            uring_flags: true,
            defer_taskrun: false,
            entries: 1024,
        }
    }
}

fn uring(opts: &RuntimeOptions, flags: bool) -> std::io::Result<WorkerRuntime> {
    let mut urb = io_uring::IoUring::builder();
    if flags {
        urb.setup_coop_taskrun().setup_single_issuer();
        if opts.defer_taskrun {
            urb.setup_defer_taskrun();
        }
    }
    Ok(RuntimeBuilder::<IoUringDriver>::new()
        .with_entries(opts.entries)
        .uring_builder(urb)
        .enable_timer()
        .build()?
        .into())
}

fn epoll(opts: &RuntimeOptions) -> std::io::Result<WorkerRuntime> {
    Ok(RuntimeBuilder::<LegacyDriver>::new()
        .with_entries(opts.entries)
        .enable_timer()
        .build()?
        .into())
}

/// Builds the runtime for worker `index`, logging which driver it got.
pub fn build(opts: &RuntimeOptions, index: usize) -> std::io::Result<WorkerRuntime> {
    let forced_legacy = std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some();
    if opts.driver == "epoll" || forced_legacy {
        if index == 0 {
            crate::info!("using the epoll driver");
        }
        return epoll(opts);
    }
    if !monoio::utils::detect_uring() {
        if opts.driver == "io_uring" {
            return Err(std::io::Error::other(
                "io_uring is not available on this kernel (gateway.driver = \"io_uring\")",
            ));
        }
        if index == 0 {
            crate::warn!("io_uring is unavailable; falling back to the epoll driver");
        }
        return epoll(opts);
    }
    match uring(opts, opts.uring_flags) {
        Ok(rt) => {
            if index == 0 {
                crate::info!(
                    "using the io_uring driver{}",
                    match (opts.uring_flags, opts.defer_taskrun) {
                        (true, true) => " (COOP_TASKRUN, SINGLE_ISSUER, DEFER_TASKRUN)",
                        (true, false) => " (COOP_TASKRUN, SINGLE_ISSUER)",
                        _ => "",
                    }
                );
            }
            Ok(rt)
        }
        Err(e) if opts.uring_flags => {
            crate::warn!("io_uring setup flags refused ({e}); retrying without them");
            uring(opts, false).or_else(|e| {
                if opts.driver == "io_uring" {
                    return Err(e);
                }
                crate::warn!("io_uring setup failed ({e}); falling back to the epoll driver");
                epoll(opts)
            })
        }
        Err(e) if opts.driver == "auto" => {
            crate::warn!("io_uring setup failed ({e}); falling back to the epoll driver");
            epoll(opts)
        }
        Err(e) => Err(e),
    }
}
