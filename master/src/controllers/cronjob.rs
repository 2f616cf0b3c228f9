//! The CronJob controller: a Job from the template at each time the schedule names, in the
//! CronJob's `timeZone`, on the master's clock only (boards may boot with a wrong one).
//! Runs missed while the master was down give at most one catch-up run, and only within
//! `startingDeadlineSeconds`, as in Kubernetes; `concurrencyPolicy` `Forbid` skips a run
//! while one is active (it runs late, within the deadline, once the active one ends),
//! `Replace` deletes the active ones first; finished Jobs beyond the history limits go.
//!
//! [`plan`] is pure (the time and the zone are arguments); [`CronJobs`] is the shell, woken
//! at the next scheduled time.

use std::time::{Duration, Instant};

use bramble_api::cronjob::{
    CronJob, CronJobStatus, JobReference, SCHEDULED_AT_ANNOTATION, Schedule,
};
use bramble_api::job::Job;
use bramble_api::meta::OwnerReference;
use bramble_api::time::{format_rfc3339, parse_rfc3339};
use bramble_api::{Kind, Object};
use jiff::tz::TimeZone;

use super::Controller;
use super::objects::{OwnerKey, Owners, controlled_by, delete, list_in};
use crate::events::EventRecorder;
use crate::store::{Change, EventType, Op, Store, StoreError, Subresource};

/// Most scheduled times looked back over (Kubernetes warns past 100 missed runs).
const MAX_MISSED: usize = 100;
/// The furthest ahead a next run is looked for (a schedule such as `0 0 30 2 *` never runs).
const HORIZON_SECS: i64 = 366 * 24 * 3600 * 5;

/// Whether the minute starting at `t` (Unix seconds, a whole minute) matches, in `tz`.
fn matches(s: &Schedule, tz: &TimeZone, t: i64) -> bool {
    let Ok(ts) = jiff::Timestamp::from_second(t) else {
        return false;
    };
    let dt = tz.to_datetime(ts);
    s.matches(
        dt.minute() as u32,
        dt.hour() as u32,
        dt.day() as u32,
        dt.month() as u32,
        dt.weekday().to_sunday_zero_offset() as u32,
    )
}

/// The first scheduled time after `after` (Unix seconds), if one comes within the horizon.
pub fn next_after(s: &Schedule, tz: &TimeZone, after: i64) -> Option<i64> {
    let mut t = after - after.rem_euclid(60) + 60;
    let end = after + HORIZON_SECS;
    while t <= end {
        let Ok(ts) = jiff::Timestamp::from_second(t) else {
            return None;
        };
        let dt = tz.to_datetime(ts);
        let weekday = dt.weekday().to_sunday_zero_offset() as u32;
        if !s.day_matches(dt.day() as u32, dt.month() as u32, weekday) {
            // To the next local midnight (at least an hour on: zones shift by hours).
            let left = (24 - i64::from(dt.hour())) * 3600 - i64::from(dt.minute()) * 60;
            t += left.max(3600);
            continue;
        }
        if !s.hour_matches(dt.hour() as u32) {
            t += (60 - i64::from(dt.minute())) * 60;
            continue;
        }
        if matches(s, tz, t) {
            return Some(t);
        }
        t += 60;
    }
    None
}

/// The latest scheduled times in `(after, now]`, newest first, at most [`MAX_MISSED`]
/// (a year of minutes is not walked: the walk stops at the cap).
fn unmet(s: &Schedule, tz: &TimeZone, after: i64, now: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut t = after;
    while let Some(n) = next_after(s, tz, t) {
        if n > now {
            break;
        }
        out.push(n);
        if out.len() > MAX_MISSED {
            out.remove(0);
        }
        t = n;
    }
    out.reverse();
    out
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// The scheduled time to make a Job for.
    pub run: Option<i64>,
    /// Jobs to delete (Replace, history limits).
    pub delete: Vec<String>,
    pub status: CronJobStatus,
    /// When to look again (the next scheduled time).
    pub next: Option<i64>,
    /// Why a due run was not made, for an event.
    pub skipped: Option<String>,
}

