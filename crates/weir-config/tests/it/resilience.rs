//! Passive health, circuit breakers, retries and fallbacks: what they build, their defaults
//! in the effective config, and every problem with its exact location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::{ok, problems};
use serde_json::json;
use weir_domain::breaker::BreakerPolicy;
use weir_domain::outlier::PassivePolicy;
use weir_domain::retry::{Backoff, BudgetPolicy, Failure, RetryOn, RetryPolicy};
use weir_domain::route::{Fallback, StaticResponse, UpstreamId};

/// Two upstreams, the first with `extra` appended to it, and `routes` after them.
fn config(extra: &str, routes: &str) -> String {
    format!(
        "\
upstreams:
  orders:
    targets: [{{ url: 'http://127.0.0.1:9001' }}]
{extra}  spare:
    targets: [{{ url: 'http://127.0.0.1:9002' }}]
routes:
{routes}"
    )
}

const ROUTE: &str = "  - { name: r, match: { prefix: /r }, upstream: orders }\n";

fn default_on() -> RetryOn {
    let mut on = RetryOn::default();
    for n in ["connect_failure", "reset", "502", "503", "504"] {
        on.add(n).unwrap();
    }
    on
}

#[test]
fn defaults_are_filled_in() {
    let l = ok(&config(
        "    health_check: { passive: {} }\n    circuit_breaker: {}\n    retry: {}\n",
        ROUTE,
    ));
    let u = &l.upstreams[0];
    assert_eq!(
        u.passive,
        Some(PassivePolicy {
            consecutive_failures: 5,
            eject_for: Duration::from_secs(30),
            max_ejected_percent: 50,
        })
    );
    assert_eq!(
        u.circuit_breaker,
        Some(BreakerPolicy {
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            half_open_requests: 5,
        })
    );
    assert_eq!(
        u.retry,
        Some(RetryPolicy {
            attempts: 3,
            backoff: Backoff {
                initial: Duration::from_millis(25),
                max: Duration::from_secs(1),
                multiplier: 2.0,
                jitter: true,
            },
            on: default_on(),
            idempotent_only: true,
            per_try_timeout: None,
            budget: BudgetPolicy {
                ratio: 0.2,
                min_per_second: 10,
            },
        })
    );
    let e = &l.effective["upstreams"]["orders"];
    assert_eq!(
        e["health_check"]["passive"],
        json!({ "consecutive_failures": 5, "eject_for": "30s", "max_ejected_percent": 50 })
    );
    assert_eq!(
        e["circuit_breaker"],
        json!({ "failure_ratio": 0.5, "min_requests": 20, "window": "10s", "open_for": "30s",
                "half_open_requests": 5 })
    );
    assert_eq!(
        e["retry"],
        json!({
            "attempts": 3,
            "backoff": { "initial": "25ms", "max": "1s", "multiplier": 2.0, "jitter": "full" },
            "on": ["connect_failure", "reset", "502", "503", "504"],
            "idempotent_only": true,
            "per_try_timeout": null,
            "budget": { "ratio": 0.2, "min_per_second": 10 },
        })
    );
    // Without the keys: nothing of it runs, and the effective config says so.
    let spare = &l.upstreams[1];
    assert!(spare.passive.is_none() && spare.circuit_breaker.is_none() && spare.retry.is_none());
    let e = &l.effective["upstreams"]["spare"];
    assert_eq!(e["health_check"]["passive"], json!(null));
    assert_eq!(e["circuit_breaker"], json!(null));
    assert_eq!(e["retry"], json!(null));
    assert!(l.routes.routes()[0].fallback.is_none());
    assert!(l.effective["routes"][0].get("fallback").is_none());
}

