//! Every example config loads, and does what its comments say.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use crate::common::TestEnv;
use weir_config::{Loaded, Overrides, load_file};
use weir_domain::balance::LoadBalancing;
use weir_domain::route::{MethodSet, Route, RouteAction};
use weir_domain::router::{Lookup, RequestHead};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The variables the examples use, with values other than their defaults.
fn env() -> TestEnv {
    TestEnv::with(&[
        ("ORDERS_V1_HOST", "127.0.0.1"),
        ("ORDERS_V2_HOST", "127.0.0.2"),
        ("APP_VERSION", "1.2.3"),
    ])
}

fn load(path: &Path) -> Loaded {
    match load_file(path, &env(), &Overrides::default()) {
        Ok(l) => l,
        Err(p) => panic!("{} does not load:\n{p}", path.display()),
    }
}

fn example(name: &str) -> Loaded {
    load(&repo().join("examples").join(name))
}

#[test]
fn every_example_and_the_root_config_load() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    files.push(repo().join("weir.yaml"));
    for file in files {
        load(&file);
    }
    // Without the optional variables the defaults apply.
    let plain = load_file(
        &repo().join("weir.yaml"),
        &TestEnv::default(),
        &Overrides::default(),
    );
    assert!(plain.is_ok());
}

struct Req(
    Option<&'static str>,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

impl RequestHead for Req {
    fn host(&self) -> Option<&str> {
        self.0
    }
    fn method_bit(&self) -> u16 {
        MethodSet::bit(self.1).unwrap_or(0)
    }
    fn header(&self, lower_name: &str) -> Option<&[u8]> {
        self.2
            .iter()
            .find(|(n, _)| *n == lower_name)
            .map(|(_, v)| v.as_bytes())
    }
}

fn route<'a>(l: &'a Loaded, req: &Req, path: &str) -> &'a str {
    match l.routes.lookup(req, path) {
        Lookup::Found(f) => &f.route.name,
        Lookup::MethodNotAllowed(_) => "405",
        Lookup::NotFound => "404",
    }
}

#[test]
fn routing_precedence_is_as_documented() {
    let l = example("routing.yaml");
    let get = |host, headers| Req(host, "GET", headers);
    assert_eq!(route(&l, &get(None, vec![]), "/health"), "health");
    assert_eq!(route(&l, &get(None, vec![]), "/v1/orders/7"), "order");
    assert_eq!(route(&l, &get(None, vec![]), "/v1/other"), "v1");
    assert_eq!(route(&l, &get(None, vec![]), "/v10"), "404");
    assert_eq!(route(&l, &get(None, vec![]), "/files/a/b"), "files");
    assert_eq!(
        route(&l, &get(Some("api.example.com"), vec![]), "/v2/x"),
        "api-v2"
    );
    assert_eq!(route(&l, &get(None, vec![]), "/v2/x"), "404");
    assert_eq!(
        route(&l, &get(Some("a.tenants.example.com"), vec![]), "/x"),
        "tenants"
    );
    let v2 = vec![("x-api-version", "2")];
    assert_eq!(route(&l, &get(None, v2), "/orders/7"), "orders-by-header");
    assert_eq!(route(&l, &get(None, vec![]), "/orders/7"), "orders");
    assert_eq!(route(&l, &get(None, vec![]), "/legacy/12"), "legacy");
    assert_eq!(
        route(&l, &Req(None, "PUT", vec![]), "/v1/orders/7"),
        "read-only"
    );
    assert_eq!(route(&l, &Req(None, "POST", vec![]), "/legacy/12"), "405");
    let v1: &Route = &l.routes.routes()[1];
    assert!(matches!(v1.action, RouteAction::Upstream(_)));
    assert_eq!(l.upstreams[1].static_targets[0].addr.host, "127.0.0.2");
}

