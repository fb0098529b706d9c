//! Proleptic Gregorian calendar arithmetic (Howard Hinnant's `days_from_civil` /
//! `civil_from_days`), shared by HL7 timestamps, audit times and DLP date shifts. Small
//! enough to own; it keeps chrono out of the hot paths.

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's
/// algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 UTC time with milliseconds.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339_millis(now.as_secs(), now.subsec_millis())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `secs` since the epoch and `millis`. Digits are written
/// by hand: every audited request stamps its record with this, and `format!` costs several
/// times more than the arithmetic.
pub fn rfc3339_millis(secs: u64, millis: u32) -> String {
    let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let rem = secs % 86_400;
    let (hh, mm, ss) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let Ok(year @ 0..=9999) = u64::try_from(y) else {
        // Five-digit years: the general form.
        return format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{millis:03}Z");
    };
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, u64::from(m));
    put(8, 2, u64::from(d));
    put(11, 2, hh);
    put(14, 2, mm);
    put(17, 2, ss);
    put(20, 3, u64::from(millis.min(999)));
    b.iter().map(|&c| char::from(c)).collect()
}

/// HL7 DTM for "now", UTC: `YYYYMMDDHHMMSS+0000`.
pub fn hl7_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}+0000",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_format(secs: u64, millis: u32) -> String {
        let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap());
        let rem = secs % 86_400;
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        )
    }

    #[test]
    fn hand_written_stamps_match_the_formatted_ones() {
        // Every day boundary around leap years and centuries, and a spread of instants up
        // to the year 9999 and past it (the general form then).
        let mut cases: Vec<u64> = vec![0, 59, 60, 3599, 3600, 86_399, 86_400];
        for y in [1970i64, 1999, 2000, 2024, 2026, 2100, 2400, 9999] {
            for (m, d) in [(1, 1), (2, 28), (2, 29), (3, 1), (12, 31)] {
                let day = days_from_civil(y, m, d);
                if day >= 0 {
                    let s = u64::try_from(day).unwrap() * 86_400;
                    cases.extend([s, s + 86_399, s.saturating_sub(1)]);
                }
            }
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(x % 300_000_000_000);
        }
        for (i, s) in cases.into_iter().enumerate() {
            let ms = u32::try_from(i % 1000).unwrap();
            assert_eq!(rfc3339_millis(s, ms), by_format(s, ms), "{s}");
        }
    }
}
