//! The path routes are matched on: percent-decoded, slashes merged, `.` and `..` resolved, as
//! nginx computes `$uri` (which APISIX matches on).
//!
//! Matching the raw request path would let `/public/../admin` or `/public/%2e%2e/admin` pass a
//! `/public/*` route while the backend resolves it to `/admin`. The request is still forwarded
//! with its original target, as nginx does with `proxy_pass` without a URI part.

/// Why a path was refused (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

/// Whether `raw` needs [`normalize`] at all (the common case does not: no allocation, no copy).
#[inline]
pub fn needs_normalizing(raw: &[u8]) -> bool {
    memchr::memchr(b'%', raw).is_some() || raw.windows(2).any(|w| w == b"//" || w == b"/.")
}

/// Writes the normalized form of `raw` (which starts with `/`) into `out`.
pub fn normalize(raw: &[u8], out: &mut Vec<u8>) -> Result<(), BadPath> {
    out.clear();
    // Percent-decode first, so that encoded dots and slashes are resolved like plain ones.
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                raw.get(i + 1).and_then(|&c| hex(c)),
                raw.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => {
                    let v = (h * 16 + l) as u8;
                    if v == 0 {
                        return Err(BadPath("encoded NUL in path"));
                    }
                    decoded.push(v);
                    i += 3;
                }
                _ => return Err(BadPath("invalid percent-encoding in path")),
            }
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    // Segments: skip empty ones (merged slashes) and ".", pop on "..".
    let mut starts: Vec<usize> = Vec::new();
    for segment in decoded.split(|&b| b == b'/').skip(1) {
        match segment {
            b"" | b"." => {}
            b".." => {
                let start = starts.pop().ok_or(BadPath("path goes above the root"))?;
                out.truncate(start);
            }
            s => {
                starts.push(out.len());
                out.push(b'/');
                out.extend_from_slice(s);
            }
        }
    }
    // Keep a trailing slash (or the root) as nginx does.
    let trailing = decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    if out.is_empty() || trailing {
        out.push(b'/');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, BadPath> {
        let mut out = Vec::new();
        normalize(p.as_bytes(), &mut out).map(|_| String::from_utf8(out).unwrap())
    }

    #[test]
    fn resolves_like_nginx() {
        assert_eq!(norm("/a/b").unwrap(), "/a/b");
        assert_eq!(norm("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(norm("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(norm("/public/../admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/public%2f..%2fadmin").unwrap(), "/admin");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("/caf%C3%A9").unwrap(), "/café");
        assert!(norm("/..").is_err());
        assert!(norm("/a/%zz").is_err());
        assert!(norm("/a%00b").is_err());
        assert!(!needs_normalizing(b"/api/v1/users"));
        assert!(needs_normalizing(b"/api/./x"));
    }
}
