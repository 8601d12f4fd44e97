//! Input date formats (`date = "%d.%m.%Y"`): parsed once when the mapping is
//! compiled, applied to every cell.
//!
//! chrono parses any strftime format. Exports use a handful of all-numeric
//! ones (`%d.%m.%Y`, `%Y-%m-%d %H:%M`...), and for those chrono's general
//! parser was the largest single cost of `check` after the CSV reader, so a
//! format made only of `%Y %m %d [%H %M [%S]]`, literals and spaces is also
//! compiled to a direct scanner. The scanner follows chrono's own rules step
//! by step (greedy digits up to the field's width, whitespace skipped before
//! a number and at a space) and hands every input it does not accept to
//! chrono, so the error messages stay chrono's; a test holds the two to the
//! same answers.

use chrono::format::{Item, Numeric, ParseError, Parsed, StrftimeItems};
use chrono::{Datelike, NaiveDate, NaiveTime, Timelike};

/// A parsed date and time (midnight for a date alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

/// The three ways the API writes a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// `YYYY-MM-DD`
    Date,
    /// `YYYY-MM-DD hh:mm`
    DateTime,
    /// `YYYY-MM-DDThh:mm:ss`
    FeedTime,
}

impl Stamp {
    /// Writes the stamp as the API wants it. (Only `run` writes dates;
    /// `check` stops at parsing them.)
    pub fn write(self, how: Written) -> String {
        let Stamp {
            year: y,
            month: mo,
            day: d,
            hour: h,
            minute: mi,
            second: s,
        } = self;
        match how {
            Written::Date => format!("{y:04}-{mo:02}-{d:02}"),
            Written::DateTime => format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}"),
            Written::FeedTime => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}"),
        }
    }
}

/// One step of the direct scanner.
#[derive(Debug, Clone)]
enum Step {
    Literal(String),
    Space,
    Number(Field),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
}

impl Field {
    /// How many digits chrono reads at most for the field.
    fn width(self) -> usize {
        if self == Field::Year {
            4
        } else {
            2
        }
    }
}

/// A strftime input format.
#[derive(Debug, Clone)]
pub struct DateFormat {
    text: String,
    items: Vec<Item<'static>>,
    /// The direct scanner, for formats it covers.
    fast: Option<Vec<Step>>,
}

impl DateFormat {
    pub fn new(text: &str) -> Result<DateFormat, ParseError> {
        let items = StrftimeItems::new(text).parse_to_owned()?;
        let fast = scanner(&items);
        Ok(DateFormat {
            text: text.to_string(),
            items,
            fast,
        })
    }

    /// Parses a date, or a date and time (a date alone is midnight). An
    /// impossible date (31.02.1990) is an error. A value the format does
    /// not read but that is an ISO date (`2024-03-15`, `2024-03-15 10:30`,
    /// `2024-03-15T10:30:00`) is read as one: that is how a spreadsheet's
    /// date cell arrives, and how the failed-rows CSV of a spreadsheet
    /// writes it; ISO is never ambiguous.
    pub fn parse(&self, s: &str) -> Result<Stamp, String> {
        if let Some(stamp) = self.fast.as_deref().and_then(|steps| scan(steps, s)) {
            return Ok(stamp);
        }
        self.parse_with_chrono(s)
            .or_else(|e| parse_iso(s.trim()).ok_or(e))
    }

    fn parse_with_chrono(&self, s: &str) -> Result<Stamp, String> {
        let fail = |e: ParseError| format!("not a date in the format \"{}\" ({e})", self.text);
        let mut parsed = Parsed::new();
        chrono::format::parse(&mut parsed, s, self.items.iter()).map_err(fail)?;
        let date = parsed.to_naive_date().map_err(fail)?;
        let time = if parsed.hour_div_12.is_some() || parsed.hour_mod_12.is_some() {
            parsed.to_naive_time().map_err(fail)?
        } else {
            NaiveTime::MIN
        };
        Ok(Stamp {
            year: date.year(),
            month: date.month(),
            day: date.day(),
            hour: time.hour(),
            minute: time.minute(),
            second: time.second(),
        })
    }
}

