//! Parsers for flag values in human forms: durations (`7d`, `1h30m`), sizes (`1GiB`),
//! times (RFC 3339, `now-1h`, `@<ms>`), `--from` positions, `--header k=v` and
//! `TOPIC[:P,P]` selections. Each returns a one-line message naming the accepted forms, which
//! clap shows as a usage error (exit code 2).
//!
//! Times are converted with the civil-calendar algorithms of Howard Hinnant
//! (<https://howardhinnant.github.io/date_algorithms.html>), proleptic Gregorian, UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds per unit of [`parse_duration`], longest first.
const DURATION_UNITS: [(&str, u64); 7] = [
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
    ("", 0),
];

/// Parses a duration: `0`, or one or more `<number><unit>` with units `ms`, `s`, `m`, `h`,
/// `d`, `w` (`500ms`, `30s`, `12h`, `7d`, `1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: use a number with a unit ms, s, m, h, d or w \
             (500ms, 30s, 12h, 7d, 1h30m), or 0"
        )
    };
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms = DURATION_UNITS
            .iter()
            .find(|(name, _)| !name.is_empty() && *name == unit)
            .map(|(_, ms)| *ms)
            .ok_or_else(bad)?;
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(total))
}

/// Formats milliseconds as an exact [`parse_duration`] form, days at most (`604800000` is
/// `7d`, `5400000` is `1h30m`, `0` is `0`).
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0".to_owned();
    }
    let mut rest = ms;
    let mut out = String::new();
    // Days are the largest unit shown: retention reads as 7d or 30d, not 1w or 4w2d.
    for (name, unit) in DURATION_UNITS.iter().filter(|(n, u)| *u > 0 && *n != "w") {
        if rest >= *unit {
            out.push_str(&format!("{}{name}", rest / unit));
            rest %= unit;
        }
    }
    out
}

/// Parses a size in bytes: a number with an optional unit, `B`, `KB`/`MB`/`GB`/`TB` (powers
/// of 1000), `KiB`/`MiB`/`GiB`/`TiB` or `K`/`M`/`G`/`T` (powers of 1024); units are
/// case-insensitive (`1GiB`, `512MiB`, `64k`, `1000000`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size {text:?}: use a number of bytes with an optional unit \
             B, KB, MB, GB, TB (x1000) or KiB, MiB, GiB, TiB, K, M, G, T (x1024), e.g. 1GiB"
        )
    };
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = s[..digits].parse().map_err(|_| bad())?;
    let unit = s[digits..].trim().to_ascii_lowercase();
    let factor: u64 = match unit.as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// Formats bytes with a binary unit for reading (`1.5 GiB`, `512 B`); not for parsing back.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// Formats a byte count exactly, with the largest binary unit that divides it (`1GiB`,
/// `1536KiB`, `1000`): a form [`parse_size`] reads back.
pub fn format_size_exact(bytes: u64) -> String {
    for (unit, factor) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{}{unit}", bytes / factor);
        }
    }
    bytes.to_string()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Parses a point in time, as milliseconds since the Unix epoch:
/// - RFC 3339: `2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.250+02:00` (a space may replace
///   the `T`);
/// - a date alone, `2024-05-01`: midnight UTC;
/// - `now`, or `now-<duration>` (`now-1h`, `now-7d`);
/// - `@<ms>`: milliseconds since the Unix epoch, as the JSON output shows them.
pub fn parse_time(text: &str) -> Result<i64, String> {
    parse_time_at(text, now_ms())
}

