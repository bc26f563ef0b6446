//! gzip (RFC 1952) for request bodies: the framing (header, CRC-32, length) around flate2's raw
//! deflate, with a CRC-32 of one 1 KiB table.
//!
//! flate2's own gzip types bring `crc32fast`, whose tables and SIMD paths were ~30 KB of
//! `libappsignal.so` (`docs/benchmarks.md`, "Size of `libappsignal.so`"); the bodies compressed
//! here are a few hundred kilobytes every 30 seconds, off the app's threads, where a table-driven
//! CRC's few hundred megabytes per second are plenty.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use flate2::{read::DeflateDecoder, write::DeflateEncoder, Compression};

/// The CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) of each byte value.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// The CRC-32 of `bytes`, as gzip's trailer holds it.
pub fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |c, b| {
        CRC_TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// A fixed header: no name, no time, "fastest" (XFL 4), unknown OS (255).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

/// `bytes` as one gzip member, at flate2's fastest level.
pub fn compress(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() / 4 + 64);
    out.extend_from_slice(&HEADER);
    let mut deflate = DeflateEncoder::new(out, Compression::fast());
    deflate.write_all(bytes).context("cannot compress")?;
    let mut out = deflate.finish().context("cannot compress")?;
    out.extend_from_slice(&crc32(bytes).to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    Ok(out)
}

/// The first gzip member of `bytes`, decompressed, checked against its CRC-32 and length. Fails
/// on a damaged member, and once more than `limit` bytes come out (the caller's bound, checked as
/// they come, not after). Bytes after the member are ignored.
pub fn decompress(bytes: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    let body = skip_header(bytes).map_err(DecompressError::Damaged)?;
    let mut out = Vec::new();
    let mut deflate = DeflateDecoder::new(body);
    (&mut deflate)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecompressError::Damaged(anyhow::Error::new(e).context("bad deflate data")))?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge);
    }
    let end = usize::try_from(deflate.total_in()).unwrap_or(usize::MAX);
    let trailer = body
        .get(end..)
        .and_then(|t| t.get(..8))
        .ok_or_else(|| DecompressError::Damaged(anyhow::anyhow!("gzip trailer missing")))?;
    let word = |at: usize| {
        u32::from_le_bytes([
            trailer[at],
            trailer[at + 1],
            trailer[at + 2],
            trailer[at + 3],
        ])
    };
    if word(0) != crc32(&out) {
        return Err(DecompressError::Damaged(anyhow::anyhow!(
            "gzip CRC-32 mismatch"
        )));
    }
    if word(4) != out.len() as u32 {
        return Err(DecompressError::Damaged(anyhow::anyhow!(
            "gzip length mismatch"
        )));
    }
    Ok(out)
}

/// Why [`decompress`] failed.
#[derive(Debug)]
pub enum DecompressError {
    /// Not gzip, or damaged.
    Damaged(anyhow::Error),
    /// More than the limit came out.
    TooLarge,
}

impl std::fmt::Display for DecompressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecompressError::Damaged(e) => write!(f, "{e:#}"),
            DecompressError::TooLarge => f.write_str("too large once decompressed"),
        }
    }
}

fn cut(rest: &[u8], n: usize) -> Result<&[u8]> {
    rest.get(n..).context("gzip header cut short")
}

/// The deflate data after a member's header (RFC 1952 §2.3: the optional extra field, name,
/// comment and header CRC are skipped, not checked).
fn skip_header(bytes: &[u8]) -> Result<&[u8]> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let Some((fixed, mut rest)) = bytes.split_first_chunk::<10>() else {
        bail!("not gzip: {} bytes", bytes.len());
    };
    if fixed[..3] != [0x1f, 0x8b, 8] {
        bail!("not gzip (no gzip magic with deflate)");
    }
    let flags = fixed[3];
    if flags & 0xe0 != 0 {
        bail!("gzip header with reserved flags {flags:#x}");
    }
    if flags & FEXTRA != 0 {
        let len = match rest {
            [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
            _ => bail!("gzip header cut short"),
        };
        rest = cut(rest, 2 + len)?;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let nul = rest
                .iter()
                .position(|b| *b == 0)
                .context("gzip header cut short")?;
            rest = cut(rest, nul + 1)?;
        }
    }
    if flags & FHCRC != 0 {
        rest = cut(rest, 2)?;
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flate2_gzip(bytes: &[u8], header: flate2::GzBuilder) -> Vec<u8> {
        let mut gz = header.write(Vec::new(), Compression::default());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn the_crc_is_ieee_crc32() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn what_it_compresses_flate2_reads_back() {
        for len in [0, 1, 100, 70_000] {
            let data = sample(len);
            let gz = compress(&data).unwrap();
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
            assert_eq!(decompress(&gz, len).unwrap(), data);
        }
    }

    #[test]
    fn reads_flate2_members_with_every_optional_header_field() {
        let data = sample(5_000);
        let plain = flate2_gzip(&data, flate2::GzBuilder::new());
        let full = flate2_gzip(
            &data,
            flate2::GzBuilder::new()
                .extra(vec![1, 2, 3])
                .filename("body.pb")
                .comment("a comment")
                .operating_system(3),
        );
        for gz in [plain, full] {
            assert_eq!(decompress(&gz, 5_000).unwrap(), data);
            // Trailing bytes (a second member, garbage) are ignored.
            let mut longer = gz.clone();
            longer.extend_from_slice(b"trailing");
            assert_eq!(decompress(&longer, 5_000).unwrap(), data);
        }
    }

    #[test]
    fn damaged_or_oversized_members_are_refused() {
        let data = sample(5_000);
        let gz = compress(&data).unwrap();
        assert!(matches!(
            decompress(&gz, 4_999),
            Err(DecompressError::TooLarge)
        ));
        let mut bad_crc = gz.clone();
        let at = bad_crc.len() - 8;
        bad_crc[at] ^= 1;
        let mut bad_len = gz.clone();
        let at = bad_len.len() - 1;
        bad_len[at] ^= 1;
        let mut reserved = gz.clone();
        reserved[3] = 0x20;
        let mut not_deflate = gz.clone();
        not_deflate[2] = 7;
        let damaged = [
            Vec::new(),
            b"plain text, not gzip".to_vec(),
            gz[..9].to_vec(),
            gz[..gz.len() / 2].to_vec(),
            gz[..gz.len() - 4].to_vec(),
            bad_crc,
            bad_len,
            reserved,
            not_deflate,
            // A name that never ends.
            vec![0x1f, 0x8b, 8, 8, 0, 0, 0, 0, 0, 255, b'a', b'b'],
            // An extra field longer than the member.
            vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255, 0xff, 0xff, 1],
        ];
        for (i, bytes) in damaged.iter().enumerate() {
            let result = decompress(bytes, 1 << 20);
            assert!(
                matches!(result, Err(DecompressError::Damaged(_))),
                "case {i}: {result:?}"
            );
        }
    }
}