#[test]
fn path_rewrites_are_as_documented() {
    let l = example("path-rewrite.yaml");
    let t = |i: usize, path: &str| l.routes.routes()[i].path_transform.apply(path);
    assert_eq!(t(0, "/api/users/7"), "/users/7");
    assert_eq!(t(1, "/users/7"), "/internal/v1/users/7");
    assert_eq!(t(2, "/v2/orders/42"), "/legacy/o/42");
    assert_eq!(t(3, "/reports/2024/05"), "/r/05-2024");
}

#[test]
fn load_balancing_has_every_policy() {
    let l = example("load-balancing.yaml");
    let mut policies: Vec<_> = l.upstreams.iter().map(|u| u.load_balancing).collect();
    policies.dedup();
    for p in LoadBalancing::NAMES {
        assert!(policies.iter().any(|x| x.name() == p), "{p} is not shown");
    }
}

#[test]
fn respond_examples() {
    let l = example("respond.yaml");
    let RouteAction::Respond(r) = &l.routes.routes()[3].action else {
        panic!("version responds")
    };
    assert_eq!(&*r.body, "1.2.3");
    let RouteAction::Respond(r) = &l.routes.routes()[2].action else {
        panic!("robots responds")
    };
    assert_eq!(&*r.body, "User-agent: *\nDisallow: /\n");
    assert_eq!(route(&l, &Req(None, "GET", vec![]), "/nope"), "not-found");
}

#[test]
fn the_root_config_routes_as_its_comments_say() {
    let l = load(&repo().join("weir.yaml"));
    let get = Req(None, "GET", vec![]);
    assert_eq!(route(&l, &get, "/hello"), "hello");
    assert_eq!(route(&l, &Req(None, "DELETE", vec![]), "/hello"), "405");
    assert_eq!(route(&l, &get, "/api/hello.json"), "api");
    assert_eq!(route(&l, &get, "/nope"), "404");
    assert_eq!(route(&l, &get, "/v1/orders"), "orders-v1");
    assert_eq!(route(&l, &get, "/private/orders.json"), "private");
    let private = &l.routes.routes()[3];
    assert_eq!(
        private.path_transform.apply("/private/orders.json"),
        "/api/orders.json"
    );
    let auth = private
        .access
        .auth
        .as_ref()
        .expect("the private route has auth");
    assert_eq!(auth.roles, ["orders:read"]);
    assert_eq!(l.auth.consumers[0].name, "demo");
    let orders = &l.routes.routes()[2];
    assert_eq!(
        orders.path_transform.apply("/v1/orders"),
        "/api/orders.json"
    );
    assert_eq!(
        l.settings.admin.listen,
        Some("127.0.0.1:9901".parse().unwrap())
    );
    assert!(l.settings.access_log.enabled);
}

#[test]
fn auth_example_builds_what_its_comments_say() {
    use weir_domain::auth::{Algorithm, ApiKey, JwtKey, KeyFamily, ProviderKind};

    let l = example("auth.yaml");
    let names: Vec<_> = l.auth.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["keys", "staff", "apps", "partners", "corp", "idp"]);
    let kinds: Vec<_> = l.auth.providers.iter().map(|p| p.kind.scheme()).collect();
    assert_eq!(
        kinds,
        ["ApiKey", "Basic", "Bearer", "Bearer", "Bearer", "Bearer"]
    );
    // The public key file is found next to the example, and picks EdDSA.
    let ProviderKind::Jwt(partners) = &l.auth.providers[3].kind else {
        panic!("partners is jwt")
    };
    assert!(matches!(
        partners.key,
        JwtKey::PublicKey {
            family: KeyFamily::Ed,
            ..
        }
    ));
    assert_eq!(partners.algorithms, [Algorithm::EdDSA]);
    // The documented demo credentials are the configured ones.
    let acme = &l.auth.consumers[0];
    assert!(
        matches!(&acme.api_keys[0], ApiKey::Plain(k) if k.expose() == "demo-key-acme-0123456789")
    );
    let ApiKey::Sha256(digest) = l.auth.consumers[1].api_keys[0] else {
        panic!("reporting's key is hashed")
    };
    assert_eq!(digest[..2], [0xb9, 0xde]);
    let ops = l.auth.consumers[2].basic.as_ref().unwrap();
    assert_eq!(ops.username, "ops");
    assert!(ops.password_hash.expose().starts_with("$argon2id$"));

    let by_name = |n: &str| l.routes.routes().iter().find(|r| r.name == n).unwrap();
    let read = by_name("orders-read");
    assert_eq!(read.access.auth.as_ref().unwrap().providers.len(), 4);
    assert!(read.access.cors.as_ref().unwrap().credentials);
    let admin = by_name("admin");
    let ip = admin.access.ip.as_ref().unwrap();
    assert!(ip.permits("10.1.2.3".parse().unwrap()));
    assert!(!ip.permits("10.0.99.7".parse().unwrap()));
    assert!(!ip.permits("192.0.2.1".parse().unwrap()));
    assert!(by_name("status").access.cors.as_ref().unwrap().any_origin);
    assert!(
        by_name("partners")
            .access
            .auth
            .as_ref()
            .unwrap()
            .roles
            .is_empty()
    );
    // No secret of the example shows in the effective config.
    let text = l.effective.to_string();
    assert!(
        !text.contains("demo-key-acme") && !text.contains("demo-jwt-secret"),
        "{text}"
    );
}

