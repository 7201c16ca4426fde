//! TLS towards clients (issue #11, in progress): the certificates served by SNI
//! ([`certs`]), compiled from the `ssls` objects with every snapshot. The listener that
//! terminates TLS with them is next.

pub mod certs;

pub use certs::CertStore;
