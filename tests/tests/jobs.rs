//! Jobs for real, as root: a master and an agent running busybox pods to completion.
//! `completions`/`parallelism` (watched: never more pods at once than allowed), a failing Job
//! stopping at `backoffLimit`, an Indexed Job, `activeDeadlineSeconds` and
//! `ttlSecondsAfterFinished`.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bramble_tests::{
    AgentDirCleanup, AgentProcess, MasterProcess, eventually, ok_stdout, require_root,
};

fn job(name: &str, spec: &str, command: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
{spec}  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: [sh, -c, '{command}']
"#
    )
}

fn job_json(m: &MasterProcess, name: &str) -> serde_json::Value {
    m.http()
        .get(&format!("/apis/batch/v1/namespaces/default/jobs/{name}"))
        .unwrap()
        .json()
}

fn condition(m: &MasterProcess, name: &str) -> (String, String) {
    let j = job_json(m, name);
    j["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["status"] == "True"))
        .map(|c| {
            (
                c["type"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

fn pods_of(m: &MasterProcess, job: &str) -> Vec<serde_json::Value> {
    m.pods()
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["job-name"] == job)
        .collect()
}

#[test]
fn jobs_complete_fail_at_their_limits_and_are_collected() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let m =
        MasterProcess::start_with(&dir.path().join("master"), &["--job-backoff", "1s"]).unwrap();
    let _a = AgentProcess::start(&m, &agent_dir, "board-a", &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || m.ready_nodes() == 1));

    // completions 5, parallelism 2: watched pod by pod, never more than 2 running.
    let rx = bramble_tests::watch_events(
        &m,
        "/api/v1/namespaces/default/pods?watch=true&labelSelector=job-name%3Dbatch",
    );
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&job(
            "batch",
            "  completions: 5\n  parallelism: 2\n",
            "sleep 0.5; echo done",
        )),
    ));
    let mut state: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut most_active = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while condition(&m, "batch").0 != "Complete" {
        assert!(
            Instant::now() < deadline,
            "the Job did not complete: {}",
            job_json(&m, "batch")
        );
        while let Ok(ev) = rx.recv_timeout(Duration::from_millis(200)) {
            let name = ev["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string();
            if ev["type"] == "DELETED" {
                state.remove(&name);
            } else {
                state.insert(name, ev["object"].clone());
            }
            let active = state
                .values()
                .filter(|p| {
                    !matches!(
                        p["status"]["phase"].as_str(),
                        Some("Succeeded") | Some("Failed")
                    )
                })
                .count();
            most_active = most_active.max(active);
            assert!(active <= 2, "more than parallelism: {active} active");
        }
    }
    assert_eq!(most_active, 2, "it ran 2 at a time");
    let j = job_json(&m, "batch");
    assert_eq!(j["status"]["succeeded"], 5);
    assert!(j["status"]["completionTime"].is_string());
    assert_eq!(pods_of(&m, "batch").len(), 5, "succeeded pods are kept");
    let table = ok_stdout(&m.cli(&["get", "jobs"]));
    let row = table
        .lines()
        .find(|l| l.starts_with("batch"))
        .unwrap()
        .to_string();
    assert!(row.contains("Complete") && row.contains("5/5"), "{table}");

    // Failing pods: one retry (after the 1 s back-off), then Failed at backoffLimit 1.
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&job("broken", "  backoffLimit: 1\n", "exit 3")),
    ));
    assert!(
        eventually(Duration::from_secs(40), || condition(&m, "broken").0
            == "Failed"),
        "{}",
        job_json(&m, "broken")
    );
    assert_eq!(condition(&m, "broken").1, "BackoffLimitExceeded");
    assert_eq!(job_json(&m, "broken")["status"]["failed"], 2);
    assert_eq!(pods_of(&m, "broken").len(), 2, "no third pod");

    // Indexed: each index once, with its index in the pod.
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&job(
            "indexed",
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n",
            "echo index=$JOB_COMPLETION_INDEX host=$(hostname)",
        )),
    ));
    assert!(
        eventually(Duration::from_secs(40), || condition(&m, "indexed").0
            == "Complete"),
        "{}",
        job_json(&m, "indexed")
    );
    assert_eq!(job_json(&m, "indexed")["status"]["completedIndexes"], "0-2");
    for p in pods_of(&m, "indexed") {
        let i = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .unwrap()
            .to_string();
        let name = p["metadata"]["name"].as_str().unwrap();
        let log = ok_stdout(&m.cli(&["logs", name]));
        assert!(
            log.contains(&format!("index={i} host=indexed-{i}")),
            "{log}"
        );
    }

    // A deadline stops a Job that runs too long; a TTL deletes a finished one with its pods.
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&job(
            "slow",
            "  activeDeadlineSeconds: 2\n  ttlSecondsAfterFinished: 2\n",
            "trap \"exit 0\" TERM; sleep 60 & wait",
        )),
    ));
    assert!(
        eventually(Duration::from_secs(20), || condition(&m, "slow").1
            == "DeadlineExceeded"),
        "{}",
        job_json(&m, "slow")
    );
    assert!(
        eventually(Duration::from_secs(20), || m
            .http()
            .get("/apis/batch/v1/namespaces/default/jobs/slow")
            .unwrap()
            .code
            == 404),
        "the finished Job was not deleted after its TTL"
    );
    assert!(
        eventually(Duration::from_secs(20), || pods_of(&m, "slow").is_empty()),
        "its pods were not collected"
    );

    // Deleting a Job deletes its pods.
    ok_stdout(&m.cli(&["delete", "job", "batch"]));
    assert!(eventually(Duration::from_secs(20), || pods_of(&m, "batch").is_empty()));
}
