//! Request variables (`uri`, `http_x_env`, `arg_id`, `cookie_sid`, ...) read straight out of
//! the connection's buffer for route `vars` conditions.

use crate::http::request::RequestHead;
use crate::http::{names_header, trim};
use crate::plugin::ResponseHeaders;
use crate::vars::{Var, VarSource};

pub struct RequestVars<'a> {
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
    /// The normalized path (nginx's `$uri`).
    pub path: &'a [u8],
    /// Lower-case host without port.
    pub host: &'a [u8],
    pub remote_ip: &'a str,
    /// What real-ip established, when it did (it wins over `remote_ip`).
    pub real_ip: &'a std::cell::OnceCell<String>,
    /// The consumer an authentication plugin identified, when one did.
    pub consumer: &'a std::cell::OnceCell<std::sync::Arc<crate::consumer::Identity>>,
    pub server_port: &'a str,
    /// What the TLS handshake told (None on plain connections).
    pub tls: Option<&'a crate::tls::stream::Facts>,
    /// The matched route, once routing is done.
    pub route: Option<&'a crate::route::Route>,
}

impl RequestVars<'_> {
    fn header(&self, wanted: &str) -> Option<&[u8]> {
        // `http_x_env` names header `X-Env` (see `names_header`).
        self.head.headers.iter().find_map(|h| {
            names_header(&self.buf[h.name.clone()], wanted)
                .then(|| trim(&self.buf[h.value.clone()]))
        })
    }

    fn arg(&self, wanted: &str) -> Option<&[u8]> {
        let q = if self.head.query.start == usize::MAX {
            &[][..]
        } else {
            &self.buf[self.head.query.clone()]
        };
        q.split(|&b| b == b'&').find_map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            (k == wanted.as_bytes()).then_some(v)
        })
    }

    fn cookie(&self, wanted: &str) -> Option<&[u8]> {
        let cookies = self.header("cookie")?;
        cookies.split(|&b| b == b';').find_map(|c| {
            let c = trim(c);
            let i = c.iter().position(|&b| b == b'=')?;
            (&c[..i] == wanted.as_bytes()).then(|| &c[i + 1..])
        })
    }
}

impl RequestVars<'_> {
    /// The client's address: what real-ip established, else the peer's.
    pub fn remote(&self) -> &str {
        self.real_ip.get().map_or(self.remote_ip, |s| s.as_str())
    }
}

impl VarSource for RequestVars<'_> {
    fn var(&self, var: &Var) -> Option<&[u8]> {
        match var {
            Var::Uri => Some(self.path),
            Var::RequestUri => Some(self.head.target(self.buf)),
            Var::QueryString => Some(if self.head.query.start == usize::MAX {
                &[]
            } else {
                &self.buf[self.head.query.clone()]
            }),
            Var::Host => Some(self.host),
            Var::RemoteAddr => Some(self.remote().as_bytes()),
            Var::RequestMethod => Some(&self.buf[self.head.method.clone()]),
            Var::Scheme => Some(if self.tls.is_some() {
                b"https"
            } else {
                b"http"
            }),
            Var::ServerPort => Some(self.server_port.as_bytes()),
            Var::Pid => Some(crate::vars::pid_text()),
            Var::Arg(name) => self.arg(name),
            Var::Http(name) => self.header(name),
            Var::Cookie(name) => self.cookie(name),
            Var::ConsumerName => self.consumer.get().map(|c| c.username.as_bytes()),
            Var::ConsumerGroupId => self.consumer.get()?.group.as_deref().map(str::as_bytes),
            Var::RouteId => self.route.map(|r| r.id.as_bytes()),
            Var::ServiceId => self
                .route
                .and_then(|r| r.service_id.as_deref())
                .map(str::as_bytes),
            Var::SslServerName => self.tls?.server_name.as_deref().map(str::as_bytes),
            Var::SslClientSDn => self.tls?.client_s_dn.as_deref().map(str::as_bytes),
            // No response yet.
            Var::Status | Var::UpstreamHttp(_) => None,
        }
    }
}

/// The variables of a response phase: the request's, and the response's `status` and
/// `upstream_http_*`.
pub struct ResponseVars<'a> {
    pub request: RequestVars<'a>,
    /// The status, as three digits.
    pub status: [u8; 3],
    pub headers: ResponseHeaders<'a>,
}

impl<'a> ResponseVars<'a> {
    pub fn new(request: RequestVars<'a>, status: u16, headers: ResponseHeaders<'a>) -> Self {
        let s = status.min(999);
        ResponseVars {
            request,
            status: [
                b'0' + (s / 100) as u8,
                b'0' + (s / 10 % 10) as u8,
                b'0' + (s % 10) as u8,
            ],
            headers,
        }
    }
}

impl VarSource for ResponseVars<'_> {
    fn var(&self, var: &Var) -> Option<&[u8]> {
        match var {
            Var::Status => Some(&self.status),
            Var::UpstreamHttp(name) => self.headers.get_var(name),
            other => self.request.var(other),
        }
    }
}
