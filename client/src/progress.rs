//! Reports on a reconnect in progress, for programs that want to tell
//! their user (the `barkeep` CLI prints "barkeepd went away; reconnecting,
//! attempt 3"). The library itself never prints.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// One step of a reconnect, given to the function set with
/// [`crate::ConnectOptions::on_reconnect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reconnecting {
    /// About to try connecting again (attempts count from 1).
    Attempt {
        /// This attempt's number.
        attempt: u32,
        /// Why the connection broke.
        why: String,
        /// How long ago it broke.
        elapsed: Duration,
        /// How long the client keeps trying in all.
        within: Duration,
    },
    /// Connected again; the session's leases are being reclaimed (a lease
    /// that cannot be reclaimed is reported as revoked, as usual).
    Resumed {
        /// How many attempts it took.
        attempts: u32,
    },
    /// No daemon answered within the time allowed: the leases are gone.
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// Why the connection broke.
        why: String,
    },
}

impl fmt::Display for Reconnecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reconnecting::Attempt {
                attempt,
                why,
                elapsed,
                within,
            } => write!(
                f,
                "barkeepd went away ({why}); reconnecting, attempt {attempt} \
                 ({:.1}s of {}s)",
                elapsed.as_secs_f64(),
                within.as_secs()
            ),
            Reconnecting::Resumed { attempts } => write!(
                f,
                "reconnected to barkeepd after {attempts} attempt{}; reclaiming the leases",
                if *attempts == 1 { "" } else { "s" }
            ),
            Reconnecting::GaveUp { attempts, why } => write!(
                f,
                "gave up reconnecting to barkeepd after {attempts} attempts ({why}); \
                 this session's leases are gone"
            ),
        }
    }
}

/// The function told about each step (called from the client's reader).
#[derive(Clone)]
pub(crate) struct ReconnectHook(pub(crate) Arc<dyn Fn(&Reconnecting) + Send + Sync>);

impl ReconnectHook {
    pub(crate) fn call(hook: Option<&ReconnectHook>, step: Reconnecting) {
        if let Some(h) = hook {
            (h.0)(&step);
        }
    }
}

impl fmt::Debug for ReconnectHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReconnectHook")
    }
}
