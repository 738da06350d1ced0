//! A key's record, as the README's Redis data model defines it (a Redis hash, or a file entry).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The slowest and fastest per-key rates accepted (one request in about eleven days, and a
/// billion a second): beyond them the limiter's arithmetic would overflow.
pub const MIN_RATE: f64 = 1e-6;
pub const MAX_RATE: f64 = 1e9;

/// The longest `app` the data model allows.
pub const MAX_APP_LEN: usize = 128;

/// What the store knows about one key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// The tenant the key belongs to; sent upstream as `X-Keygate-App`.
    pub app: Arc<str>,
    /// `active`, or anything else (e.g. `revoked`) which disables the key.
    pub status: Status,
    /// Requests per second for this key, overriding the config's default.
    pub rate: Option<f64>,
    /// Burst for this key, overriding the config's default.
    pub burst: Option<u32>,
    /// Unix seconds from which the key is disabled.
    pub expires: Option<u64>,
    /// Requests forwarded per UTC day or month, fleet-wide (`quota`, `quota_period`).
    pub quota: Option<Quota>,
}

/// A cap on a key's forwarded requests per calendar period, shared by every gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub period: QuotaPeriod,
}

/// The UTC calendar period a quota counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriod {
    Day,
    Month,
}

impl QuotaPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaPeriod::Day => "day",
            QuotaPeriod::Month => "month",
        }
    }

    /// The period holding unix second `now`: a number that changes when the period does
    /// (days since 1970, or months since year 0), and the unix second it ends at.
    pub fn at(self, now: u64) -> (u32, u64) {
        let day = now / 86_400;
        match self {
            QuotaPeriod::Day => (day as u32, (day + 1) * 86_400),
            QuotaPeriod::Month => {
                let (year, month) = civil_month(day as i64);
                let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
                let stamp = (year * 12 + i64::from(month) - 1) as u32;
                (stamp, days_from_civil(next_year, next_month) as u64 * 86_400)
            }
        }
    }
}

/// The (year, month) of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// The day, counted from 1970-01-01, on which `month` of `year` begins (`days_from_civil`).
fn days_from_civil(year: i64, month: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A record that breaks the data model.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("field `app` is missing")]
    MissingApp,
    #[error("field `app` is empty, longer than 128 bytes, or holds control characters")]
    BadApp,
    #[error("field `{0}` is not a valid number")]
    BadNumber(&'static str),
    #[error("field `quota_period` must be day or month where `quota` is set")]
    BadQuotaPeriod,
}

impl KeyRecord {
    /// An active record for `app` with the config's limits.
    pub fn active(app: &str) -> Self {
        KeyRecord {
            app: app.into(),
            status: Status::ACTIVE,
            rate: None,
            burst: None,
            expires: None,
            quota: None,
        }
    }

    /// Builds a record from a Redis hash's fields.
    pub fn from_fields(fields: &HashMap<String, String>) -> Result<Self, RecordError> {
        let app = fields.get("app").ok_or(RecordError::MissingApp)?;
        let field = |name: &str| fields.get(name).map(|v| v.trim());
        let rate = field("rate")
            .map(|v| v.parse::<f64>().map_err(|_| RecordError::BadNumber("rate")))
            .transpose()?;
        let burst = field("burst")
            .map(|v| v.parse::<u32>().map_err(|_| RecordError::BadNumber("burst")))
            .transpose()?;
        let expires = field("expires")
            .map(|v| v.parse::<u64>().map_err(|_| RecordError::BadNumber("expires")))
            .transpose()?;
        let limit = field("quota")
            .map(|v| v.parse::<u64>().map_err(|_| RecordError::BadNumber("quota")))
            .transpose()?;
        let quota = match (limit, field("quota_period")) {
            (None, _) => None,
            (Some(limit), Some("day")) => Some(Quota { limit, period: QuotaPeriod::Day }),
            (Some(limit), Some("month")) => Some(Quota { limit, period: QuotaPeriod::Month }),
            (Some(_), _) => return Err(RecordError::BadQuotaPeriod),
        };
        let status = fields.get("status").map_or("active", |s| s.as_str());
        KeyRecord { app: app.as_str().into(), status: Status::from(status), rate, burst, expires, quota }
            .checked()
    }

    /// Checks what serde cannot: the app's length and the numbers' ranges.
    pub fn checked(self) -> Result<Self, RecordError> {
        // The app travels as a header value: no control characters.
        if self.app.is_empty()
            || self.app.len() > MAX_APP_LEN
            || self.app.bytes().any(|b| b.is_ascii_control())
        {
            return Err(RecordError::BadApp);
        }
        if self.rate.is_some_and(|r| !(r.is_finite() && (MIN_RATE..=MAX_RATE).contains(&r))) {
            return Err(RecordError::BadNumber("rate"));
        }
        if self.burst == Some(0) {
            return Err(RecordError::BadNumber("burst"));
        }
        Ok(self)
    }