/// `YYYY-MM-DD`, then optionally ` hh:mm` or `Thh:mm`, then optionally
/// `:ss`; a real date and time.
fn parse_iso(s: &str) -> Option<Stamp> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if !matches!(b.len(), 10 | 16 | 19) || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    NaiveDate::from_ymd_opt(year as i32, month, day)?;
    let (mut hour, mut minute, mut second) = (0, 0, 0);
    if b.len() >= 16 {
        if !matches!(b[10], b' ' | b'T') || b[13] != b':' {
            return None;
        }
        (hour, minute) = (num(11..13)?, num(14..16)?);
        if b.len() == 19 {
            if b[16] != b':' {
                return None;
            }
            second = num(17..19)?;
        }
        NaiveTime::from_hms_opt(hour, minute, second)?;
    }
    Some(Stamp {
        year: year as i32,
        month,
        day,
        hour,
        minute,
        second,
    })
}

/// The scanner's steps, if the format has only numeric date fields (each at
/// most once: year, month and day, optionally hour and minute, optionally
/// seconds), literals and spaces.
fn scanner(items: &[Item<'_>]) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut seen = Vec::new();
    for item in items {
        steps.push(match item {
            Item::Literal(l) => Step::Literal((*l).to_string()),
            Item::OwnedLiteral(l) => Step::Literal(l.to_string()),
            Item::Space(_) | Item::OwnedSpace(_) => Step::Space,
            Item::Numeric(n, _) => {
                let field = match n {
                    Numeric::Year => Field::Year,
                    Numeric::Month => Field::Month,
                    Numeric::Day => Field::Day,
                    Numeric::Hour => Field::Hour,
                    Numeric::Minute => Field::Minute,
                    Numeric::Second => Field::Second,
                    _ => return None,
                };
                if seen.contains(&field) {
                    return None;
                }
                seen.push(field);
                Step::Number(field)
            }
            _ => return None,
        });
    }
    let has = |f| seen.contains(&f);
    let date = has(Field::Year) && has(Field::Month) && has(Field::Day);
    let time = matches!(
        (has(Field::Hour), has(Field::Minute), has(Field::Second)),
        (false, false, false) | (true, true, _)
    );
    (date && time).then_some(steps)
}

/// Runs the steps over `s`; `None` hands the input to chrono (it may still
/// be valid in a way the scanner does not follow, or it is an error and
/// chrono says which).
fn scan(steps: &[Step], mut s: &str) -> Option<Stamp> {
    let mut stamp = Stamp {
        year: 0,
        month: 0,
        day: 0,
        hour: 0,
        minute: 0,
        second: 0,
    };
    for step in steps {
        match step {
            Step::Literal(l) => s = s.strip_prefix(l.as_str())?,
            Step::Space => s = trim_start(s),
            Step::Number(field) => {
                s = trim_start(s);
                let bytes = s.as_bytes();
                let width = field.width().min(bytes.len());
                let (mut digits, mut value) = (0, 0u32);
                while digits < width && bytes[digits].is_ascii_digit() {
                    value = value * 10 + u32::from(bytes[digits] - b'0');
                    digits += 1;
                }
                if digits == 0 {
                    // Includes a signed year: chrono's business.
                    return None;
                }
                s = &s[digits..];
                match field {
                    Field::Year => stamp.year = value as i32,
                    Field::Month => stamp.month = value,
                    Field::Day => stamp.day = value,
                    Field::Hour => stamp.hour = value,
                    Field::Minute => stamp.minute = value,
                    Field::Second => stamp.second = value,
                }
            }
        }
    }
    // A leap second (60) and every range error go to chrono.
    let ok = s.is_empty()
        && stamp.hour < 24
        && stamp.minute < 60
        && stamp.second < 60
        && NaiveDate::from_ymd_opt(stamp.year, stamp.month, stamp.day).is_some();
    ok.then_some(stamp)
}

/// `str::trim_start`, returning at once when the first byte is ASCII and
/// not a space (a date's usual first byte, a digit).
fn trim_start(s: &str) -> &str {
    match s.as_bytes().first() {
        Some(&b) if b.is_ascii() && !crate::validate::is_ascii_space(b) => s,
        _ => s.trim_start(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FORMATS: &[&str] = &[
        "%d.%m.%Y",
        "%d.%m.%Y %H:%M",
        "%Y-%m-%d",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%m/%d/%Y %H:%M",
        "%Y%m%d",
        "%d-%m-%Y, %H.%M",
    ];

    #[test]
    fn common_formats_get_the_scanner_and_others_chrono() {
        for f in FORMATS {
            assert!(DateFormat::new(f).unwrap().fast.is_some(), "{f}");
        }
        for f in [
            "%d %b %Y",
            "%y-%m-%d",
            "%d.%m.%Y %H",
            "%Y-%m-%d %I:%M %p",
            "%Y %Y-%m-%d",
        ] {
            assert!(DateFormat::new(f).unwrap().fast.is_none(), "{f}");
        }
    }

    #[test]
    fn stamps_are_written_in_the_api_forms() {
        let f = DateFormat::new("%d.%m.%Y %H:%M").unwrap();
        let s = f.parse("5.3.987 7:05").unwrap();
        assert_eq!(s.write(Written::Date), "0987-03-05");
        assert_eq!(s.write(Written::DateTime), "0987-03-05 07:05");
        assert_eq!(s.write(Written::FeedTime), "0987-03-05T07:05:00");
        // A signed year is chrono's, written with the same widths.
        let f = DateFormat::new("%Y-%m-%d").unwrap();
        assert_eq!(
            f.parse("-12-01-02").unwrap().write(Written::Date),
            "-012-01-02"
        );
        assert_eq!(
            f.parse("+12345-01-02").unwrap().write(Written::Date),
            "12345-01-02"
        );
    }

    #[test]
    fn an_iso_date_is_read_whatever_the_format() {
        let f = DateFormat::new("%d.%m.%Y").unwrap();
        let w = |s: &str| f.parse(s).map(|d| d.write(Written::DateTime));
        assert_eq!(w("15.03.2024").unwrap(), "2024-03-15 00:00");
        assert_eq!(w("2024-03-15").unwrap(), "2024-03-15 00:00");
        assert_eq!(w("2024-03-15 10:30").unwrap(), "2024-03-15 10:30");
        assert_eq!(w("2024-03-15T10:30:05").unwrap(), "2024-03-15 10:30");
        // Not a real date, not ISO's shape: the format's own error.
        assert!(w("2024-02-30").unwrap_err().contains("%d.%m.%Y"));
        assert!(w("2024-3-15").is_err());
        assert!(w("2024-03-15 25:00").is_err());
        // The format comes first: "%Y-%d-%m" reads 2024-03-05 as 3 May.
        let f = DateFormat::new("%Y-%d-%m").unwrap();
        assert_eq!(
            f.parse("2024-03-05").unwrap().write(Written::Date),
            "2024-05-03"
        );
    }

    /// Text shaped like dates, with the slips exports contain.
    fn date_like() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{1,3}[./-]{1,2}[0-9]{1,3}[./-][0-9]{1,5}( {0,2}[0-9]{1,3}[:.][0-9]{1,3}(:[0-9]{1,2})?)?",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2})?",
            "[ +\\-0-9.:/T,\\t]{0,20}",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
        ))]

        /// The scanner answers exactly as chrono does, wherever it answers.
        #[test]
        fn the_scanner_agrees_with_chrono(
            format in prop::sample::select(FORMATS),
            s in date_like(),
        ) {
            let f = DateFormat::new(format).unwrap();
            let chrono = f.parse_with_chrono(&s);
            match scan(f.fast.as_deref().unwrap(), &s) {
                Some(stamp) => prop_assert_eq!(Ok(stamp), chrono),
                // Where neither reads it, an ISO date still may.
                None => prop_assert_eq!(f.parse(&s), chrono.or_else(|e| parse_iso(s.trim()).ok_or(e))),
            }
        }
    }
}
