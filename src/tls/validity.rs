//! A certificate's validity period, read straight from its DER (RFC 5280 §4.1: the
//! `validity` of `tbsCertificate`), so an expired or not-yet-valid certificate is refused
//! when it is configured rather than at a client's handshake. Only the few fields before
//! `validity` are walked, each bounded by its own length.

/// When a certificate is valid: Unix seconds, and as written (`2026-12-04 05:46:52 UTC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
    pub not_after_text: String,
}

impl Validity {
    /// Reads the period of a DER certificate.
    pub fn of(der: &[u8]) -> Result<Validity, String> {
        let bad = || "malformed certificate (validity not found)".to_string();
        let (cert, _) = element(der, 0x30).ok_or_else(bad)?;
        let (tbs, _) = element(cert, 0x30).ok_or_else(bad)?;
        let mut rest = tbs;
        // version [0] EXPLICIT, optional
        if rest.first() == Some(&0xa0) {
            rest = element(rest, 0xa0).ok_or_else(bad)?.1;
        }
        rest = element(rest, 0x02).ok_or_else(bad)?.1; // serialNumber
        rest = element(rest, 0x30).ok_or_else(bad)?.1; // signature
        rest = element(rest, 0x30).ok_or_else(bad)?.1; // issuer
        let (validity, _) = element(rest, 0x30).ok_or_else(bad)?;
        let (before, rest) = time(validity).ok_or_else(bad)?;
        let (after, _) = time(rest).ok_or_else(bad)?;
        Ok(Validity {
            not_before: before.0,
            not_after: after.0,
            not_after_text: after.1,
        })
    }

    /// Refuses a period that does not contain `now` (Unix seconds).
    pub fn check(&self, now: i64) -> Result<(), String> {
        if now > self.not_after {
            return Err(format!("the certificate expired ({})", self.not_after_text));
        }
        if now < self.not_before {
            return Err("the certificate is not valid yet".into());
        }
        Ok(())
    }
}

/// One DER element with tag `tag`: (its contents, what follows it).
pub(super) fn element(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *data.first()? != tag {
        return None;
    }
    let first = *data.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *data.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((data.get(header..end)?, data.get(end..)?))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`): (Unix seconds,
/// text), and what follows.
fn time(data: &[u8]) -> Option<((i64, String), &[u8])> {
    let (text, rest, year_digits) = match data.first()? {
        0x17 => {
            let (t, r) = element(data, 0x17)?;
            (t, r, 2)
        }
        0x18 => {
            let (t, r) = element(data, 0x18)?;
            (t, r, 4)
        }
        _ => return None,
    };
    let s = std::str::from_utf8(text).ok()?;
    let s = s.strip_suffix('Z')?;
    if s.len() != year_digits + 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |a: usize, b: usize| s[a..b].parse::<i64>().ok();
    let mut year = num(0, year_digits)?;
    if year_digits == 2 {
        // RFC 5280: 50-99 are 19xx, 00-49 are 20xx.
        year += if year >= 50 { 1900 } else { 2000 };
    }
    let o = year_digits;
    let (month, day) = (num(o, o + 2)?, num(o + 2, o + 4)?);
    let (hour, min, sec) = (num(o + 4, o + 6)?, num(o + 6, o + 8)?, num(o + 8, o + 10)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec;
    let text = format!("{year:04}-{month:02}-{day:02} {hour:02}:{min:02}:{sec:02} UTC");
    Some(((secs, text), rest))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn reads_the_period_and_refuses_outside_it() {
        let dir = std::env::temp_dir().join(format!("sg-validity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (pem, _) = crate::tls::certs::tests::make(&dir, "v", "DNS:v.test", false);
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let v = Validity::of(&der).unwrap();
        let now = crate::log::now_secs();
        // openssl made it valid from now for 2 days.
        assert!((v.not_before - now).abs() < 120, "{v:?} now {now}");
        assert!((v.not_after - (now + 2 * 86_400)).abs() < 120, "{v:?}");
        assert!(v.check(now).is_ok());
        let err = v.check(now + 3 * 86_400).unwrap_err();
        assert!(err.contains("expired") && err.contains("UTC"), "{err}");
        assert!(v.check(now - 86_400).is_err());
        assert!(Validity::of(b"\x30\x03\x02\x01\x01").is_err());
        assert!(Validity::of(&der[..40]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 2), 20_789);
    }
}
