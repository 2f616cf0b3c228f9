//! CronJob (`batch/v1`): Jobs made from a template on a cron schedule, and the schedule's
//! parser (standard 5-field cron with names, ranges, steps, lists and `@hourly`-style macros).

use serde::{Deserialize, Serialize};

use crate::job::JobSpec;
use crate::meta::ObjectMeta;

/// The annotation on a Job a CronJob made: the schedule time it was made for (RFC 3339).
pub const SCHEDULED_AT_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// A CronJob (`batch/v1`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct CronJob {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: CronJobSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CronJobStatus>,
}

/// The desired state of a CronJob.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct CronJobSpec {
    pub schedule: String,
    /// An IANA zone such as `Europe/Berlin` [default: the master's UTC].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// A run missed by more than this many seconds is skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<i64>,
    /// `Allow` (default), `Forbid` or `Replace`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub concurrency_policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    pub job_template: JobTemplateSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub successful_jobs_history_limit: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_jobs_history_limit: Option<i32>,
}

/// The Job a CronJob makes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct JobTemplateSpec {
    pub metadata: ObjectMeta,
    pub spec: JobSpec,
}

/// A Job a CronJob runs, by reference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct JobReference {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// The observed state of a CronJob.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct CronJobStatus {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<JobReference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<String>,
}

/// A parsed cron schedule: the allowed values of each field as bit sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Both day fields restricted: a day matches either (cron's rule).
    day_or: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field's allowed values, as bits `min..=max`; names for months and days; `7` is
/// Sunday too in the day-of-week field.
fn field(
    text: &str,
    name: &str,
    min: u32,
    max: u32,
    names: &[&str],
) -> Result<(u64, bool), String> {
    let value = |t: &str| -> Result<u32, String> {
        let lower = t.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + min);
        }
        let n: u32 = t.parse().map_err(|_| {
            format!(
                "{name}: {t:?} is not a number{}",
                if names.is_empty() { "" } else { " or a name" }
            )
        })?;
        let top = if name == "day of week" { 7 } else { max };
        if n < min || n > top {
            return Err(format!("{name}: {n} is out of range {min}-{max}"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("{name}: step {s:?} is not a number"))?;
                if step == 0 || step > max {
                    return Err(format!("{name}: step {step} is out of range 1-{max}"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            star = star || step == 1;
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end, every 15.
            (v, if part.contains('/') { max } else { v })
        };
        if lo > hi {
            return Err(format!("{name}: the range {lo}-{hi} runs backwards"));
        }
        let mut v = lo;
        while v <= hi {
            let bit = if name == "day of week" && v == 7 {
                0
            } else {
                v
            };
            bits |= 1 << bit;
            v += step;
        }
    }
    if bits == 0 {
        return Err(format!("{name}: {text:?} allows no value"));
    }
    Ok((bits, star))
}

impl Schedule {
    /// Parses `MIN HOUR DAY MONTH WEEKDAY` or a macro (`@yearly`, `@annually`, `@monthly`,
    /// `@weekly`, `@daily`, `@midnight`, `@hourly`).
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        let expanded = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@hourly" => "0 * * * *".to_string(),
            t if t.starts_with('@') => {
                return Err(format!(
                    "unknown macro {text:?}: use @yearly, @monthly, @weekly, @daily or @hourly"
                ));
            }
            _ => text.to_string(),
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                f.len()
            ));
        }
        let (minutes, _) = field(f[0], "minute", 0, 59, &[])?;
        let (hours, _) = field(f[1], "hour", 0, 23, &[])?;
        let (days, any_day) = field(f[2], "day of month", 1, 31, &[])?;
        let (months, _) = field(f[3], "month", 1, 12, &MONTHS)?;
        let (weekdays, any_weekday) = field(f[4], "day of week", 0, 6, &DAYS)?;
        Ok(Schedule {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            day_or: !any_day && !any_weekday,
        })
    }

    /// Whether a civil time matches (`weekday`: 0 is Sunday).
    pub fn matches(&self, minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> bool {
        let day_ok = self.days & (1 << day) != 0;
        let weekday_ok = self.weekdays & (1 << weekday) != 0;
        let days_ok = if self.day_or {
            day_ok || weekday_ok
        } else {
            day_ok && weekday_ok
        };
        self.minutes & (1 << minute) != 0
            && self.hours & (1 << hour) != 0
            && self.months & (1 << month) != 0
            && days_ok
    }

    /// Whether some hour of the day matches (to skip whole days quickly).
    pub fn day_matches(&self, day: u32, month: u32, weekday: u32) -> bool {
        (0..24).any(|h| self.hours & (1 << h) != 0)
            && self.months & (1 << month) != 0
            && if self.day_or {
                self.days & (1 << day) != 0 || self.weekdays & (1 << weekday) != 0
            } else {
                self.days & (1 << day) != 0 && self.weekdays & (1 << weekday) != 0
            }
    }

    /// Whether the hour matches.
    pub fn hour_matches(&self, hour: u32) -> bool {
        self.hours & (1 << hour) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_as_cron_reads_them() {
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        assert!(s.matches(30, 9, 3, 12, 3));
        assert!(!s.matches(31, 9, 3, 12, 3));
        assert!(!s.matches(0, 8, 3, 12, 3));
        assert!(!s.matches(0, 9, 6, 12, 6), "Saturday");
        // Both day fields restricted: either matches.
        let s = Schedule::parse("0 0 1 * 0").unwrap();
        assert!(s.matches(0, 0, 1, 5, 3) && s.matches(0, 0, 7, 5, 0));
        assert!(!s.matches(0, 0, 2, 5, 3));
        assert_eq!(Schedule::parse("@hourly"), Schedule::parse("0 * * * *"));
        assert_eq!(Schedule::parse("@annually"), Schedule::parse("0 0 1 jan *"));
        assert!(
            Schedule::parse("0 0 * * 7").unwrap().matches(0, 0, 5, 1, 0),
            "7 is Sunday"
        );
        assert!(
            Schedule::parse("5/20 * * * *")
                .unwrap()
                .matches(45, 3, 1, 1, 1)
        );
        assert!(
            Schedule::parse("1,2,40-42 * * * *")
                .unwrap()
                .matches(41, 0, 1, 1, 1)
        );
        for (bad, want) in [
            ("61 * * * *", "minute: 61 is out of range 0-59"),
            ("* 24 * * *", "hour: 24 is out of range"),
            ("* * 0 * *", "day of month: 0 is out of range 1-31"),
            ("* * * 13 *", "month: 13 is out of range"),
            ("* * * foo *", "month: \"foo\" is not a number or a name"),
            ("*/0 * * * *", "step 0"),
            ("5-1 * * * *", "runs backwards"),
            ("* * * *", "expected 5 fields"),
            ("@often", "unknown macro"),
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
