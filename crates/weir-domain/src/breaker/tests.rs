//! The breaker's state machine, driven by a fake clock (plain millisecond numbers).

use super::*;

fn policy() -> BreakerPolicy {
    BreakerPolicy {
        failure_ratio: 0.5,
        min_requests: 4,
        window: Duration::from_secs(10),
        open_for: Duration::from_secs(30),
        half_open_requests: 2,
    }
}

/// Sends one request at `now` through the breaker and records its outcome.
fn call(b: &Breaker, w: &Window, p: &BreakerPolicy, now: u64, ok: bool) -> Option<CircuitState> {
    let pass = b.acquire(now, p).expect("a pass");
    w.add(now, p.slot_ms(), u64::from(ok), u64::from(!ok));
    b.record(now, p, pass, ok, w)
}

#[test]
fn opens_only_at_the_ratio_with_enough_requests() {
    let (b, w, p) = (Breaker::default(), Window::default(), policy());
    // Three failures are 100% but fewer than min_requests.
    for t in 0..3 {
        assert_eq!(call(&b, &w, &p, t, false), None);
    }
    assert_eq!(b.state(), CircuitState::Closed);
    // Successes never open it.
    assert_eq!(call(&b, &w, &p, 3, true), None);
    // 3 of 4 failed before, now 4 of 5: at or over 0.5 with 5 >= 4 requests.
    assert_eq!(call(&b, &w, &p, 4, false), Some(CircuitState::Open));
    assert_eq!(b.state(), CircuitState::Open);
}

#[test]
fn failures_outside_the_window_do_not_count() {
    let (b, w, p) = (Breaker::default(), Window::default(), policy());
    for t in 0..3 {
        call(&b, &w, &p, t, false);
    }
    // Eleven seconds later the old failures have slid out: one failure of one request.
    assert_eq!(call(&b, &w, &p, 11_000, false), None);
    assert_eq!(call(&b, &w, &p, 11_001, true), None);
    assert_eq!(call(&b, &w, &p, 11_002, true), None);
    // 2 failures of 4 = 0.5: opens.
    assert_eq!(call(&b, &w, &p, 11_003, false), Some(CircuitState::Open));
}

fn opened_at(now: u64) -> (Breaker, Window, BreakerPolicy) {
    let (b, w, p) = (Breaker::default(), Window::default(), policy());
    for t in 0..4 {
        call(&b, &w, &p, now + t, false);
    }
    assert_eq!(b.state(), CircuitState::Open);
    (b, w, p)
}

#[test]
fn open_rejects_until_open_for_then_lets_probes_through() {
    let (b, _w, p) = opened_at(1_000);
    assert!(!b.available(1_003 + 29_999, &p));
    assert_eq!(b.acquire(1_003 + 29_999, &p), None);
    let at = 1_003 + 30_000;
    assert!(b.available(at, &p));
    let first = b.acquire(at, &p);
    assert_eq!(first, Some(Pass::Probe { since: at }));
    assert_eq!(b.state(), CircuitState::HalfOpen);
    // Two probes (half_open_requests), then no more until they answer.
    assert!(b.acquire(at + 1, &p).is_some());
    assert!(!b.available(at + 2, &p));
    assert_eq!(b.acquire(at + 2, &p), None);
}

#[test]
fn all_probes_succeeding_closes_with_a_fresh_window() {
    let (b, w, p) = opened_at(0);
    let at = 3 + 30_000;
    let one = b.acquire(at, &p).unwrap();
    let two = b.acquire(at, &p).unwrap();
    assert_eq!(b.record(at, &p, one, true, &w), None);
    assert_eq!(b.state(), CircuitState::HalfOpen);
    assert_eq!(b.record(at, &p, two, true, &w), Some(CircuitState::Closed));
    assert_eq!(w.totals(at, p.slot_ms()).b, 0, "the window starts over");
    // One failure right after closing does not reopen it.
    assert_eq!(call(&b, &w, &p, at + 1, false), None);
}

#[test]
fn a_failing_probe_reopens_for_another_open_for() {
    let (b, w, p) = opened_at(0);
    let at = 3 + 30_000;
    let probe = b.acquire(at, &p).unwrap();
    assert_eq!(
        b.record(at + 5, &p, probe, false, &w),
        Some(CircuitState::Open)
    );
    assert_eq!(b.acquire(at + 5 + 29_999, &p), None);
    assert!(b.acquire(at + 5 + 30_000, &p).is_some());
}

#[test]
fn stale_outcomes_change_nothing() {
    let (b, w, p) = opened_at(0);
    // A request that was sent while closed and answers after the circuit opened.
    assert_eq!(b.record(10, &p, Pass::Closed, true, &w), None);
    assert_eq!(b.record(10, &p, Pass::Closed, false, &w), None);
    assert_eq!(b.state(), CircuitState::Open);
    // A probe of an earlier half-open period.
    let at = 3 + 30_000;
    let old = b.acquire(at, &p).unwrap();
    b.record(at, &p, old, false, &w);
    let new_at = at + 30_000;
    let _new = b.acquire(new_at, &p).unwrap();
    assert_eq!(b.record(new_at, &p, old, true, &w), None);
    assert_eq!(b.state(), CircuitState::HalfOpen);
}

#[test]
fn a_cancelled_probe_is_given_back() {
    let (b, w, p) = opened_at(0);
    let at = 3 + 30_000;
    let one = b.acquire(at, &p).unwrap();
    let _two = b.acquire(at, &p).unwrap();
    assert_eq!(b.acquire(at, &p), None);
    b.cancel(one);
    let three = b.acquire(at, &p).unwrap();
    assert_eq!(b.record(at, &p, three, true, &w), None);
    // Cancelling a closed pass, or a probe of another period, is a no-op.
    b.cancel(Pass::Closed);
    b.cancel(Pass::Probe { since: 1 });
    assert_eq!(b.acquire(at, &p), None);
}

#[test]
fn the_word_round_trips() {
    let w = Word {
        state: CircuitState::HalfOpen,
        issued: 1023,
        succeeded: 7,
        since: TIME_MASK,
    };
    assert_eq!(Word::unpack(w.pack()), w);
    assert_eq!(Word::unpack(0).state, CircuitState::Closed);
}
