//! The agent's side of the protocol, as a pure state machine: what to do when the session
//! connects, when a desired-state message applied or revealed a gap, and when a network
//! message arrived. Its only memory is when the node last asked for a network snapshot, so
//! that a burst of out-of-order network events asks once per [`SNAPSHOT_RETRY`], not once
//! per event. The I/O shell in `agent.rs` executes the actions.

use std::time::{Duration, Instant};

/// How long a node waits for a network snapshot it asked for before asking again.
pub const SNAPSHOT_RETRY: Duration = Duration::from_secs(3);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The broker session is up (first connect or a reconnect).
    Connected,
    /// A desired-state message was applied and the desired pods may have changed.
    DesiredChanged,
    /// A desired-state message does not follow the last applied revision.
    DesiredGap,
    /// A network event on the shared stream; `gap`: it does not follow the view's revision.
    SharedNetwork { gap: bool },
    /// A part of a network snapshot on the node's own topic; `cidr_arrived`: the node got its
    /// pod CIDR with it.
    OwnNetwork { cidr_arrived: bool },
    /// A message from the master for another session or hello of this node (a master that
    /// restarted, or a replay).
    OtherSession,
}

/// What to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Subscribe to the node's topics.
    Subscribe,
    /// Send a hello: the master answers with the snapshots the node lacks.
    Hello,
    /// Run a reconcile round now and report what changed.
    Reconcile,
}

/// The protocol state of one agent.
#[derive(Debug)]
pub struct Session {
    /// Whether the node follows the network stream (pod networking on).
    network: bool,
    /// When the node last asked for a network snapshot it has not received yet.
    snapshot_asked: Option<Instant>,
    /// When the node last said hello.
    hello_sent: Option<Instant>,
}

impl Session {
    pub fn new(network: bool) -> Self {
        Session {
            network,
            snapshot_asked: None,
            hello_sent: None,
        }
    }

    /// The actions an event calls for, at `now`.
    pub fn on(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let actions = self.decide(event, now);
        if actions.contains(&Action::Hello) {
            self.hello_sent = Some(now);
        }
        actions
    }

    fn decide(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::OtherSession => {
                // The answer to a recent hello may still be on its way, and messages sent
                // before it are expected: ask again only after a period.
                let recent = self
                    .hello_sent
                    .is_some_and(|t| now.saturating_duration_since(t) < SNAPSHOT_RETRY);
                if recent {
                    Vec::new()
                } else {
                    vec![Action::Hello]
                }
            }
            Event::Connected => {
                // The hello asks for the network snapshot too.
                self.snapshot_asked = self.network.then_some(now);
                vec![Action::Subscribe, Action::Hello]
            }
            Event::DesiredChanged => vec![Action::Reconcile],
            Event::DesiredGap => vec![Action::Hello],
            Event::SharedNetwork { gap: false } => Vec::new(),
            Event::SharedNetwork { gap: true } => {
                let waiting = self
                    .snapshot_asked
                    .is_some_and(|t| now.saturating_duration_since(t) < SNAPSHOT_RETRY);
                if waiting {
                    return Vec::new();
                }
                self.snapshot_asked = Some(now);
                vec![Action::Hello]
            }
            Event::OwnNetwork { cidr_arrived } => {
                self.snapshot_asked = None;
                // Pods waiting for the node's CIDR go on now.
                if cidr_arrived {
                    vec![Action::Reconcile]
                } else {
                    Vec::new()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: (milliseconds since the start, event, the actions expected).
    type Row = (u64, Event, &'static [Action]);

    fn run(network: bool, rows: &[Row]) {
        let t0 = Instant::now();
        let mut s = Session::new(network);
        for (i, (ms, event, want)) in rows.iter().enumerate() {
            let got = s.on(*event, t0 + Duration::from_millis(*ms));
            assert_eq!(got, *want, "row {i}: {event:?} at {ms} ms");
        }
    }

    #[test]
    fn hello_on_connect_and_on_a_desired_gap() {
        use Action::*;
        run(
            false,
            &[
                (0, Event::Connected, &[Subscribe, Hello]),
                (10, Event::DesiredChanged, &[Reconcile]),
                (20, Event::DesiredGap, &[Hello]),
                // Every desired gap asks: the master dedupes, and each is a real miss.
                (30, Event::DesiredGap, &[Hello]),
                // Reconnect: subscribe again and say hello again.
                (40, Event::Connected, &[Subscribe, Hello]),
            ],
        );
    }

    #[test]
    fn messages_for_another_session_ask_for_a_hello_once_per_period() {
        use Action::*;
        run(
            false,
            &[
                // A master that restarted sends for a session it guessed: hello at once.
                (0, Event::OtherSession, &[Hello]),
                (100, Event::OtherSession, &[]),
                (3_000, Event::OtherSession, &[Hello]),
                // Right after any hello, deltas sent before it are expected: nothing.
                (5_000, Event::DesiredGap, &[Hello]),
                (5_100, Event::OtherSession, &[]),
                (8_000, Event::OtherSession, &[Hello]),
            ],
        );
    }

    #[test]
    fn a_burst_of_network_gaps_asks_once_per_retry_period() {
        use Action::*;
        run(
            true,
            &[
                (0, Event::Connected, &[Subscribe, Hello]),
                // The snapshot the hello asked for is on its way: gaps meanwhile ask nothing.
                (100, Event::SharedNetwork { gap: true }, &[]),
                (2_999, Event::SharedNetwork { gap: true }, &[]),
                // It did not come in time: ask again, then hold for another period.
                (3_000, Event::SharedNetwork { gap: true }, &[Hello]),
                (3_500, Event::SharedNetwork { gap: true }, &[]),
                (3_600, Event::SharedNetwork { gap: false }, &[]),
                // The snapshot arrives: the next gap asks at once.
                (
                    3_700,
                    Event::OwnNetwork {
                        cidr_arrived: false,
                    },
                    &[],
                ),
                (3_800, Event::SharedNetwork { gap: true }, &[Hello]),
            ],
        );
    }

    #[test]
    fn the_cidr_arriving_reconciles_at_once() {
        use Action::*;
        run(
            true,
            &[
                (0, Event::OwnNetwork { cidr_arrived: true }, &[Reconcile]),
                (
                    10,
                    Event::OwnNetwork {
                        cidr_arrived: false,
                    },
                    &[],
                ),
                // Without a pending ask, a gap asks immediately.
                (20, Event::SharedNetwork { gap: true }, &[Hello]),
            ],
        );
    }

    #[test]
    fn without_pod_networking_a_connect_asks_no_network_snapshot() {
        let t0 = Instant::now();
        let mut s = Session::new(false);
        s.on(Event::Connected, t0);
        assert_eq!(s.snapshot_asked, None);
        // (A node without networking does not subscribe to the stream; if a gap reached it
        // anyway, it would ask.)
        assert_eq!(
            s.on(Event::SharedNetwork { gap: true }, t0),
            vec![Action::Hello]
        );
    }
}
