//! Go's duration strings, as Chaos Mesh's `duration` takes them: a sequence
//! of decimal numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`,
//! `h`), e.g. `30s`, `1h30m`, `1.5s`. Negative durations are refused.

use std::time::Duration;

/// Parses `text`; the error says what is wrong with it.
pub fn parse(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(format!("{text:?} is not a duration (e.g. 30s, 1m30s, 250ms)"));
        }
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("{text:?}: {number} has no unit (ns, us, ms, s, m, h)")),
            other => return Err(format!("{text:?}: unknown unit {other:?} (ns, us, ms, s, m, h)")),
        };
        let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration"))?;
        total_ns += value * scale;
        rest = tail;
    }
    // Go's limit: about 292 years.
    if total_ns > i64::MAX as f64 {
        return Err(format!("{text:?} is longer than a duration can be"));
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2m3s400ms"), Ok(Duration::from_millis(123_400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn not_durations() {
        for bad in ["", "30", "-5s", "5x", "s", "1..2s", "5 s"] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }
}