fn finished(j: &Job) -> Option<String> {
    j.status
        .as_ref()
        .and_then(|s| s.finished())
        .map(str::to_string)
}

fn job_time(j: &Job) -> i64 {
    j.metadata
        .annotations
        .get(SCHEDULED_AT_ANNOTATION)
        .and_then(|t| parse_rfc3339(t))
        .or_else(|| {
            j.metadata
                .creation_timestamp
                .as_deref()
                .and_then(parse_rfc3339)
        })
        .unwrap_or(0)
}

/// Plans one step of `cj` with the Jobs it owns, at `now` (Unix seconds) in `tz`.
pub fn plan(cj: &CronJob, jobs: &[Job], now: i64, tz: &TimeZone) -> Result<Plan, String> {
    let s = &cj.spec;
    let schedule = Schedule::parse(&s.schedule)?;
    let old = cj.status.clone().unwrap_or_default();
    let mut plan = Plan::default();
    let mut active: Vec<&Job> = jobs
        .iter()
        .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();
    active.sort_by_key(|j| job_time(j));
    // History: the newest finished Jobs within each limit are kept.
    for (kind, limit) in [
        ("Complete", s.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", s.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Job> = jobs
            .iter()
            .filter(|j| finished(j).as_deref() == Some(kind))
            .collect();
        done.sort_by_key(|j| std::cmp::Reverse(job_time(j)));
        plan.delete.extend(
            done.iter()
                .skip(limit.max(0) as usize)
                .map(|j| j.metadata.name.clone()),
        );
    }
    let last_success = jobs
        .iter()
        .filter(|j| finished(j).as_deref() == Some("Complete"))
        .filter_map(|j| {
            j.status
                .as_ref()?
                .completion_time
                .as_deref()
                .and_then(parse_rfc3339)
        })
        .max();
    let mut status = CronJobStatus {
        active: Vec::new(),
        last_schedule_time: old.last_schedule_time.clone(),
        last_successful_time: last_success
            .map(format_rfc3339)
            .or(old.last_successful_time.clone()),
    };
    let since = old
        .last_schedule_time
        .as_deref()
        .and_then(parse_rfc3339)
        .or_else(|| {
            cj.metadata
                .creation_timestamp
                .as_deref()
                .and_then(parse_rfc3339)
        })
        .unwrap_or(now);
    plan.next = next_after(&schedule, tz, now);
    let due = unmet(&schedule, tz, since, now);
    let mut make = None;
    if s.suspend == Some(true) {
        // Nothing runs; the missed times are judged when it is resumed.
    } else if let Some(&t) = due.first() {
        let late = s.starting_deadline_seconds.is_some_and(|d| now - t > d);
        if late {
            plan.skipped = Some(format!(
                "missed the run of {} by more than startingDeadlineSeconds",
                format_rfc3339(t)
            ));
        } else if s.concurrency_policy == "Forbid" && !active.is_empty() {
            plan.skipped = Some(format!(
                "the run of {} waits: concurrencyPolicy Forbid and {} is still active",
                format_rfc3339(t),
                active[0].metadata.name
            ));
            // Look again when it may have ended (a change of the Job wakes it too).
            plan.next = Some(now + 10);
        } else {
            if s.concurrency_policy == "Replace" {
                plan.delete
                    .extend(active.iter().map(|j| j.metadata.name.clone()));
                active.clear();
            }
            make = Some(t);
            status.last_schedule_time = Some(format_rfc3339(t));
        }
    }
    status.active = active
        .iter()
        .map(|j| JobReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: j.metadata.name.clone(),
            namespace: j.metadata.namespace.clone(),
            uid: j.metadata.uid.clone(),
        })
        .collect();
    plan.run = make;
    plan.status = status;
    Ok(plan)
}

