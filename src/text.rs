//! Small text helpers every floor uses: values shortened for a message, a
//! list of ids in words.

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
