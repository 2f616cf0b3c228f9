//! A per-source budget of failed authentications: a source (an IP address) that keeps
//! sending bad or no credentials is answered 429 for a while instead of being served, so that
//! guessing tokens goes at a few guesses per second per address and a flood of
//! unauthenticated requests costs the master almost nothing. Requests with a valid API token
//! are never held back, and the health checks and the CA are always answered.

use bramble_support::SourceBudget;

/// Failures a source may have in a burst.
pub const BURST: f64 = 20.0;
/// Failures per second a source earns back.
pub const PER_SECOND: f64 = 5.0;
/// Sources remembered at most.
const MAX_SOURCES: usize = 10_000;

/// The budgets of failed authentications, by source.
pub fn failures() -> SourceBudget {
    SourceBudget::new(BURST, PER_SECOND, MAX_SOURCES)
}
