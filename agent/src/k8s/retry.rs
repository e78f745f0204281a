//! When a watch fails: how long to wait, what to log, and when it has recovered.
//!
//! kube-runtime's watcher yields `Ok(Event::Init)` *before* each list attempt, so an
//! `Ok` item does not mean that the API server answered. A backoff that resets on any
//! `Ok` (kube's `StreamBackoff`, `default_backoff()`) therefore never grows while a
//! list keeps failing: the agent retried a forbidden list every ~0.8 s and logged a
//! "recovered" line after each `Init`. Here only real progress (a complete list, an
//! added, modified or deleted object) resets the backoff and counts as recovery.

use std::time::Duration;

use kube::runtime::{
    utils::Backoff as _,
    watcher::{self, DefaultBackoff},
};

/// The longest wait between attempts (kube's default backoff: 0.8 s doubling to 30 s).
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// What one failure means for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A new error (or the first): log it at warn.
    New(String),
    /// The same error again: debug only.
    Again(String),
}

/// Retry state of one watch.
#[derive(Default)]
pub struct Retry {
    backoff: DefaultBackoff,
    failing: Option<String>,
}

impl Retry {
    /// A watcher event arrived. True when it was progress after a failure (log the
    /// recovery once). `Init` (a list is about to be attempted) and `InitApply` (one
    /// object of a list that may still fail) are not progress.
    pub fn event<K>(&mut self, event: &watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Init | watcher::Event::InitApply(_) => false,
            watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                self.backoff.reset();
                self.failing.take().is_some()
            }
        }
    }

    /// An attempt failed with `message`: how to report it and how long to wait.
    pub fn failed(&mut self, message: String) -> (Report, Duration) {
        let delay = self.backoff.next().unwrap_or(MAX_DELAY);
        let report = if self.failing.as_deref() == Some(message.as_str()) {
            Report::Again(message)
        } else {
            self.failing = Some(message.clone());
            Report::New(message)
        };
        (report, delay)
    }
}

/// The API server's refusal in `err` when it is a 403, with the verb the watcher
/// was refused (`list` or `watch`) and the server's message, which names the user,
/// verb, resource and scope ("pods is forbidden: User \"system:serviceaccount:...\"
/// cannot list resource \"pods\" in API group \"\" at the cluster scope").
pub fn forbidden(err: &watcher::Error) -> Option<(&'static str, &str)> {
    let (verb, status) = match err {
        watcher::Error::InitialListFailed(kube::Error::Api(s)) => ("list", s),
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => ("watch", s),
        watcher::Error::WatchError(s) => ("watch", s),
        _ => return None,
    };
    status
        .is_forbidden()
        .then_some((verb, status.message.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Ev = watcher::Event<()>;

    #[test]
    fn init_before_each_list_attempt_does_not_reset_the_backoff() {
        let mut retry = Retry::default();
        let mut delays = Vec::new();
        for _ in 0..6 {
            // What the watcher yields while a list keeps failing: Init, then the error.
            assert!(!retry.event(&Ev::Init), "Init counted as recovery");
            let (report, delay) = retry.failed("forbidden".into());
            if delays.is_empty() {
                assert_eq!(report, Report::New("forbidden".into()));
            } else {
                assert_eq!(report, Report::Again("forbidden".into()));
            }
            delays.push(delay);
        }
        // 0.8 s doubling (jitter only adds), capped at 30 s.
        for (i, d) in delays.iter().enumerate() {
            let floor = Duration::from_millis(800) * 2u32.pow(i as u32);
            assert!(
                *d >= floor.min(MAX_DELAY) && *d <= MAX_DELAY * 2,
                "attempt {i}: {d:?} (all: {delays:?})"
            );
        }
        // A list that completes is progress: recovered once, backoff from the start.
        assert!(!retry.event(&Ev::InitApply(())));
        assert!(retry.event(&Ev::InitDone));
        assert!(!retry.event(&Ev::Apply(())), "recovery reported twice");
        let (report, delay) = retry.failed("forbidden".into());
        assert_eq!(report, Report::New("forbidden".into()), "after recovery");
        assert!(delay < Duration::from_millis(1600), "{delay:?}");
    }

    #[test]
    fn a_different_error_is_reported_again() {
        let mut retry = Retry::default();
        assert!(matches!(retry.failed("a".into()).0, Report::New(_)));
        assert!(matches!(retry.failed("b".into()).0, Report::New(_)));
        assert!(matches!(retry.failed("b".into()).0, Report::Again(_)));
        assert!(retry.event(&Ev::Delete(())));
    }

    #[test]
    fn forbidden_names_the_verb() {
        let status = |code: u16, reason: &str| {
            Box::new(kube::core::Status {
                code,
                reason: reason.into(),
                message: "pods is forbidden: User \"u\" cannot list resource \"pods\"".into(),
                ..Default::default()
            })
        };
        let list = watcher::Error::InitialListFailed(kube::Error::Api(status(403, "Forbidden")));
        assert_eq!(
            forbidden(&list),
            Some((
                "list",
                "pods is forbidden: User \"u\" cannot list resource \"pods\""
            ))
        );
        let watch = watcher::Error::WatchStartFailed(kube::Error::Api(status(403, "Forbidden")));
        assert_eq!(forbidden(&watch).map(|f| f.0), Some("watch"));
        let gone = watcher::Error::WatchError(status(410, "Expired"));
        assert_eq!(forbidden(&gone), None);
    }
}
