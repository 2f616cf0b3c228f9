//! The embedded broker holds a fleet: 500 hollow boards (the real agent code over in-memory
//! containers, each with its own MQTT connection through the TLS front) on one master with
//! the default embedded rumqttd, all Ready and staying Ready, with their heartbeat lag
//! measured by the master (`bramble_gateway_heartbeat_lag_seconds` on /metrics). The large
//! fleets (5,000 and 10,000) are in the fleet bench.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::time::Duration;

use bramble_tests::{
    HollowProcess, MasterProcess, eventually, histogram_buckets, histogram_quantile,
    histogram_window,
};

const LAG: &str = "bramble_gateway_heartbeat_lag_seconds";

#[test]
fn five_hundred_boards_join_the_embedded_broker_and_stay_ready() {
    const BOARDS: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _h = HollowProcess::start(&m, &dir.path().join("hollow"), "b", BOARDS, &[]).unwrap();
    assert!(
        eventually(Duration::from_secs(120), || m.ready_nodes() == BOARDS),
        "{} of {BOARDS} boards Ready after 120 s",
        m.ready_nodes()
    );
    let metrics = || String::from_utf8(m.http().get("/metrics").unwrap().body).unwrap();
    let before = histogram_buckets(&metrics(), LAG);
    let counted_before = before.last().map_or(0, |b| b.1);
    // Ten more seconds of heartbeats: nobody falls behind the node-lost timeout.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(m.ready_nodes(), BOARDS, "a board flapped NotReady");
    }
    let after = histogram_buckets(&metrics(), LAG);
    let counted = after.last().map_or(0, |b| b.1) - counted_before;
    assert!(
        counted >= (BOARDS * 5) as u64,
        "the master measured {counted} heartbeats in 10 s from {BOARDS} boards: {after:?}"
    );
    // The lag of what these boards sent since they joined (a debug build on a shared
    // machine: the bound is loose; the bench measures the release build).
    let window = histogram_window(&before, &after);
    let p99 = histogram_quantile(&window, 0.99);
    assert!(p99 <= 1.0, "heartbeat lag p99 {p99} s: {window:?}");
}
