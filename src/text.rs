//! Small text helpers every floor uses: values shortened for a message, a
//! list of ids in words, a count with its noun.

/// A value for a message: at most 60 characters, so that a 10 MB cell does
/// not become a 10 MB log line.
pub fn shorten(value: &str) -> String {
    const MAX: usize = 60;
    if value.chars().count() <= MAX {
        value.to_string()
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("{cut}… ({} characters)", value.chars().count())
    }
}

/// `12, 57 and 90`.
pub fn join_ids(ids: &[i64]) -> String {
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    match ids.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => ids.join(""),
    }
}

/// `1 row`, `2 rows`: a count a person reads, for nouns whose plural adds
/// an `s` (where a count is often 1: a pilot of one row, a one-sheet file).
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_is_singular_and_zero_and_many_are_plural() {
        assert_eq!(super::count(1, "sheet"), "1 sheet");
        assert_eq!(super::count(0, "row"), "0 rows");
        assert_eq!(super::count(3, "sheet"), "3 sheets");
    }
}
