//! CronJobs on the master's clock, for real (as root, with an agent running busybox): a
//! `*/1 * * * *` schedule makes a Job at a minute boundary; with `concurrencyPolicy: Forbid`
//! the next minute makes none while it still runs; `bramble create job --from cronjob/NAME`
//! runs the template at once. This test waits out up to two minute boundaries.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::time::Duration;

use bramble_tests::{
    AgentDirCleanup, AgentProcess, MasterProcess, eventually, ok_stdout, require_root,
};

const CRONJOB: &str = r#"apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "*/1 * * * *"
  timeZone: Europe/Berlin
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
          - name: main
            image: busybox
            command: [sh, -c, 'trap "exit 0" TERM; echo tick; sleep 300 & wait']
"#;

fn jobs(m: &MasterProcess) -> Vec<serde_json::Value> {
    m.http()
        .get("/apis/batch/v1/namespaces/default/jobs")
        .unwrap()
        .json()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn scheduled(m: &MasterProcess) -> Vec<serde_json::Value> {
    jobs(m)
        .into_iter()
        .filter(|j| {
            j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
                .is_string()
        })
        .collect()
}

#[test]
fn a_cronjob_runs_on_the_minute_and_forbid_holds_the_next_run() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _a = AgentProcess::start(&m, &agent_dir, "board-a", &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || m.ready_nodes() == 1));
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(CRONJOB)));

    // A manual run from the template, at once.
    let out = ok_stdout(&m.cli(&["create", "job", "by-hand", "--from", "cronjob/tick"]));
    assert!(out.contains("job/by-hand created"), "{out}");
    let j = m
        .http()
        .get("/apis/batch/v1/namespaces/default/jobs/by-hand")
        .unwrap()
        .json();
    assert_eq!(
        j["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert!(eventually(Duration::from_secs(20), || m
        .pods()
        .iter()
        .any(|p| p["metadata"]["labels"]["job-name"] == "by-hand"
            && p["status"]["phase"] == "Running")));
    // Out of the way, so that Forbid judges the scheduled runs only.
    ok_stdout(&m.cli(&["delete", "job", "by-hand"]));
    assert!(eventually(Duration::from_secs(20), || jobs(&m).is_empty()));

    // The first scheduled run comes at the next minute boundary.
    assert!(
        eventually(Duration::from_secs(75), || scheduled(&m).len() == 1),
        "no Job after a minute: {:?}",
        jobs(&m)
    );
    let first = scheduled(&m).remove(0);
    let at = first["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(at.ends_with(":00Z"), "{at}");
    let t = bramble_api::time::parse_rfc3339(&at).unwrap();
    assert_eq!(first["metadata"]["name"], format!("tick-{}", t / 60));
    let cj = m
        .http()
        .get("/apis/batch/v1/namespaces/default/cronjobs/tick")
        .unwrap()
        .json();
    assert!(
        eventually(Duration::from_secs(10), || {
            let cj = m
                .http()
                .get("/apis/batch/v1/namespaces/default/cronjobs/tick")
                .unwrap()
                .json();
            cj["status"]["lastScheduleTime"] == at.as_str()
                && cj["status"]["active"]
                    .as_array()
                    .is_some_and(|a| a.len() == 1)
        }),
        "{cj}"
    );
    let table = ok_stdout(&m.cli(&["get", "cj"]));
    assert!(
        table.contains("*/1 * * * *") && table.contains("Europe/Berlin"),
        "{table}"
    );

    // The next boundary passes with the first Job still running: Forbid makes none.
    // Watched over the whole window, not only at its end.
    let next = t + 60;
    let window = (next + 8 - bramble_api::time::now_secs()).max(1) as u64;
    assert!(
        bramble_tests::consistently(Duration::from_secs(window), || scheduled(&m).len() == 1),
        "Forbid let a second run start: {:?}",
        scheduled(&m)
    );

    // Deleting the CronJob deletes its Jobs and their pods.
    ok_stdout(&m.cli(&["delete", "cronjob", "tick"]));
    assert!(eventually(Duration::from_secs(30), || jobs(&m).is_empty()
        && m.pods().is_empty()));
}
