//! The Job controller: pods of the template run to completion, `parallelism` at once, until
//! `completions` succeeded (each index once, for `completionMode: Indexed`); failed pods
//! (with `restartPolicy: OnFailure`, container restarts) count toward `backoffLimit`, and new
//! pods after a failure wait out an exponential back-off (10 s doubling to 6 min, as in
//! Kubernetes); `activeDeadlineSeconds` fails the Job and stops its pods;
//! `ttlSecondsAfterFinished` deletes a finished Job with its pods. Time is the master's clock.
//!
//! [`plan`] is pure (the time is an argument); [`Jobs`] is the shell on the shared loop, which
//! asks to be woken for deadlines, TTLs and back-offs (no change would end those).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bramble_api::job::{
    COMPLETION_INDEX_ANNOTATION, CONTROLLER_UID_LABEL, JOB_NAME_LABEL, Job, JobStatus,
};
use bramble_api::meta::{Condition, OwnerReference};
use bramble_api::pod::{EnvVar, Pod};
use bramble_api::time::{format_rfc3339, parse_rfc3339};
use bramble_api::{Kind, Object};

use super::Controller;
use super::deployment::is_ready;
use super::objects::{OwnerKey, Owners, delete, pods_of};
use crate::events::EventRecorder;
use crate::store::{Change, EventType, Op, Store, StoreError, Subresource};

/// The longest back-off before a new pod after failures (Kubernetes' 6 min).
const MAX_BACKOFF_SECS: i64 = 360;

/// What to do now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Pods to create: None for a NonIndexed Job, the index for an Indexed one.
    pub create: Vec<Option<i32>>,
    /// Names of pods to delete (stopped: the Job failed, was suspended, or is complete).
    pub delete: Vec<String>,
    pub status: JobStatus,
    /// Delete the Job itself (its TTL after finishing is over).
    pub delete_job: bool,
    /// Look again after this many seconds (a back-off, a deadline, a TTL).
    pub requeue_secs: Option<i64>,
    /// `(reason, message)` of the condition the Job just reached, for an event.
    pub finished_now: Option<(String, String)>,
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().map_or("", |s| s.phase.as_str())
}

/// A pod's completion index (Indexed Jobs).
pub fn index_of(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .get(COMPLETION_INDEX_ANNOTATION)
        .and_then(|i| i.parse().ok())
}

/// When a failed pod ended: its containers' latest finish, else its creation.
fn ended_at(p: &Pod) -> i64 {
    let finished = p.status.as_ref().and_then(|s| {
        s.container_statuses
            .iter()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.clone())
            .filter_map(|t| parse_rfc3339(&t))
            .max()
    });
    finished
        .or_else(|| {
            p.metadata
                .creation_timestamp
                .as_deref()
                .and_then(parse_rfc3339)
        })
        .unwrap_or(0)
}

