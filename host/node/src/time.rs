//! Wall-clock formatting without a date crate: RFC 3339 in UTC, for the CLI.

/// Formats milliseconds since the Unix epoch as `2026-11-21T09:00:00.123Z`.
///
/// # Example
/// ```
/// assert_eq!(wasmnode::time::rfc3339(0), "1970-01-01T00:00:00.000Z");
/// assert_eq!(wasmnode::time::rfc3339(1_795_251_600_123), "2026-11-21T09:00:00.123Z");
/// ```
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}
