//! TLS towards clients (issue #11, in progress): the certificates served by SNI
//! ([`certs`]), compiled from the `ssls` objects with every snapshot, and the rustls server
//! configuration new handshakes use ([`server`]: one per snapshot, session tickets shared
//! by all). The listener that terminates TLS with them is next.

pub mod certs;
pub mod client;
pub mod dn;
pub mod server;
pub mod stream;
pub mod validity;

pub use certs::CertStore;
pub use server::ServerTls;