/// `0-2,4,6-7`, as Kubernetes writes completed indexes.
pub fn compress(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = indexes.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().unwrap_or(end);
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

fn condition(type_: &str, reason: &str, message: &str, now: i64) -> Condition {
    Condition {
        type_: type_.into(),
        status: "True".into(),
        last_transition_time: Some(format_rfc3339(now)),
        reason: reason.into(),
        message: message.into(),
        ..Default::default()
    }
}

/// Plans one step of `job` with its pods at `now` (Unix seconds); `backoff_base` is the
/// first back-off after a failure (Kubernetes' 10 s).
pub fn plan(job: &Job, pods: &[Pod], now: i64, backoff_base: Duration) -> Plan {
    let s = &job.spec;
    let old = job.status.clone().unwrap_or_default();
    let mut plan = Plan::default();
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let active: Vec<&Pod> = live
        .iter()
        .copied()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    let succeeded: Vec<&Pod> = pods.iter().filter(|p| phase(p) == "Succeeded").collect();
    let failed: Vec<&Pod> = pods.iter().filter(|p| phase(p) == "Failed").collect();
    let on_failure = s.template.spec.restart_policy == "OnFailure";
    let restarts: i32 = if on_failure {
        active
            .iter()
            .filter_map(|p| p.status.as_ref())
            .flat_map(|st| st.container_statuses.iter().map(|c| c.restart_count))
            .sum()
    } else {
        0
    };
    let failures = failed.len() as i32 + restarts;
    let mut status = JobStatus {
        start_time: old.start_time.clone().or_else(|| Some(format_rfc3339(now))),
        completion_time: old.completion_time.clone(),
        active: active.len() as i32,
        succeeded: succeeded.len() as i32,
        failed: failed.len() as i32,
        ready: active.iter().filter(|p| is_ready(p)).count() as i32,
        completed_indexes: String::new(),
        conditions: old.conditions.clone(),
    };
    let indexes: BTreeSet<i32> = succeeded.iter().filter_map(|p| index_of(p)).collect();
    if s.indexed() {
        status.completed_indexes = compress(&indexes);
    }
    let stop_all = |plan: &mut Plan| {
        plan.delete
            .extend(active.iter().map(|p| p.metadata.name.clone()));
    };
    // Finished: only its TTL is left (and the pods of a failed one to stop).
    if let Some(kind) = old.finished() {
        if kind == "Failed" {
            stop_all(&mut plan);
        }
        if let Some(ttl) = s.ttl_seconds_after_finished {
            let done_at = old
                .conditions
                .iter()
                .filter_map(|c| c.last_transition_time.as_deref().and_then(parse_rfc3339))
                .max()
                .unwrap_or(now);
            let due = done_at + i64::from(ttl);
            if now >= due {
                plan.delete_job = true;
            } else {
                plan.requeue_secs = Some(due - now);
            }
        }
        plan.status = status;
        return plan;
    }
    let start = status
        .start_time
        .as_deref()
        .and_then(parse_rfc3339)
        .unwrap_or(now);
    let finish =
        |plan: &mut Plan, status: &mut JobStatus, type_: &str, reason: &str, message: &str| {
            status
                .conditions
                .push(condition(type_, reason, message, now));
            if type_ == "Complete" {
                status.completion_time = Some(format_rfc3339(now));
            }
            plan.finished_now = Some((reason.to_string(), message.to_string()));
            if let Some(ttl) = s.ttl_seconds_after_finished {
                plan.requeue_secs = Some(i64::from(ttl));
            }
        };
    let completions = s.completions();
    let done = if s.indexed() {
        (0..completions).all(|i| indexes.contains(&i))
    } else {
        status.succeeded >= completions
    };
    if done {
        stop_all(&mut plan);
        finish(&mut plan, &mut status, "Complete", "", "");
        plan.finished_now = Some(("Completed".into(), "Job completed".into()));
        plan.status = status;
        return plan;
    }
    if let Some(deadline) = s.active_deadline_seconds {
        if now - start >= deadline {
            stop_all(&mut plan);
            finish(
                &mut plan,
                &mut status,
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            );
            plan.status = status;
            return plan;
        }
        plan.requeue_secs = Some(start + deadline - now);
    }
    if failures > s.backoff_limit() {
        stop_all(&mut plan);
        finish(
            &mut plan,
            &mut status,
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        );
        plan.status = status;
        return plan;
    }
    if s.suspend == Some(true) {
        stop_all(&mut plan);
        plan.status = status;
        return plan;
    }
    // New pods wait out the back-off after the latest failure.
    if !failed.is_empty() {
        let last = failed.iter().map(|p| ended_at(p)).max().unwrap_or(now);
        let exp = (failed.len() as u32 - 1).min(16);
        let delay = (backoff_base.as_secs() as i64)
            .saturating_mul(1 << exp)
            .min(MAX_BACKOFF_SECS);
        if now < last + delay {
            let wait = last + delay - now;
            plan.requeue_secs = Some(plan.requeue_secs.map_or(wait, |r| r.min(wait)));
            plan.status = status;
            return plan;
        }
    }
    let room = (s.parallelism() - status.active).max(0);
    if s.indexed() {
        let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
        plan.create = (0..completions)
            .filter(|i| !indexes.contains(i) && !running.contains(i))
            .take(room as usize)
            .map(Some)
            .collect();
    } else {
        let left = (completions - status.succeeded - status.active).max(0);
        plan.create = vec![None; room.min(left) as usize];
    }
    plan.status = status;
    plan
}

/// A pod of the Job (`index`: its completion index, for an Indexed Job).
pub fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    let mut p = Pod {
        metadata: job.spec.template.metadata.clone(),
        spec: job.spec.template.spec.clone(),
        ..Default::default()
    };
    let name = &job.metadata.name;
    p.metadata.name.clear();
    p.metadata.namespace = job.metadata.namespace.clone();
    for (k, v) in [
        (JOB_NAME_LABEL, name.as_str()),
        (CONTROLLER_UID_LABEL, job.metadata.uid.as_str()),
        ("job-name", name.as_str()),
        ("controller-uid", job.metadata.uid.as_str()),
    ] {
        p.metadata.labels.insert(k.into(), v.into());
    }
    match index {
        Some(i) => {
            p.metadata.generate_name = format!("{name}-{i}-");
            p.metadata
                .annotations
                .insert(COMPLETION_INDEX_ANNOTATION.into(), i.to_string());
            p.metadata
                .labels
                .insert(COMPLETION_INDEX_ANNOTATION.into(), i.to_string());
            if p.spec.hostname.is_empty() {
                p.spec.hostname = format!("{name}-{i}");
            }
            for c in &mut p.spec.containers {
                c.env.push(EnvVar {
                    name: "JOB_COMPLETION_INDEX".into(),
                    value: i.to_string(),
                    value_from: None,
                });
            }
        }
        None => p.metadata.generate_name = format!("{name}-"),
    }
    p.metadata.owner_references = vec![OwnerReference::controller(Kind::Job, &job.metadata)];
    p
}

