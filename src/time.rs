//! Wall-clock time in the unit every stored timestamp uses.

/// Unix milliseconds now (0 if the clock reads before 1970). Code whose
/// outcome depends on "now" takes it as an argument instead, so tests
/// control time; this is where production code reads it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
