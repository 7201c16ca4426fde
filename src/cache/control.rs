//! `Cache-Control` directives and `Expires` dates: how long a response may be stored, and
//! what a request allows.

/// The directives a cache acts on (RFC 9111 §5.2, and RFC 5861's `stale-if-error`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl Directives {
    /// Parses `Cache-Control` values (every field of that name, in order). Unknown
    /// directives are ignored; a malformed number makes its directive absent.
    pub fn parse<'a>(values: impl Iterator<Item = &'a [u8]>) -> Directives {
        let mut d = Directives::default();
        for value in values {
            for item in value.split(|&b| b == b',') {
                let item = crate::http::trim(item);
                let (name, arg) = match item.iter().position(|&b| b == b'=') {
                    Some(i) => (crate::http::trim(&item[..i]), Some(&item[i + 1..])),
                    None => (item, None),
                };
                let num = || {
                    let a = crate::http::trim(arg?);
                    let a = a.strip_prefix(b"\"").unwrap_or(a);
                    let a = a.strip_suffix(b"\"").unwrap_or(a);
                    std::str::from_utf8(a).ok()?.parse::<u64>().ok()
                };
                let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
                if is("no-store") {
                    d.no_store = true;
                } else if is("no-cache") {
                    d.no_cache = true;
                } else if is("private") {
                    d.private = true;
                } else if is("only-if-cached") {
                    d.only_if_cached = true;
                } else if is("max-age") {
                    d.max_age = num();
                } else if is("s-maxage") {
                    d.s_maxage = num();
                } else if is("max-stale") {
                    // Without a value: any staleness is acceptable.
                    d.max_stale = Some(num().unwrap_or(u64::MAX));
                } else if is("min-fresh") {
                    d.min_fresh = num();
                } else if is("stale-if-error") {
                    d.stale_if_error = num();
                }
            }
        }
        d
    }

    /// How long a response with these directives (and `expires`, an `Expires` value) stays
    /// fresh, as a shared cache reads them: `s-maxage`, else `max-age`, else `Expires`
    /// minus now. `None` when the response says nothing.
    pub fn freshness(&self, expires: Option<&[u8]>, now: u64) -> Option<u64> {
        if let Some(s) = self.s_maxage.or(self.max_age) {
            return Some(s);
        }
        // An Expires that does not parse is in the past (RFC 9111 §5.3).
        expires.map(|e| http_date(e).map_or(0, |t| t.saturating_sub(now)))
    }
}

/// Parses an HTTP date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`) to Unix seconds.
pub fn http_date(text: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(text).ok()?.trim();
    let rest = s.split_once(", ")?.1;
    let mut it = rest.split(' ');
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':');
    let (h, m, sec): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if it.next()? != "GMT"
        || year < 1970
        || !(1..=31).contains(&day)
        || h > 23
        || m > 59
        || sec > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives() {
        let d = Directives::parse(
            [
                &b"public, max-age=60"[..],
                b"s-maxage=\"30\", stale-if-error=600",
            ]
            .into_iter(),
        );
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(30));
        assert_eq!(d.stale_if_error, Some(600));
        assert_eq!(d.freshness(None, 0), Some(30));
        let d = Directives::parse([&b"No-Store, private"[..]].into_iter());
        assert!(d.no_store && d.private);
        assert_eq!(d.freshness(Some(b"0"), 100), Some(0));
    }

    #[test]
    fn dates() {
        let t = http_date(b"Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t, 784111777);
        assert!(http_date(b"yesterday").is_none());
    }
}