/// The Job of the CronJob for scheduled time `t`: named `CRONJOB-<minutes since the epoch>`,
/// as Kubernetes names them, so that one time makes one Job however often it is planned.
pub fn new_job(cj: &CronJob, t: i64) -> Job {
    let mut j = Job {
        metadata: cj.spec.job_template.metadata.clone(),
        spec: cj.spec.job_template.spec.clone(),
        ..Default::default()
    };
    j.metadata.name = format!("{}-{}", cj.metadata.name, t / 60);
    j.metadata.namespace = cj.metadata.namespace.clone();
    j.metadata
        .annotations
        .insert(SCHEDULED_AT_ANNOTATION.into(), format_rfc3339(t));
    j.metadata.owner_references = vec![OwnerReference::controller(Kind::CronJob, &cj.metadata)];
    j
}

/// The CronJob's zone (`None` for an unknown name).
pub fn zone(cj: &CronJob) -> Option<TimeZone> {
    match cj.spec.time_zone.as_deref() {
        None | Some("") | Some("UTC") | Some("Etc/UTC") => Some(TimeZone::UTC),
        Some(name) => TimeZone::get(name).ok(),
    }
}

/// The CronJob controller's shell.
pub struct CronJobs {
    events: EventRecorder,
    owners: Owners,
    timers: Vec<(OwnerKey, Instant)>,
}

impl CronJobs {
    pub fn new(store: &Store) -> Self {
        CronJobs {
            events: EventRecorder::new(store.clone(), "cronjob-controller"),
            owners: Owners::default(),
            timers: Vec::new(),
        }
    }
}

fn jobs_of(store: &Store, ns: &str, uid: &str) -> Vec<Job> {
    list_in(store, Kind::Job, ns, |o| match o {
        Object::Job(j) if controlled_by(&j.metadata, uid) => Some(j),
        _ => None,
    })
}

impl Controller for CronJobs {
    type Key = OwnerKey;
    const NAME: &'static str = "cronjob";
    const WATCHES: &'static [Kind] = &[Kind::CronJob, Kind::Job];

    async fn resync(&mut self, store: &Store) -> Vec<OwnerKey> {
        self.owners.resync(store, Kind::CronJob, Kind::Job)
    }

    fn keys(&mut self, c: &Change) -> Vec<OwnerKey> {
        match c.entry.object() {
            Ok(Object::CronJob(cj)) => {
                vec![
                    self.owners
                        .owner_changed(&cj.metadata, c.type_ == EventType::Deleted),
                ]
            }
            Ok(Object::Job(j)) => self.owners.child_changed(&j.metadata, Kind::CronJob),
            _ => Vec::new(),
        }
    }

    fn timers(&mut self) -> Vec<(OwnerKey, Instant)> {
        std::mem::take(&mut self.timers)
    }

