//! How `runnel consume` prints a record: the value alone, key and value, a JSON line with
//! every field, or a template.
//!
//! Text forms print UTF-8 as it is and escape the bytes of invalid sequences and of control
//! characters as `\xNN` ([`output::write_text`]); JSON puts non-UTF-8 keys, values and headers in `*_base64`
//! fields. Nothing is allocated per record except base64 text for binary data.

use std::io::{self, Write};

use clap::Args;
use runnel_client::ConsumerRecord;
use serde::Serialize;
use serde::ser::SerializeMap as _;

use crate::error::usage;
use crate::output::{self, JsonHeader, Output};
use crate::parse::{format_time_ms, unescape};

/// The flags that choose how records are printed (`runnel consume`, `runnel share consume`).
#[derive(Debug, Args)]
pub struct FormatArgs {
    /// The output format [default: value, or json with --output json]
    #[arg(long, value_enum, conflicts_with = "template")]
    pub format: Option<FormatKind>,
    /// Print each record with this template (a newline follows each record)
    #[arg(long, short = 't', value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// The separator of the key-value format (\t for a tab)
    #[arg(long, short = 'k', value_name = "SEP", default_value = "\\t")]
    pub key_separator: String,
}

impl FormatArgs {
    /// The format the flags ask for; without any, the value alone (JSON lines with
    /// `--output json`).
    ///
    /// # Errors
    /// A usage error for an invalid template.
    pub fn record_format(&self, output: Output) -> anyhow::Result<RecordFormat> {
        if let Some(t) = &self.template {
            return RecordFormat::template(t)
                .map_err(|e| usage(format!("{e} (placeholders: {TEMPLATE_FIELDS})")));
        }
        let kind = self.format.unwrap_or(match output {
            Output::Json => FormatKind::Json,
            Output::Table => FormatKind::Value,
        });
        Ok(match kind {
            FormatKind::Value => RecordFormat::Value,
            FormatKind::KeyValue => RecordFormat::KeyValue(unescape(&self.key_separator).into()),
            FormatKind::Json => RecordFormat::Json,
        })
    }
}

/// The record formats of `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatKind {
    /// The value alone, one per line.
    Value,
    /// The key, the key separator, the value.
    KeyValue,
    /// One JSON object per line: topic, partition, offset, timestamp, key, headers, value.
    Json,
}

/// A record format, ready to write records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFormat {
    /// The value alone.
    Value,
    /// Key, separator, value.
    KeyValue(Vec<u8>),
    /// A JSON line.
    Json,
    /// A parsed template.
    Template(Vec<Piece>),
}

/// A part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text printed as it is.
    Literal(String),
    /// `{topic}`.
    Topic,
    /// `{partition}`.
    Partition,
    /// `{offset}`.
    Offset,
    /// `{timestamp}`: ms since the epoch.
    Timestamp,
    /// `{time}`: RFC 3339, UTC.
    Time,
    /// `{key}`.
    Key,
    /// `{value}`.
    Value,
    /// `{headers}`: `name=value` pairs separated by commas.
    Headers,
    /// `{header:NAME}`: the first header of that name.
    Header(String),
}

/// The placeholders a template may use, for messages and help.
pub const TEMPLATE_FIELDS: &str =
    "{topic} {partition} {offset} {timestamp} {time} {key} {value} {headers} {header:NAME}";