#[test]
fn written_keys_replace_only_their_defaults() {
    let l = ok(&config(
        "    health_check: { passive: { eject_for: 1m } }
    circuit_breaker: { failure_ratio: 1, window: 100ms }
    retry:
      attempts: 2
      backoff: { max: 25ms, multiplier: 1, jitter: none }
      idempotent_only: false
      per_try_timeout: 500ms
      budget: { min_per_second: 0 }
",
        ROUTE,
    ));
    let u = &l.upstreams[0];
    let passive = u.passive.as_ref().unwrap();
    assert_eq!(passive.eject_for, Duration::from_secs(60));
    assert_eq!(passive.consecutive_failures, 5);
    let breaker = u.circuit_breaker.as_ref().unwrap();
    assert_eq!(breaker.failure_ratio, 1.0);
    assert_eq!(breaker.window, Duration::from_millis(100));
    assert_eq!(breaker.min_requests, 20);
    let retry = u.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 2);
    assert_eq!(retry.backoff.initial, Duration::from_millis(25));
    assert_eq!(
        retry.backoff.max,
        Duration::from_millis(25),
        "initial may equal max"
    );
    assert!(!retry.backoff.jitter);
    assert_eq!(retry.on, default_on());
    assert!(!retry.idempotent_only);
    assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(
        retry.budget,
        BudgetPolicy {
            ratio: 0.2,
            min_per_second: 0
        }
    );
    let e = &l.effective["upstreams"]["orders"]["retry"];
    assert_eq!(e["per_try_timeout"], "500ms");
    assert_eq!(e["backoff"]["jitter"], "none");
}

#[test]
fn retry_on_takes_status_codes_as_integers_or_strings() {
    let l = ok(&config(
        "    retry: { on: [503, '502', timeout, \"599\"] }\n",
        ROUTE,
    ));
    let on = &l.upstreams[0].retry.as_ref().unwrap().on;
    assert!(on.matches(Failure::Status(503)));
    assert!(on.matches(Failure::Status(502)));
    assert!(on.matches(Failure::Status(599)));
    assert!(on.matches(Failure::Timeout));
    assert!(!on.matches(Failure::Status(504)));
    assert!(!on.matches(Failure::Connect));
    assert!(!on.matches(Failure::Reset));
    assert_eq!(
        l.effective["upstreams"]["orders"]["retry"]["on"],
        json!(["503", "502", "timeout", "599"])
    );
}

#[test]
fn passive_and_breaker_problems() {
    let yaml = config(
        "    health_check:
      passive: { consecutive_failures: 0, eject_for: 0s, max_ejected_percent: 101 }
    circuit_breaker:
      failure_ratio: 0
      min_requests: 0
      window: 99ms
      open_for: 0s
      half_open_requests: 0
  more:
    targets: [{ url: 'http://127.0.0.1:9003' }]
    health_check: { passive: { eject_for: 5 } }
    circuit_breaker: { failure_ratio: 1.5, window: 0s, half_open_requests: 1024, oepn_for: 1s }
",
        ROUTE,
    );
    assert_eq!(
        problems(&yaml),
        [
            "weir.yaml:5:40: upstreams.orders.health_check.passive.consecutive_failures: must be at least 1",
            "weir.yaml:5:54: upstreams.orders.health_check.passive.eject_for: must be longer than 0",
            "weir.yaml:5:79: upstreams.orders.health_check.passive.max_ejected_percent: 101 is not between 0 and 100",
            "weir.yaml:7:22: upstreams.orders.circuit_breaker.failure_ratio: 0 is not a share of the tries: more than 0 and at most 1, such as 0.5",
            "weir.yaml:8:21: upstreams.orders.circuit_breaker.min_requests: must be at least 1",
            "weir.yaml:9:15: upstreams.orders.circuit_breaker.window: must be at least 100ms: the window slides in tenths, each a whole number of milliseconds",
            "weir.yaml:10:17: upstreams.orders.circuit_breaker.open_for: must be longer than 0",
            "weir.yaml:11:27: upstreams.orders.circuit_breaker.half_open_requests: 0 is not between 1 and 1023",
            "weir.yaml:14:43: upstreams.more.health_check.passive.eject_for: a duration needs a unit: ms, s, m, h, d (e.g. 5s)",
            "weir.yaml:15:39: upstreams.more.circuit_breaker.failure_ratio: 1.5 is not a share of the tries: more than 0 and at most 1, such as 0.5",
            "weir.yaml:15:52: upstreams.more.circuit_breaker.window: must be at least 100ms: the window slides in tenths, each a whole number of milliseconds",
            "weir.yaml:15:76: upstreams.more.circuit_breaker.half_open_requests: 1024 is not between 1 and 1023",
            "weir.yaml:15:82: upstreams.more.circuit_breaker.oepn_for: unknown key \"oepn_for\" (expected one of failure_ratio, min_requests, window, open_for, half_open_requests)",
        ]
    );
}

