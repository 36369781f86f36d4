//! kcat-style output formats (`-f '%p:%o %s\n'`) and JSON lines for consumed records. A format
//! writes keys, values and header values as their exact bytes, as kcat does; JSON, which holds
//! text only, writes one that is not UTF-8 as `{"base64": "..."}` (its exact bytes, in standard
//! base64) where kcat's shape has a string.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};
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
    pub fn write(&self, out: &mut Vec<u8>, topic: &str, partition: i32, record: &RecordRef<'_>) {
        let mut number = itoa::Buffer::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
                Piece::Topic => out.extend_from_slice(topic.as_bytes()),
                Piece::Partition => out.extend_from_slice(number.format(partition).as_bytes()),
                Piece::Offset => out.extend_from_slice(number.format(record.offset()).as_bytes()),
                Piece::Key => out.extend_from_slice(record.key().unwrap_or_default()),
                Piece::Value => out.extend_from_slice(record.value().unwrap_or_default()),
                Piece::KeyLength => {
                    out.extend_from_slice(number.format(record.key().map_or(-1, |k| k.len() as i64)).as_bytes());
                }
                Piece::ValueLength => {
                    out.extend_from_slice(number.format(record.value().map_or(-1, |v| v.len() as i64)).as_bytes());
                }
                Piece::Timestamp => out.extend_from_slice(number.format(record.timestamp()).as_bytes()),
                Piece::Headers => {
                    for (i, (name, value)) in record.headers().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(name.as_bytes());
                        out.push(b'=');
                        out.extend_from_slice(value.unwrap_or_default());
                    }
                }
            }
        }
    }
}

/// Bytes as a JSON value: a string when they are UTF-8, else `{"base64": "..."}`.
fn text(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => json!({ "base64": BASE64.encode(bytes) }),
    }
}

/// `record` as one JSON line, in kcat's `-J` shape (headers as a flat `[name, value, ...]` list;
/// null keys and values as `null`; bytes that are not UTF-8 as `{"base64": "..."}`).
pub fn json_line(out: &mut Vec<u8>, topic: &str, partition: i32, record: &RecordRef<'_>) {
    let headers: Vec<Value> = record
        .headers()
        .flat_map(|(name, value)| [Value::String(name.to_owned()), value.map_or(Value::Null, text)])
        .collect();
    let line = json!({
        "topic": topic,
        "partition": partition,
        "offset": record.offset(),
        "ts": record.timestamp(),
        "headers": headers,
        "key": record.key().map_or(Value::Null, text),
        "payload": record.value().map_or(Value::Null, text),
    });
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
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
