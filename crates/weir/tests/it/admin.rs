//! The admin API (contract §6), metrics (§7) and the access log, observed from outside.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::{
    Backend, DEADLINE, Gateway, MapEnv, TempDir, eventually, start, start_with_env,
};
use serde_json::Value;

fn api_config(backend: &Backend) -> String {
    format!(
        r#"
        upstreams:
          be:
            targets: [{{ url: "{}" }}]
        routes:
          - name: api
            match: {{ prefix: /api }}
            upstream: be
        "#,
        backend.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_while_running() {
    let backend = Backend::start("b").await;
    let gw = start(&api_config(&backend)).await;
    assert_eq!(
        gw.admin_json("/healthz").await,
        serde_json::json!({"status": "ok"})
    );
    let resp = gw.client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The admin API is not on the traffic listener.
    let resp = gw.get("/healthz").await;
    assert_eq!(resp.status(), 404);
    gw.stop().await;
}

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_traffic_with_bounded_labels() {
    let backend = Backend::start("b").await;
    let gw = start(&api_config(&backend)).await;
    for i in 0..3 {
        assert_eq!(gw.get(&format!("/api/items/{i}")).await.status(), 200);
    }
    let resp = gw
        .client
        .post(gw.url("/api/items"))
        .header("x-status", "201")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(gw.get("/nowhere").await.status(), 404);

    let target = backend.url();
    let get_200 = r#"weir_requests_total{route="api",method="GET",status="200"}"#;
    // Metrics are recorded when a response body is done, just after the client has it.
    let gw_ref = &gw;
    eventually("the requests to be counted", DEADLINE, || async move {
        metric_value(&gw_ref.metrics().await, get_200) == Some(3.0)
    })
    .await;
    let resp = gw
        .client
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        ct.starts_with("text/plain"),
        "Prometheus text format, got {ct}"
    );
    let text = resp.text().await.unwrap();
    assert_eq!(
        metric_value(
            &text,
            r#"weir_requests_total{route="api",method="POST",status="201"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE weir_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE weir_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(r#"weir_request_duration_seconds_bucket{route="api",le="#)),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            r#"weir_request_duration_seconds_bucket{route="api",le="+Inf"}"#
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, r#"weir_request_duration_seconds_count{route="api"}"#),
        Some(4.0),
        "{text}"
    );
    let upstream_200 =
        format!(r#"weir_upstream_requests_total{{upstream="be",target="{target}",status="200"}}"#);
    assert_eq!(metric_value(&text, &upstream_200), Some(3.0), "{text}");
    let upstream_201 =
        format!(r#"weir_upstream_requests_total{{upstream="be",target="{target}",status="201"}}"#);
    assert_eq!(metric_value(&text, &upstream_201), Some(1.0), "{text}");
    assert!(
        metric_value(&text, r#"weir_connections_active{listener="public"}"#).is_some(),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(r#"weir_build_info{version=""#) && l.ends_with(" 1")),
        "{text}"
    );
    // Labels are bounded: no raw path ever becomes a label.
    assert!(
        !text.contains("/api/items") && !text.contains("/nowhere"),
        "a raw path leaked into a label: {text}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_active_follows_open_connections() {
    let backend = Backend::start("b").await;
    let gw = start(&api_config(&backend)).await;
    let series = r#"weir_connections_active{listener="public"}"#;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut c, b"GET /api HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            crate::common::read_response(&mut c, &mut buf)
                .await
                .map(|r| r.status),
            Some(200)
        );
        conns.push(c);
    }
    let gw_ref = &gw;
    eventually("3 open connections", DEADLINE, || async move {
        metric_value(&gw_ref.metrics().await, series) == Some(3.0)
    })
    .await;
    drop(conns);
    eventually("0 open connections", DEADLINE, || async move {
        metric_value(&gw_ref.metrics().await, series) == Some(0.0)
    })
    .await;
    gw.stop().await;
}

const TOKEN: &str = "s3cr3t-admin-token-xyz";

async fn token_gateway(backend: &Backend) -> Gateway {
    let yaml = format!(
        "admin:\n  listen: {}\n  token: ${{ADMIN_TOKEN}}\n{}",
        crate::common::ADMIN_LISTEN,
        crate::common::dedent(&api_config(backend))
    );
    start_with_env(&yaml, &MapEnv::with(&[("ADMIN_TOKEN", TOKEN)])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_is_required_on_every_call() {
    let backend = Backend::start("b").await;
    let gw = token_gateway(&backend).await;
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/config",
        "/routes",
        "/upstreams",
    ] {
        let url = gw.admin_url(path);
        let resp = gw.client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path} without a token");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{body}");
        assert_eq!(body["status"], 401, "{body}");
        assert!(!body.to_string().contains(TOKEN));
        let resp = gw
            .client
            .get(&url)
            .bearer_auth("wrong-token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path} with a wrong token");
        let resp = gw
            .client
            .get(&url)
            .header("authorization", TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            401,
            "{path} with the token but not as Bearer"
        );
        let resp = gw.client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path} with the token");
    }
    // Traffic does not need the admin token.
    assert_eq!(gw.get("/api").await.status(), 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_401_has_the_full_problem_shape() {
    let backend = Backend::start("b").await;
    let gw = token_gateway(&backend).await;
    let resp = gw
        .client
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    crate::common::check_problem_body(&body, 401, "unauthorized", request_id.as_deref());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_version_load_time_and_hides_secrets() {
    let backend = Backend::start("b").await;
    let gw = token_gateway(&backend).await;
    let resp = gw
        .client
        .get(gw.admin_url("/config"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains(TOKEN),
        "GET /config reveals the admin token: {text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["version"].as_str().is_some_and(|s| !s.is_empty()),
        "version: {v}"
    );
    assert!(!v["loaded_at"].is_null(), "loaded_at: {v}");
    let config = if v["config"].is_object() {
        &v["config"]
    } else {
        &v
    };
    assert_eq!(config["admin"]["token"], "***", "{v}");
    // The effective config, defaults applied.
    assert!(config["routes"].to_string().contains("api"), "{v}");
    assert!(config["upstreams"]["be"].is_object(), "{v}");
    assert!(
        config["limits"]["max_body_bytes"].is_string()
            || config["limits"]["max_body_bytes"].is_number(),
        "{v}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_listed_in_match_order() {
    let gw = start(
        r#"
        routes:
          - name: by-regex
            match: { regex: "^/r/.*" }
            respond: { status: 200 }
          - name: by-prefix
            match: { prefix: /r }
            respond: { status: 200 }
          - name: by-template
            match: { path: "/r/{id}" }
            respond: { status: 200 }
          - name: by-exact
            match: { path: /r/1 }
            respond: { status: 200 }
          - name: by-priority
            match: { regex: "^/z" }
            priority: 10
            respond: { status: 200 }
        "#,
    )
    .await;
    let v = gw.admin_json("/routes").await;
    let names: Vec<&str> = v["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "by-priority",
            "by-exact",
            "by-template",
            "by-prefix",
            "by-regex"
        ]
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_show_targets_weights_health_and_in_flight() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = start(&format!(
        r#"
        upstreams:
          be:
            load_balancing: least_connections
            targets: [{{ url: "{}", weight: 3 }}, {{ url: "{}" }}]
        routes:
          - name: api
            match: {{ prefix: / }}
            upstream: be
        "#,
        a.url(),
        b.url()
    ))
    .await;
    a.hold();
    b.hold();
    let req = gw.client.get(gw.url("/held")).header("x-hold", "1");
    let held = tokio::spawn(async move { req.send().await.unwrap() });
    eventually("the request to be held", DEADLINE, || async {
        a.held() + b.held() == 1
    })
    .await;

    let v = gw.admin_json("/upstreams").await;
    let up = &v["upstreams"][0];
    assert_eq!(up["name"], "be", "{v}");
    assert_eq!(up["load_balancing"], "least_connections", "{v}");
    let targets = up["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0]["url"], a.url());
    assert_eq!(targets[0]["weight"], 3);
    assert_eq!(targets[1]["weight"], 1);
    for t in targets {
        assert_eq!(t["healthy"], true, "{v}");
    }
    let in_flight: Vec<u64> = targets
        .iter()
        .map(|t| t["in_flight"].as_u64().expect("in_flight"))
        .collect();
    let holder = usize::from(b.held() == 1);
    assert_eq!(in_flight[holder], 1, "{v}");
    assert_eq!(in_flight[1 - holder], 0, "{v}");
    a.release();
    b.release();
    assert_eq!(held.await.unwrap().status(), 200);
    let gw_ref = &gw;
    eventually("in_flight back to 0", DEADLINE, || async move {
        let v = gw_ref.admin_json("/upstreams").await;
        v["upstreams"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["in_flight"] == 0)
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_turns_readyz_503_and_lets_requests_finish() {
    let backend = Backend::start("b").await;
    let gw = start(&api_config(&backend)).await;
    backend.hold();
    let (client, addr, readyz) = (gw.client.clone(), gw.addr, gw.admin_url("/readyz"));
    let req = client.get(gw.url("/api/slow")).header("x-hold", "1");
    let in_flight = tokio::spawn(async move { req.send().await.unwrap() });
    eventually("the request to be in flight", DEADLINE, || async {
        backend.held() == 1
    })
    .await;

    let stopping = tokio::spawn(gw.stop());
    let c = client.clone();
    eventually("/readyz to turn 503", DEADLINE, || {
        let req = c.get(&readyz);
        async move { req.send().await.is_ok_and(|r| r.status() == 503) }
    })
    .await;
    eventually(
        "the listener to refuse new connections",
        DEADLINE,
        || async move { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    assert!(
        !stopping.is_finished(),
        "shutdown returned with a request in flight"
    );
    backend.release();
    let resp = in_flight.await.unwrap();
    assert_eq!(resp.status(), 200, "the in-flight request finished");
    assert_eq!(crate::common::backend_of(resp).await, "b");
    let drained = tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("shutdown finishes")
        .unwrap();
    assert!(drained, "every request finished within shutdown_grace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_json_line_per_request() {
    let backend = Backend::start("b").await;
    let dir = TempDir::new("access");
    let log = dir.path().join("access.log");
    let yaml = format!(
        "observability:\n  access_log: {{ enabled: true, path: \"{}\" }}\n{}",
        log.display(),
        crate::common::dedent(&api_config(&backend))
    );
    let gw = start(&yaml).await;
    let resp = gw
        .client
        .post(gw.url("/api/things?q=1"))
        .header("user-agent", "weir-test/1.0")
        .header("x-echo-body", "1")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"hello");

    let mut line = String::new();
    let log_ref = &log;
    let found = &mut line;
    let deadline = std::time::Instant::now() + DEADLINE;
    while found.is_empty() {
        let text = std::fs::read_to_string(log_ref).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(&request_id)) {
            *found = l.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access-log line for {request_id}; file: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let time = v["time"].as_str().expect("time");
    assert!(
        time.len() >= 20 && time.contains('T'),
        "time {time:?} is RFC 3339"
    );
    assert_eq!(v["request_id"], request_id);
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["method"], "POST");
    assert!(
        v["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/api/things")),
        "{v}"
    );
    assert_eq!(v["route"], "api");
    assert_eq!(v["upstream"], "be");
    assert_eq!(v["target"], backend.url());
    assert_eq!(v["status"], 200);
    assert!(v["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{v}");
    assert_eq!(v["bytes_in"], 5);
    assert_eq!(v["bytes_out"], 5);
    assert_eq!(v["user_agent"], "weir-test/1.0");

    // A request that matched nothing is logged too, with null route.
    let resp = gw.get("/none").await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(resp.status(), 404);
    let log_ref = &log;
    let id_ref = id.as_str();
    eventually("the 404 to be logged", DEADLINE, || async move {
        std::fs::read_to_string(log_ref)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.contains(id_ref)
                    && serde_json::from_str::<Value>(l)
                        .is_ok_and(|v| v["status"] == 404 && v["route"].is_null())
            })
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_and_admin_may_both_use_port_zero() {
    let yaml = crate::common::dedent(
        r#"
        listeners:
          - name: public
            address: 127.0.0.1:0
          - name: second
            address: 127.0.0.1:0
        admin:
          listen: 127.0.0.1:0
        observability:
          access_log: { enabled: false }
        routes:
          - name: ok
            respond: { status: 200, body: ok }
        "#,
    );
    let loaded = weir_config::load_str(
        "test.yaml",
        &yaml,
        &MapEnv::default(),
        &weir_config::Overrides::default(),
    )
    .unwrap_or_else(|p| panic!("{p}"));
    let running = weir::start(loaded).await.expect("starts");
    let admin = running.admin_addr.unwrap();
    assert_ne!(running.addrs[0], admin);
    assert_ne!(running.addrs[0], running.addrs[1]);
    let client = crate::common::client();
    assert_eq!(
        client
            .get(format!("http://{}/", running.addrs[1]))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("http://{admin}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    running.shutdown().await;
}
