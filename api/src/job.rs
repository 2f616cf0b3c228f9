//! Job (`batch/v1`): pods run to completion, `completions` times, `parallelism` at once,
//! retried up to `backoffLimit`.

use serde::{Deserialize, Serialize};

use crate::meta::{Condition, LabelSelector, ObjectMeta};
use crate::pod::PodTemplateSpec;

/// The annotation (and label) holding an Indexed Job's pod index, as Kubernetes names it.
pub const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// The label naming the Job a pod belongs to.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// The label holding the uid of the Job a pod belongs to.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

/// A Job (`batch/v1`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Job {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: JobSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
}

/// The desired state of a Job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct JobSpec {
    /// Pods running at once (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    /// Successful pods needed (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completions: Option<i32>,
    /// Failed pods (or container restarts, with `OnFailure`) before the Job fails (default 6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<i32>,
    /// Seconds from the start before the Job fails with its pods stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    /// Seconds after it finished before the Job (and its pods) are deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i32>,
    /// `NonIndexed` (default) or `Indexed`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub completion_mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// Generated from the Job's uid when not given (`manualSelector` is not supported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    pub template: PodTemplateSpec,
}

impl JobSpec {
    pub fn parallelism(&self) -> i32 {
        self.parallelism.unwrap_or(1).max(0)
    }
    pub fn completions(&self) -> i32 {
        self.completions.unwrap_or(1).max(0)
    }
    pub fn backoff_limit(&self) -> i32 {
        self.backoff_limit.unwrap_or(6).max(0)
    }
    pub fn indexed(&self) -> bool {
        self.completion_mode == "Indexed"
    }
}

/// The observed state of a Job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct JobStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    pub active: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub ready: i32,
    /// An Indexed Job's succeeded indexes, as Kubernetes writes them (`0-2,4`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub completed_indexes: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl JobStatus {
    /// `Complete` or `Failed` when the Job has finished.
    pub fn finished(&self) -> Option<&str> {
        self.conditions
            .iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            .map(|c| c.type_.as_str())
    }
}
