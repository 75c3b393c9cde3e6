//! The retry budget: retries may add `ratio` of the request rate, plus a floor of
//! `min_per_second`, measured over a sliding window of `ttl` — so that a failing service
//! cannot be hit by a retry storm (Linkerd's newer annotation-based retries have no
//! budget; ours always do).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::profile::Budget;

/// Slots the window is divided into.
const SLOTS: usize = 10;

#[derive(Debug)]
pub struct RetryBudget {
    budget: Mutex<Budget>,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// (requests, retries) per slot; `slots[head]` is the current one.
    slots: [(u64, u64); SLOTS],
    head: usize,
    head_started: Instant,
}

impl RetryBudget {
    pub fn new(budget: Budget) -> Self {
        RetryBudget {
            budget: Mutex::new(budget),
            window: Mutex::new(Window {
                slots: [(0, 0); SLOTS],
                head: 0,
                head_started: Instant::now(),
            }),
        }
    }

    /// Takes a new budget from an updated profile (the counts so far are kept).
    pub fn set(&self, budget: Budget) {
        *self.budget.lock().unwrap_or_else(|e| e.into_inner()) = budget;
    }

    fn slot_len(&self) -> Duration {
        let ttl = self.budget.lock().unwrap_or_else(|e| e.into_inner()).ttl;
        (ttl / SLOTS as u32).max(Duration::from_millis(10))
    }

    fn rotate(&self, w: &mut Window, now: Instant) {
        let slot = self.slot_len();
        let mut elapsed = now.saturating_duration_since(w.head_started);
        let mut steps = 0;
        while elapsed >= slot && steps < SLOTS {
            w.head = (w.head + 1) % SLOTS;
            w.slots[w.head] = (0, 0);
            elapsed -= slot;
            steps += 1;
        }
        if steps == SLOTS {
            // Idle for a whole window or more: start afresh.
            w.head_started = now;
        } else if steps > 0 {
            w.head_started = now - elapsed;
        }
    }

    /// Counts a request (the first try of each).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    fn deposit_at(&self, now: Instant) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        self.rotate(&mut w, now);
        let head = w.head;
        w.slots[head].0 += 1;
    }

    /// Takes one retry from the budget, if it has room.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    fn withdraw_at(&self, now: Instant) -> bool {
        let budget = *self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        self.rotate(&mut w, now);
        let (requests, retries) = w.slots.iter().fold((0, 0), |(r, t), (a, b)| (r + a, t + b));
        let allowed = budget.min_per_second as f64 * budget.ttl.as_secs_f64()
            + budget.ratio * requests as f64;
        if (retries as f64) < allowed {
            let head = w.head;
            w.slots[head].1 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(Budget { ratio, min_per_second, ttl: Duration::from_secs(10) })
    }

    #[test]
    fn retries_are_bounded_by_the_ratio_plus_the_floor() {
        let b = budget(0.2, 10);
        let t = Instant::now();
        for _ in 0..1000 {
            b.deposit_at(t);
        }
        // 10/s over 10 s = 100, plus 20 % of 1000 = 200: 300 retries, no more.
        let taken = (0..1000).filter(|_| b.withdraw_at(t)).count();
        assert_eq!(taken, 300);
    }

    #[test]
    fn the_window_slides() {
        let b = budget(0.0, 1);
        let t = Instant::now();
        assert_eq!((0..50).filter(|_| b.withdraw_at(t)).count(), 10);
        // Half a window later the old retries still count.
        assert!(!b.withdraw_at(t + Duration::from_secs(5)));
        // A whole window later they have expired.
        assert_eq!((0..50).filter(|_| b.withdraw_at(t + Duration::from_secs(11))).count(), 10);
    }

    #[test]
    fn an_updated_budget_applies() {
        let b = budget(0.0, 0);
        let t = Instant::now();
        assert!(!b.withdraw_at(t));
        b.set(Budget { ratio: 0.0, min_per_second: 1, ttl: Duration::from_secs(10) });
        assert!(b.withdraw_at(t));
    }
}
