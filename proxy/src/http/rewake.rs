//! Wake-ups an upstream HTTP/1 connection gives itself while a request drives it, taken
//! in the same poll instead of as another poll of the whole task.
//!
//! A request drives its upstream connection (`pool::H1Conn`): it queues itself on hyper's
//! connection, polls the connection, then polls what the connection feeds (the response's
//! head, then its body). Each hand-over inside hyper (the request queue, the response's
//! oneshot, the body's channel) wakes the other side, which is the same task. Woken while
//! it runs, tokio polls the task again once it returns, and that poll goes through
//! everything the task holds (the client's connection, its timers) to find what the same
//! poll had already done: two polls of four per request were such empty ones on the HTTP/1
//! path. `Rewake` is the waker given to the connection and what it feeds: woken while they
//! are being polled, it notes it, and the poll goes round them once more; woken at any other
//! time (the socket became ready, or a wake-up from another thread), it wakes the task.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use atomic_waker::AtomicWaker;

/// Not being polled: a wake-up goes to the task.
const IDLE: u8 = 0;
/// Being polled: a wake-up is noted and taken by another round.
const POLLING: u8 = 1;
/// Being polled, and woken since the round began.
const WOKEN: u8 = 2;

/// Rounds one poll may take before it leaves the rest to the scheduler: hyper yields by
/// waking itself (after 16 reads in one poll), and a yield must still let other tasks run.
const MAX_ROUNDS: usize = 4;

/// The waker of one upstream connection and what it feeds (see the module's comment).
#[derive(Debug)]
pub struct Rewake {
    shared: Arc<Shared>,
    waker: Waker,
}

#[derive(Debug, Default)]
struct Shared {
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self.state.compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire) {
            // A round is under way: the poll goes round again.
            Ok(_) => {}
            Err(IDLE) => self.task.wake(),
            Err(_) => {}
        }
    }
}

impl Default for Rewake {
    fn default() -> Self {
        let shared = Arc::new(Shared::default());
        let waker = Waker::from(shared.clone());
        Rewake { shared, waker }
    }
}

impl Rewake {
    /// Polls `round` with this waker until it is ready, or until a round goes by without
    /// a wake-up (then it is pending, and the task is woken when its connection is).
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut round: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let shared = &*self.shared;
        shared.task.register(cx.waker());
        let mut inner = Context::from_waker(&self.waker);
        for _ in 0..MAX_ROUNDS {
            // A wake-up noted before this round is for something the round polls.
            shared.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(v) = round(&mut inner) {
                shared.state.store(IDLE, Ordering::Release);
                return Poll::Ready(v);
            }
            if shared
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
        shared.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Lets go of the task it last woke: an idle pooled connection must not keep the task
    /// of the request that last drove it (its memory) alive.
    pub fn forget(&self) {
        drop(self.shared.task.take());
    }

    /// Runs `f`, which wakes what the next `poll` polls first (queues a request on the
    /// connection), without waking the task: the caller polls right after, in this poll.
    pub fn quietly<T>(&self, f: impl FnOnce() -> T) -> T {
        self.shared.state.store(POLLING, Ordering::Release);
        let v = f();
        self.shared.state.store(IDLE, Ordering::Release);
        v
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts the task's wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A task's wake-up count and waker, and a `Rewake` to poll it with.
    fn task() -> (Arc<Count>, Waker, Rewake) {
        let count = Arc::new(Count::default());
        (count.clone(), Waker::from(count), Rewake::default())
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// Polls one round that stays pending; the waker it was given, as what it polls keeps it.
    fn pending_round(r: &Rewake, task: &Waker) -> Waker {
        let mut kept = None;
        let got: Poll<()> = r.poll(&mut Context::from_waker(task), |cx| {
            kept = Some(cx.waker().clone());
            Poll::Pending
        });
        assert_eq!(got, Poll::Pending);
        kept.expect("the round was polled")
    }

    #[test]
    fn a_wake_up_during_a_round_is_another_round_not_a_task_wake_up() {
        let (count, waker, r) = task();
        let mut cx = Context::from_waker(&waker);
        let mut rounds = 0;
        let got = r.poll(&mut cx, |cx| {
            rounds += 1;
            // The first round hands something over, which wakes the second.
            if rounds == 1 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(rounds)
            }
        });
        assert_eq!(got, Poll::Ready(2));
        assert_eq!(count.get(), 0);
    }

    #[test]
    fn a_wake_up_between_polls_wakes_the_task_once() {
        let (count, waker, r) = task();
        let kept = pending_round(&r, &waker);
        kept.wake_by_ref();
        assert_eq!(count.get(), 1);
        // The task is woken; until it polls again there is nothing more to wake.
        kept.wake_by_ref();
        assert_eq!(count.get(), 1);
        let _: Poll<()> = r.poll(&mut Context::from_waker(&waker), |_| Poll::Pending);
        kept.wake();
        assert_eq!(count.get(), 2);
    }

    #[test]
    fn a_round_that_keeps_waking_itself_yields_to_the_scheduler() {
        let (count, waker, r) = task();
        let mut cx = Context::from_waker(&waker);
        let mut rounds = 0;
        let got: Poll<()> = r.poll(&mut cx, |cx| {
            rounds += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert_eq!(got, Poll::Pending);
        assert_eq!(rounds, MAX_ROUNDS);
        assert_eq!(count.get(), 1);
    }

    #[test]
    fn a_forgotten_task_is_not_woken_or_kept() {
        let (count, waker, r) = task();
        let kept = pending_round(&r, &waker);
        drop(waker);
        assert_eq!(Arc::strong_count(&count), 2, "the task's waker is held");
        r.forget();
        assert_eq!(Arc::strong_count(&count), 1, "and let go");
        kept.wake();
        assert_eq!(count.get(), 0);
    }

    #[test]
    fn a_hand_over_made_quietly_wakes_nothing_and_the_next_poll_sees_it() {
        let (count, waker, r) = task();
        let kept = pending_round(&r, &waker);
        r.quietly(|| kept.wake_by_ref());
        assert_eq!(count.get(), 0);
        let mut rounds = 0;
        let got: Poll<()> = r.poll(&mut Context::from_waker(&waker), |_| {
            rounds += 1;
            Poll::Pending
        });
        assert_eq!((got, rounds), (Poll::Pending, 1));
        // Back to waking the task once the poll is over.
        kept.wake_by_ref();
        assert_eq!(count.get(), 1);
    }
}