/// The Job controller's shell.
pub struct Jobs {
    events: EventRecorder,
    owners: Owners,
    backoff_base: Duration,
    timers: Vec<(OwnerKey, Instant)>,
}

impl Jobs {
    /// `backoff_base`: the first back-off after a failed pod (`--job-backoff`, 10 s).
    pub fn new(store: &Store, backoff_base: Duration) -> Self {
        Jobs {
            events: EventRecorder::new(store.clone(), "job-controller"),
            owners: Owners::default(),
            backoff_base,
            timers: Vec::new(),
        }
    }
}

impl Controller for Jobs {
    type Key = OwnerKey;
    const NAME: &'static str = "job";
    const WATCHES: &'static [Kind] = &[Kind::Job, Kind::Pod];

    async fn resync(&mut self, store: &Store) -> Vec<OwnerKey> {
        self.owners.resync(store, Kind::Job, Kind::Pod)
    }

    fn keys(&mut self, c: &Change) -> Vec<OwnerKey> {
        match c.entry.object() {
            Ok(Object::Job(j)) => {
                vec![
                    self.owners
                        .owner_changed(&j.metadata, c.type_ == EventType::Deleted),
                ]
            }
            Ok(Object::Pod(p)) => self.owners.child_changed(&p.metadata, Kind::Job),
            _ => Vec::new(),
        }
    }

    fn timers(&mut self) -> Vec<(OwnerKey, Instant)> {
        std::mem::take(&mut self.timers)
    }

