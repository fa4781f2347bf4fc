//! Wall-clock helpers: milliseconds since the epoch and RFC 3339 text in UTC, for
//! message timestamps and reports.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now as a ROS `builtin_interfaces/Time` in its JSON form: `{"sec","nanosec"}`.
pub fn ros_stamp_now() -> serde_json::Value {
    let ms = now_ms();
    serde_json::json!({"sec": (ms / 1000) as i64, "nanosec": ((ms % 1000) * 1_000_000) as u32})
}

/// `2026-11-22T05:20:13.250Z`
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, mo, d) = civil_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// `2026-11-22T05-20-13`, usable in a file name.
pub fn file_stamp(ms: u64) -> String {
    let s = rfc3339_ms(ms);
    s[..19].replace(':', "-")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_763_788_813_250), "2025-11-22T05:20:13.250Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(file_stamp(1_763_788_813_250), "2025-11-22T05-20-13");
    }
}