impl RecordFormat {
    /// Parses a template: placeholders in braces (see [`TEMPLATE_FIELDS`]), `{{` and `}}`
    /// for braces, and the escapes `\n`, `\t`, `\r`, `\0` and `\\`.
    ///
    /// # Errors
    /// A message naming the unknown placeholder or the unclosed brace.
    pub fn template(text: &str) -> Result<Self, String> {
        let text = crate::parse::unescape(text);
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(format!(
                            "invalid template: '{{' without '}}' (write {{{{ for a brace); \
                             placeholders: {TEMPLATE_FIELDS}"
                        ));
                    }
                    let piece = match name.as_str() {
                        "topic" => Piece::Topic,
                        "partition" => Piece::Partition,
                        "offset" => Piece::Offset,
                        "timestamp" => Piece::Timestamp,
                        "time" => Piece::Time,
                        "key" => Piece::Key,
                        "value" => Piece::Value,
                        "headers" => Piece::Headers,
                        other => match other.strip_prefix("header:") {
                            Some(h) if !h.is_empty() => Piece::Header(h.to_owned()),
                            _ => {
                                return Err(format!(
                                    "invalid template: unknown placeholder {{{other}}}; \
                                     placeholders: {TEMPLATE_FIELDS}"
                                ));
                            }
                        },
                    };
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(piece);
                }
                '}' => {
                    return Err("invalid template: '}' without '{' (write }} for a brace)".into());
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Self::Template(pieces))
    }

    /// Writes one record and its newline.
    ///
    /// # Errors
    /// Write errors.
    pub fn write(&self, out: &mut impl Write, r: &ConsumerRecord) -> io::Result<()> {
        match self {
            Self::Value => output::write_text(out, r.value.as_deref().unwrap_or_default())?,
            Self::KeyValue(sep) => {
                output::write_text(out, r.key.as_deref().unwrap_or_default())?;
                out.write_all(sep)?;
                output::write_text(out, r.value.as_deref().unwrap_or_default())?;
            }
            Self::Json => {
                serde_json::to_writer(&mut *out, &JsonRecord(r)).map_err(io::Error::from)?;
            }
            Self::Template(pieces) => {
                for piece in pieces {
                    write_piece(out, piece, r)?;
                }
            }
        }
        out.write_all(b"\n")
    }
}

fn write_piece(out: &mut impl Write, piece: &Piece, r: &ConsumerRecord) -> io::Result<()> {
    match piece {
        Piece::Literal(s) => out.write_all(s.as_bytes()),
        Piece::Topic => out.write_all(r.topic.as_bytes()),
        Piece::Partition => write!(out, "{}", r.partition),
        Piece::Offset => write!(out, "{}", r.offset),
        Piece::Timestamp => write!(out, "{}", r.timestamp),
        Piece::Time => out.write_all(format_time_ms(r.timestamp).as_bytes()),
        Piece::Key => output::write_text(out, r.key.as_deref().unwrap_or_default()),
        Piece::Value => output::write_text(out, r.value.as_deref().unwrap_or_default()),
        Piece::Headers => {
            for (i, h) in r.headers.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                output::write_text(out, &h.name)?;
                out.write_all(b"=")?;
                output::write_text(out, h.value.as_deref().unwrap_or_default())?;
            }
            Ok(())
        }
        Piece::Header(name) => match r.header(name) {
            Some(Some(v)) => output::write_text(out, v),
            _ => Ok(()),
        },
    }
}

/// A record as a JSON object, serialized straight from the record's buffers.
struct JsonRecord<'a>(&'a ConsumerRecord);

/// The headers of a record as a JSON array, without collecting them.
struct JsonHeaders<'a>(&'a [runnel_client::Header]);

impl Serialize for JsonHeaders<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|h| JsonHeader {
            name: &h.name,
            value: h.value.as_deref(),
        }))
    }
}

