//! The runtime boundary under load: hundreds of create/start/kill/delete cycles through the
//! real shim and libcontainer while the async runtime is busy with other work, with nothing
//! left behind. Guards the finding that libcontainer inside a multi-threaded tokio process
//! deadlocks or races; the shim process per container is what makes this reliable.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bramble_agent::runtime::container::LibcontainerRuntime;
use bramble_agent::runtime::{ContainerSpec, Observed, Runtime};
use bramble_tests::{bin, busybox_image, eventually, pod_cgroups, pod_mounts_under, require_root};

const CYCLES: usize = 240;
const PARALLEL: usize = 4;

fn spec(data: &std::path::Path, n: usize) -> ContainerSpec {
    let container = serde_json::from_value(serde_json::json!({
        "name": "c", "image": "busybox", "command": ["sh", "-c", "echo up; exec sleep 30"],
        "resources": {"limits": {"memory": "16Mi"}}
    }))
    .unwrap();
    ContainerSpec {
        id: format!("stress{n}-c-0"),
        pod_uid: format!("stress{n}"),
        pod_name: format!("stress{n}"),
        namespace: "default".into(),
        container,
        image: bramble_agent::images::PreparedImage {
            layers: vec![data.join("images/busybox/rootfs")],
            config: Default::default(),
        },
        netns: None,
        volumes: vec![],
        hostname: format!("stress{n}"),
        log_path: data.join(format!("logs/{n}.log")),
        security: Default::default(),
        files: Vec::new(),
        service_env: Vec::new(),
        share_pids: false,
    }
}

fn wait_for(rt: &dyn Runtime, id: &str, want: fn(&Observed) -> bool) -> Observed {
    let mut last = rt.observe(id);
    eventually(Duration::from_secs(30), || {
        last = rt.observe(id);
        want(&last)
    });
    last
}

#[test]
fn hundreds_of_container_cycles_while_the_agent_is_busy() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().to_path_buf();
    busybox_image(&data.join("images")).unwrap();
    let runtime: Arc<dyn Runtime> = Arc::new(
        LibcontainerRuntime::new(
            &data,
            bin("bramble-agent"),
            bramble_agent::runtime::container::Limits {
                max_log_bytes: 1 << 20,
                pids: Some(bramble_agent::config::DEFAULT_PIDS_LIMIT),
            },
        )
        .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let busy_work = Arc::new(AtomicU64::new(0));
    let done = rt.block_on(async {
        // Other work on the async workers: timers, allocation, channel traffic.
        let mut noise = Vec::new();
        for _ in 0..4 {
            let (stop, busy) = (stop.clone(), busy_work.clone());
            noise.push(tokio::spawn(async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
                while !stop.load(Ordering::Relaxed) {
                    tx.send(vec![0u8; 4096]).await.unwrap();
                    rx.recv().await.unwrap();
                    busy.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }));
        }
        let mut workers = Vec::new();
        for w in 0..PARALLEL {
            let (runtime, data) = (runtime.clone(), data.clone());
            workers.push(tokio::spawn(async move {
                let mut ok = 0;
                for i in (w..CYCLES).step_by(PARALLEL) {
                    let (rt2, d2) = (runtime.clone(), data.clone());
                    tokio::task::spawn_blocking(move || {
                        let s = spec(&d2, i);
                        rt2.start(&s)
                            .unwrap_or_else(|e| panic!("cycle {i}: start: {e}"));
                        let o = wait_for(rt2.as_ref(), &s.id, |o| {
                            matches!(o, Observed::Running { .. })
                        });
                        assert!(matches!(o, Observed::Running { .. }), "cycle {i}: {o:?}");
                        let logged = bramble_tests::eventually(Duration::from_secs(10), || {
                            std::fs::read_to_string(&s.log_path)
                                .unwrap_or_default()
                                .contains("up")
                        });
                        assert!(
                            logged,
                            "cycle {i}: the container's output never reached its log"
                        );
                        rt2.signal(&s.id, libc::SIGKILL).unwrap();
                        let o = wait_for(rt2.as_ref(), &s.id, |o| matches!(o, Observed::Exited(_)));
                        match o {
                            Observed::Exited(e) => assert_eq!(e.code, 137, "cycle {i}"),
                            other => panic!("cycle {i}: not exited: {other:?}"),
                        }
                        rt2.remove(&s.id).unwrap();
                        rt2.remove_sandbox(&s.pod_uid).unwrap();
                    })
                    .await
                    .unwrap();
                    ok += 1;
                }
                ok
            }));
        }
        let mut done = 0;
        for w in workers {
            done += w.await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for n in noise {
            n.await.unwrap();
        }
        done
    });
    assert_eq!(done, CYCLES);
    assert!(
        busy_work.load(Ordering::Relaxed) > 1000,
        "the async workers were starved"
    );
    assert_eq!(
        std::fs::read_dir(data.join("containers")).unwrap().count(),
        0,
        "container dirs left"
    );
    assert_eq!(
        std::fs::read_dir(data.join("run")).unwrap().count(),
        0,
        "libcontainer state left"
    );
    assert!(
        pod_mounts_under(&data).is_empty(),
        "mounts left: {:?}",
        pod_mounts_under(&data)
    );
    for n in 0..CYCLES {
        assert!(
            pod_cgroups(&format!("stress{n}")).is_empty(),
            "cgroups left for cycle {n}"
        );
    }
}