    async fn reconcile(&mut self, store: &Store, key: &OwnerKey) -> Result<(), StoreError> {
        let (ns, name) = match key {
            OwnerKey::Owned { namespace, uid } => {
                return self.owners.collect(store, Kind::Pod, namespace, uid).await;
            }
            OwnerKey::Owner { namespace, name } => (namespace, name),
        };
        let Some(entry) = store.get(Kind::Job, ns, name) else {
            return Ok(());
        };
        let Object::Job(job) = entry.object()? else {
            return Ok(());
        };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        // Its pods carry its uid as a label: the store picks them out before decoding.
        let mut by_uid = bramble_api::meta::LabelSelector::default();
        by_uid
            .match_labels
            .insert(CONTROLLER_UID_LABEL.into(), job.metadata.uid.clone());
        let pods = pods_of(store, ns, &by_uid, &job.metadata.uid);
        let now = bramble_api::time::now_secs();
        let plan = plan(&job, &pods, now, self.backoff_base);
        if let Some(secs) = plan.requeue_secs {
            let at = Instant::now() + Duration::from_secs(secs.max(0) as u64);
            self.timers.push((key.clone(), at));
        }
        if plan.delete_job {
            // Its pods follow through the Owned key of the deletion.
            return delete(store, Kind::Job, ns, name).await;
        }
        for index in &plan.create {
            store
                .write(Op::Create(Object::Pod(new_pod(&job, *index))))
                .await?;
        }
        if !plan.create.is_empty() {
            let msg = format!("Created {} pod(s)", plan.create.len());
            self.events
                .record(Object::Job(job.clone()), "Normal", "SuccessfulCreate", &msg)
                .await;
        }
        for pod in &plan.delete {
            delete(store, Kind::Pod, ns, pod).await?;
        }
        if let Some((reason, message)) = &plan.finished_now {
            let type_ = if reason == "Completed" {
                "Normal"
            } else {
                "Warning"
            };
            self.events
                .record(Object::Job(job.clone()), type_, reason, message)
                .await;
        }
        if job.status.as_ref() != Some(&plan.status) {
            let mut updated = job;
            updated.status = Some(plan.status);
            updated.metadata.resource_version.clear();
            store
                .write(Op::Update(Object::Job(updated), Subresource::Status))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(10);

    fn job(spec: serde_json::Value) -> Job {
        let mut j: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "backup", "namespace": "default"},
            "spec": spec,
        }))
        .unwrap();
        j.metadata.uid = "job-uid".into();
        if j.spec.template.spec.restart_policy.is_empty() {
            j.spec.template.spec.restart_policy = "Never".into();
        }
        j
    }

    fn pod(j: &Job, name: &str, index: Option<i32>, phase: &str, ended: i64) -> Pod {
        let mut p = new_pod(j, index);
        p.metadata.name = name.into();
        p.metadata.creation_timestamp = Some(format_rfc3339(ended));
        p.status = Some(
            serde_json::from_value(serde_json::json!({"phase": phase, "conditions": [{"type": "Ready", "status": if phase == "Running" {"True"} else {"False"}}]}))
                .unwrap(),
        );
        p
    }

    #[test]
    fn completions_run_parallelism_at_a_time_until_done() {
        let j = job(serde_json::json!({"completions": 5, "parallelism": 2}));
        let p = plan(&j, &[], 1000, BASE);
        assert_eq!(p.create, vec![None, None]);
        assert_eq!(
            p.status.start_time.as_deref(),
            Some(format_rfc3339(1000).as_str())
        );
        let mut pods = vec![
            pod(&j, "a", None, "Succeeded", 1001),
            pod(&j, "b", None, "Succeeded", 1001),
            pod(&j, "c", None, "Succeeded", 1002),
            pod(&j, "d", None, "Running", 1002),
        ];
        let p = plan(&j, &pods, 1003, BASE);
        assert_eq!(p.create, vec![None], "one left to start, one running");
        assert_eq!(
            (p.status.active, p.status.succeeded, p.status.ready),
            (1, 3, 1)
        );
        pods.push(pod(&j, "e", None, "Running", 1003));
        assert!(plan(&j, &pods, 1004, BASE).create.is_empty());
        for p in &mut pods[3..] {
            p.status.as_mut().unwrap().phase = "Succeeded".into();
        }
        let p = plan(&j, &pods, 1005, BASE);
        assert_eq!(p.status.finished(), Some("Complete"));
        assert_eq!(
            p.status.completion_time.as_deref(),
            Some(format_rfc3339(1005).as_str())
        );
        assert!(p.create.is_empty());
    }

    #[test]
    fn failures_back_off_then_stop_at_the_backoff_limit() {
        let j = job(serde_json::json!({"backoffLimit": 1}));
        let failed = vec![pod(&j, "a", None, "Failed", 1000)];
        // 10 s after the failure at 1000, not before.
        let p = plan(&j, &failed, 1005, BASE);
        assert!(p.create.is_empty());
        assert_eq!(p.requeue_secs, Some(5));
        assert_eq!(plan(&j, &failed, 1010, BASE).create, vec![None]);
        let two = vec![failed[0].clone(), pod(&j, "b", None, "Failed", 1020)];
        let p = plan(&j, &two, 1021, BASE);
        assert_eq!(p.status.finished(), Some("Failed"));
        assert_eq!(p.status.conditions[0].reason, "BackoffLimitExceeded");
        assert_eq!(p.status.failed, 2);
        // OnFailure: container restarts count.
        let mut of = job(serde_json::json!({"backoffLimit": 2}));
        of.spec.template.spec.restart_policy = "OnFailure".into();
        let mut running = pod(&of, "r", None, "Running", 1000);
        running.status.as_mut().unwrap().container_statuses =
            vec![serde_json::from_value(
            serde_json::json!({"name": "c", "ready": false, "restartCount": 3, "image": "i"}),
        )
        .unwrap()];
        let p = plan(&of, &[running], 1001, BASE);
        assert_eq!(p.status.finished(), Some("Failed"));
        assert_eq!(p.delete, ["r"], "its pod is stopped");
    }

    #[test]
    fn a_deadline_fails_the_job_and_a_ttl_deletes_it() {
        let mut j =
            job(serde_json::json!({"activeDeadlineSeconds": 30, "ttlSecondsAfterFinished": 60}));
        j.status = Some(JobStatus {
            start_time: Some(format_rfc3339(1000)),
            ..Default::default()
        });
        let running = vec![pod(&j, "a", None, "Running", 1000)];
        let p = plan(&j, &running, 1010, BASE);
        assert_eq!(p.requeue_secs, Some(20));
        let p = plan(&j, &running, 1030, BASE);
        assert_eq!(p.status.conditions[0].reason, "DeadlineExceeded");
        assert_eq!(p.delete, ["a"]);
        j.status = Some(p.status);
        let p = plan(&j, &running, 1040, BASE);
        assert!(!p.delete_job);
        assert_eq!(p.requeue_secs, Some(50));
        assert!(plan(&j, &[], 1090, BASE).delete_job);
    }

    #[test]
    fn an_indexed_job_runs_each_index_once() {
        let j = job(
            serde_json::json!({"completions": 4, "parallelism": 2, "completionMode": "Indexed"}),
        );
        let p = plan(&j, &[], 1000, BASE);
        assert_eq!(p.create, vec![Some(0), Some(1)]);
        let made = new_pod(&j, Some(1));
        assert_eq!(made.metadata.annotations[COMPLETION_INDEX_ANNOTATION], "1");
        assert_eq!(made.spec.hostname, "backup-1");
        assert!(made.spec.containers.iter().all(|c| {
            c.env
                .iter()
                .any(|e| e.name == "JOB_COMPLETION_INDEX" && e.value == "1")
        }));
        let pods = vec![
            pod(&j, "a", Some(0), "Succeeded", 1001),
            pod(&j, "b", Some(1), "Running", 1001),
            pod(&j, "c", Some(3), "Succeeded", 1001),
        ];
        let p = plan(&j, &pods, 1002, BASE);
        assert_eq!(p.create, vec![Some(2)]);
        assert_eq!(p.status.completed_indexes, "0,3");
        let mut s = BTreeSet::from([0, 1, 2, 4, 6, 7]);
        assert_eq!(compress(&s), "0-2,4,6-7");
        s.clear();
        assert_eq!(compress(&s), "");
    }
}
