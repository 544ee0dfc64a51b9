//! Wall-clock time in the unit every stored timestamp uses, and its two
//! text forms: RFC 5322 dates for mail headers and RFC 3339 for listings
//! and logs. Formatting is pure: it takes the time as an argument.

/// Unix milliseconds now (0 if the clock reads before 1970). Code whose
/// outcome depends on "now" takes it as an argument instead, so tests
/// control time; this is where production code reads it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `Mon, 23 Nov 2026 16:51:47 +0000`: an RFC 5322 §3.3 date-time in UTC
/// for Unix milliseconds (Date, Received, DSN Arrival-Date).
pub fn rfc5322_date(ms: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, tod) = split_day(ms);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {d} {} {y} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// `2026-11-23T16:51:47Z`: RFC 3339 in UTC for Unix milliseconds, for
/// listings and logs.
pub fn rfc3339(ms: i64) -> String {
    let (days, tod) = split_day(ms);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// Days since 1970-01-01 and seconds into that day.
fn split_day(ms: i64) -> (i64, i64) {
    let secs = ms.div_euclid(1000);
    (secs.div_euclid(86_400), secs.rem_euclid(86_400))
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5322_dates_are_in_utc() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_452_707_000),
            "Mon, 23 Nov 2026 16:51:47 +0000"
        );
        assert_eq!(
            rfc5322_date(951_782_400_000),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        // Milliseconds are dropped, not rounded; before 1970 still works.
        assert_eq!(
            rfc5322_date(1_795_452_707_999),
            "Mon, 23 Nov 2026 16:51:47 +0000"
        );
        assert_eq!(rfc5322_date(-1000), "Wed, 31 Dec 1969 23:59:59 +0000");
    }

    #[test]
    fn rfc3339_timestamps_are_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
