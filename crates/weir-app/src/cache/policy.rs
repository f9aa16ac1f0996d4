//! Whether an upstream's response may be stored, and for how long: RFC 9111's rules for a
//! shared cache (http-cache-semantics), with the route's settings where the response says
//! nothing, and weir's own stricter rules on top:
//!
//! - `Set-Cookie` is never stored (one client's session must not reach another).
//! - A `Vary` naming a header the route does not key on (or `Vary: *`) is not stored: the
//!   key could not tell its variants apart.
//! - `no-cache` is not stored (weir does not revalidate with conditional requests), and
//!   `must-revalidate` / `proxy-revalidate` are stored without stale windows.
//! - Without `max-age`, `s-maxage` or `Expires`, the route's `ttl` is the freshness (no
//!   heuristic from `Last-Modified`).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Request, Uri, header, response};
use http_cache_semantics::{CacheOptions, CachePolicy};
use weir_domain::cache::CacheSpec;

use super::ms;

/// How long a stored response is good for (ms, and its age in seconds when stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub fresh_for: u64,
    pub initial_age: u64,
    pub stale_while_revalidate: u64,
    pub stale_if_error: u64,
}

/// What to do with a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Store(Lifetimes),
    /// Not stored, and why (for debugging).
    Pass(&'static str),
}

/// The verdict on `res`, the answer to a GET of `uri` whose request headers were
/// `req_headers`, received at `now`.
#[must_use]
pub fn decide(
    spec: &CacheSpec,
    uri: &Uri,
    req_headers: &HeaderMap,
    res: &response::Parts,
    now: SystemTime,
) -> Verdict {
    if res.headers.contains_key(header::SET_COOKIE) {
        return Verdict::Pass("set-cookie");
    }
    for value in res.headers.get_all(header::VARY) {
        let Ok(text) = value.to_str() else {
            return Verdict::Pass("vary");
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" || !spec.vary.iter().any(|v| v.eq_ignore_ascii_case(name)) {
                return Verdict::Pass("vary");
            }
        }
    }
    let cc = Directives::of(&res.headers);
    if cc.no_cache {
        return Verdict::Pass("no-cache");
    }
    // Only what bears on storing: the request's own cache directives (its `no-store` is
    // honoured). Credentials are the pipeline's business (`per_consumer`).
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = directives(req_headers);
    let options = CacheOptions {
        shared: true,
        cache_heuristic: 0.0,
        ..CacheOptions::default()
    };
    let policy = CachePolicy::new_options(&req, res, now, options);
    if !policy.is_storable() {
        return Verdict::Pass("not storable");
    }
    let age = policy.age(now);
    let explicit = cc.max_age || res.headers.contains_key(header::EXPIRES);
    let fresh = if explicit {
        policy.time_to_live(now)
    } else {
        spec.ttl.saturating_sub(age)
    };
    let (swr, sie) = if cc.revalidate {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (spec.stale_while_revalidate, spec.stale_if_error)
    };
    if fresh.is_zero() && swr.is_zero() && sie.is_zero() {
        return Verdict::Pass("already stale");
    }
    Verdict::Store(Lifetimes {
        fresh_for: ms(fresh),
        initial_age: age.as_secs(),
        stale_while_revalidate: ms(swr),
        stale_if_error: ms(sie),
    })
}

