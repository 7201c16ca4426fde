//! Socket-level pieces shared by everything that moves bytes: listeners, buffer I/O with
//! deadlines, socket options, splice relays and the per-connection watchdog. Nothing here
//! knows HTTP.

pub mod inherit;
pub mod io;
pub mod listen;
pub mod nonblock;
pub mod sockopt;
pub mod splice;
pub mod stream;
pub mod watchdog;
