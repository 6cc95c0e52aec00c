//! Rendering for people and for programs: aligned tables, JSON, and bytes that may not be
//! text.
//!
//! Everything goes through one locked, buffered stdout ([`stdout`]); a write that fails with
//! `BrokenPipe` (the reader, say `head`, has gone) travels up as an `io::Error` and `main`
//! exits 0 quietly.

use std::io::{self, BufWriter, StdoutLock, Write};

use base64::Engine as _;
use serde::Serialize;
use serde::ser::SerializeMap as _;

/// How listings and descriptions are printed (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for programs: one document (or one line per record for `consume`).
    Json,
}

/// The buffered, locked standard output every command writes to.
pub type Out = BufWriter<StdoutLock<'static>>;

/// Locks stdout behind a 64 KiB buffer.
pub fn stdout() -> Out {
    BufWriter::with_capacity(64 << 10, io::stdout().lock())
}

/// Prints `value` as pretty JSON and a newline, and flushes.
///
/// # Errors
/// Write errors (a broken pipe included).
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> io::Result<()> {
    let mut out = stdout();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::from)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// A table: a header row and rows of cells, printed with columns aligned by two spaces.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells print empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Writes the table; the last column is not padded.
    ///
    /// # Errors
    /// Write errors.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |out: &mut dyn Write, cells: &[String]| -> io::Result<()> {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                if i + 1 == columns {
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    let pad = width - cell.chars().count() + 2;
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(out, "{}", text.trim_end())
        };
        line(out, &self.header)?;
        for row in &self.rows {
            line(out, row)?;
        }
        Ok(())
    }
}

/// Key-value lines (`name:  value`) for a description's header.
///
/// # Errors
/// Write errors.
pub fn write_fields(out: &mut impl Write, fields: &[(&str, String)]) -> io::Result<()> {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        writeln!(out, "{k:<width$}  {v}")?;
    }
    Ok(())
}

/// Writes bytes for a terminal or a text pipe: valid UTF-8 as it is, but each byte of an
/// invalid sequence, and of a control character other than tab and newline (ESC, BEL, CR,
/// DEL, the C1 controls), as `\xNN`, so that no value can drive the terminal. Never fails on
/// content.
///
/// # Errors
/// Write errors.
pub fn write_text(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    for chunk in bytes.utf8_chunks() {
        write_escaping_controls(out, chunk.valid())?;
        for b in chunk.invalid() {
            write!(out, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

/// Writes `text`, its control characters but tab and newline as `\xNN` per byte.
fn write_escaping_controls(out: &mut impl Write, text: &str) -> io::Result<()> {
    let mut from = 0;
    for (i, c) in text.char_indices() {
        if c.is_control() && c != '\t' && c != '\n' {
            out.write_all(&text.as_bytes()[from..i])?;
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                write!(out, "\\x{b:02x}")?;
            }
            from = i + c.len_utf8();
        }
    }
    out.write_all(&text.as_bytes()[from..])
}

/// Adds a bytes field to a JSON object: `"name": "text"` when the bytes are UTF-8,
/// `"name_base64": "..."` when they are not, `"name": null` for `None`.
///
/// # Errors
/// The serializer's.
pub fn serialize_bytes_entry<M: serde::ser::SerializeMap>(
    map: &mut M,
    name: &'static str,
    name_base64: &'static str,
    bytes: Option<&[u8]>,
) -> Result<(), M::Error> {
    match bytes {
        None => map.serialize_entry(name, &None::<&str>),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => map.serialize_entry(name, s),
            Err(_) => map.serialize_entry(
                name_base64,
                &base64::engine::general_purpose::STANDARD.encode(b),
            ),
        },
    }
}

/// A header in JSON output: `{"name": ..., "value": ...}` with the same text-or-base64 rule.
pub struct JsonHeader<'a> {
    /// The header's name bytes.
    pub name: &'a [u8],
    /// Its value, `None` for null.
    pub value: Option<&'a [u8]>,
}

impl Serialize for JsonHeader<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        serialize_bytes_entry(&mut map, "name", "name_base64", Some(self.name))?;
        serialize_bytes_entry(&mut map, "value", "value_base64", self.value)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["TOPIC", "PARTITIONS"]);
        t.row(vec!["orders".into(), "3".into()]);
        t.row(vec!["a".into(), "12".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "TOPIC   PARTITIONS\norders  3\na       12\n"
        );
    }

    #[test]
    fn non_utf8_text_is_escaped() {
        let mut out = Vec::new();
        write_text(&mut out, b"ok \xff\xfe end \xe2\x82").unwrap();
        assert_eq!(out, b"ok \\xff\\xfe end \\xe2\\x82");
        let mut out = Vec::new();
        write_text(&mut out, "héllo".as_bytes()).unwrap();
        assert_eq!(out, "héllo".as_bytes());
    }

    #[test]
    fn json_uses_base64_for_non_utf8() {
        let headers = [
            JsonHeader {
                name: b"k",
                value: Some(b"v"),
            },
            JsonHeader {
                name: b"\xff",
                value: Some(b"\x00\xff"),
            },
            JsonHeader {
                name: b"n",
                value: None,
            },
        ];
        let json = serde_json::to_string(&headers).unwrap();
        assert_eq!(
            json,
            r#"[{"name":"k","value":"v"},{"name_base64":"/w==","value_base64":"AP8="},{"name":"n","value":null}]"#
        );
    }
}