/// A request's own cache directives (`Cache-Control`, `Pragma`): all of it that bears on
/// storing its response.
#[must_use]
pub fn directives(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [header::CACHE_CONTROL, header::PRAGMA] {
        for v in headers.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// The response's `Cache-Control` directives that http-cache-semantics does not expose.
#[derive(Default)]
struct Directives {
    no_cache: bool,
    /// `must-revalidate` or `proxy-revalidate`: never served stale.
    revalidate: bool,
    /// `max-age` or `s-maxage`: the upstream gave a freshness.
    max_age: bool,
}

impl Directives {
    fn of(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for item in text.split(',') {
                let name = item.split('=').next().unwrap_or("").trim();
                if name.eq_ignore_ascii_case("no-cache") {
                    d.no_cache = true;
                } else if name.eq_ignore_ascii_case("must-revalidate")
                    || name.eq_ignore_ascii_case("proxy-revalidate")
                {
                    d.revalidate = true;
                } else if name.eq_ignore_ascii_case("max-age")
                    || name.eq_ignore_ascii_case("s-maxage")
                {
                    d.max_age = true;
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Response, StatusCode};
    use weir_domain::cache::CacheStore;

    use super::*;

    fn spec() -> CacheSpec {
        CacheSpec {
            ttl: Duration::from_secs(30),
            store: CacheStore::Memory,
            vary: vec!["accept".to_owned()],
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(300),
            max_body: 1 << 20,
            per_consumer: false,
        }
    }

    fn verdict(status: u16, headers: &[(&str, &str)], req: &[(&str, &str)]) -> Verdict {
        let mut res = Response::new(());
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in headers {
            res.headers_mut().append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut rh = HeaderMap::new();
        for (n, v) in req {
            rh.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (parts, ()) = res.into_parts();
        decide(
            &spec(),
            &Uri::from_static("/x"),
            &rh,
            &parts,
            SystemTime::now(),
        )
    }

    fn stored(v: Verdict) -> Lifetimes {
        match v {
            Verdict::Store(l) => l,
            Verdict::Pass(why) => panic!("not stored: {why}"),
        }
    }

    #[test]
    fn the_route_ttl_when_the_upstream_says_nothing() {
        let l = stored(verdict(200, &[], &[]));
        assert_eq!(l.fresh_for, 30_000);
        assert_eq!(
            (l.stale_while_revalidate, l.stale_if_error),
            (10_000, 300_000)
        );
        let l = stored(verdict(200, &[("age", "12")], &[]));
        assert_eq!((l.fresh_for, l.initial_age), (18_000, 12));
        // Heuristic freshness from Last-Modified is not used.
        let l = stored(verdict(
            200,
            &[("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")],
            &[],
        ));
        assert_eq!(l.fresh_for, 30_000);
    }

    #[test]
    fn upstream_freshness_wins() {
        assert_eq!(
            stored(verdict(200, &[("cache-control", "max-age=5")], &[])).fresh_for,
            5_000
        );
        assert_eq!(
            stored(verdict(
                200,
                &[("cache-control", "max-age=5, s-maxage=7")],
                &[]
            ))
            .fresh_for,
            7_000
        );
        let l = stored(verdict(
            200,
            &[("cache-control", "max-age=5, must-revalidate")],
            &[],
        ));
        assert_eq!((l.fresh_for, l.stale_if_error), (5_000, 0));
        // max-age=0 with stale windows is kept for them; without, it is not stored.
        assert_eq!(
            stored(verdict(200, &[("cache-control", "max-age=0")], &[])).fresh_for,
            0
        );
        assert_eq!(
            verdict(200, &[("cache-control", "max-age=0, must-revalidate")], &[]),
            Verdict::Pass("already stale")
        );
    }

    #[test]
    fn what_is_never_stored() {
        for (headers, why) in [
            (vec![("cache-control", "no-store")], "not storable"),
            (
                vec![("cache-control", "private, max-age=60")],
                "not storable",
            ),
            (vec![("cache-control", "no-cache")], "no-cache"),
            (
                vec![
                    ("set-cookie", "s=1"),
                    ("cache-control", "public, max-age=60"),
                ],
                "set-cookie",
            ),
            (vec![("vary", "Accept-Encoding")], "vary"),
            (vec![("vary", "*")], "vary"),
        ] {
            assert_eq!(
                verdict(200, &headers, &[]),
                Verdict::Pass(why),
                "{headers:?}"
            );
        }
        assert_eq!(verdict(500, &[], &[]), Verdict::Pass("not storable"));
        assert_eq!(
            verdict(200, &[], &[("cache-control", "no-store")]),
            Verdict::Pass("not storable")
        );
        // A listed Vary header is fine, and 404 is cacheable by default.
        stored(verdict(200, &[("vary", "Accept")], &[]));
        stored(verdict(404, &[], &[]));
    }
}
