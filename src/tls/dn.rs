//! A certificate's subject as nginx's `$ssl_client_s_dn` prints it (RFC 2253: the last
//! relative name first, `,` between names, `+` inside a multi-valued one, special characters
//! escaped), read from the DER so routes can match on the client certificate of a mutual TLS
//! connection. Attributes without a short name print as `dotted.oid=#hex` as RFC 2253 says.

use super::validity::element;
use std::fmt::Write as _;

/// The subject of a DER certificate, or None when it cannot be read.
pub fn subject(der: &[u8]) -> Option<String> {
    let (cert, _) = element(der, 0x30)?;
    let (tbs, _) = element(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = element(rest, 0xa0)?.1; // version
    }
    rest = element(rest, 0x02)?.1; // serialNumber
    rest = element(rest, 0x30)?.1; // signature
    rest = element(rest, 0x30)?.1; // issuer
    rest = element(rest, 0x30)?.1; // validity
    let (mut name, _) = element(rest, 0x30)?;
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (set, next) = element(name, 0x31)?;
        name = next;
        let mut atvs = Vec::new();
        let mut set = set;
        while !set.is_empty() {
            let (atv, next) = element(set, 0x30)?;
            set = next;
            let (oid, value) = element(atv, 0x06)?;
            atvs.push(attribute(oid, value)?);
        }
        rdns.push(atvs.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// One `type=value`.
fn attribute(oid: &[u8], value: &[u8]) -> Option<String> {
    let short = match oid {
        [0x55, 0x04, 0x03] => Some("CN"),
        [0x55, 0x04, 0x05] => Some("serialNumber"),
        [0x55, 0x04, 0x06] => Some("C"),
        [0x55, 0x04, 0x07] => Some("L"),
        [0x55, 0x04, 0x08] => Some("ST"),
        [0x55, 0x04, 0x09] => Some("street"),
        [0x55, 0x04, 0x0a] => Some("O"),
        [0x55, 0x04, 0x0b] => Some("OU"),
        [0x55, 0x04, 0x0c] => Some("title"),
        [0x55, 0x04, 0x2a] => Some("GN"),
        [0x55, 0x04, 0x04] => Some("SN"),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => Some("emailAddress"),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => Some("DC"),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => Some("UID"),
        _ => None,
    };
    let tag = *value.first()?;
    let text = match tag {
        // UTF8String, PrintableString, T61String, IA5String, BMPString (ASCII subset)
        0x0c | 0x13 | 0x14 | 0x16 => {
            let (bytes, _) = element(value, tag)?;
            Some(String::from_utf8_lossy(bytes).into_owned())
        }
        _ => None,
    };
    let mut out = String::new();
    match (short, text) {
        (Some(name), Some(text)) => {
            out.push_str(name);
            out.push('=');
            escape(&text, &mut out);
        }
        _ => {
            out.push_str(&dotted(oid)?);
            out.push_str("=#");
            for b in value {
                let _ = write!(out, "{b:02X}");
            }
        }
    }
    Some(out)
}

/// RFC 2253 §2.4 escaping.
fn escape(text: &str, out: &mut String) {
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

/// An OID in dotted form.
fn dotted(oid: &[u8]) -> Option<String> {
    let first = *oid.first()?;
    let mut out = format!("{}.{}", first / 40, first % 40);
    let mut n: u64 = 0;
    for &b in &oid[1..] {
        n = n.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            let _ = write!(out, ".{n}");
            n = 0;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_nginx_does() {
        let dir = std::env::temp_dir().join(format!("sg-dn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k.pem");
        let cert = dir.join("c.pem");
        let ok = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/C=DE/O=Shard, Inc./OU=ops/CN=client one",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(ok.status.success(), "{ok:?}");
        let pem = std::fs::read(&cert).unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        assert_eq!(
            subject(&der).unwrap(),
            "CN=client one,OU=ops,O=Shard\\, Inc.,C=DE"
        );
        assert_eq!(
            dotted(&[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37]).unwrap(),
            "1.3.6.1.4.1.311"
        );
        let mut out = String::new();
        escape(" a+b;c ", &mut out);
        assert_eq!(out, "\\ a\\+b\\;c\\ ");
        assert!(subject(b"\x30\x00").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
