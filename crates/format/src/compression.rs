//! Batch compression: the producer compresses a batch's records section as a whole, the
//! broker stores it as it is, and the consumer (or the broker, for a record-level read)
//! decompresses it. Behind the `compression` feature, so that the storage engine, which
//! never looks inside a records section, does not link the codecs.
//!
//! - **lz4**: the LZ4 frame format, with `lz4_flex` (pure Rust, safe-code decoder).
//! - **zstd**: a Zstandard frame, with the `zstd` crate (bindings to the reference C
//!   library, built from source with the system C compiler). Chosen over the pure-Rust
//!   `ruzstd` because `ruzstd`'s encoder offers only its fastest levels and trails the
//!   reference library in ratio and speed, while `zstd` is the de facto standard binding,
//!   maintained since 2016 and used by most of the Rust ecosystem; the data format is the
//!   same either way.
//! - **gzip** and **snappy**: what Kafka clients also write, stored as they send it (the Kafka
//!   listener passes records sections through). gzip with `flate2` on its pure-Rust backend;
//!   snappy with `snap`, in the framing of Kafka's Java client (`snappy-java`: the magic
//!   `\x82SNAPPY\0`, two version words, then blocks each prefixed by its big-endian length),
//!   and a bare snappy block when there is no such header (as some clients write).

use std::io::{Read as _, Write as _};

pub use crate::Compression;
use crate::{RecordBatch, Records};

/// Why a records section could not be compressed or decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The section decompresses to more than the caller's limit (a corrupt or hostile batch,
    /// or one larger than the reader is prepared to hold).
    #[error("{codec:?}: decompressed records exceed the limit of {limit} bytes")]
    TooLarge {
        /// The batch's codec.
        codec: Compression,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The codec failed: the data is not what its codec says, or the codec is unknown.
    #[error("{0}")]
    Failed(String),
}

/// Compresses a records section with `codec`. [`Compression::None`] returns a copy.
///
/// # Errors
/// [`CodecError::Failed`] if the codec fails (it does not on in-memory input, but the API
/// allows it).
pub fn compress(codec: Compression, data: &[u8], zstd_level: i32) -> Result<Vec<u8>, CodecError> {
    let failed = |e: std::io::Error| CodecError::Failed(format!("{codec:?}: {e}"));
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Lz4 => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(data.len() / 2));
            enc.write_all(data).map_err(failed)?;
            enc.finish()
                .map_err(|e| CodecError::Failed(format!("{codec:?}: {e}")))
        }
        Compression::Zstd => zstd::bulk::compress(data, zstd_level).map_err(failed),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 2),
                flate2::Compression::default(),
            );
            enc.write_all(data).map_err(failed)?;
            enc.finish().map_err(failed)
        }
        Compression::Snappy => snappy_java_compress(data).map_err(failed),
    }
}

/// The header of `snappy-java`'s framing: magic, version 1, compatible version 1.
const SNAPPY_JAVA_HEADER: [u8; 16] = [
    0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1,
];

/// The most uncompressed bytes in one `snappy-java` block (its default block size).
const SNAPPY_JAVA_BLOCK: usize = 32 << 10;

fn snappy_java_compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(SNAPPY_JAVA_HEADER.len() + data.len() / 2);
    out.extend_from_slice(&SNAPPY_JAVA_HEADER);
    let mut enc = snap::raw::Encoder::new();
    for block in data.chunks(SNAPPY_JAVA_BLOCK) {
        let packed = enc.compress_vec(block).map_err(std::io::Error::other)?;
        let len = u32::try_from(packed.len()).map_err(std::io::Error::other)?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&packed);
    }
    Ok(out)
}

/// Decompresses `snappy-java` framing, or a bare snappy block, into `out`, at most `cap`
/// bytes (past it, it stops: the caller reports the limit).
fn snappy_decompress(data: &[u8], cap: u64, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut dec = snap::raw::Decoder::new();
    let mut push = |block: &[u8], out: &mut Vec<u8>| -> std::io::Result<()> {
        let len = snap::raw::decompress_len(block).map_err(std::io::Error::other)?;
        if (out.len() + len) as u64 > cap {
            // Report one byte past the limit, as the streaming codecs do.
            out.resize(cap as usize, 0);
            return Ok(());
        }
        let at = out.len();
        out.resize(at + len, 0);
        dec.decompress(block, &mut out[at..])
            .map_err(std::io::Error::other)?;
        Ok(())
    };
    if !data.starts_with(&SNAPPY_JAVA_HEADER[..8]) {
        push(data, out)?;
        return Ok(out.len());
    }
    let mut rest = data
        .get(SNAPPY_JAVA_HEADER.len()..)
        .ok_or_else(|| bad("snappy-java header cut short"))?;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("snappy-java block length cut short"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = tail
            .get(..len)
            .ok_or_else(|| bad("snappy-java block cut short"))?;
        push(block, out)?;
        if out.len() as u64 >= cap {
            break;
        }
        rest = &tail[len..];
    }
    Ok(out.len())
}

