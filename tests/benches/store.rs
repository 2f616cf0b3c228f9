//! Foundation benchmarks: durable writes with 1 and 64 writers, listing 10,000 pods, watch
//! fan-out to 1,000 watchers, and master RSS holding 10,000 pods. Each figure is a median
//! of several runs and is printed beside a baseline measured in the same run.
//!
//! Run with `scripts/bench` (it builds the release binaries first).

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_api::manifest::decode;
use bramble_api::{Kind, Object, Selector};
use bramble_master::store::{Store, StoreOptions, WatchFilter};
use bramble_tests::{MasterProcess, pod_json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pod(name: &str) -> Object {
    decode(pod_json(name, "default")).unwrap().object
}

async fn fresh_store(dir: &std::path::Path) -> Store {
    let (s, _w) = Store::open(&dir.join("store.redb"), StoreOptions::default()).unwrap();
    let ns = decode(
        serde_json::json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"default"}}),
    )
    .unwrap();
    s.create(ns.object).await.unwrap();
    s
}

/// Raw durable-write ceiling of this disk: 1 KiB appended and fdatasync'd, per second.
fn fsync_baseline(dir: &std::path::Path, n: usize) -> f64 {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("fsync.bin")).unwrap();
    let buf = [7u8; 1024];
    let start = Instant::now();
    for _ in 0..n {
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn writes_per_sec(writers: usize, per_writer: usize) -> f64 {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let s = fresh_store(dir.path()).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                s.create(pod(&format!("w{w}-{i}"))).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (writers * per_writer) as f64 / start.elapsed().as_secs_f64()
}

fn bench_dir() -> std::path::PathBuf {
    // The same disk the master's data dir would be on, not a tmpfs.
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn row(name: &str, value: String, baseline: String, ratio: String) {
    println!("| {name} | {value} | {baseline} | {ratio} |");
}

async fn store_benches() {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let fsyncs = median((0..3).map(|_| fsync_baseline(dir.path(), 300)).collect());
    let one = median({
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(writes_per_sec(1, 300).await);
        }
        v
    });
    let many = median({
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(writes_per_sec(64, 100).await);
        }
        v
    });
    row(
        "durable writes/s, 1 writer",
        format!("{one:.0}"),
        format!("{fsyncs:.0} raw fdatasync/s"),
        format!("{:.2}x of raw fsync", one / fsyncs),
    );
    row(
        "durable writes/s, 64 writers (group commit)",
        format!("{many:.0}"),
        format!("{one:.0} (1 writer)"),
        format!("{:.1}x", many / one),
    );

    // List 10,000 pods from memory.
    let s = fresh_store(dir.path()).await;
    let mut tasks = Vec::new();
    for w in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                s.create(pod(&format!("p{w}-{i}"))).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let list_ms = median(
        (0..21)
            .map(|_| {
                let start = Instant::now();
                let (_, items) = s.list(Kind::Pod, Some("default"), &Selector::everything());
                // Assemble the response body as the API server does.
                let mut body = Vec::with_capacity(items.iter().map(|e| e.json.len() + 1).sum());
                for e in &items {
                    body.extend_from_slice(&e.json);
                    body.push(b',');
                }
                assert_eq!(items.len(), 10_000);
                std::hint::black_box(body);
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    // Baseline: what serving from typed objects would cost (serialize 10,000 pods).
    let (_, items) = s.list(Kind::Pod, Some("default"), &Selector::everything());
    let typed: Vec<Object> = items.iter().map(|e| e.object().unwrap()).collect();
    let ser_ms = median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                let v: Vec<Vec<u8>> = typed.iter().map(Object::to_json).collect();
                std::hint::black_box(v);
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    row(
        "list 10,000 pods from memory (store + body)",
        format!("{list_ms:.2} ms"),
        format!("{ser_ms:.2} ms serializing typed pods"),
        format!("{:.1}x faster", ser_ms / list_ms),
    );
}

async fn http_benches() {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    // Plaintext: this bench measures the store and the watch fan-out (its 1,000 watchers
    // speak raw HTTP); TLS's cost is measured on its own.
    let m = MasterProcess::start_with(dir.path(), &["--insecure-plaintext"]).unwrap();
    let pid = m.child.id();
    let rss = bramble_tests::rss_mb;
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = rss(pid);

    // 10,000 pods through the API, 64 concurrent clients.
    let start = Instant::now();
    let threads: Vec<_> = (0..64)
        .map(|w| {
            let h = m.http();
            std::thread::spawn(move || {
                for i in 0..157 {
                    let n = w * 157 + i;
                    if n >= 10_000 {
                        break;
                    }
                    let r = h
                        .post_json("/api/v1/namespaces/default/pods", &{
                            // Bound pods, as a running cluster holds them (unbound ones
                            // would each add a scheduling status and Event).
                            let mut p = pod_json(&format!("pod-{n}"), "default");
                            p["spec"]["nodeName"] = serde_json::json!("bench-node");
                            p
                        })
                        .unwrap();
                    assert_eq!(r.code, 201);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let http_writes = 10_000.0 / start.elapsed().as_secs_f64();
    row(
        "API creates/s, 64 HTTP clients (10,000 pods)",
        format!("{http_writes:.0}"),
        "-".into(),
        "-".into(),
    );
    let h = m.http();
    let list_ms = median(
        (0..11)
            .map(|_| {
                let start = Instant::now();
                let r = h.get("/api/v1/namespaces/default/pods").unwrap();
                assert_eq!(r.code, 200);
                assert!(r.body.len() > 1_000_000);
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let body_mb = h.get("/api/v1/namespaces/default/pods").unwrap().body.len() as f64 / 1e6;
    row(
        "HTTP GET list of 10,000 pods",
        format!("{list_ms:.1} ms ({body_mb:.1} MB)"),
        "-".into(),
        "-".into(),
    );
    // Right after the burst of creates and lists, then once the master has handed freed
    // memory back (it trims every 5 s): the steady state a board lives with.
    std::thread::sleep(Duration::from_millis(500));
    let burst_rss = rss(pid);
    std::thread::sleep(Duration::from_secs(6));
    let full_rss = rss(pid);
    row(
        "master RSS right after creating and listing 10,000 pods",
        format!("{burst_rss:.1} MB"),
        format!("{idle_rss:.1} MB empty"),
        format!("+{:.1} MB", burst_rss - idle_rss),
    );
    row(
        "master RSS holding 10,000 pods, steady",
        format!("{full_rss:.1} MB"),
        format!("{idle_rss:.1} MB empty"),
        format!("+{:.1} MB", full_rss - idle_rss),
    );

    // And 1,000 ConfigMaps and 1,000 Secrets of 1 KiB each, as a cluster of charts holds.
    let value = "x".repeat(1024);
    for i in 0..1000 {
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("cm-{i}")}, "data": {"config.yaml": value}});
        assert_eq!(
            h.post_json("/api/v1/namespaces/default/configmaps", &cm)
                .unwrap()
                .code,
            201
        );
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("s-{i}")}, "stringData": {"password": value}});
        assert_eq!(
            h.post_json("/api/v1/namespaces/default/secrets", &secret)
                .unwrap()
                .code,
            201
        );
    }
    std::thread::sleep(Duration::from_secs(6));
    let config_rss = rss(pid);
    row(
        "master RSS holding 10,000 pods + 1,000 ConfigMaps + 1,000 Secrets (1 KiB each), steady",
        format!("{config_rss:.1} MB"),
        format!("{full_rss:.1} MB with the pods only"),
        format!("+{:.1} MB", config_rss - full_rss),
    );

    // Watch fan-out: 1,000 HTTP watch streams; time from a create to every stream seeing it.
    let addr = m.url.trim_start_matches("http://").to_string();
    let token = m.token.clone();
    let mut fanout = Vec::new();
    let watchers = 1000;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<(usize, Instant)>(watchers * 8);
    let mut handles = Vec::new();
    for _ in 0..watchers {
        let (addr, token, ready_tx, seen_tx) = (
            addr.clone(),
            token.clone(),
            ready_tx.clone(),
            seen_tx.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let req = format!(
                "GET /api/v1/namespaces/default/pods?watch=true&resourceVersion=0&labelSelector=fan%3Dout HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            ready_tx.send(()).await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = 0usize;
            let mut carry = Vec::new();
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                carry.extend_from_slice(&buf[..n]);
                // Each event names its pod "fan-<k>"; count the ones this stream has seen.
                while let Some(pos) = find(&carry, b"\"name\":\"fan-") {
                    let rest = &carry[pos + 12..];
                    let Some(end) = rest.iter().position(|&c| c == b'"') else { break };
                    let k: usize = std::str::from_utf8(&rest[..end]).unwrap().parse().unwrap();
                    if k >= seen {
                        seen = k + 1;
                        let _ = seen_tx.send((k, Instant::now())).await;
                    }
                    carry.drain(..pos + 12 + end);
                }
            }
        }));
    }
    for _ in 0..watchers {
        ready_rx.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let h = Arc::new(m.http());
    for k in 0..11usize {
        let mut p = pod_json(&format!("fan-{k}"), "default");
        p["metadata"]["labels"]["fan"] = serde_json::json!("out");
        let h2 = h.clone();
        let start = Instant::now();
        tokio::task::spawn_blocking(move || {
            assert_eq!(
                h2.post_json("/api/v1/namespaces/default/pods", &p)
                    .unwrap()
                    .code,
                201
            )
        })
        .await
        .unwrap();
        let mut got = 0;
        let mut last = start;
        while got < watchers {
            let (kk, t) = tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
                .await
                .unwrap()
                .unwrap();
            if kk == k {
                got += 1;
                last = last.max(t);
            }
        }
        fanout.push((last - start).as_secs_f64() * 1e3);
    }
    let fan_ms = median(fanout);
    row(
        "watch fan-out: create -> all 1,000 HTTP watchers",
        format!("{fan_ms:.1} ms"),
        "-".into(),
        "-".into(),
    );
    for hd in handles {
        hd.abort();
    }
    drop(m);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn store_fanout() {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let s = fresh_store(dir.path()).await;
    let n = 1000;
    let mut samples = Vec::new();
    for k in 0..11 {
        let (tx, mut rx) = tokio::sync::mpsc::channel(n);
        let from = s.revision();
        let mut hs = Vec::new();
        for _ in 0..n {
            let filter = WatchFilter::all(Kind::Pod);
            let mut w = s.watch(filter, Some(from)).unwrap();
            let tx = tx.clone();
            hs.push(tokio::spawn(async move {
                let c = w.next().await.unwrap();
                std::hint::black_box(c);
                tx.send(Instant::now()).await.unwrap();
            }));
        }
        let start = Instant::now();
        s.create(pod(&format!("f{k}"))).await.unwrap();
        let mut last = start;
        for _ in 0..n {
            last = last.max(rx.recv().await.unwrap());
        }
        samples.push((last - start).as_secs_f64() * 1e3);
    }
    row(
        "watch fan-out in the store: commit -> 1,000 watchers",
        format!("{:.2} ms", median(samples)),
        "-".into(),
        "-".into(),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| benchmark | median | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    rt.block_on(async {
        store_benches().await;
        store_fanout().await;
        http_benches().await;
    });
}
