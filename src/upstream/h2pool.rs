//! HTTP/2 connections to gRPC nodes, per core: one multiplexed connection per node (and TLS
//! identity), opened on first use, shared by every call to that node from this core, and
//! replaced when it fails or the node sends GOAWAY. The connection itself is driven by a
//! task of its own; this holds the handles calls are opened with.

use super::pool::PoolKey;
use bytes::Bytes;
use h2::client::SendRequest;
use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Default)]
pub struct H2Pool {
    conns: RefCell<HashMap<PoolKey, SendRequest<Bytes>>>,
}

impl H2Pool {
    /// A handle on the connection to `key`, if one is open.
    pub fn get(&self, key: PoolKey) -> Option<SendRequest<Bytes>> {
        self.conns.borrow().get(&key).cloned()
    }

    /// Keeps the connection just opened to `key`.
    pub fn put(&self, key: PoolKey, conn: SendRequest<Bytes>) {
        self.conns.borrow_mut().insert(key, conn);
    }

    /// Forgets a connection that failed (the next call opens another).
    pub fn drop_conn(&self, key: PoolKey) {
        self.conns.borrow_mut().remove(&key);
    }
}
