//! Field-format rules shared by the sandbox (which enforces them like the real
//! service) and the mapping (which flags rows that the service would reject,
//! before anything is sent).

use chrono::{NaiveDate, NaiveDateTime};

/// `YYYY-MM-DD`, a real calendar date (birthdate).
pub fn is_date(s: &str) -> bool {
    s.len() == 10 && NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// `YYYY-MM-DD hh:mm`, a real wall-clock time (`next_call_date`).
pub fn is_date_time(s: &str) -> bool {
    s.len() == 16 && NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").is_ok()
}

/// `YYYY-MM-DDThh:mm:ss`, the time of a ZOWIE feed message.
pub fn is_feed_time(s: &str) -> bool {
    s.len() == 19 && NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").is_ok()
}

/// A phone number as the API wants it: digits only, 3 to 20 of them.
pub fn is_phone(s: &str) -> bool {
    (3..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// A plausible e-mail address: one `@`, a non-empty local part, a domain with
/// a dot and no spaces. Deliberately loose: the goal is to catch a name or a
/// phone number in the e-mail column, not to implement RFC 5322.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && !s.bytes().any(is_ascii_space)
        && (s.is_ascii() || !s.chars().any(char::is_whitespace))
        && domain
            .split_once('.')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !domain.ends_with('.'))
}

/// The ASCII bytes `char::is_whitespace` accepts (`u8::is_ascii_whitespace`
/// leaves out the vertical tab).
pub fn is_ascii_space(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | b' ')
}

/// A campaign id: exactly five characters (`00001`).
pub fn is_campaign_id(s: &str) -> bool {
    s.chars().count() == 5 && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A PESEL (the Polish personal number): 11 digits whose last is the
/// check digit of the first ten (weights 1 3 7 9 1 3 7 9 1 3), and whose
/// date of birth (`YYMMDD`, the month plus 20 per century from 1900 on,
/// 80 for the 1800s) is a real date.
pub fn is_pesel(s: &str) -> bool {
    let Some(d) = digits_of::<11>(s) else {
        return false;
    };
    const WEIGHTS: [u32; 10] = [1, 3, 7, 9, 1, 3, 7, 9, 1, 3];
    let sum: u32 = WEIGHTS.iter().zip(&d).map(|(w, d)| w * d).sum();
    let (month, day) = (d[2] * 10 + d[3], d[4] * 10 + d[5]);
    let century = match month / 20 {
        0 => 1900,
        1 => 2000,
        2 => 2100,
        3 => 2200,
        _ => 1800,
    };
    let year = century + (d[0] * 10 + d[1]) as i32;
    (10 - sum % 10) % 10 == d[10] && NaiveDate::from_ymd_opt(year, month % 20, day).is_some()
}

/// A NIP (the Polish tax number), as digits only: 10 digits whose last is
/// the first nine's weighted sum (6 5 7 2 3 4 5 6 7) modulo 11, which is
/// never 10.
pub fn is_nip(s: &str) -> bool {
    let Some(d) = digits_of::<10>(s) else {
        return false;
    };
    const WEIGHTS: [u32; 9] = [6, 5, 7, 2, 3, 4, 5, 6, 7];
    let sum: u32 = WEIGHTS.iter().zip(&d).map(|(w, d)| w * d).sum();
    sum % 11 == d[9]
}

/// The `N` digits of `s`, when it is exactly `N` ASCII digits.
fn digits_of<const N: usize>(s: &str) -> Option<[u32; N]> {
    let bytes = s.as_bytes();
    if bytes.len() != N || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut d = [0; N];
    for (d, b) in d.iter_mut().zip(bytes) {
        *d = u32::from(b - b'0');
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert!(is_date("1990-02-28"));
        assert!(!is_date("1990-02-31"));
        assert!(!is_date("28.02.1990"));
        assert!(is_date_time("2018-05-24 12:24"));
        assert!(!is_date_time("2018-05-24 25:24"));
        assert!(!is_date_time("2018-05-24T12:24"));
        assert!(is_feed_time("2021-02-02T10:10:12"));
        assert!(is_phone("48601234567"));
        assert!(!is_phone("+48601234567"));
        assert!(!is_phone("60123456x"));
        assert!(is_email("jan.kowalski@example.pl"));
        assert!(!is_email("jan.kowalski"));
        assert!(!is_email("jan kowalski@example.pl"));
        assert!(!is_email("jan@example."));
        assert!(!is_email("a@b@c.pl"));
        assert!(is_campaign_id("00001"));
        assert!(!is_campaign_id("0001"));
    }

    #[test]
    fn pesel_and_nip_checksums() {
        // Published examples: a PESEL of 1944, one of 2002 (month + 20).
        assert!(is_pesel("44051401359"));
        assert!(is_pesel("02270803624"));
        assert!(!is_pesel("44051401358"), "check digit");
        assert!(!is_pesel("44133101350"), "no 13th month");
        assert!(!is_pesel("4405140135"));
        assert!(!is_pesel("48601234567"), "a phone number");
        assert!(is_nip("5260001246"));
        assert!(is_nip("1234563218"));
        assert!(!is_nip("1234563219"), "check digit");
        assert!(!is_nip("526-000-12-46"), "digits only here");
    }
}
