//! kcat-style output formats (`-f '%p:%o %s\n'`) and JSON lines for consumed records.

use std::fmt::Write as _;

use serde_json::json;
use sluice_protocol::record::RecordRef;

/// One piece of a format string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    KeyLength,
    ValueLength,
    Timestamp,
    Headers,
}

/// A parsed format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pieces: Vec<Piece>,
}

impl Format {
    /// Parses kcat's tokens (`%t %p %o %k %s %K %S %T %h %%`) and escapes (`\n \t \\`).
    pub fn parse(format: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            let token = match c {
                '%' => match chars.next() {
                    Some('t') => Piece::Topic,
                    Some('p') => Piece::Partition,
                    Some('o') => Piece::Offset,
                    Some('k') => Piece::Key,
                    Some('s') => Piece::Value,
                    Some('K') => Piece::KeyLength,
                    Some('S') => Piece::ValueLength,
                    Some('T') => Piece::Timestamp,
                    Some('h') => Piece::Headers,
                    Some('%') => {
                        text.push('%');
                        continue;
                    }
                    other => {
                        let found = other.map_or_else(|| "the end".to_owned(), |c| format!("`%{c}`"));
                        return Err(format!(
                            "format {format:?}: {found} after `%` is not a token; use %t %p %o %k %s %K %S %T %h or %%"
                        ));
                    }
                },
                '\\' => {
                    match chars.next() {
                        Some('n') => text.push('\n'),
                        Some('t') => text.push('\t'),
                        Some('r') => text.push('\r'),
                        Some('\\') => text.push('\\'),
                        Some(other) => {
                            text.push('\\');
                            text.push(other);
                        }
                        None => text.push('\\'),
                    }
                    continue;
                }
                c => {
                    text.push(c);
                    continue;
                }
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(token);
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Self { pieces })
    }

    /// Appends `record` of `topic`/`partition` to `out` in this format.
    pub fn write(&self, out: &mut String, topic: &str, partition: i32, record: &RecordRef<'_>) {
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Topic => out.push_str(topic),
                Piece::Partition => {
                    let _ = write!(out, "{partition}");
                }
                Piece::Offset => {
                    let _ = write!(out, "{}", record.offset());
                }
                Piece::Key => out.push_str(&String::from_utf8_lossy(record.key().unwrap_or_default())),
                Piece::Value => out.push_str(&String::from_utf8_lossy(record.value().unwrap_or_default())),
                Piece::KeyLength => {
                    let _ = write!(out, "{}", record.key().map_or(-1, |k| k.len() as i64));
                }
                Piece::ValueLength => {
                    let _ = write!(out, "{}", record.value().map_or(-1, |v| v.len() as i64));
                }
                Piece::Timestamp => {
                    let _ = write!(out, "{}", record.timestamp());
                }
                Piece::Headers => {
                    let headers: Vec<String> = record
                        .headers()
                        .map(|(name, value)| format!("{name}={}", String::from_utf8_lossy(value.unwrap_or_default())))
                        .collect();
                    out.push_str(&headers.join(","));
                }
            }
        }
    }
}

/// `record` as one JSON line, in kcat's `-J` shape (headers as a flat `[name, value, ...]` list;
/// null keys and values as `null`; bytes that are not UTF-8 replaced).
pub fn json_line(out: &mut String, topic: &str, partition: i32, record: &RecordRef<'_>) {
    let text = |bytes: Option<&[u8]>| bytes.map(|b| String::from_utf8_lossy(b).into_owned());
    let headers: Vec<Option<String>> =
        record.headers().flat_map(|(name, value)| [Some(name.to_owned()), text(value)]).collect();
    let line = json!({
        "topic": topic,
        "partition": partition,
        "offset": record.offset(),
        "ts": record.timestamp(),
        "headers": headers,
        "key": text(record.key()),
        "payload": text(record.value()),
    });
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tokens_and_escapes() {
        let format = Format::parse("%t/%p@%o %k=%s (%K,%S) %T [%h] 100%%\\n").unwrap();
        assert_eq!(format.pieces.len(), 18);
        assert!(Format::parse("%x").unwrap_err().contains("`%x` after `%` is not a token"));
        assert!(Format::parse("50%").unwrap_err().contains("the end"));
    }
}