    /// Stands in for a record that breaks the data model: the key exists but is not usable.
    pub fn invalid() -> Self {
        KeyRecord { status: Status::from("invalid-record"), ..KeyRecord::active("-") }
    }

    /// The fields to write for this record (the CLI's `keys add`).
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![("app", self.app.to_string()), ("status", self.status.to_string())];
        fields.extend(self.rate.map(|r| ("rate", r.to_string())));
        fields.extend(self.burst.map(|b| ("burst", b.to_string())));
        fields.extend(self.expires.map(|e| ("expires", e.to_string())));
        if let Some(quota) = self.quota {
            fields.push(("quota", quota.limit.to_string()));
            fields.push(("quota_period", quota.period.as_str().to_string()));
        }
        fields
    }

    /// Whether the key may be used at `now` (unix seconds): active and not expired.
    pub fn is_enabled_at(&self, now: u64) -> bool {
        now < self.usable_until()
    }

    /// The unix second from which the key is refused: 0 when its status is not active,
    /// `u64::MAX` when it never expires.
    pub fn usable_until(&self) -> u64 {
        match self.status.is_active() {
            true => self.expires.unwrap_or(u64::MAX),
            false => 0,
        }
    }
}

/// A record's status. Almost every key is active, so that case holds no string at all: one
/// allocation less per cached key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status(Option<Arc<str>>);

impl Status {
    pub const ACTIVE: Status = Status(None);

    pub fn is_active(&self) -> bool {
        self.0.is_none()
    }

    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("active")
    }
}

impl From<&str> for Status {
    fn from(status: &str) -> Self {
        match status {
            "active" => Status::ACTIVE,
            other => Status(Some(other.into())),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_the_data_models_fields() {
        let r = KeyRecord::from_fields(&fields(&[
            ("app", "acme"),
            ("rate", "2.5"),
            ("burst", "7"),
            ("expires", "100"),
        ]))
        .unwrap();
        assert_eq!(
            (&*r.app, r.status.as_str(), r.rate, r.burst, r.expires),
            ("acme", "active", Some(2.5), Some(7), Some(100))
        );
        assert!(r.is_enabled_at(99));
        assert!(!r.is_enabled_at(100));
    }

    #[test]
    fn any_status_but_active_disables() {
        let r = KeyRecord::from_fields(&fields(&[("app", "a"), ("status", "revoked")])).unwrap();
        assert!(!r.is_enabled_at(0));
    }

    #[test]
    fn broken_records_are_errors() {
        assert_eq!(KeyRecord::from_fields(&fields(&[("rate", "1")])), Err(RecordError::MissingApp));
        assert_eq!(KeyRecord::from_fields(&fields(&[("app", "")])), Err(RecordError::BadApp));
        let long = "x".repeat(129);
        assert_eq!(KeyRecord::from_fields(&fields(&[("app", &long)])), Err(RecordError::BadApp));
        for (field, bad) in
            [("rate", "fast"), ("rate", "0"), ("rate", "1e-20"), ("burst", "-1"), ("expires", "soon")]
        {
            assert!(KeyRecord::from_fields(&fields(&[("app", "a"), (field, bad)])).is_err(), "{field}={bad}");
        }
        for quota in
            [&[("quota", "10")][..], &[("quota", "10"), ("quota_period", "week")], &[("quota", "-1")]]
        {
            let mut pairs = vec![("app", "a")];
            pairs.extend_from_slice(quota);
            assert!(KeyRecord::from_fields(&fields(&pairs)).is_err(), "{quota:?}");
        }
    }

    #[test]
    fn a_quota_is_read_with_its_period() {
        let r = KeyRecord::from_fields(&fields(&[("app", "a"), ("quota", "300"), ("quota_period", "month")]))
            .unwrap();
        assert_eq!(r.quota, Some(Quota { limit: 300, period: QuotaPeriod::Month }));
        assert!(r.to_fields().contains(&("quota_period", "month".to_string())));
    }

    #[test]
    fn periods_end_at_the_next_utc_midnight_or_first_of_the_month() {
        // 2024-02-29 12:00:00 UTC, a leap day.
        let now = 1_709_208_000;
        let (day, day_end) = QuotaPeriod::Day.at(now);
        assert_eq!((day, day_end), (19_782, 1_709_251_200), "2024-03-01 00:00 UTC");
        let (month, month_end) = QuotaPeriod::Month.at(now);
        assert_eq!(month_end, 1_709_251_200, "2024-03-01 00:00 UTC as well");
        assert_eq!(month, 2024 * 12 + 1);
        // 2023-12-31 23:59:59 UTC: the month ends with the year.
        assert_eq!(QuotaPeriod::Month.at(1_704_067_199).1, 1_704_067_200);
        assert_eq!(QuotaPeriod::Month.at(1_704_067_200).0, 2024 * 12);
    }
}
