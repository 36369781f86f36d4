//! The records a Kafka direct stream carries.

use std::sync::Arc;

use bytes::Bytes;
use csv_core::ReadRecordResult;
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
    /// quoted with `"` (a doubled `""` inside stands for one quote): the fields are those
    /// [`split_csv`] gives, each parsed as the csv crate parses a field. Line breaks at the end
    /// are dropped; a value without quotes is split at its commas in place, so a line break
    /// inside it stays in its field (where `split_csv` would find a second record).
    pub fn csv<T: serde::de::DeserializeOwned>(&self) -> Result<T, ParseError> {
        let line = self.value_str().ok_or_else(|| self.error("the value is null or not UTF-8"))?;
        let line = line.trim_end_matches(['\r', '\n']);
        let parsed = if line.contains('"') {
            let fields = split_csv(line).map_err(|e| self.error(&e))?;
            csv::StringRecord::from(fields).deserialize(None).map_err(|e| e.to_string())
        } else {
            // No quotes: the fields are what lies between the commas, read in place (after a
            // byte order mark, which the csv crate skips too).
            let line = line.strip_prefix('\u{feff}').unwrap_or(line);
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

/// Splits one CSV line into its fields as the csv crate reads a record (with its defaults: `,`
/// between fields, `"` around a field, a doubled `""` inside a quoted field for one `"`, no
/// escape character, no comments), on the same parser (csv-core).
///
/// Like the csv crate, it prefers a reading to an error: text after a closing quote belongs to
/// the field (`"b"c` is `bc`), a quote inside an unquoted field is kept (`a"b`), a quote left
/// open runs to the end of the line (`"open` is `open`), and a line break (CR, LF or CRLF)
/// outside quotes ends the record, so one at the end of the line is not part of the last field
/// (inside quotes it is). A UTF-8 byte order mark at the start is skipped, as the csv crate
/// skips one at the start of its input. An empty line (which the csv crate reads as no record
/// at all) is one empty field.
///
/// # Errors
///
/// A line that holds more than one record: a line break outside quotes followed by more text
/// (blank lines after the first record are skipped, as the csv crate skips them). And a field
/// that is not UTF-8 once split, which cannot happen for a `&str` (fields end at ASCII bytes)
/// but is reported rather than assumed.
pub fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut reader = csv_core::Reader::new();
    let mut input = line.as_bytes();
    // The fields are at most the line's bytes (quotes and a byte order mark are dropped).
    let mut output = vec![0u8; line.len().max(16)];
    let mut ends = vec![0usize; 16];
    let (mut written, mut ended, mut consumed) = (0, 0, 0);
    loop {
        let (result, read, out, end) = reader.read_record(
            input,
            output.get_mut(written..).unwrap_or_default(),
            ends.get_mut(ended..).unwrap_or_default(),
        );
        input = input.get(read..).unwrap_or_default();
        (written, ended, consumed) = (written + out, ended + end, consumed + read);
        match result {
            // The whole line is read: the next call, with no input, ends the record.
            ReadRecordResult::InputEmpty => {}
            ReadRecordResult::OutputFull => output.resize(output.len() * 2, 0),
            ReadRecordResult::OutputEndsFull => ends.resize(ends.len() * 2, 0),
            ReadRecordResult::Record => break,
            ReadRecordResult::End => return Ok(vec![String::new()]),
        }
    }
    if !input.is_empty() {
        // Whatever follows the record's line break: blank lines, or another record.
        let (mut scratch, mut scratch_ends) = ([0u8; 64], [0usize; 8]);
        loop {
            let (result, read, _, _) = reader.read_record(input, &mut scratch, &mut scratch_ends);
            input = input.get(read..).unwrap_or_default();
            match result {
                ReadRecordResult::InputEmpty | ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {}
                ReadRecordResult::End => break,
                ReadRecordResult::Record => {
                    return Err(format!(
                        "more than one CSV record: the line break at byte {consumed} is outside quotes and more follows"
                    ))
                }
            }
        }
    }
    let mut start = 0;
    let mut fields = Vec::with_capacity(ended);
    for (column, &end) in ends.iter().take(ended).enumerate() {
        let bytes = output.get(start..end).unwrap_or_default();
        let field = std::str::from_utf8(bytes).map_err(|e| format!("column {}: not UTF-8: {e}", column + 1))?;
        fields.push(field.to_owned());
        start = end;
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use sluice_checkpoint::rng::SplitMix64;

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
        // As lenient as the csv crate: text after a closing quote joins the field, a quote left
        // open runs to the end, a quote inside an unquoted field is kept.
        assert_eq!(split_csv("\"open").unwrap(), vec!["open"]);
        assert_eq!(split_csv("a,\"b\"c").unwrap(), vec!["a", "bc"]);
        assert_eq!(split_csv("a\"b,c").unwrap(), vec!["a\"b", "c"]);
        // A line break ends the line, except inside quotes; a byte order mark at the start is
        // skipped; a second record is an error.
        assert_eq!(split_csv("a,b\r\n").unwrap(), vec!["a", "b"]);
        assert_eq!(split_csv("\"x\r\ny\",z\n\n").unwrap(), vec!["x\r\ny", "z"]);
        assert_eq!(split_csv("\u{feff}a,\u{feff}b").unwrap(), vec!["a", "\u{feff}b"]);
        assert_eq!(split_csv("\r\n").unwrap(), vec![""]);
        let error = split_csv("a,b\nc").unwrap_err();
        assert!(error.contains("more than one CSV record: the line break at byte 4"), "{error}");

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

    /// The record the csv crate reads from `bytes` (`None` for none, as for an empty line), and
    /// whether it read more than one.
    fn csv_crate_record(bytes: &[u8]) -> (Option<csv::StringRecord>, bool) {
        let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
        let records: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
        (records.first().cloned(), records.len() > 1)
    }

    /// Random text for a field: empty, words, spaces, unicode, numbers; quotes, commas and line
    /// breaks only if `csv_syntax`.
    fn random_text(rng: &mut SplitMix64, csv_syntax: bool) -> String {
        const PLAIN: [&str; 14] =
            ["", "a", "word", " ", "two words", " padded ", "é", "日本", "🦀", "\u{feff}", "42", "-7", "ß,", "x\t"];
        const SYNTAX: [&str; 7] = [",", "\"", "\"\"", "\r", "\n", "\r\n", ", "];
        let mut text = String::new();
        for _ in 0..rng.below(4) {
            let piece = if csv_syntax && rng.chance(30) {
                SYNTAX[rng.below(SYNTAX.len() as u64) as usize]
            } else {
                PLAIN[rng.below(PLAIN.len() as u64) as usize]
            };
            text.push_str(piece);
        }
        if !csv_syntax {
            text.retain(|c| c != ',');
        }
        text
    }

    /// A random field as it appears in a line: plain, quoted (its quotes doubled, or not, the
    /// way a careless writer leaves them), or with text after its closing quote.
    fn random_field(rng: &mut SplitMix64, quotes: bool) -> String {
        if !quotes {
            return random_text(rng, false);
        }
        match rng.below(6) {
            0 | 1 => random_text(rng, false),
            2 | 3 => format!("\"{}\"", random_text(rng, true).replace('"', "\"\"")),
            4 => format!("\"{}\"", random_text(rng, true)),
            _ => format!("\"{}\"{}", random_text(rng, false), random_text(rng, false)),
        }
    }

    /// A line's end: none, or line breaks as a producer might leave them.
    fn random_end(rng: &mut SplitMix64) -> &'static str {
        ["", "", "\n", "\r\n", "\r", "\n\n", "\r\n\r\n"][rng.below(7) as usize]
    }

    fn random_line(rng: &mut SplitMix64, quotes: bool) -> String {
        let mut line = if rng.chance(5) { String::from("\u{feff}") } else { String::new() };
        let fields: Vec<String> = (0..1 + rng.below(5)).map(|_| random_field(rng, quotes)).collect();
        line.push_str(&fields.join(","));
        if quotes && rng.chance(5) {
            line.push_str(",\"left open");
        }
        line + random_end(rng)
    }

    /// A quote-free line meant for `Row`: its columns mostly fit, and now and then one does
    /// not, is missing, or is one too many.
    fn random_row_line(rng: &mut SplitMix64) -> String {
        let name = random_text(rng, false);
        let count = match rng.below(8) {
            0 | 1 => String::new(),
            2 => ["-1", " 7", "x", "4294967296", "+5", "1.5"][rng.below(6) as usize].to_owned(),
            _ => (rng.next_u64() as u32).to_string(),
        };
        let at = match rng.below(8) {
            0 => ["", "9223372036854775808", "1e3", "--1", "12 "][rng.below(5) as usize].to_owned(),
            1 => format!("+{}", rng.below(1000)),
            _ => (rng.next_u64() as i64).to_string(),
        };
        let mut columns = vec![name, count, at];
        match rng.below(10) {
            0 => columns.truncate(1 + rng.below(2) as usize),
            1 => columns.push(random_text(rng, false)),
            _ => {}
        }
        let bom = if rng.chance(5) { "\u{feff}" } else { "" };
        format!("{bom}{}{}", columns.join(","), random_end(rng))
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Row {
        name: String,
        count: Option<u32>,
        at: i64,
    }

    #[test]
    fn split_csv_and_the_quote_free_fast_path_read_lines_as_the_csv_crate_does() {
        const CASES: usize = 4000;
        let mut rng = SplitMix64::new(0xC5F0_2024);
        for case in 0..CASES {
            // split_csv on any line: the csv crate's one record (an empty line, none: one empty
            // field), or an error where it reads more than one.
            let line = random_line(&mut rng, true);
            let (expected, more) = csv_crate_record(line.as_bytes());
            let split = split_csv(&line);
            if more {
                assert!(split.is_err(), "case {case}: {line:?} is two records, split as {split:?}");
            } else {
                let expected: Vec<String> =
                    expected.map_or_else(|| vec![String::new()], |record| record.iter().map(String::from).collect());
                assert_eq!(split, Ok(expected), "case {case}: {line:?}");
            }

            // The fast path for lines without quotes: as a sequence, and as typed columns.
            for line in [random_line(&mut rng, false), random_row_line(&mut rng)] {
                let (expected, more) = csv_crate_record(line.as_bytes());
                assert!(!more, "case {case}: {line:?}");
                let expected = expected.unwrap_or_else(|| csv::StringRecord::from(vec![""]));
                let value = record(&line);
                let fields: Vec<String> = expected.deserialize(None).unwrap();
                assert_eq!(value.csv::<Vec<String>>().unwrap(), fields, "case {case}: {line:?}");
                let tuple = expected.deserialize::<(String, Option<u32>, i64)>(None).ok();
                assert_eq!(value.csv::<(String, Option<u32>, i64)>().ok(), tuple, "case {case}: {line:?}");
                let row = expected.deserialize::<Row>(None).ok();
                assert_eq!(value.csv::<Row>().ok(), row, "case {case}: {line:?}");
            }
        }
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
