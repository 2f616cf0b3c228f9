//! Scheduler throughput: 10,000 pending pods onto 1,000 Ready nodes, in-process against a
//! real store (redb file), bindings and their Scheduled events written through group
//! commit. Baseline: the same number of plain pod updates through the store in the same
//! run (the write ceiling the scheduler is bound by).
//!
//! Run with `scripts/bench`.

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::time::{Duration, Instant};

use bramble_api::manifest::decode;
use bramble_api::{Kind, Object, Selector};
use bramble_master::store::{Op, Store, StoreOptions, Subresource, WatchFilter};
use tokio_util::sync::CancellationToken;

const NODES: usize = 1000;
const PODS: usize = 10_000;

fn obj(v: serde_json::Value) -> Object {
    decode(v).unwrap().object
}

async fn setup(dir: &std::path::Path) -> Store {
    // A change log that holds every binding, so the bench's own watch never falls behind.
    let opts = StoreOptions {
        change_log: 1 << 16,
        ..StoreOptions::default()
    };
    let (s, _w) = Store::open(&dir.join("store.redb"), opts).unwrap();
    s.create(obj(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}))).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..NODES {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let node = obj(serde_json::json!({
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("n{i}")},
                "status": {"capacity": {"cpu": "4", "memory": "4Gi", "pods": "110"},
                           "allocatable": {"cpu": "4", "memory": "4Gi", "pods": "110"},
                           "conditions": [{"type": "Ready", "status": "True"}]}
            }));
            s.create(node).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    s
}

async fn create_pods(s: &Store) {
    let mut tasks = Vec::new();
    for w in 0..64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..PODS).step_by(64) {
                let pod = obj(serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}"), "namespace": "default"},
                    "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
                }));
                s.create(pod).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn has_node(json: &[u8]) -> bool {
    json.windows(11).any(|w| w == b"\"nodeName\":")
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (rate, baseline) = rt.block_on(async {
        let s = setup(dir.path()).await;
        create_pods(&s).await;
        let shutdown = CancellationToken::new();
        // Count bindings from a watch: polling lists of 10,000 pods would compete with the
        // scheduler for the two cores.
        let mut watch = s
            .watch(WatchFilter::all(Kind::Pod), Some(s.revision()))
            .unwrap();
        let t = Instant::now();
        let sched = tokio::spawn(bramble_master::scheduler::run(s.clone(), shutdown.clone()));
        let mut bound = std::collections::HashSet::new();
        while bound.len() < PODS {
            let c = tokio::time::timeout(Duration::from_secs(300), watch.next())
                .await
                .expect("the scheduler stalled")
                .unwrap();
            if has_node(&c.entry.json) {
                bound.insert(c.entry.name.clone());
            }
        }
        let rate = PODS as f64 / t.elapsed().as_secs_f64();
        shutdown.cancel();
        sched.await.unwrap();
        // Baseline: plain concurrent status updates of the same 10,000 pods.
        let (_, items) = s.list(Kind::Pod, Some("default"), &Selector::everything());
        let pods: Vec<Object> = items.iter().map(|e| e.object().unwrap()).collect();
        let t = Instant::now();
        for chunk in pods.chunks(1024) {
            let writes = chunk.iter().map(|p| {
                let mut p = p.clone();
                if let Object::Pod(pp) = &mut p {
                    pp.status.get_or_insert_with(Default::default).message = "bench".into();
                    pp.metadata.resource_version.clear();
                }
                s.write(Op::Update(p, Subresource::Status))
            });
            for r in futures_util::future::join_all(writes).await {
                r.unwrap();
            }
        }
        (rate, PODS as f64 / t.elapsed().as_secs_f64())
    });
    println!("| benchmark | median | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| scheduler: 10,000 pending pods onto 1,000 nodes (bind + event each) | {rate:.0} bindings/s | {baseline:.0} plain updates/s | {:.2}x |",
        rate / baseline
    );
}