#[test]
fn retry_problems() {
    let yaml = config(
        "    retry:
      attempts: 11
      backoff: { initial: 2s, max: 1s, multiplier: 0.5, jitter: partial }
      on: [connect_failure, 404, retriable, '503', 503]
      per_try_timeout: 0s
      budget: { ratio: -0.5 }
  more:
    targets: [{ url: 'http://127.0.0.1:9003' }]
    retry: { attempts: 0, on: [], budget: { ratio: 0 } }
",
        ROUTE,
    );
    assert_eq!(
        problems(&yaml),
        [
            "weir.yaml:5:17: upstreams.orders.retry.attempts: 11 is not between 1 and 10 (tries in all, the first included)",
            "weir.yaml:6:27: upstreams.orders.retry.backoff.initial: 2s is longer than max (1s); the first wait cannot exceed the longest",
            "weir.yaml:6:52: upstreams.orders.retry.backoff.multiplier: 0.5 is less than 1: each wait is at least the one before",
            "weir.yaml:6:65: upstreams.orders.retry.backoff.jitter: \"partial\" is not one of full, none",
            "weir.yaml:7:29: upstreams.orders.retry.on[1]: \"404\" is not one of connect_failure, reset, timeout or a 5xx status such as \"503\"",
            "weir.yaml:7:34: upstreams.orders.retry.on[2]: \"retriable\" is not one of connect_failure, reset, timeout or a 5xx status such as \"503\"",
            "weir.yaml:7:52: upstreams.orders.retry.on[4]: \"503\" is listed twice (also on[3])",
            "weir.yaml:8:24: upstreams.orders.retry.per_try_timeout: must be longer than 0",
            "weir.yaml:9:24: upstreams.orders.retry.budget.ratio: -0.5 is not a share of the requests: more than 0, such as 0.2",
            "weir.yaml:12:24: upstreams.more.retry.attempts: 0 is not between 1 and 10 (tries in all, the first included)",
            "weir.yaml:12:31: upstreams.more.retry.on: list at least one failure to retry (connect_failure, reset, timeout or a 5xx status such as \"503\"), or remove `retry`",
            "weir.yaml:12:52: upstreams.more.retry.budget.ratio: 0 is not a share of the requests: more than 0, such as 0.2",
        ]
    );
    // A value that does not type is located like any other.
    let yaml = config(
        "    retry: { budget: { ratio: 0, min_per_second: -1 } }\n",
        ROUTE,
    );
    assert_eq!(
        problems(&yaml),
        [
            "weir.yaml:4:50: upstreams.orders.retry.budget.min_per_second: -1 is out of range (0 to 4294967295)"
        ]
    );
}

#[test]
fn a_per_try_timeout_longer_than_the_request_timeout_is_allowed() {
    let l = ok(&config(
        "    timeouts: { request: 1s }\n    retry: { per_try_timeout: 5s }\n",
        ROUTE,
    ));
    let retry = l.upstreams[0].retry.as_ref().unwrap();
    assert_eq!(retry.per_try_timeout, Some(Duration::from_secs(5)));
}

