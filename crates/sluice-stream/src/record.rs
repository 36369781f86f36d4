//! The records a Kafka direct stream carries.

use std::sync::Arc;

use bytes::Bytes;
use sluice_protocol::record::RecordRef;

/// One Kafka record as a stream sees it. Key, value and header values share the fetched bytes
/// (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// The record's timestamp (ms since the epoch; creation or log-append time).
    pub timestamp: i64,
    /// The key, if any.
    pub key: Option<Bytes>,
    /// The value, if any.
    pub value: Option<Bytes>,
    /// The headers, in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

impl KafkaRecord {
    pub(crate) fn from_ref(topic: &Arc<str>, partition: i32, record: &RecordRef<'_>) -> Self {
        Self {
            topic: Arc::clone(topic),
            partition,
            offset: record.offset(),
            timestamp: record.timestamp(),
            key: record.key_bytes(),
            value: record.value_bytes(),
            headers: record
                .headers()
                .map(|(name, value)| (name.to_owned(), value.map(Bytes::copy_from_slice)))
                .collect(),
        }
    }

    /// The value as UTF-8 text (`None` for a null value or invalid UTF-8).
    pub fn value_str(&self) -> Option<&str> {
        self.value.as_deref().and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The key as UTF-8 text (`None` for a null key or invalid UTF-8).
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value parsed as JSON into `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ParseError> {
        let value = self.value.as_deref().ok_or_else(|| self.error("the value is null"))?;
        serde_json::from_slice(value).map_err(|e| self.error(&format!("not the JSON expected: {e}")))
    }

    /// The value parsed as one CSV line into `T`, whose fields are the columns in order
    /// (a struct, a tuple, or a sequence). Fields are separated by commas; a field may be
    /// quoted with `"` (a doubled `""` inside stands for one quote).
    pub fn csv<T: serde::de::DeserializeOwned>(&self) -> Result<T, ParseError> {
        let line = self.value_str().ok_or_else(|| self.error("the value is null or not UTF-8"))?;
        let line = line.trim_end_matches(['\r', '\n']);
        let parsed = if line.contains('"') {
            let fields = split_csv(line).map_err(|e| self.error(&e))?;
            csv::StringRecord::from(fields).deserialize(None).map_err(|e| e.to_string())
        } else {
            // No quotes: the fields are what lies between the commas, read in place.
            crate::csv_fields::from_line(line).map_err(|e| e.to_string())
        };
        parsed.map_err(|e| self.error(&format!("not the CSV columns expected: {e}")))
    }

    fn error(&self, problem: &str) -> ParseError {
        ParseError {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.offset,
            problem: problem.to_owned(),
        }
    }
}

/// A record whose value could not be parsed, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{topic}/{partition} offset {offset}: {problem}")]
pub struct ParseError {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// What was wrong.
    pub problem: String,
}

/// Splits one CSV line into its fields.
pub fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut column = 0usize;
    loop {
        match chars.next() {
            None if quoted => return Err(format!("column {}: a quoted field is not closed", column + 1)),
            None => {
                fields.push(std::mem::take(&mut field));
                return Ok(fields);
            }
            Some('"') if quoted => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                    if !matches!(chars.peek(), None | Some(',')) {
                        return Err(format!("column {}: text after a closing quote", column + 1));
                    }
                }
            }
            Some('"') if field.is_empty() => quoted = true,
            Some(',') if !quoted => {
                fields.push(std::mem::take(&mut field));
                column += 1;
            }
            Some(c) => field.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: &str) -> KafkaRecord {
        KafkaRecord {
            topic: Arc::from("clicks"),
            partition: 3,
            offset: 42,
            timestamp: 0,
            key: None,
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: Vec::new(),
        }
    }

    #[test]
    fn csv_lines_split_with_quotes_and_parse_into_typed_columns() {
        assert_eq!(split_csv("a,,\"b,c\",\"say \"\"hi\"\"\"").unwrap(), vec!["a", "", "b,c", "say \"hi\""]);
        assert_eq!(split_csv("").unwrap(), vec![""]);
        assert!(split_csv("\"open").unwrap_err().contains("column 1: a quoted field is not closed"));
        assert!(split_csv("a,\"b\"c").unwrap_err().contains("column 2: text after a closing quote"));

        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Click {
            user: String,
            item: String,
            timestamp: i64,
        }
        let click: Click = record("u1,i9,1700000000000\r\n").csv().unwrap();
        assert_eq!(click, Click { user: "u1".into(), item: "i9".into(), timestamp: 1_700_000_000_000 });
        let tuple: (String, Option<u32>) = record("x,").csv().unwrap();
        assert_eq!(tuple, ("x".into(), None));
        let error = record("u1,i9,yesterday").csv::<Click>().unwrap_err();
        assert_eq!((error.topic.as_str(), error.partition, error.offset), ("clicks", 3, 42));
        assert!(error.to_string().starts_with("clicks/3 offset 42: not the CSV columns expected"), "{error}");
    }

    #[test]
    fn json_values_parse_into_types_and_errors_say_where() {
        let parsed: (String, u8) = record(r#"["a", 7]"#).json().unwrap();
        assert_eq!(parsed, ("a".into(), 7));
        let error = record("{").json::<(String, u8)>().unwrap_err();
        assert!(error.to_string().starts_with("clicks/3 offset 42: not the JSON expected"), "{error}");
        let null = KafkaRecord { value: None, ..record("") };
        assert!(null.json::<u8>().unwrap_err().to_string().contains("the value is null"));
        assert_eq!(record("text").value_str(), Some("text"));
    }
}
