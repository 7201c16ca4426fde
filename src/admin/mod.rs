//! The Admin API (APISIX v3 paths and JSON): `server.rs` listens and checks access on its own
//! threads; `api.rs` gives each request APISIX's meaning against the store's objects
//! (`consumers.rs` for what consumers do differently, `schemas.rs` for what objects are
//! checked against), on the control thread, which compiles and publishes every accepted
//! change before it is answered.

pub mod api;
mod consumers;
pub mod schemas;
pub mod server;
mod ssls;

use serde_json::Value;

/// A request that passed the access checks.
#[derive(Debug, Clone)]
pub struct AdminRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query arguments, as sent.
    pub args: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Who asked, for the audit line (`admin from 127.0.0.1`).
    pub who: String,
}

impl AdminRequest {
    pub fn arg(&self, name: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: a status and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl AdminResponse {
    pub fn json(status: u16, v: Value) -> AdminResponse {
        AdminResponse {
            status,
            body: serde_json::to_vec(&v).unwrap_or_default(),
        }
    }

    /// APISIX's error shape: `{"error_msg": ...}`.
    pub fn error(status: u16, msg: &str) -> AdminResponse {
        AdminResponse::json(status, serde_json::json!({ "error_msg": msg }))
    }
}
