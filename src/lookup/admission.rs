//! Admission: at most `max_inflight` store queries at once per process; beyond it a lookup is
//! shed at once (503 `overloaded`) rather than queued behind a slow store.
//!
//! The bound is read from the settings snapshot on each admission, so a reload that lowers it
//! takes effect for the next query: queries already running finish, and none is admitted until
//! fewer than the new bound remain.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many store queries are running now.
#[derive(Default)]
pub struct Admission {
    running: AtomicUsize,
}

/// One admitted query; it leaves when dropped, however the query ends.
pub struct Admitted<'a>(&'a Admission);

impl Admission {
    /// Admits one more query if fewer than `bound` are running.
    pub fn try_admit(&self, bound: usize) -> Option<Admitted<'_>> {
        let admitted = self.running.fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
            (running < bound).then_some(running + 1)
        });
        admitted.ok().map(|_| Admitted(self))
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_bound_and_a_lower_bound_waits_for_running_queries() {
        let admission = Admission::default();
        let first = admission.try_admit(2).expect("room");
        let second = admission.try_admit(2).expect("room");
        assert!(admission.try_admit(2).is_none());
        drop(first);
        // A reload lowered the bound to 1 while one query still runs: nothing more yet.
        assert!(admission.try_admit(1).is_none());
        drop(second);
        assert_eq!(admission.running(), 0);
        assert!(admission.try_admit(1).is_some());
    }
}
