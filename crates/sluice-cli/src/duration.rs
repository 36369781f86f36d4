//! Durations as people write them: `100ms`, `1s`, `1.5s`, `2m`, `1h`.

use std::time::Duration;

/// Parses `text` as a number and a unit (`ms`, `s`, `m`, `h`); says what is allowed otherwise.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let allowed = "a number and a unit: ms, s, m or h (e.g. `500ms`, `10s`, `1m`)";
    let Ok(value) = number.parse::<f64>() else { return Err(format!("`{text}` is not a duration; write {allowed}")) };
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => return Err(format!("`{text}` has no unit; write {allowed}")),
        other => return Err(format!("`{other}` is not a unit of time; write {allowed}")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

/// For clap.
pub fn parse_arg(text: &str) -> Result<Duration, String> {
    parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse("10").unwrap_err().contains("no unit"));
        assert!(parse("10 days").unwrap_err().contains("`days` is not a unit"));
        assert!(parse("soon").unwrap_err().contains("not a duration"));
    }
}