    async fn reconcile(&mut self, store: &Store, key: &OwnerKey) -> Result<(), StoreError> {
        let (ns, name) = match key {
            OwnerKey::Owned { namespace, uid } => {
                return self.owners.collect(store, Kind::Job, namespace, uid).await;
            }
            OwnerKey::Owner { namespace, name } => (namespace, name),
        };
        let Some(entry) = store.get(Kind::CronJob, ns, name) else {
            return Ok(());
        };
        let Object::CronJob(cj) = entry.object()? else {
            return Ok(());
        };
        if cj.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let Some(tz) = zone(&cj) else {
            let msg = format!(
                "unknown time zone {:?} (not in /usr/share/zoneinfo): nothing is scheduled",
                cj.spec.time_zone.as_deref().unwrap_or("")
            );
            self.events
                .record(Object::CronJob(cj), "Warning", "UnknownTimeZone", &msg)
                .await;
            return Ok(());
        };
        let jobs = jobs_of(store, ns, &cj.metadata.uid);
        let now = bramble_api::time::now_secs();
        let plan = match plan(&cj, &jobs, now, &tz) {
            Ok(p) => p,
            Err(why) => {
                self.events
                    .record(Object::CronJob(cj), "Warning", "InvalidSchedule", &why)
                    .await;
                return Ok(());
            }
        };
        if let Some(next) = plan.next {
            let wait = Duration::from_secs((next - now).max(0) as u64);
            self.timers.push((key.clone(), Instant::now() + wait));
        }
        for j in &plan.delete {
            delete(store, Kind::Job, ns, j).await?;
        }
        if let Some(t) = plan.run {
            let job = new_job(&cj, t);
            let job_name = job.metadata.name.clone();
            match store.write(Op::Create(Object::Job(job))).await {
                Ok(_) => {
                    let msg = format!("Created job {job_name}");
                    self.events
                        .record(
                            Object::CronJob(cj.clone()),
                            "Normal",
                            "SuccessfulCreate",
                            &msg,
                        )
                        .await;
                }
                // Made for this time already (a reconcile before a crash): the same Job.
                Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(why) = &plan.skipped {
            tracing::debug!(cronjob = name, why, "a scheduled run was not made");
        }
        let mut status = plan.status;
        if let Some(t) = plan.run {
            // The Job just made is active too.
            let made = new_job(&cj, t);
            status.active.push(JobReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: made.metadata.name,
                namespace: ns.clone(),
                uid: String::new(),
            });
        }
        if cj.status.as_ref() != Some(&status) {
            let mut updated = cj;
            updated.status = Some(status);
            updated.metadata.resource_version.clear();
            store
                .write(Op::Update(Object::CronJob(updated), Subresource::Status))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cj(schedule: &str, extra: serde_json::Value) -> CronJob {
        let mut spec = serde_json::json!({
            "schedule": schedule,
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let mut c: CronJob = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "nightly", "namespace": "default", "creationTimestamp": "2026-12-01T00:00:30Z"},
            "spec": spec,
        }))
        .unwrap();
        c.metadata.uid = "cj-uid".into();
        c
    }

    fn at(text: &str) -> i64 {
        parse_rfc3339(text).unwrap()
    }

    fn job(c: &CronJob, t: &str, done: Option<&str>) -> Job {
        let mut j = new_job(c, at(t));
        if let Some(kind) = done {
            j.status = Some(bramble_api::job::JobStatus {
                completion_time: Some(t.into()),
                conditions: vec![bramble_api::meta::Condition {
                    type_: kind.into(),
                    status: "True".into(),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        j
    }

    #[test]
    fn the_next_run_is_found_in_the_zone_of_the_cronjob() {
        let s = Schedule::parse("30 2 * * *").unwrap();
        let utc = TimeZone::UTC;
        assert_eq!(
            next_after(&s, &utc, at("2026-12-01T10:00:00Z")),
            Some(at("2026-12-02T02:30:00Z"))
        );
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        // 02:30 in Berlin (UTC+1 in winter) is 01:30 UTC.
        assert_eq!(
            next_after(&s, &berlin, at("2026-12-01T10:00:00Z")),
            Some(at("2026-12-02T01:30:00Z"))
        );
        let feb30 = Schedule::parse("0 0 30 2 *").unwrap();
        assert_eq!(next_after(&feb30, &utc, at("2026-12-01T10:00:00Z")), None);
        let every = Schedule::parse("*/1 * * * *").unwrap();
        assert_eq!(
            next_after(&every, &utc, at("2026-12-01T10:00:00Z")),
            Some(at("2026-12-01T10:01:00Z"))
        );
    }

    #[test]
    fn a_due_run_makes_one_job_and_missed_runs_catch_up_once_within_the_deadline() {
        let c = cj("*/5 * * * *", serde_json::json!({}));
        // Created at 00:00:30; at 00:07 the 00:05 run is due.
        let p = plan(&c, &[], at("2026-12-01T00:07:00Z"), &TimeZone::UTC).unwrap();
        assert_eq!(p.run, Some(at("2026-12-01T00:05:00Z")));
        assert_eq!(p.next, Some(at("2026-12-01T00:10:00Z")));
        assert_eq!(
            new_job(&c, at("2026-12-01T00:05:00Z")).metadata.name,
            "nightly-29934725"
        );
        // The master was down for hours: one run, the latest missed.
        let mut down = c.clone();
        down.status = Some(CronJobStatus {
            last_schedule_time: Some("2026-12-01T00:05:00Z".into()),
            ..Default::default()
        });
        let p = plan(&down, &[], at("2026-12-01T03:12:00Z"), &TimeZone::UTC).unwrap();
        assert_eq!(p.run, Some(at("2026-12-01T03:10:00Z")));
        // With a deadline of 60 s, a run missed by 2 minutes is skipped.
        down.spec.starting_deadline_seconds = Some(60);
        let p = plan(&down, &[], at("2026-12-01T03:12:00Z"), &TimeZone::UTC).unwrap();
        assert_eq!(p.run, None);
        assert!(p.skipped.unwrap().contains("startingDeadlineSeconds"));
        // Suspended: nothing.
        let mut suspended = c.clone();
        suspended.spec.suspend = Some(true);
        assert_eq!(
            plan(&suspended, &[], at("2026-12-01T00:07:00Z"), &TimeZone::UTC)
                .unwrap()
                .run,
            None
        );
    }

    #[test]
    fn forbid_waits_replace_replaces_and_history_is_trimmed() {
        let c = cj(
            "*/5 * * * *",
            serde_json::json!({"concurrencyPolicy": "Forbid"}),
        );
        let running = vec![job(&c, "2026-12-01T00:00:00Z", None)];
        let p = plan(&c, &running, at("2026-12-01T00:06:00Z"), &TimeZone::UTC).unwrap();
        assert_eq!(p.run, None);
        assert_eq!(p.status.active.len(), 1);
        assert!(p.skipped.unwrap().contains("Forbid"));
        let r = cj(
            "*/5 * * * *",
            serde_json::json!({"concurrencyPolicy": "Replace"}),
        );
        let running = vec![job(&r, "2026-12-01T00:00:00Z", None)];
        let p = plan(&r, &running, at("2026-12-01T00:06:00Z"), &TimeZone::UTC).unwrap();
        assert_eq!(p.run, Some(at("2026-12-01T00:05:00Z")));
        assert_eq!(p.delete, ["nightly-29934720"]);
        // Allow: both run.
        let a = cj("*/5 * * * *", serde_json::json!({}));
        let running = vec![job(&a, "2026-12-01T00:00:00Z", None)];
        let p = plan(&a, &running, at("2026-12-01T00:06:00Z"), &TimeZone::UTC).unwrap();
        assert_eq!(p.run, Some(at("2026-12-01T00:05:00Z")));
        // History: 3 successful and 1 failed are kept, the oldest go.
        let h = cj("0 * * * *", serde_json::json!({}));
        let jobs: Vec<Job> = (1..=5)
            .map(|i| job(&h, &format!("2026-12-01T0{i}:00:00Z"), Some("Complete")))
            .chain((6..=7).map(|i| job(&h, &format!("2026-12-01T0{i}:00:00Z"), Some("Failed"))))
            .collect();
        let mut with_status = h.clone();
        with_status.status = Some(CronJobStatus {
            last_schedule_time: Some("2026-12-01T07:00:00Z".into()),
            ..Default::default()
        });
        let p = plan(
            &with_status,
            &jobs,
            at("2026-12-01T07:30:00Z"),
            &TimeZone::UTC,
        )
        .unwrap();
        let mut deleted = p.delete.clone();
        deleted.sort();
        let name = |t: &str| new_job(&h, at(t)).metadata.name;
        let mut want = vec![
            name("2026-12-01T01:00:00Z"),
            name("2026-12-01T02:00:00Z"),
            name("2026-12-01T06:00:00Z"),
        ];
        want.sort();
        assert_eq!(deleted, want);
        assert_eq!(
            p.status.last_successful_time.as_deref(),
            Some("2026-12-01T05:00:00Z")
        );
    }
}
