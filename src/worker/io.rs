//! Buffer-owning I/O helpers over monoio's rent model.
//!
//! monoio reads into and writes from buffers it takes ownership of for the duration of the
//! operation. These helpers move a connection's `Vec<u8>` in and back out so callers keep
//! one long-lived buffer per connection. If a timeout drops an operation mid-flight the buffer
//! goes with it: every caller closes the connection on timeout, so that is harmless.

use monoio::buf::{IoBuf, IoBufMut};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::io;
use std::time::Duration;

/// How an I/O step with a deadline failed.
#[derive(Debug)]
pub enum IoFail {
    Timeout,
    Io(io::Error),
}

/// Reads more bytes after `buf.len()`, keeping at least `min_spare` free space.
/// Returns 0 at end of stream.
pub async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    min_spare: usize,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let len = buf.len();
    let (res, slice) = stream.read(std::mem::take(buf).slice_mut(len..)).await;
    *buf = slice.into_inner();
    res
}

pub async fn read_more_timeout(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    min_spare: usize,
    limit: Duration,
) -> Result<usize, IoFail> {
    match monoio::time::timeout(limit, read_more(stream, buf, min_spare)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(IoFail::Io(e)),
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Writes `buf[range]` completely.
pub async fn write_range(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    start: usize,
    end: usize,
    limit: Duration,
) -> Result<(), IoFail> {
    if start == end {
        return Ok(());
    }
    let fut = async {
        let (res, slice) = stream
            .write_all(std::mem::take(buf).slice(start..end))
            .await;
        *buf = slice.into_inner();
        res
    };
    match monoio::time::timeout(limit, fut).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(IoFail::Io(e)),
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Writes all of `buf`.
pub async fn write_all(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<(), IoFail> {
    let end = buf.len();
    write_range(stream, buf, 0, end, limit).await
}
