//! Content codings (RFC 9110 §8.4.1): decoding a `gzip` or `br` body as it streams, for
//! plugins that change bodies the upstream compressed.

use std::io::Write;

/// A body's content coding, as far as the gateway can decode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Brotli,
}

impl Coding {
    /// The coding a `Content-Encoding` value names; `None` for one the gateway cannot decode
    /// (deflate, zstd, several stacked codings).
    pub fn from_header(value: Option<&[u8]>) -> Option<Coding> {
        let v = crate::http::trim(value.unwrap_or_default());
        if v.is_empty() || v.eq_ignore_ascii_case(b"identity") {
            Some(Coding::Identity)
        } else if v.eq_ignore_ascii_case(b"gzip") || v.eq_ignore_ascii_case(b"x-gzip") {
            Some(Coding::Gzip)
        } else if v.eq_ignore_ascii_case(b"br") {
            Some(Coding::Brotli)
        } else {
            None
        }
    }
}

/// Decodes a body piece by piece; the decoded bytes collect in [`Decoder::output`].
pub enum Decoder {
    Identity(Vec<u8>),
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

impl Decoder {
    pub fn new(coding: Coding) -> Decoder {
        match coding {
            Coding::Identity => Decoder::Identity(Vec::new()),
            Coding::Gzip => Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new()))),
            Coding::Brotli => {
                Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
            }
        }
    }

    /// Decodes the next encoded bytes.
    pub fn write(&mut self, encoded: &[u8]) -> std::io::Result<()> {
        match self {
            Decoder::Identity(out) => {
                out.extend_from_slice(encoded);
                Ok(())
            }
            Decoder::Gzip(d) => d.write_all(encoded),
            Decoder::Brotli(d) => d.write_all(encoded),
        }
    }

    /// The encoded body is over: decodes what is left; an error when it was cut short.
    pub fn finish(&mut self) -> std::io::Result<()> {
        match self {
            Decoder::Identity(_) => Ok(()),
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Brotli(d) => d.close(),
        }
    }

    /// The bytes decoded so far (take them out as they are used).
    pub fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Decoder::Identity(out) => out,
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Brotli(d) => d.get_mut(),
        }
    }
}
