//! TLS, both directions, with rustls:
//! - [`certs`]: the certificates served by SNI, compiled from the `ssls` objects with every
//!   snapshot;
//! - [`server`]: how a snapshot answers handshakes (one configuration per profile: default,
//!   client certificates, protocol versions), session tickets shared by all;
//! - [`stream`]: a TLS connection over a monoio TCP stream (the listener's handshakes, and
//!   upstream ones), reads and writes bounded by the connection's watch;
//! - [`client`]: what the gateway's TLS clients share (system CAs, `verify = false`);
//! - [`validity`], [`dn`]: a certificate's validity period and subject, read from DER.
//!
//! Upstream TLS configurations (`scheme = "https"`) live with the upstreams
//! (`upstream/tls.rs`).

pub mod certs;
pub mod client;
pub mod dn;
pub mod server;
pub mod stream;
pub mod validity;

pub use certs::CertStore;

/// The crypto provider of every TLS configuration (both sides, etcd, the Admin API's
/// checks): ring, or aws-lc-rs when built with `--features aws-lc-rs` (BENCHMARKS.md has
/// the measurement behind shipping ring). Always passed explicitly: with both providers
/// compiled in, rustls has no process default to fall back on.
pub fn provider() -> rustls::crypto::CryptoProvider {
    #[cfg(feature = "aws-lc-rs")]
    return rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(not(feature = "aws-lc-rs"))]
    rustls::crypto::ring::default_provider()
}

/// A session ticketer from the same provider (rotating its key every 6 hours).
pub fn ticketer() -> Result<std::sync::Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    #[cfg(feature = "aws-lc-rs")]
    return rustls::crypto::aws_lc_rs::Ticketer::new();
    #[cfg(not(feature = "aws-lc-rs"))]
    rustls::crypto::ring::Ticketer::new()
}
pub use server::ServerTls;
