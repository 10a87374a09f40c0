//! The bounds of every number a run takes, from the file or a flag, checked before the
//! run starts (issue 12: `channel_capacity = 1e12` aborted on allocation, `i64::MAX`
//! panicked, `--workers 100000` aborted after 16k threads). Each is `(lowest, highest)`;
//! README's configuration table lists them. [`Whole`] is how the file's numbers are read.

use serde::Deserialize;

/// `batch_size`, `--batch-size`: records per batch.
pub const BATCH_SIZE: (u64, u64) = (1, 1 << 20);
/// `channel_capacity`: batches buffered between two stages. Memory is about
/// `batch_size × channel_capacity` records per stage, so both are capped.
pub const CHANNEL_CAPACITY: (u64, u64) = (1, 1024);
/// `debounce_ms`: up to an hour (longer would look like a reload that never comes).
pub const DEBOUNCE_MS: (u64, u64) = (0, 3_600_000);
/// `workers`, `--workers`: threads (or child processes) per stage.
pub const WORKERS: (u64, u64) = (1, 256);
/// `max_record_bytes`: from 1 KiB to 4 GiB less a byte (the most one record's text
/// can hold in a batch).
pub const MAX_RECORD_BYTES: (u64, u64) = (1024, u32::MAX as u64);
/// `timeout_ms`: up to a day per batch.
pub const TIMEOUT_MS: (u64, u64) = (1, 86_400_000);
/// `memory_mb`: a WASM stage's memory; a wasm32 memory holds at most 4 GiB.
pub const MEMORY_MB: (u64, u64) = (1, 4096);

/// `value` if it lies in `(lo, hi)`, else what `key` must be.
pub fn check(key: &str, value: i64, (lo, hi): (u64, u64)) -> Result<u64, String> {
    match u64::try_from(value) {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!(
            "{key} must be a whole number from {lo} to {hi}, not {value}"
        )),
    }
}

/// A whole number in the file. Its own type so that a fraction or an exponent
/// (`channel_capacity = 1e12`) is refused with "expected a whole number" rather than
/// serde's "expected usize"; the range is checked by [`check`], which names the
/// key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole(pub i64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Whole, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Whole;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Whole, E> {
                Ok(Whole(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Whole, E> {
                i64::try_from(v).map(Whole).map_err(|_| {
                    E::custom(format!("expected a whole number, found {v}: far too large"))
                })
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Whole, E> {
                Err(E::custom(format!(
                    "expected a whole number, found a fraction or exponent (`{v}`)"
                )))
            }
        }
        d.deserialize_i64(V)
    }
}
