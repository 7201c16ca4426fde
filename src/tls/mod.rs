//! TLS towards clients (issue #11, in progress): the certificates served by SNI
//! ([`certs`]), compiled from the `ssls` objects with every snapshot, and the rustls server
//! configuration new handshakes use ([`server`]: one per snapshot, session tickets shared
//! by all). The listener that terminates TLS with them is next.

pub mod certs;
pub mod server;
pub mod validity;

pub use certs::CertStore;