#[test]
fn fallbacks_are_built() {
    let routes = "  - name: static
    match: { prefix: /static }
    upstream: orders
    fallback: { status: 503, content_type: application/json, headers: { X-A: b }, body: '{\"orders\": []}' }
  - name: bare
    match: { prefix: /bare }
    upstream: orders
    fallback: {}
  - name: other
    match: { prefix: /other }
    upstream: orders
    fallback: { upstream: spare }
";
    let l = ok(&config("", routes));
    let r = l.routes.routes();
    let Some(Fallback::Respond(s)) = &r[0].fallback else {
        panic!("a static fallback: {:?}", r[0].fallback)
    };
    assert_eq!(
        *s,
        StaticResponse {
            status: 503,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("X-A".into(), "b".into()),
            ],
            body: "{\"orders\": []}".into(),
        }
    );
    let Some(Fallback::Respond(s)) = &r[1].fallback else {
        panic!("an empty fallback is a response")
    };
    assert_eq!((s.status, s.headers.len(), &*s.body), (200, 0, ""));
    assert!(matches!(
        r[2].fallback,
        Some(Fallback::Upstream(UpstreamId(1)))
    ));
    let e = &l.effective["routes"];
    assert_eq!(
        e[0]["fallback"],
        json!({ "status": 503, "content_type": "application/json", "headers": { "X-A": "b" },
                "body": "{\"orders\": []}" })
    );
    assert_eq!(
        e[1]["fallback"],
        json!({ "status": 200, "content_type": null, "headers": {}, "body": "" })
    );
    assert_eq!(e[2]["fallback"], json!({ "upstream": "spare" }));
}

#[test]
fn fallback_problems() {
    let routes = "  - name: unknown
    upstream: orders
    fallback: { upstream: sapre }
  - name: self
    upstream: orders
    fallback: { upstream: orders }
  - name: responds
    respond: { status: 200 }
    fallback: { status: 503 }
  - name: mixed
    upstream: orders
    fallback: { upstream: spare, status: 503, body: x }
  - name: bad-response
    upstream: orders
    fallback: { status: 700, content_type: '', headers: { 'Bad Name': x } }
  - name: two-types
    upstream: orders
    fallback: { content_type: text/plain, headers: { content-type: text/html } }
  - name: typo
    upstream: orders
    fallback: { upstrem: spare }
";
    assert_eq!(
        problems(&config("", routes)),
        [
            "weir.yaml:9:27: routes[0].fallback.upstream: unknown upstream \"sapre\"; did you mean \"spare\"?",
            "weir.yaml:12:27: routes[1].fallback.upstream: \"orders\" is the route's own upstream; a fallback upstream must be another one",
            "weir.yaml:15:5: routes[2].fallback: a respond route never fails over; remove `fallback`",
            "weir.yaml:18:15: routes[3].fallback: a fallback is either `upstream` or a response, not both (found upstream and status, body)",
            "weir.yaml:21:25: routes[4].fallback.status: status 700 is not between 100 and 599",
            "weir.yaml:21:44: routes[4].fallback.content_type: a content type cannot be empty",
            "weir.yaml:21:71: routes[4].fallback.headers.Bad Name: \"Bad Name\" is not a valid header name",
            "weir.yaml:24:68: routes[5].fallback.headers.content-type: Content-Type is already set by content_type; set it in one place",
            "weir.yaml:27:17: routes[6].fallback.upstrem: unknown key \"upstrem\" (expected one of upstream, status, content_type, headers, body)",
        ]
    );
}

#[test]
fn fallback_to_an_unknown_upstream_without_upstreams() {
    let yaml = "\
routes:
  - name: r
    upstream: orders
    fallback: { upstream: spare }
";
    assert_eq!(
        problems(yaml),
        [
            "weir.yaml:3:15: routes[0].upstream: unknown upstream \"orders\" (no upstreams are defined)",
            "weir.yaml:4:27: routes[0].fallback.upstream: unknown upstream \"spare\" (no upstreams are defined)",
        ]
    );
}
