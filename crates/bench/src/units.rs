//! The two value forms of the bench's flags: a duration (`500ms`, `10s`, `2m`) and a size
//! (`100`, `1KiB`, `32MiB`, `10GiB`). One number and one unit each: the bench's flags never
//! need the compound forms (`1h30m`) or the decimal and day units that `runnel` accepts.

use std::time::Duration;

/// Parses `0` or a whole number with one unit of `ms`, `s`, `m` or `h`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (n, unit) = split(text).ok_or_else(|| {
        format!("invalid duration {text:?}: use 0 or a number with ms, s, m or h")
    })?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
    match unit {
        "" if n == 0 => Some(Duration::ZERO),
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        _ => None,
    }
    .ok_or_else(|| format!("invalid duration {text:?}: use 0 or a number with ms, s, m or h"))
}

/// Parses a whole number of bytes with an optional binary unit `B`, `KiB`, `MiB`, `GiB` or
/// `TiB`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid size {text:?}: use a number of bytes, or of KiB, MiB, GiB or TiB");
    let (n, unit) = split(text).ok_or_else(bad)?;
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// The leading whole number and the unit after it.
fn split(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let n = text.get(..digits)?.parse().ok()?;
    Some((n, text.get(digits..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "5", "1.5s", "1h30m", "s", "7d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        for bad in ["", "KiB", "1GB", "1.5MiB", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
