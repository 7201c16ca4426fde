//! RESP2, Redis's wire format: commands out as arrays of bulk strings, replies in.

/// A reply from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...` (the text after the `-`).
    Error(String),
    Int(i64),
    /// `$n` (None for `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*n` (None for `*-1`).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as an integer: an integer reply, or a bulk string of digits (a Lua script
    /// returning a string).
    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

/// Appends a command (`args[0]` is its name) to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    use std::io::Write;
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole reply, and how many bytes it took.
    Reply(Reply, usize),
    /// Not all of it has arrived.
    Incomplete,
}

/// Deepest nesting of arrays accepted (Redis's replies here are two deep).
const MAX_DEPTH: usize = 8;
/// Largest bulk string or array accepted (no reply here comes close).
const MAX_LEN: i64 = 64 << 20;

/// Parses one reply at the start of `buf`; `Err` on bytes that are not RESP2.
pub fn parse(buf: &[u8]) -> Result<Parsed, String> {
    let mut at = 0;
    match parse_at(buf, &mut at, 0)? {
        Some(reply) => Ok(Parsed::Reply(reply, at)),
        None => Ok(Parsed::Incomplete),
    }
}

fn line<'a>(buf: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let rest = &buf[*at..];
    let end = memchr::memmem::find(rest, b"\r\n")?;
    *at += end + 2;
    Some(&rest[..end])
}

fn number(text: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(text)))
}

fn parse_at(buf: &[u8], at: &mut usize, depth: usize) -> Result<Option<Reply>, String> {
    let Some(&kind) = buf.get(*at) else {
        return Ok(None);
    };
    *at += 1;
    let Some(text) = line(buf, at) else {
        return Ok(None);
    };
    let text_string = || String::from_utf8_lossy(text).into_owned();
    Ok(Some(match kind {
        b'+' => Reply::Simple(text_string()),
        b'-' => Reply::Error(text_string()),
        b':' => Reply::Int(number(text)?),
        b'$' => match number(text)? {
            -1 => Reply::Bulk(None),
            n if (0..=MAX_LEN).contains(&n) => {
                let n = n as usize;
                if buf.len() < *at + n + 2 {
                    return Ok(None);
                }
                let data = buf[*at..*at + n].to_vec();
                *at += n + 2;
                Reply::Bulk(Some(data))
            }
            n => return Err(format!("bad bulk length {n}")),
        },
        b'*' => match number(text)? {
            -1 => Reply::Array(None),
            n if (0..=MAX_LEN).contains(&n) && depth < MAX_DEPTH => {
                let mut items = Vec::with_capacity((n as usize).min(64));
                for _ in 0..n {
                    match parse_at(buf, at, depth + 1)? {
                        Some(item) => items.push(item),
                        None => return Ok(None),
                    }
                }
                Reply::Array(Some(items))
            }
            n => return Err(format!("bad array length {n}")),
        },
        other => return Err(format!("unexpected reply type {:?}", other as char)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_and_parses_replies_whole_or_in_pieces() {
        let mut out = Vec::new();
        encode(&mut out, &[b"GET", b"k"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        let reply = b"*2\r\n$1\r\n7\r\n:59000\r\n+OK\r\n";
        let whole = Reply::Array(Some(vec![
            Reply::Bulk(Some(b"7".to_vec())),
            Reply::Int(59000),
        ]));
        assert_eq!(parse(reply), Ok(Parsed::Reply(whole, 19)));
        for cut in 0..19 {
            assert_eq!(parse(&reply[..cut]), Ok(Parsed::Incomplete), "{cut}");
        }
        assert_eq!(
            parse(b"-NOSCRIPT No matching script\r\n"),
            Ok(Parsed::Reply(
                Reply::Error("NOSCRIPT No matching script".into()),
                30
            ))
        );
        assert!(parse(b"?what\r\n").is_err());
        assert!(parse(b"$-7\r\n").is_err());
    }
}