/// [`parse_time`] with an explicit "now".
pub fn parse_time_at(text: &str, now: i64) -> Result<i64, String> {
    let bad = |why: &str| {
        format!(
            "invalid time {text:?}: {why}; use RFC 3339 (2024-05-01T12:00:00Z, \
             2024-05-01T14:00:00+02:00), a date (2024-05-01), now-<duration> (now-1h) \
             or @<ms since the epoch>"
        )
    };
    let s = text.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Some(ago) = s.strip_prefix("now-") {
        let d = parse_duration(ago).map_err(|_| bad("the duration after now- is invalid"))?;
        let ms = i64::try_from(d.as_millis()).map_err(|_| bad("too far back"))?;
        return Ok(now.saturating_sub(ms));
    }
    if let Some(ms) = s.strip_prefix('@') {
        return ms
            .parse::<i64>()
            .map_err(|_| bad("@ must be followed by milliseconds"));
    }
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad("no YYYY-MM-DD date"));
    }
    let (year, month, day) = match (num(0..4), num(5..7), num(8..10)) {
        (Some(y), Some(m), Some(d)) => (y, m, d),
        _ => return Err(bad("no YYYY-MM-DD date")),
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Ok(days * 86_400_000);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return Err(bad("no THH:MM:SS time after the date"));
    }
    let (hour, minute, second) = match (num(11..13), num(14..16), num(17..19)) {
        (Some(h), Some(m), Some(s)) => (h, m, s),
        _ => return Err(bad("no THH:MM:SS time after the date")),
    };
    // 60 allows a leap second, as RFC 3339 does; it reads as the next second.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err(bad("no digits after the decimal point"));
        }
        // Milliseconds: the first three digits, padded; further digits are dropped.
        for k in 0..3 {
            let digit = b
                .get(start + k)
                .filter(|_| start + k < i)
                .map_or(0, |d| d - b'0');
            millis = millis * 10 + i64::from(digit);
        }
    }
    let offset_min = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad("the UTC offset is not ±HH:MM"));
            }
            let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if h > 23 || m > 59 {
                return Err(bad("the UTC offset is not ±HH:MM"));
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        [] => return Err(bad("no time zone: end with Z or an offset such as +02:00")),
        _ => return Err(bad("the time zone is not Z or ±HH:MM")),
    };
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_min * 60;
    Ok(seconds * 1_000 + millis)
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC with milliseconds
/// (`2024-05-01T12:00:00.000Z`).
pub fn format_time_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    )
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Where `consume --from` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The oldest record still stored.
    Earliest,
    /// The log end when the command starts: only newer records.
    Latest,
    /// An offset, in every selected partition.
    Offset(u64),
    /// The first batch at or after a time (ms since the epoch).
    Time(i64),
}

/// Parses `--from`: `earliest` (or `beginning`), `latest` (or `end`), an offset, or a time
/// as [`parse_time`] reads it.
pub fn parse_from(text: &str) -> Result<From, String> {
    parse_from_at(text, now_ms())
}

/// [`parse_from`] with an explicit "now".
pub fn parse_from_at(text: &str, now: i64) -> Result<From, String> {
    let s = text.trim();
    match s {
        "earliest" | "beginning" => return Ok(From::Earliest),
        "latest" | "end" => return Ok(From::Latest),
        _ => {}
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(From::Offset)
            .map_err(|_| format!("invalid offset {s:?}: larger than 2^64 - 1"));
    }
    parse_time_at(s, now)
        .map(From::Time)
        .map_err(|e| format!("{e}; or earliest, latest or an offset"))
}

/// Parses `--header NAME=VALUE` (the value may be empty and may contain `=`).
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!(
            "invalid header {text:?}: use NAME=VALUE, for example content-type=application/json"
        )),
    }
}

/// Parses `TOPIC` or `TOPIC:P,P,...` (a topic's partitions; none listed means all).
pub fn parse_topic_partitions(text: &str) -> Result<(String, Vec<u32>), String> {
    let bad = || {
        format!(
            "invalid topic selection {text:?}: use TOPIC or TOPIC:PARTITION,PARTITION (orders:0,2)"
        )
    };
    let (topic, list) = match text.split_once(':') {
        Some((t, list)) => (t, Some(list)),
        None => (text, None),
    };
    if topic.is_empty() {
        return Err(bad());
    }
    let mut partitions = Vec::new();
    if let Some(list) = list {
        for p in list.split(',') {
            partitions.push(p.trim().parse::<u32>().map_err(|_| bad())?);
        }
    }
    partitions.sort_unstable();
    partitions.dedup();
    Ok((topic.to_owned(), partitions))
}

