//! Node host names: resolved by the control plane, outside compilation.
//!
//! `Snapshot::compile` does no I/O: it looks node hosts up in a [`Names`] table and notes
//! every one it does not find. The control plane then resolves those (blocking DNS, on its
//! own thread, never on a worker) and compiles again. So validating a config costs no DNS
//! round trip when its names are known, and a name that does not resolve is refused with the
//! field that holds it, as before.
//!
//! One address per node, as APISIX does; IPv4 first, since `localhost` often lists ::1 first
//! while backends commonly listen on 127.0.0.1 only. A file reload starts from an empty
//! table, so every name is looked up again when the config is reloaded.

use crate::config::{ConfigError, Unresolved};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Resolved host names, and the misses of the compilation using them.
#[derive(Debug, Default)]
pub struct Names {
    table: HashMap<(String, u16), SocketAddr>,
    missing: RefCell<Vec<Unresolved>>,
}

impl Names {
    /// The address of `host:port`: an IP literal as written, a name from the table. A name
    /// not in the table is noted as missing (see [`Names::take_missing`]) and gets the
    /// unspecified address meanwhile (the compilation is then not used).
    pub fn lookup(&self, field: &str, host: &str, port: u16) -> SocketAddr {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return SocketAddr::new(ip, port);
        }
        if let Some(addr) = self.table.get(&(host.to_string(), port)) {
            return *addr;
        }
        self.missing.borrow_mut().push(Unresolved {
            field: field.to_string(),
            host: host.to_string(),
            port,
        });
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    }

    /// The names the last compilation missed (and forgets them).
    pub fn take_missing(&self) -> Vec<Unresolved> {
        std::mem::take(&mut self.missing.borrow_mut())
    }

    /// Resolves `names` into the table (blocking: control plane only). The first that does
    /// not resolve is an error naming its field.
    pub fn resolve(&mut self, names: &[Unresolved]) -> Result<(), ConfigError> {
        for n in names {
            let key = (n.host.clone(), n.port);
            if self.table.contains_key(&key) {
                continue;
            }
            let addrs: Vec<SocketAddr> = (n.host.as_str(), n.port)
                .to_socket_addrs()
                .map_err(|e| {
                    ConfigError::invalid(&n.field, format!("cannot resolve '{}': {e}", n.host))
                })?
                .collect();
            let addr = addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .copied()
                .ok_or_else(|| {
                    ConfigError::invalid(&n.field, format!("'{}' resolved to no address", n.host))
                })?;
            self.table.insert(key, addr);
        }
        Ok(())
    }
}