/// Decompresses a records section, refusing to produce more than `limit` bytes (a corrupt
/// or hostile batch cannot exhaust memory).
///
/// # Errors
/// [`CodecError::TooLarge`] past `limit`, [`CodecError::Failed`] for data the codec refuses.
pub fn decompress(codec: Compression, data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let failed = |e: std::io::Error| CodecError::Failed(format!("{codec:?}: {e}"));
    let mut out = Vec::with_capacity((data.len() * 4).min(limit));
    // One byte past the limit tells "too large" from "exactly the limit".
    let cap = (limit as u64).saturating_add(1);
    let read = match codec {
        Compression::None => return Ok(data.to_vec()),
        Compression::Lz4 => lz4_flex::frame::FrameDecoder::new(data)
            .take(cap)
            .read_to_end(&mut out)
            .map_err(failed),
        Compression::Zstd => zstd::stream::read::Decoder::new(data)
            .map_err(failed)?
            .take(cap)
            .read_to_end(&mut out)
            .map_err(failed),
        Compression::Gzip => flate2::read::MultiGzDecoder::new(data)
            .take(cap)
            .read_to_end(&mut out)
            .map_err(failed),
        Compression::Snappy => snappy_decompress(data, cap, &mut out).map_err(failed),
    }?;
    if read > limit {
        return Err(CodecError::TooLarge { codec, limit });
    }
    Ok(out)
}

/// The records of `batch`, decompressed first if its codec says so, refusing to decompress
/// more than `limit` bytes.
///
/// # Errors
/// As [`decompress`], and [`CodecError::Failed`] for an unknown codec.
pub fn records(batch: &RecordBatch, limit: usize) -> Result<Records, CodecError> {
    let header = batch.header();
    let section = match header.compression() {
        Some(Compression::None) => batch.records_section(),
        Some(codec) => decompress(codec, &batch.records_section(), limit)?.into(),
        None => {
            return Err(CodecError::Failed(format!(
                "unknown compression codec in attributes {:#06x}",
                header.attributes
            )));
        }
    };
    Ok(Records::new(section, header))
}

/// The codec's name as users write it: `none`, `lz4`, `zstd`, `gzip`, `snappy`.
pub fn name(codec: Compression) -> &'static str {
    match codec {
        Compression::None => "none",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
        Compression::Gzip => "gzip",
        Compression::Snappy => "snappy",
    }
}

/// The codec for a name (`none`, `lz4`, `zstd`, `gzip`, `snappy`, any case).
pub fn parse(name: &str) -> Option<Compression> {
    match name.to_ascii_lowercase().as_str() {
        "none" => Some(Compression::None),
        "lz4" => Some(Compression::Lz4),
        "zstd" => Some(Compression::Zstd),
        "gzip" => Some(Compression::Gzip),
        "snappy" => Some(Compression::Snappy),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BatchBuilder;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd,
        Compression::Gzip,
        Compression::Snappy,
    ];

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in ALL {
            let packed = compress(codec, &data, 3).unwrap();
            if codec != Compression::None {
                assert!(packed.len() < data.len() / 2, "{codec:?} compresses");
            }
            assert_eq!(
                decompress(codec, &packed, data.len()).unwrap(),
                data,
                "{codec:?}"
            );
            assert_eq!(
                decompress(codec, &compress(codec, b"", 3).unwrap(), 10).unwrap(),
                b""
            );
        }
    }

    #[test]
    fn a_batch_with_compressed_records_decodes() {
        for codec in ALL {
            let mut b = BatchBuilder::new();
            for i in 0..50 {
                b.push(
                    Some(b"k"),
                    Some(format!("value {i}").as_bytes()),
                    &[],
                    1_000 + i,
                );
            }
            let section = compress(codec, b.records_section(), 3).unwrap();
            let batch = RecordBatch::new(b.build_with(codec, &section), 1 << 20).unwrap();
            assert_eq!(batch.header().compression(), Some(codec));
            let values: Vec<_> = records(&batch, 1 << 20)
                .unwrap()
                .map(|r| r.unwrap().value.unwrap())
                .collect();
            assert_eq!(values.len(), 50);
            assert_eq!(&values[49][..], b"value 49");
        }
    }

    #[test]
    fn garbage_and_bombs_are_refused() {
        for codec in [
            Compression::Lz4,
            Compression::Zstd,
            Compression::Gzip,
            Compression::Snappy,
        ] {
            assert!(decompress(codec, b"definitely not compressed", 1 << 20).is_err());
            let big = vec![0u8; 1 << 20];
            let packed = compress(codec, &big, 3).unwrap();
            let err = decompress(codec, &packed, 1000).unwrap_err();
            assert_eq!(err, CodecError::TooLarge { codec, limit: 1000 });
            assert!(
                err.to_string().contains("exceed the limit of 1000"),
                "{err}"
            );
        }
    }

    #[test]
    fn names() {
        for codec in ALL {
            assert_eq!(parse(name(codec)), Some(codec));
        }
        assert_eq!(parse("ZSTD"), Some(Compression::Zstd));
        assert_eq!(parse("brotli"), None);
    }

    #[test]
    fn a_bare_snappy_block_decodes_as_some_clients_write_it() {
        let data = b"the same words, the same words, the same words".repeat(100);
        let bare = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(
            decompress(Compression::Snappy, &bare, 1 << 20).unwrap(),
            data
        );
        // Framed in several blocks, as snappy-java writes more than 32 KiB.
        let big: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 7).to_le_bytes())
            .collect();
        let framed = compress(Compression::Snappy, &big, 0).unwrap();
        assert!(framed.starts_with(b"\x82SNAPPY\0"));
        assert_eq!(
            decompress(Compression::Snappy, &framed, 1 << 20).unwrap(),
            big
        );
    }
}
