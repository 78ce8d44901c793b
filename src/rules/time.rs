//! Instants, spans and the calendar arithmetic behind time-based conditions.
//!
//! Instants are UTC milliseconds since the Unix epoch. Inputs may carry any UTC offset and are normalised;
//! precision beyond milliseconds is truncated. Spans of minutes, hours, days and weeks are fixed lengths;
//! months are calendar months (`2024-03-31` minus one month is `2024-02-29`: the day is clamped to the
//! month's end, as chrono's `checked_sub_months` does).

use chrono::{DateTime, Months, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type EpochMillis = i64;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Earliest instant accepted anywhere (0001-01-01T00:00:00Z).
pub const MIN_MILLIS: EpochMillis = -62_135_596_800_000;
/// Latest instant accepted anywhere (9999-12-31T23:59:59.999Z).
pub const MAX_MILLIS: EpochMillis = 253_402_300_799_999;

/// Parses an RFC 3339 datetime with any offset into UTC milliseconds within years 1–9999.
pub fn parse_datetime(s: &str) -> Option<EpochMillis> {
    let dt = DateTime::parse_from_rfc3339(s).ok()?;
    let ms = dt.timestamp_millis();
    (MIN_MILLIS..=MAX_MILLIS).contains(&ms).then_some(ms)
}

/// Formats UTC milliseconds as RFC 3339 with millisecond precision and a `Z` suffix.
pub fn format_millis(ms: EpochMillis) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// The unit of a relative span.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Minutes,
    Hours,
    Days,
    Weeks,
    Months,
}

impl Unit {
    /// Parses the unit names used in filters.
    pub fn parse(s: &str) -> Option<Unit> {
        Some(match s {
            "minutes" => Unit::Minutes,
            "hours" => Unit::Hours,
            "days" => Unit::Days,
            "weeks" => Unit::Weeks,
            "months" => Unit::Months,
            _ => return None,
        })
    }

    /// The name used in filters.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Minutes => "minutes",
            Unit::Hours => "hours",
            Unit::Days => "days",
            Unit::Weeks => "weeks",
            Unit::Months => "months",
        }
    }

    /// Upper bound on the amount for this unit: every span is at most about 100 years.
    pub fn max_amount(self) -> u32 {
        match self {
            Unit::Minutes => 52_596_000,
            Unit::Hours => 876_600,
            Unit::Days => 36_525,
            Unit::Weeks => 5_218,
            Unit::Months => 1_200,
        }
    }

    fn fixed_ms(self) -> Option<i64> {
        match self {
            Unit::Minutes => Some(60_000),
            Unit::Hours => Some(3_600_000),
            Unit::Days => Some(DAY_MS),
            Unit::Weeks => Some(7 * DAY_MS),
            Unit::Months => None,
        }
    }
}

/// A non-negative relative span such as "7 days" or "3 months".
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    pub amount: u32,
    pub unit: Unit,
}

impl Span {
    /// The span's length, when it is fixed (not calendar months).
    pub fn fixed_ms(self) -> Option<i64> {
        self.unit.fixed_ms().map(|ms| ms * i64::from(self.amount))
    }

    /// `t` minus the span, saturating at the supported range.
    pub fn before(self, t: EpochMillis) -> EpochMillis {
        self.shift(t, false)
    }

    /// `t` plus the span, saturating at the supported range.
    pub fn after(self, t: EpochMillis) -> EpochMillis {
        self.shift(t, true)
    }

    fn shift(self, t: EpochMillis, forward: bool) -> EpochMillis {
        let saturate = if forward { MAX_MILLIS } else { MIN_MILLIS };
        match self.unit.fixed_ms() {
            Some(unit_ms) => {
                let d = unit_ms * i64::from(self.amount);
                let r = if forward {
                    t.saturating_add(d)
                } else {
                    t.saturating_sub(d)
                };
                r.clamp(MIN_MILLIS, MAX_MILLIS)
            }
            None => {
                let Some(dt) = Utc.timestamp_millis_opt(t).single() else {
                    return saturate;
                };
                let months = Months::new(self.amount);
                let shifted = if forward {
                    dt.checked_add_months(months)
                } else {
                    dt.checked_sub_months(months)
                };
                shifted.map_or(saturate, |d| {
                    d.timestamp_millis().clamp(MIN_MILLIS, MAX_MILLIS)
                })
            }
        }
    }
}

/// The smallest `t` in `(lo, hi]` for which the monotone predicate `p` holds (false…false true…true),
/// given that it does not hold at `lo`; `None` when it does not hold at `hi` either.
pub fn first_true_after(
    lo: EpochMillis,
    hi: EpochMillis,
    p: impl Fn(EpochMillis) -> bool,
) -> Option<EpochMillis> {
    if hi <= lo || !p(hi) {
        return None;
    }
    let (mut lo, mut hi) = (lo, hi);
    // Invariant: !p(lo) and p(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if p(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> EpochMillis {
        parse_datetime(s).unwrap()
    }

    #[test]
    fn offsets_are_normalised_to_utc_and_truncated_to_milliseconds() {
        assert_eq!(t("2024-01-01T02:00:00+02:00"), t("2024-01-01T00:00:00Z"));
        assert_eq!(
            format_millis(t("2024-01-01T00:00:00.123456Z")),
            "2024-01-01T00:00:00.123Z"
        );
        assert_eq!(parse_datetime("2024-01-01"), None);
        assert_eq!(parse_datetime("not a date"), None);
    }

    #[test]
    fn calendar_months_clamp_to_the_end_of_the_month() {
        let span = Span {
            amount: 1,
            unit: Unit::Months,
        };
        assert_eq!(
            span.before(t("2024-03-31T10:00:00Z")),
            t("2024-02-29T10:00:00Z")
        );
        assert_eq!(
            span.after(t("2024-01-31T00:00:00Z")),
            t("2024-02-29T00:00:00Z")
        );
        let week = Span {
            amount: 2,
            unit: Unit::Weeks,
        };
        assert_eq!(
            week.before(t("2024-01-15T00:00:00Z")),
            t("2024-01-01T00:00:00Z")
        );
    }

    #[test]
    fn spans_saturate_at_the_supported_range() {
        let span = Span {
            amount: 1_200,
            unit: Unit::Months,
        };
        assert_eq!(span.before(MIN_MILLIS + 1), MIN_MILLIS);
        assert_eq!(span.after(MAX_MILLIS - 1), MAX_MILLIS);
    }

    #[test]
    fn first_true_after_finds_the_boundary() {
        assert_eq!(first_true_after(0, 1000, |x| x >= 777), Some(777));
        assert_eq!(first_true_after(0, 1000, |x| x >= 1001), None);
        assert_eq!(first_true_after(5, 5, |_| true), None);
    }
}
