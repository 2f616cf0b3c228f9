//! Crash safety with a real process: a master is SIGKILLed in the middle of a stream of
//! concurrent writes; after a restart every acknowledged write is present and the store
//! opens cleanly. Repeated over several rounds on the same data dir.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bramble_tests::{MasterProcess, eventually, pod_json};

const ROUNDS: usize = 5;
const WRITERS: usize = 8;

fn stored_pod_names(m: &MasterProcess) -> BTreeSet<String> {
    let list = m
        .http()
        .get("/api/v1/namespaces/default/pods")
        .unwrap()
        .json();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut last_revision = 0u64;
    for round in 0..ROUNDS {
        let m = MasterProcess::start(dir.path()).unwrap();
        // Everything acknowledged before this start must be there.
        let stored = stored_pod_names(&m);
        let want = acked.lock().unwrap().clone();
        let lost: Vec<_> = want.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged writes lost after SIGKILL: {lost:?}"
        );
        let rv: u64 =
            m.http().get("/api/v1/namespaces").unwrap().json()["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
        assert!(
            rv >= last_revision,
            "revision went backwards: {rv} < {last_revision}"
        );

        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for w in 0..WRITERS {
            let (h, acked, stop) = (m.http(), acked.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("r{round}-w{w}-{i}");
                    i += 1;
                    match h.post_json(
                        "/api/v1/namespaces/default/pods",
                        &pod_json(&name, "default"),
                    ) {
                        Ok(r) if r.code == 201 => {
                            acked.lock().unwrap().insert(name);
                        }
                        Ok(r) => panic!(
                            "unexpected answer {}: {}",
                            r.code,
                            String::from_utf8_lossy(&r.body)
                        ),
                        // The master died mid-request: this write was never acknowledged.
                        Err(_) => break,
                    }
                }
            }));
        }
        // Let a good number of writes through, then cut the power at a varying moment.
        let before = acked.lock().unwrap().len();
        eventually(Duration::from_secs(20), || {
            acked.lock().unwrap().len() >= before + 200 + round * 37
        });
        last_revision = rv;
        m.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            acked.lock().unwrap().len() > before,
            "round {round}: no write was acknowledged"
        );
    }
    let m = MasterProcess::start(dir.path()).unwrap();
    let stored = stored_pod_names(&m);
    let want = acked.lock().unwrap().clone();
    assert!(
        want.is_subset(&stored),
        "acknowledged writes lost in the last round"
    );
    assert!(
        want.len() >= ROUNDS * 200,
        "too few writes exercised: {}",
        want.len()
    );
}
