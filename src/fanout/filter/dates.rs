//! Dates and times: the `YYYY-MM-DD[ HH:MM[:SS[.fraction]]][offset]` input and the special
//! words (`infinity`, `epoch`, …) of PostgreSQL's date/time types, read as `date`, `time`,
//! `timetz`, `timestamp` or `timestamptz` keys.

use chrono::{DateTime, NaiveDate};

use super::array_literal::{is_pg_space, trim_pg};
use super::error::CastFail;
use super::value::Bounded;

const US_PER_SEC: i64 = 1_000_000;
const US_PER_DAY: i64 = 86_400 * US_PER_SEC;

/// What a date/time text says, before it is read as one particular type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DateTimeInput {
    Infinity,
    NegInfinity,
    Epoch,
    Allballs,
    Fields {
        date: Option<NaiveDate>,
        /// Microseconds since midnight; up to 24:00:00.
        time: Option<i64>,
        /// Seconds east of UTC.
        offset: Option<i32>,
    },
}

/// A cursor over the ASCII grammar of date/time input.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.at + ahead).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn skip_space(&mut self) -> bool {
        let start = self.at;
        while self.peek().is_some_and(|b| is_pg_space(char::from(b))) {
            self.at += 1;
        }
        self.at > start
    }

    fn digit_run(&self) -> usize {
        self.bytes[self.at.min(self.bytes.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    }

    /// Reads between `min` and `max` digits (all the digits there are must fit).
    fn number(&mut self, min: usize, max: usize) -> Result<u32, CastFail> {
        let len = self.digit_run();
        if len < min || len > max {
            return Err(CastFail::Syntax);
        }
        let mut value = 0u32;
        for &b in &self.bytes[self.at..self.at + len] {
            value = value * 10 + u32::from(b - b'0');
        }
        self.at += len;
        Ok(value)
    }

    /// Reads exactly `count` digits, whatever follows them.
    fn exact(&mut self, count: usize) -> Result<u32, CastFail> {
        let digits = self
            .bytes
            .get(self.at..self.at + count)
            .filter(|digits| digits.iter().all(u8::is_ascii_digit))
            .ok_or(CastFail::Syntax)?;
        let value = digits
            .iter()
            .fold(0u32, |value, &b| value * 10 + u32::from(b - b'0'));
        self.at += count;
        Ok(value)
    }

    fn looks_like_date(&self) -> bool {
        let run = self.digit_run();
        run > 0 && self.peek_at(run) == Some(b'-')
    }

    fn date(&mut self) -> Result<NaiveDate, CastFail> {
        let year = self.number(4, 6)?;
        if !self.eat(b'-') {
            return Err(CastFail::Syntax);
        }
        let month = self.number(1, 2)?;
        if !self.eat(b'-') {
            return Err(CastFail::Syntax);
        }
        let day = self.number(1, 2)?;
        if year == 0 {
            return Err(CastFail::DateTimeRange);
        }
        let year = i32::try_from(year).map_err(|_| CastFail::DateTimeRange)?;
        NaiveDate::from_ymd_opt(year, month, day).ok_or(CastFail::DateTimeRange)
    }

    fn time(&mut self) -> Result<i64, CastFail> {
        let hour = i64::from(self.number(1, 2)?);
        if !self.eat(b':') {
            return Err(CastFail::Syntax);
        }
        let minute = i64::from(self.number(2, 2)?);
        let mut second = 0i64;
        let mut fraction = 0i64;
        if self.eat(b':') {
            second = i64::from(self.number(2, 2)?);
            if self.eat(b'.') {
                let len = self.digit_run();
                if len == 0 {
                    return Err(CastFail::Syntax);
                }
                fraction = fraction_to_micros(&self.bytes[self.at..self.at + len]);
                self.at += len;
            }
        }
        if hour > 24 || minute > 59 || second > 60 {
            return Err(CastFail::DateTimeRange);
        }
        let micros = ((hour * 60 + minute) * 60 + second) * US_PER_SEC + fraction;
        if micros > US_PER_DAY {
            return Err(CastFail::DateTimeRange);
        }
        Ok(micros)
    }

    /// `Z`, `UTC`, `GMT`, `±HH`, `±HHMM`, `±HHMMSS`, `±HH:MM`, `±HH:MM:SS`; seconds east.
    fn zone(&mut self) -> Result<Option<i32>, CastFail> {
        let Some(first) = self.peek() else {
            return Ok(None);
        };
        match first {
            b'z' | b'Z' => {
                self.at += 1;
                Ok(Some(0))
            }
            b'+' | b'-' => {
                self.at += 1;
                let run = self.digit_run();
                let (hours, minutes, seconds) = match run {
                    1 | 2 => {
                        let hours = self.number(1, 2)?;
                        let mut minutes = 0;
                        let mut seconds = 0;
                        if self.eat(b':') {
                            minutes = self.number(2, 2)?;
                            if self.eat(b':') {
                                seconds = self.number(2, 2)?;
                            }
                        }
                        (hours, minutes, seconds)
                    }
                    4 => (self.exact(2)?, self.exact(2)?, 0),
                    6 => (self.exact(2)?, self.exact(2)?, self.exact(2)?),
                    _ => return Err(CastFail::Syntax),
                };
                if hours > 15 || minutes > 59 || seconds > 59 {
                    return Err(CastFail::DateTimeRange);
                }
                let total = i32::try_from(hours * 3600 + minutes * 60 + seconds)
                    .map_err(|_| CastFail::DateTimeRange)?;
                Ok(Some(if first == b'-' { -total } else { total }))
            }
            _ => {
                let rest = &self.bytes[self.at..];
                let word = rest.get(..3).unwrap_or(rest);
                if word.eq_ignore_ascii_case(b"utc") || word.eq_ignore_ascii_case(b"gmt") {
                    self.at += 3;
                    Ok(Some(0))
                } else {
                    Err(CastFail::Syntax)
                }
            }
        }
    }
}

/// Fractional-second digits to microseconds, rounding half to even past the sixth digit.
fn fraction_to_micros(digits: &[u8]) -> i64 {
    let mut micros = 0i64;
    for i in 0..6 {
        micros = micros * 10 + digits.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    if let Some((&next, tail)) = digits.get(6..).and_then(|rest| rest.split_first()) {
        let tail_nonzero = tail.iter().any(|&d| d != b'0');
        if next > b'5' || (next == b'5' && (tail_nonzero || micros % 2 == 1)) {
            micros += 1;
        }
    }
    micros
}

fn parse_datetime(text: &str) -> Result<DateTimeInput, CastFail> {
    let trimmed = trim_pg(text);
    let special = |word: &str| trimmed.eq_ignore_ascii_case(word);
    if special("infinity") || special("+infinity") {
        return Ok(DateTimeInput::Infinity);
    }
    if special("-infinity") {
        return Ok(DateTimeInput::NegInfinity);
    }
    if special("epoch") {
        return Ok(DateTimeInput::Epoch);
    }
    if special("allballs") {
        return Ok(DateTimeInput::Allballs);
    }
    let mut scanner = Scanner {
        bytes: trimmed.as_bytes(),
        at: 0,
    };
    let mut date = None;
    let mut time = None;
    if scanner.looks_like_date() {
        date = Some(scanner.date()?);
        let had_t = scanner.eat(b'T') || scanner.eat(b't');
        let had_space = scanner.skip_space();
        if had_t || (had_space && scanner.peek().is_some_and(|b| b.is_ascii_digit())) {
            time = Some(scanner.time()?);
        }
    } else {
        time = Some(scanner.time()?);
    }
    scanner.skip_space();
    let offset = scanner.zone()?;
    scanner.skip_space();
    if scanner.peek().is_some() {
        return Err(CastFail::Syntax);
    }
    Ok(DateTimeInput::Fields { date, time, offset })
}

fn unix_epoch_date() -> NaiveDate {
    DateTime::UNIX_EPOCH.date_naive()
}

pub(super) fn cast_date(text: &str) -> Result<Bounded<NaiveDate>, CastFail> {
    match parse_datetime(text)? {
        DateTimeInput::Infinity => Ok(Bounded::Infinity),
        DateTimeInput::NegInfinity => Ok(Bounded::NegInfinity),
        DateTimeInput::Epoch => Ok(Bounded::Finite(unix_epoch_date())),
        DateTimeInput::Fields {
            date: Some(date), ..
        } => Ok(Bounded::Finite(date)),
        DateTimeInput::Allballs | DateTimeInput::Fields { date: None, .. } => Err(CastFail::Syntax),
    }
}

/// Microseconds since the epoch; `with_zone` applies the offset (default UTC), otherwise the
/// offset is ignored as `timestamp_in` ignores it.
pub(super) fn cast_timestamp(text: &str, with_zone: bool) -> Result<Bounded<i64>, CastFail> {
    match parse_datetime(text)? {
        DateTimeInput::Infinity => Ok(Bounded::Infinity),
        DateTimeInput::NegInfinity => Ok(Bounded::NegInfinity),
        DateTimeInput::Epoch => Ok(Bounded::Finite(0)),
        DateTimeInput::Fields {
            date: Some(date),
            time,
            offset,
        } => {
            let days = date.signed_duration_since(unix_epoch_date()).num_days();
            let offset = if with_zone { offset.unwrap_or(0) } else { 0 };
            days.checked_mul(US_PER_DAY)
                .and_then(|us| us.checked_add(time.unwrap_or(0)))
                .and_then(|us| us.checked_sub(i64::from(offset) * US_PER_SEC))
                .map(Bounded::Finite)
                .ok_or(CastFail::DateTimeRange)
        }
        DateTimeInput::Allballs | DateTimeInput::Fields { date: None, .. } => Err(CastFail::Syntax),
    }
}

pub(super) fn cast_time(text: &str) -> Result<i64, CastFail> {
    match parse_datetime(text)? {
        DateTimeInput::Allballs => Ok(0),
        DateTimeInput::Fields {
            time: Some(time), ..
        } => Ok(time),
        _ => Err(CastFail::Syntax),
    }
}

/// `(time + zone, zone)` with the zone in seconds west, as `timetz_cmp` orders them.
pub(super) fn cast_timetz(text: &str) -> Result<(i64, i32), CastFail> {
    let (time, offset) = match parse_datetime(text)? {
        DateTimeInput::Allballs => (0, 0),
        DateTimeInput::Fields {
            time: Some(time),
            offset,
            ..
        } => (time, offset.unwrap_or(0)),
        _ => return Err(CastFail::Syntax),
    };
    let zone = -offset;
    Ok((time + i64::from(zone) * US_PER_SEC, zone))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::fanout::filter::test_support::*;

    #[test]
    fn timestamptz_compares_instants() {
        let at = json!("2025-05-01T12:00:00+00:00");
        check_all(
            "at",
            &[
                ("eq.2025-05-01 12:00:00+00", at.clone(), true),
                ("eq.2025-05-01T12:00:00Z", at.clone(), true),
                ("eq.2025-05-01T14:00:00+02:00", at.clone(), true),
                ("eq.2025-05-01 07:00:00 -05", at.clone(), true),
                ("eq.2025-05-01 12:00:00 UTC", at.clone(), true),
                ("eq.2025-05-01 12:00", at.clone(), true),
                ("eq.2025-05-01 12:00:00.000001+00", at.clone(), false),
                (
                    "eq.2025-05-01T12:00:00Z",
                    json!("2025-05-01T14:00:00+02:00"),
                    true,
                ),
                (
                    "eq.2025-05-01T12:00:00Z",
                    json!("2025-05-01T17:30:00+05:30"),
                    true,
                ),
                ("eq.2025-05-01T17:30:00+0530", at.clone(), true),
                ("eq.2025-05-01T06:29:30-053030", at.clone(), true),
                ("eq.2025-05-01T12:00:00+00:00:00", at.clone(), true),
                ("eq.2025-05-01T12:00:00 GMT", at.clone(), true),
                (
                    "eq.2025-05-01T12:00:00.123456Z",
                    json!("2025-05-01T12:00:00.123456+00:00"),
                    true,
                ),
                (
                    "eq.2025-05-01 12:00:00.1234565+00",
                    json!("2025-05-01T12:00:00.123456+00:00"),
                    true,
                ),
                (
                    "neq.2025-05-01T12:00:00Z",
                    json!("2025-05-01T12:00:01+00:00"),
                    true,
                ),
                ("neq.2025-05-01T10:00:00-02", at.clone(), false),
                (
                    "lt.2025-05-01T12:00:00Z",
                    json!("2025-05-01T11:59:59.999999+00:00"),
                    true,
                ),
                (
                    "lt.2025-05-01T12:00:00Z",
                    json!("2025-05-01T13:30:00+01:30"),
                    false,
                ),
                (
                    "lte.2025-05-01T12:00:00Z",
                    json!("2025-05-01T13:30:00+01:30"),
                    true,
                ),
                (
                    "lte.2025-05-01T12:00:00Z",
                    json!("2025-05-01T12:00:01+00:00"),
                    false,
                ),
                (
                    "gt.2025-05-01 12:00:00-05",
                    json!("2025-05-01T17:00:00.5+00:00"),
                    true,
                ),
                (
                    "gt.2025-05-01 12:00:00-05",
                    json!("2025-05-01T17:00:00+00:00"),
                    false,
                ),
                (
                    "gte.2025-05-01 12:00:00-05",
                    json!("2025-05-01T17:00:00+00:00"),
                    true,
                ),
                (
                    "gte.2025-05-01 12:00:00-05",
                    json!("2025-05-01T16:59:59+00:00"),
                    false,
                ),
                (
                    r#"in.("2025-05-01 12:00:00+00",2025-06-01)"#,
                    at.clone(),
                    true,
                ),
                ("in.(2025-06-01)", at.clone(), false),
                ("isdistinct.2025-05-01T12:00:00Z", at.clone(), false),
                ("isdistinct.2025-05-01T12:00:01Z", at.clone(), true),
                ("gt.-infinity", at.clone(), true),
                ("lt.infinity", at, true),
                ("eq.infinity", json!("infinity"), true),
            ],
        );
    }

    #[test]
    fn timestamp_and_date_compare_naive_values() {
        let local = json!("2025-05-01T12:34:56.123456");
        check_all(
            "local",
            &[
                ("eq.2025-05-01 12:34:56.123456", local.clone(), true),
                ("eq.2025-05-01T12:34:56.123456", local.clone(), true),
                ("eq.2025-05-01 12:34:56.123456+02", local.clone(), true),
                ("eq.2025-05-01 12:34:56", local.clone(), false),
                ("neq.2025-05-01 12:34:56", local.clone(), true),
                ("neq.2025-05-01 12:34:56.123456", local.clone(), false),
                ("lt.2025-05-02", local.clone(), true),
                ("lt.2025-05-01", local.clone(), false),
                ("lte.2025-05-01 12:34:56.123456", local.clone(), true),
                ("lte.2025-05-01 12:34:56", local.clone(), false),
                ("gt.2025-05-01", local.clone(), true),
                ("gt.2025-05-02", local.clone(), false),
                ("gte.2025-05-01 12:34:56.123456", local.clone(), true),
                ("gte.2025-05-01 12:34:57", local.clone(), false),
                ("in.(2025-05-01 12:34:56.123456)", local.clone(), true),
                ("in.(2025-05-01)", local.clone(), false),
                ("isdistinct.2025-05-01", local.clone(), true),
                ("isdistinct.2025-05-01 12:34:56.123456", local, false),
                ("eq.2025-05-02 00:00:00", json!("2025-05-01T24:00:00"), true),
                ("eq.epoch", json!("1970-01-01T00:00:00"), true),
            ],
        );
        let day = json!("2025-05-01");
        check_all(
            "day",
            &[
                ("eq.2025-05-01", day.clone(), true),
                ("eq.2025-5-1", day.clone(), true),
                ("eq.2025-05-01 23:59", day.clone(), true),
                ("eq.2025-05-02", day.clone(), false),
                ("neq.2025-05-02", day.clone(), true),
                ("neq.2025-05-01", day.clone(), false),
                ("lt.2025-05-02", day.clone(), true),
                ("lt.2025-05-01", day.clone(), false),
                ("lte.2025-05-01", day.clone(), true),
                ("lte.2025-04-30", day.clone(), false),
                ("gt.2025-04-30", day.clone(), true),
                ("gt.2025-05-01", day.clone(), false),
                ("gte.2025-05-01", day.clone(), true),
                ("gte.2025-05-02", day.clone(), false),
                ("in.(2025-05-01,2025-06-01)", day.clone(), true),
                ("in.(2025-06-01)", day.clone(), false),
                ("isdistinct.2025-05-01", day.clone(), false),
                ("isdistinct.2025-05-02", day.clone(), true),
                ("gt.-infinity", day.clone(), true),
                ("lt.infinity", day, true),
                ("lt.2025-05-01", json!("-infinity"), true),
            ],
        );
    }

    #[test]
    fn time_and_timetz_follow_postgres_order() {
        check_all(
            "clock",
            &[
                ("eq.12:00", json!("12:00:00"), true),
                ("eq.allballs", json!("00:00:00"), true),
                ("lt.12:00:00.5", json!("12:00:00"), true),
                ("gt.23:59:59", json!("24:00:00"), true),
                ("gte.13:00", json!("12:00:00"), false),
            ],
        );
        check_all(
            "clocktz",
            &[
                ("eq.12:00:00+00", json!("12:00:00+00:00"), true),
                // Same instant, different zone: not equal in PostgreSQL.
                ("eq.13:00:00+01", json!("12:00:00+00:00"), false),
                ("lt.12:00:00+00", json!("12:30:00+01:00"), true),
                ("gt.12:00:00+00", json!("12:30:00+01:00"), false),
            ],
        );
    }
}
