//! Probe bookkeeping, pure: when a probe is due, and what a result means (thresholds).

use bramble_api::pod::{Container, Probe};

use crate::runtime::{ProbeAction, ProbeError};

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Liveness,
    Readiness,
}

/// Probe state of one container instance (in memory: a restarted agent starts afresh, as
/// the kubelet does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeState {
    pub next_liveness_ms: i64,
    pub liveness_failures: u32,
    pub next_readiness_ms: i64,
    pub readiness_successes: u32,
    pub readiness_failures: u32,
    pub ready: bool,
}

/// What a result asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Nothing,
    /// The liveness probe failed `failureThreshold` times: restart the container.
    Restart(String),
}

fn ms(secs: Option<i32>, default: i32) -> i64 {
    i64::from(secs.unwrap_or(default).max(0)) * 1000
}

/// Whether a probe is due at `now` for a container running since `started_ms`.
pub fn due(probe: &Probe, started_ms: i64, next_ms: i64, now: i64) -> bool {
    now >= started_ms + ms(probe.initial_delay_seconds, 0) && now >= next_ms
}

/// The probe's action against its container (None if a named port does not exist).
pub fn action(c: &Container, p: &Probe) -> Option<ProbeAction> {
    if let Some(e) = &p.exec {
        return Some(ProbeAction::Exec(e.command.clone()));
    }
    if let Some(h) = &p.http_get {
        let port = c.resolve_port(h.port.as_ref()?)?;
        return Some(ProbeAction::Http {
            host: h.host.clone(),
            port,
            path: h.path.clone(),
        });
    }
    if let Some(t) = &p.tcp_socket {
        let port = c.resolve_port(t.port.as_ref()?)?;
        return Some(ProbeAction::Tcp {
            host: t.host.clone(),
            port,
        });
    }
    None
}

/// The probe's timeout.
pub fn timeout(p: &Probe) -> std::time::Duration {
    std::time::Duration::from_millis(ms(p.timeout_seconds, 1).max(100) as u64)
}

/// Folds one result into the state.
pub fn record(
    state: &mut ProbeState,
    kind: Kind,
    p: &Probe,
    result: &Result<(), ProbeError>,
    now: i64,
) -> Verdict {
    let period = ms(p.period_seconds, 10).max(1000);
    let failure_threshold = p.failure_threshold.unwrap_or(3).max(1) as u32;
    match kind {
        Kind::Liveness => {
            state.next_liveness_ms = now + period;
            match result {
                Ok(()) => state.liveness_failures = 0,
                Err(e) => {
                    state.liveness_failures += 1;
                    if state.liveness_failures >= failure_threshold {
                        state.liveness_failures = 0;
                        return Verdict::Restart(format!("Liveness probe failed: {e}"));
                    }
                }
            }
        }
        Kind::Readiness => {
            state.next_readiness_ms = now + period;
            match result {
                Ok(()) => {
                    state.readiness_failures = 0;
                    state.readiness_successes += 1;
                    if state.readiness_successes >= p.success_threshold.unwrap_or(1).max(1) as u32 {
                        state.ready = true;
                    }
                }
                Err(_) => {
                    state.readiness_successes = 0;
                    state.readiness_failures += 1;
                    if state.readiness_failures >= failure_threshold {
                        state.ready = false;
                    }
                }
            }
        }
    }
    Verdict::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(extra: serde_json::Value) -> Probe {
        let mut v = serde_json::json!({"exec": {"command": ["true"]}, "periodSeconds": 2, "failureThreshold": 3});
        if let (Some(a), Some(b)) = (v.as_object_mut(), extra.as_object()) {
            a.extend(b.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn initial_delay_and_period() {
        let p = probe(serde_json::json!({"initialDelaySeconds": 5}));
        assert!(!due(&p, 1000, 0, 5999));
        assert!(due(&p, 1000, 0, 6000));
        let mut s = ProbeState::default();
        record(&mut s, Kind::Liveness, &p, &Ok(()), 6000);
        assert!(!due(&p, 1000, s.next_liveness_ms, 7999));
        assert!(due(&p, 1000, s.next_liveness_ms, 8000));
    }

    #[test]
    fn liveness_restarts_after_the_threshold_of_consecutive_failures() {
        let p = probe(serde_json::json!({}));
        let mut s = ProbeState::default();
        let err = || Err(ProbeError::ExitCode(1));
        assert_eq!(
            record(&mut s, Kind::Liveness, &p, &err(), 0),
            Verdict::Nothing
        );
        assert_eq!(
            record(&mut s, Kind::Liveness, &p, &err(), 0),
            Verdict::Nothing
        );
        record(&mut s, Kind::Liveness, &p, &Ok(()), 0);
        assert_eq!(
            record(&mut s, Kind::Liveness, &p, &err(), 0),
            Verdict::Nothing,
            "a success resets the count"
        );
        record(&mut s, Kind::Liveness, &p, &err(), 0);
        assert_eq!(
            record(&mut s, Kind::Liveness, &p, &err(), 0),
            Verdict::Restart("Liveness probe failed: exit status 1".into())
        );
    }

    #[test]
    fn readiness_needs_successes_and_is_lost_after_failures() {
        let p = probe(serde_json::json!({"successThreshold": 2, "failureThreshold": 2}));
        let mut s = ProbeState::default();
        record(&mut s, Kind::Readiness, &p, &Ok(()), 0);
        assert!(!s.ready);
        record(&mut s, Kind::Readiness, &p, &Ok(()), 0);
        assert!(s.ready);
        let failed = || Err(ProbeError::HttpStatus(503));
        record(&mut s, Kind::Readiness, &p, &failed(), 0);
        assert!(s.ready, "one failure is below the threshold");
        record(&mut s, Kind::Readiness, &p, &failed(), 0);
        assert!(!s.ready);
    }

    #[test]
    fn actions_resolve_named_ports() {
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]})).unwrap();
        let p: Probe = serde_json::from_value(
            serde_json::json!({"httpGet": {"path": "/healthz", "port": "http"}}),
        )
        .unwrap();
        assert_eq!(
            action(&c, &p),
            Some(ProbeAction::Http {
                host: String::new(),
                port: 8080,
                path: "/healthz".into()
            })
        );
        let p: Probe =
            serde_json::from_value(serde_json::json!({"tcpSocket": {"port": "nope"}})).unwrap();
        assert_eq!(action(&c, &p), None);
    }
}