#[test]
fn rate_limits_example_builds_what_its_comments_say() {
    use std::time::Duration;
    use weir_domain::ratelimit::{LimitKey, LimitStore};

    let l = example("rate-limits.yaml");
    let by_name = |n: &str| l.routes.routes().iter().find(|r| r.name == n).unwrap();
    let orders = &by_name("orders").rate_limits;
    assert_eq!(orders[0].key, LimitKey::Consumer);
    assert_eq!((orders[0].limit, orders[0].burst), (600, 50));
    assert_eq!(orders[1].key, LimitKey::Header("x-tenant".into()));
    assert_eq!(orders[1].max_keys, 1024, "1000 is rounded up");
    // `limit: 10, per: 1m`: 10 at once (burst = limit), then one every 6 s.
    let public = &by_name("public").rate_limits;
    assert_eq!(public.len(), 1);
    assert_eq!((public[0].key.clone(), public[0].burst), (LimitKey::Ip, 10));
    assert_eq!(public[0].rate().interval, 6_000_000_000);
    assert_eq!(public[0].max_keys, 65_536);
    let search = &by_name("search").rate_limits;
    assert_eq!(search[1].burst, 1);
    assert_eq!(search[1].per, Duration::from_secs(1));
    assert!(
        l.routes
            .routes()
            .iter()
            .flat_map(|r| &r.rate_limits)
            .all(|p| p.store == LimitStore::Memory)
    );
    let upstream = |n: &str| l.upstreams.iter().find(|u| u.name == n).unwrap();
    let global = &upstream("orders").rate_limits[0];
    assert_eq!(global.key, LimitKey::Global);
    assert_eq!((global.limit, global.burst), (500, 100));
    assert_eq!(upstream("public").rate_limits[0].key, LimitKey::Route);
}

#[test]
fn redis_rate_limits_example_builds_what_its_comments_say() {
    use weir_domain::ratelimit::{LimitKey, LimitStore, OnError};

    let l = example("rate-limits-redis.yaml");
    let redis = l.settings.redis.as_ref().expect("a redis section");
    assert!(!redis.cluster);
    assert_eq!(redis.timeout, std::time::Duration::from_millis(50));
    let orders = &l.routes.routes()[0].rate_limits;
    assert_eq!(orders[0].store, LimitStore::Redis);
    assert_eq!(
        (orders[0].key.clone(), orders[0].burst),
        (LimitKey::Consumer, 20)
    );
    assert_eq!(orders[0].on_error, OnError::Allow, "allow is the default");
    assert_eq!(orders[1].store, LimitStore::Memory);
    let upstream = &l.upstreams[0].rate_limits[0];
    assert_eq!(
        (upstream.store, upstream.on_error),
        (LimitStore::Redis, OnError::Deny)
    );
}