/// Turns the escapes `\n`, `\t`, `\r`, `\0` and `\\` of a command-line separator into the
/// characters (a shell passes `'\t'` as two characters); other backslashes stay.
pub fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = |s: &str| parse_duration(s).map(|d| d.as_millis() as u64);
        assert_eq!(ms("0"), Ok(0));
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("30s"), Ok(30_000));
        assert_eq!(ms("12h"), Ok(43_200_000));
        assert_eq!(ms("7d"), Ok(604_800_000));
        assert_eq!(ms("2w"), Ok(1_209_600_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms(" 1m1s "), Ok(61_000));
        for bad in [
            "",
            "7",
            "d",
            "7x",
            "1.5h",
            "-1h",
            "h1",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("7").unwrap_err().contains("7d"));
    }

    #[test]
    fn durations_format_back_exactly() {
        for (ms, text) in [
            (0, "0"),
            (500, "500ms"),
            (604_800_000, "7d"),
            (691_200_000, "8d"),
            (5_400_000, "1h30m"),
            (90_061_001, "1d1h1m1s1ms"),
        ] {
            assert_eq!(format_duration_ms(ms), text);
            assert_eq!(parse_duration(text).unwrap().as_millis() as u64, ms);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1 MB"), Ok(1_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("100B"), Ok(100));
        for bad in ["", "GiB", "1.5GiB", "1XB", "-1", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size_exact(1 << 30), "1GiB");
        assert_eq!(format_size_exact(1536 << 10), "1536KiB");
        assert_eq!(format_size_exact(1000), "1000");
        assert_eq!(parse_size(&format_size_exact(1536 << 10)), Ok(1536 << 10));
    }

    #[test]
    fn times() {
        let now = 1_714_564_800_000; // 2024-05-01T12:00:00Z
        let t = |s: &str| parse_time_at(s, now);
        assert_eq!(t("2024-05-01T12:00:00Z"), Ok(now));
        assert_eq!(t("2024-05-01t12:00:00z"), Ok(now));
        assert_eq!(t("2024-05-01 12:00:00Z"), Ok(now));
        assert_eq!(t("2024-05-01T14:00:00+02:00"), Ok(now));
        assert_eq!(t("2024-05-01T07:30:00-04:30"), Ok(now));
        assert_eq!(t("2024-05-01T12:00:00.25Z"), Ok(now + 250));
        assert_eq!(t("2024-05-01T12:00:00.123456789Z"), Ok(now + 123));
        assert_eq!(t("2024-05-01"), Ok(now - 12 * 3_600_000));
        assert_eq!(t("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(t("1969-12-31T23:59:59Z"), Ok(-1_000));
        assert_eq!(t("2000-02-29T00:00:00Z"), Ok(951_782_400_000));
        assert_eq!(t("now"), Ok(now));
        assert_eq!(t("now-1h"), Ok(now - 3_600_000));
        assert_eq!(t("@1700000000000"), Ok(1_700_000_000_000));
        for bad in [
            "",
            "yesterday",
            "2024-05-01T12:00:00",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00Z",
            "now-soon",
            "@x",
        ] {
            assert!(t(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_format_and_round_trip() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_time_ms(1_714_564_800_250),
            "2024-05-01T12:00:00.250Z"
        );
        assert_eq!(format_time_ms(-1), "1969-12-31T23:59:59.999Z");
        for ms in [
            0,
            951_782_400_000,
            1_714_564_800_250,
            4_102_444_800_000,
            -86_400_001,
        ] {
            assert_eq!(parse_time_at(&format_time_ms(ms), 0), Ok(ms));
        }
    }

    #[test]
    fn from_values() {
        let now = 1_714_564_800_000;
        let f = |s: &str| parse_from_at(s, now);
        assert_eq!(f("earliest"), Ok(From::Earliest));
        assert_eq!(f("beginning"), Ok(From::Earliest));
        assert_eq!(f("latest"), Ok(From::Latest));
        assert_eq!(f("end"), Ok(From::Latest));
        assert_eq!(f("0"), Ok(From::Offset(0)));
        assert_eq!(f("1234"), Ok(From::Offset(1234)));
        assert_eq!(f("2024-05-01T12:00:00Z"), Ok(From::Time(now)));
        assert_eq!(f("now-1m"), Ok(From::Time(now - 60_000)));
        assert!(f("-5").is_err());
        assert!(f("first").unwrap_err().contains("earliest"));
    }

    #[test]
    fn headers_and_selections() {
        assert_eq!(parse_header("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(parse_header("a="), Ok(("a".into(), String::new())));
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_header("=b").is_err());
        assert!(parse_header("ab").is_err());
        assert_eq!(
            parse_topic_partitions("orders"),
            Ok(("orders".into(), vec![]))
        );
        assert_eq!(
            parse_topic_partitions("orders:2,0,2"),
            Ok(("orders".into(), vec![0, 2]))
        );
        assert!(parse_topic_partitions("orders:").is_err());
        assert!(parse_topic_partitions(":1").is_err());
        assert!(parse_topic_partitions("orders:x").is_err());
    }

    #[test]
    fn separators_unescape() {
        assert_eq!(unescape("\\t"), "\t");
        assert_eq!(unescape("a\\nb"), "a\nb");
        assert_eq!(unescape("\\\\"), "\\");
        assert_eq!(unescape("\\q"), "\\q");
        assert_eq!(unescape(":"), ":");
        assert_eq!(unescape("x\\"), "x\\");
    }
}