impl Serialize for JsonRecord<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut map = s.serialize_map(Some(7))?;
        map.serialize_entry("topic", &*r.topic)?;
        map.serialize_entry("partition", &r.partition)?;
        map.serialize_entry("offset", &r.offset)?;
        map.serialize_entry("timestamp", &r.timestamp)?;
        output::serialize_bytes_entry(&mut map, "key", "key_base64", r.key.as_deref())?;
        map.serialize_entry("headers", &JsonHeaders(&r.headers))?;
        output::serialize_bytes_entry(&mut map, "value", "value_base64", r.value.as_deref())?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use runnel_client::Header;

    use super::*;

    fn record(key: Option<&'static [u8]>, value: Option<&'static [u8]>) -> ConsumerRecord {
        ConsumerRecord {
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            timestamp: 1_714_564_800_250,
            key: key.map(Bytes::from_static),
            value: value.map(Bytes::from_static),
            headers: vec![Header {
                name: Bytes::from_static(b"trace"),
                value: Some(Bytes::from_static(b"abc")),
            }],
        }
    }

    fn render(format: &RecordFormat, r: &ConsumerRecord) -> Vec<u8> {
        let mut out = Vec::new();
        format.write(&mut out, r).unwrap();
        out
    }

    #[test]
    fn value_and_key_value() {
        let r = record(Some(b"k1"), Some(b"v1"));
        assert_eq!(render(&RecordFormat::Value, &r), b"v1\n");
        assert_eq!(
            render(&RecordFormat::KeyValue(b"\t".to_vec()), &r),
            b"k1\tv1\n"
        );
        let null = record(None, None);
        assert_eq!(render(&RecordFormat::Value, &null), b"\n");
        assert_eq!(
            render(&RecordFormat::KeyValue(b":".to_vec()), &null),
            b":\n"
        );
    }

    #[test]
    fn control_characters_are_escaped_so_no_value_drives_the_terminal() {
        let r = record(None, Some("a\x1b[31mred\x07\r\u{9b}2J\tok\né".as_bytes()));
        assert_eq!(
            render(&RecordFormat::Value, &r),
            "a\\x1b[31mred\\x07\\x0d\\xc2\\x9b2J\tok\né\n".as_bytes()
        );
    }

    #[test]
    fn non_utf8_values_never_break_output() {
        let r = record(Some(b"\xff"), Some(b"a\xc3(b"));
        assert_eq!(render(&RecordFormat::Value, &r), b"a\\xc3(b\n");
        assert_eq!(
            render(&RecordFormat::KeyValue(b"=".to_vec()), &r),
            b"\\xff=a\\xc3(b\n"
        );
        let line = render(&RecordFormat::Json, &r);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["key_base64"], "/w==");
        assert_eq!(v["value_base64"], "YcMoYg==");
        assert!(v.get("value").is_none());
    }

    #[test]
    fn json_lines_carry_every_field() {
        let r = record(Some(b"k"), Some(b"{\"total\": 1}"));
        let line = render(&RecordFormat::Json, &r);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["topic"], "orders");
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 41);
        assert_eq!(v["timestamp"], 1_714_564_800_250i64);
        assert_eq!(v["key"], "k");
        assert_eq!(v["value"], "{\"total\": 1}");
        assert_eq!(v["headers"][0]["name"], "trace");
        assert_eq!(v["headers"][0]["value"], "abc");
        let null = render(&RecordFormat::Json, &record(None, None));
        let v: serde_json::Value = serde_json::from_slice(&null).unwrap();
        assert!(v["key"].is_null() && v["value"].is_null());
    }

    #[test]
    fn templates() {
        let r = record(Some(b"k"), Some(b"v"));
        let t = RecordFormat::template(
            "{topic}/{partition}@{offset} {time} {timestamp} {key}={value} [{headers}] \
             {header:trace}{header:missing} {{x}}\\t.",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(render(&t, &r)).unwrap(),
            "orders/2@41 2024-05-01T12:00:00.250Z 1714564800250 k=v [trace=abc] abc {x}\t.\n"
        );
        assert_eq!(
            RecordFormat::template("{value}").unwrap(),
            RecordFormat::Template(vec![Piece::Value])
        );
        assert!(
            RecordFormat::template("{nope}")
                .unwrap_err()
                .contains("{nope}")
        );
        assert!(RecordFormat::template("{value").is_err());
        assert!(RecordFormat::template("value}").is_err());
        assert!(RecordFormat::template("{header:}").is_err());
    }
}