#[test]
fn resilience_example_builds_what_its_comments_say() {
    use std::time::Duration;
    use weir_domain::retry::Failure;
    use weir_domain::route::{Fallback, UpstreamId};

    let l = example("resilience.yaml");
    let orders = &l.upstreams[0];
    let passive = orders
        .passive
        .as_ref()
        .expect("orders ejects failing targets");
    assert_eq!(
        (passive.consecutive_failures, passive.max_ejected_percent),
        (5, 50)
    );
    assert_eq!(passive.eject_for, Duration::from_secs(30));
    let breaker = orders
        .circuit_breaker
        .as_ref()
        .expect("orders has a breaker");
    assert_eq!((breaker.failure_ratio, breaker.min_requests), (0.5, 20));
    assert_eq!(breaker.window, Duration::from_secs(10));
    assert_eq!(breaker.half_open_requests, 5);
    let retry = orders.retry.as_ref().expect("orders retries");
    assert_eq!(retry.attempts, 3);
    assert!(retry.idempotent_only);
    assert_eq!(retry.per_try_timeout, Some(Duration::from_secs(2)));
    for f in [
        Failure::Connect,
        Failure::Reset,
        Failure::Timeout,
        Failure::Status(502),
        Failure::Status(503),
        Failure::Status(504),
    ] {
        assert!(retry.on.matches(f), "{f:?}");
    }
    assert!(!retry.on.matches(Failure::Status(500)));
    assert_eq!((retry.budget.ratio, retry.budget.min_per_second), (0.2, 10));

    // The replica: defaults from `passive: {}` and `retry: {}`, no breaker.
    let replica = &l.upstreams[1];
    assert_eq!(replica.name, "orders-readonly");
    assert_eq!(replica.passive, orders.passive);
    assert_eq!(replica.retry.as_ref().unwrap().per_try_timeout, None);
    assert!(!replica.retry.as_ref().unwrap().on.matches(Failure::Timeout));
    assert!(replica.circuit_breaker.is_none());

    let by_name = |n: &str| l.routes.routes().iter().find(|r| r.name == n).unwrap();
    let Some(Fallback::Respond(list)) = &by_name("orders-list").fallback else {
        panic!("orders-list answers a fixed response")
    };
    assert_eq!(list.status, 200);
    assert_eq!(
        list.headers[0],
        ("Content-Type".to_owned(), "application/json".to_owned())
    );
    assert_eq!(&*list.body, r#"{"orders": [], "degraded": true}"#);
    assert!(matches!(
        by_name("orders-read").fallback,
        Some(Fallback::Upstream(UpstreamId(1)))
    ));
    assert!(by_name("orders-write").fallback.is_none());
    let get = Req(None, "GET", vec![]);
    assert_eq!(route(&l, &get, "/v1/orders"), "orders-list");
    assert_eq!(route(&l, &get, "/v1/orders/7"), "orders-read");
    assert_eq!(
        route(&l, &Req(None, "POST", vec![]), "/v1/orders"),
        "orders-write"
    );
}

#[test]
fn registry_discovery_examples() {
    use weir_domain::discovery::Discovery;

    let l = example("discovery-etcd.yaml");
    let Discovery::Etcd(e) = &l.upstreams[0].discovery else {
        panic!("etcd")
    };
    assert_eq!(e.prefix, "/weir/upstreams/users/");
    assert_eq!(e.cluster.endpoints, ["http://127.0.0.1:2379"]);
    assert_eq!(l.upstreams[0].load_balancing, LoadBalancing::Weighted);

    let l = example("discovery-consul.yaml");
    let [users, orders] = &l.upstreams[..] else {
        panic!("two upstreams")
    };
    let (Discovery::Consul(u), Discovery::Consul(o)) = (&users.discovery, &orders.discovery) else {
        panic!("consul")
    };
    assert_eq!((u.service.as_str(), u.tag.as_deref()), ("users", None));
    assert_eq!(o.tag.as_deref(), Some("v2"));
    assert_eq!(o.datacenter.as_deref(), Some("dc2"));
    // `${CONSUL_TOKEN:-}` unset: no token.
    assert_eq!(u.agent.token, None);
    assert_eq!(u.agent.address, "http://127.0.0.1:8500");
}

#[test]
fn cache_example() {
    use weir_domain::cache::CacheStore;

    let l = example("cache.yaml");
    assert_eq!(l.settings.limits.max_cache_bytes, 128 * 1024 * 1024);
    let routes = l.routes.routes();
    let catalog = routes.iter().find(|r| r.name == "catalog").unwrap();
    let c = catalog.cache.as_ref().unwrap();
    assert_eq!(
        (c.store, c.vary.as_slice()),
        (CacheStore::Memory, &["accept".to_owned()][..])
    );
    assert_eq!(c.stale_if_error.as_secs(), 300);
    let prices = routes.iter().find(|r| r.name == "prices").unwrap();
    let p = prices.cache.as_ref().unwrap();
    assert_eq!((p.store, p.max_body), (CacheStore::Redis, 256 * 1024));
    let account = routes.iter().find(|r| r.name == "account").unwrap();
    assert!(account.cache.as_ref().unwrap().per_consumer);
}

#[test]
fn transforms_example() {
    let l = example("transforms.yaml");
    let t = &l.routes.routes()[0].transforms;
    let set: Vec<&str> = t
        .request_headers
        .set
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(set, ["x-tenant", "x-order-id"]);
    assert_eq!(t.request_headers.remove, ["cookie"]);
    assert_eq!(t.query.remove, ["debug"]);
    assert_eq!(t.response_headers.remove, ["server", "x-powered-by"]);
    let tenant = &l.routes.routes()[1];
    assert_eq!(
        tenant.path_transform.apply_with(
            "/v2/tenants/acme/orders/7",
            &[("tenant", "acme".to_owned())]
        ),
        "/acme/orders/7"
    );
    let body = tenant.transforms.request_body.as_ref().unwrap();
    assert!(body.strict);
    assert_eq!(body.json.remove, [vec!["internal".to_owned()]]);
    assert_eq!(
        body.json.set,
        [
            (
                vec!["meta".to_owned(), "via".to_owned()],
                "\"weir\"".to_owned()
            ),
            (
                vec!["meta".to_owned(), "version".to_owned()],
                "2".to_owned()
            ),
        ]
    );
    let resp = tenant.transforms.response_body.as_ref().unwrap();
    assert_eq!(
        resp.json.remove,
        [vec!["customer".to_owned(), "ssn".to_owned()]]
    );
}

#[test]
fn grpc_example() {
    let l = example("grpc.yaml");
    let routes = l.routes.routes();
    let native = routes[0].grpc.as_ref().unwrap();
    assert!(native.web);
    assert!(native.rules.is_empty());
    let rest = routes[1].grpc.as_ref().unwrap();
    assert!(!rest.web);
    let (rule, bindings) = rest.find("GET", "/v1/orders/42").unwrap();
    assert_eq!(rest.rules[rule].grpc_path, "/weir.test.v1.Orders/GetOrder");
    assert_eq!(bindings[0].value, "42");
    let (rule, _) = rest.find("PUT", "/v1/orders/7").unwrap();
    assert_eq!(
        rest.rules[rule].grpc_path,
        "/weir.test.v1.Orders/UpdateOrder"
    );
    let (rule, _) = rest.find("GET", "/v1/orders").unwrap();
    assert!(rest.rules[rule].server_streaming);
    assert_eq!(
        l.upstreams[0].protocol,
        weir_domain::upstream::Protocol::Grpc
    );
}

#[test]
fn limits_example_allows_ambiguous_paths_on_one_route_only() {
    let l = example("limits.yaml");
    let allowed: Vec<&str> = l
        .routes
        .routes()
        .iter()
        .filter(|r| r.allow_ambiguous_paths)
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(allowed, ["objects"]);
}
