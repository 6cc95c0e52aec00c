//! Per-log configuration.

use std::time::Duration;

use crate::error::{Error, Result};

/// When appended data is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// An append returns only after its data is on disk. Concurrent appends share one fsync.
    Always,
    /// A background [`Flusher`](crate::Flusher) fsyncs at most this often.
    Interval(Duration),
    /// Left to the operating system (segments are still fsynced when sealed and at close).
    Never,
}

/// Configuration of one partition log. Changes apply to a running log through
/// [`Log::set_config`](crate::Log::set_config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would grow past this many bytes.
    pub segment_bytes: u64,
    /// Roll to a new segment when the active one's first batch is older than this.
    pub segment_age: Option<Duration>,
    /// Delete sealed segments whose newest record is older than this.
    pub retention_age: Option<Duration>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Largest batch accepted, in bytes.
    pub max_batch_bytes: u32,
    /// Bytes of batches between two sparse index entries.
    pub index_interval_bytes: u32,
    /// Preallocated size of each index file of the active segment.
    pub max_index_bytes: u32,
    /// When data is forced to disk.
    pub durability: Durability,
    /// Idempotent producers idle for longer than this are forgotten (at the next roll or
    /// close); their next batch must start a new sequence.
    pub producer_expiry: Duration,
    /// After each fsync of the log, drop from the page cache what lies more than this many
    /// bytes behind the end of each segment (it is on disk, so the pages are clean): the
    /// page cache then recycles the same pages instead of growing. `None` keeps everything
    /// and leaves eviction to the kernel. At least [`MIN_CACHE_WINDOW`].
    pub cache_window: Option<u64>,
}

/// Smallest allowed `cache_window`.
pub const MIN_CACHE_WINDOW: u64 = 1 << 20;

/// Largest allowed `segment_bytes`: index positions are `u32`.
pub const MAX_SEGMENT_BYTES: u64 = 2 << 30;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_age: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            max_batch_bytes: 1 << 20,
            index_interval_bytes: 4096,
            max_index_bytes: 10 << 20,
            durability: Durability::Interval(Duration::from_millis(100)),
            producer_expiry: Duration::from_secs(7 * 24 * 3600),
            cache_window: None,
        }
    }
}

impl LogConfig {
    /// Checks every value against its allowed range.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first key out of range and its limit.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &'static str, reason: String| Err(Error::InvalidConfig { key, reason });
        if !(4096..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return bad(
                "segment_bytes",
                format!(
                    "{} is outside [4096, {MAX_SEGMENT_BYTES}]",
                    self.segment_bytes
                ),
            );
        }
        if self.max_batch_bytes < 128 {
            return bad(
                "max_batch_bytes",
                format!("{} is below 128", self.max_batch_bytes),
            );
        }
        if u64::from(self.max_batch_bytes) > self.segment_bytes {
            return bad(
                "max_batch_bytes",
                format!(
                    "{} is larger than segment_bytes ({})",
                    self.max_batch_bytes, self.segment_bytes
                ),
            );
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes", "must be at least 1".into());
        }
        if !(1024..=(1 << 30)).contains(&self.max_index_bytes) {
            return bad(
                "max_index_bytes",
                format!("{} is outside [1024, {}]", self.max_index_bytes, 1u32 << 30),
            );
        }
        if self.segment_age == Some(Duration::ZERO) {
            return bad("segment_age", "must be positive or unset".into());
        }
        if let Some(w) = self.cache_window
            && w < MIN_CACHE_WINDOW
        {
            return bad(
                "cache_window",
                format!("{w} is below {MIN_CACHE_WINDOW} (or unset)"),
            );
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return bad("durability", "interval must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        LogConfig::default().validate().unwrap();
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let c = LogConfig {
            segment_bytes: 10,
            ..LogConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(Error::InvalidConfig {
                key: "segment_bytes",
                ..
            })
        ));
        let c = LogConfig {
            max_batch_bytes: 1 << 30,
            segment_bytes: 1 << 20,
            ..c
        };
        assert!(matches!(
            c.validate(),
            Err(Error::InvalidConfig {
                key: "max_batch_bytes",
                ..
            })
        ));
        let c = LogConfig {
            cache_window: Some(MIN_CACHE_WINDOW - 1),
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(Error::InvalidConfig {
                key: "cache_window",
                ..
            })
        ));
        let c = LogConfig {
            durability: Durability::Interval(Duration::ZERO),
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(Error::InvalidConfig {
                key: "durability",
                ..
            })
        ));
    }
}
