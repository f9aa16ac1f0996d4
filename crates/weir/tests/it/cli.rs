//! The `weir` binary (contract §1 and §2): commands, exit codes, problems as
//! `FILE:LINE:COL: key.path: message`, flag > environment > file precedence, `${VAR}`
//! interpolation, `explain`, and draining on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use crate::common::{Backend, DEADLINE, TempDir, dedent, eventually, spawn_weir, weir_command};

fn run(dir: &TempDir, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = weir_command();
    cmd.current_dir(dir.path()).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run weir")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
listeners:
  - name: public
    address: 127.0.0.1:0
admin:
  listen: 127.0.0.2:0
observability:
  access_log: { enabled: false }
upstreams:
  users:
    targets: [{ url: "http://127.0.0.1:9000" }]
  orders:
    targets: [{ url: "http://127.0.0.1:9001" }, { url: "http://127.0.0.1:9002", weight: 2 }]
routes:
  - name: orders-v2
    match:
      host: api.example.com
      path: /v2/orders/{id}
      methods: [GET, PUT]
      headers: { X-Api-Version: "2" }
    upstream: orders
  - name: orders-any
    match: { prefix: /v2/orders }
    upstream: orders
  - name: users
    match: { prefix: /users, methods: [GET] }
    upstream: users
"#;

#[test]
fn validate_accepts_a_good_file() {
    let dir = TempDir::new("cli");
    dir.write("good.yaml", GOOD);
    let out = run(&dir, &["validate", "-c", "good.yaml"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout.trim(), "ok: 3 routes, 2 upstreams");
}

#[test]
fn validate_finds_the_config_through_weir_config() {
    let dir = TempDir::new("cli");
    let path = dir.write("elsewhere.yaml", GOOD);
    let out = run(
        &dir,
        &["validate"],
        &[("WEIR_CONFIG", path.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(text(&out).0.trim(), "ok: 3 routes, 2 upstreams");
}

#[test]
fn validate_lists_every_problem_with_its_location() {
    let dir = TempDir::new("cli");
    // Line numbers matter here: keep this text as it is.
    dir.write(
        "weir.yaml",
        r#"listeners:
  - name: public
    address: 127.0.0.1:0
admin:
  listen: 127.0.0.2:0
upstreams:
  users:
    targets:
      - url: http://127.0.0.1:9000
routes:
  - name: orders
    match: { prefix: /orders }
    upstream: user
    timeout: 5 seconds
  - name: other
    match: { path: /x }
    upstream: users
    max_body_bytes: lots
  - name: third
    match: { path: /y }
    respond: { status: 200 }
    colour: blue
  - name: env
    match: { path: /z }
    respond: { status: 200, body: "${NOPE_UNSET_VAR}" }
"#,
    );
    let out = run(&dir, &["validate", "-c", "weir.yaml"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let all = format!("{stdout}{stderr}");
    let lines: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 5, "one line per problem:\n{all}");
    for l in &lines {
        let mut parts = l.splitn(5, ':');
        let (file, line, col) = (parts.next(), parts.next(), parts.next());
        assert_eq!(file, Some("weir.yaml"), "{l}");
        assert!(
            line.is_some_and(|n| n.parse::<u32>().is_ok())
                && col.is_some_and(|n| n.parse::<u32>().is_ok()),
            "{l}"
        );
        let key = parts.next().expect("key path");
        assert!(key.starts_with(" routes["), "{l}");
        assert!(parts.next().is_some_and(|m| m.len() > 2), "{l}");
    }
    assert!(
        lines[0].starts_with("weir.yaml:13:15: routes[0].upstream: unknown upstream \"user\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("weir.yaml:14:14: routes[0].timeout: "),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("weir.yaml:18:21: routes[1].max_body_bytes: "),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("weir.yaml:22:5: routes[2].colour: "),
        "an unknown key is an error: {}",
        lines[3]
    );
    assert!(
        lines[4].starts_with("weir.yaml:25:") && lines[4].contains("NOPE_UNSET_VAR"),
        "{}",
        lines[4]
    );

    // `run` refuses the same file with the same exit code.
    let out = run(&dir, &["run", "-c", "weir.yaml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("weir.yaml:13:15: routes[0].upstream"),
        "{:?}",
        text(&out)
    );
}

#[test]
fn version_prints_version_commit_and_features() {
    let dir = TempDir::new("cli");
    let out = run(&dir, &["version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out).0;
    assert!(
        stdout.contains(&format!("weir {}", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(stdout.contains("features:"), "{stdout}");
    let commit = stdout
        .split("commit ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_alphanumeric()).next())
        .expect("a commit in the version output");
    assert!(
        commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "commit {commit:?}"
    );
    // It names a real commit of this repository.
    let known = std::process::Command::new("git")
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status();
    if let Ok(status) = known {
        assert!(
            status.success(),
            "commit {commit} is not in this repository"
        );
    }
}

#[test]
fn usage_errors_exit_1() {
    let dir = TempDir::new("cli");
    dir.write("good.yaml", GOOD);
    for args in [
        &["bogus"][..],
        &["--no-such-flag"],
        &["explain", "-c", "good.yaml", "GET"],
        &["validate", "-c"],
    ] {
        let out = run(&dir, args, &[]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "weir {args:?}: {:?}",
            text(&out)
        );
        assert!(
            !text(&out).1.is_empty(),
            "weir {args:?} explains the usage error on stderr"
        );
    }
    // A missing file is a config problem: 1 too.
    let out = run(&dir, &["validate", "-c", "missing.yaml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("missing.yaml"), "{:?}", text(&out));
}

#[test]
fn bind_failure_exits_2() {
    let dir = TempDir::new("cli");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = GOOD.replace(
        "address: 127.0.0.1:0",
        &format!("address: 127.0.0.1:{port}"),
    );
    dir.write("weir.yaml", &config);
    let out = run(&dir, &["run", "-c", "weir.yaml"], &[]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(
        text(&out).1.contains(&port.to_string()),
        "the error names the address: {:?}",
        text(&out)
    );
    // The admin address too.
    let config = GOOD.replace("listen: 127.0.0.2:0", &format!("listen: 127.0.0.1:{port}"));
    dir.write("weir.yaml", &config);
    let out = run(&dir, &["run", "-c", "weir.yaml"], &[]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    drop(taken);
}

fn admin_ip(w: &crate::common::WeirProcess) -> String {
    w.admin.expect("admin address logged").ip().to_string()
}

fn healthz(addr: SocketAddr) -> u16 {
    let resp = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--noproxy",
            "*",
            &format!("http://{addr}/healthz"),
        ])
        .output();
    match resp {
        Ok(o) => String::from_utf8_lossy(&o.stdout).parse().unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_environment_beat_file() {
    let dir = TempDir::new("cli");
    let config = GOOD.replace("listen: 127.0.0.2:0", "listen: 127.0.0.3:0");
    let path = dir.write("weir.yaml", &config);
    let c = path.to_str().unwrap();
    let client = crate::common::client();

    let w = spawn_weir(
        &["run", "-c", c, "--admin-listen", "127.0.0.5:0"],
        &[("WEIR_ADMIN__LISTEN", "127.0.0.4:0")],
    );
    assert_eq!(admin_ip(&w), "127.0.0.5", "the flag wins");
    let resp = client
        .get(w.admin_url("/healthz"))
        .send()
        .await
        .expect("admin API where the flag says");
    assert_eq!(resp.status(), 200);
    drop(w);

    let w = spawn_weir(&["run", "-c", c], &[("WEIR_ADMIN__LISTEN", "127.0.0.4:0")]);
    assert_eq!(
        admin_ip(&w),
        "127.0.0.4",
        "without the flag, the environment wins"
    );
    assert_eq!(
        client
            .get(w.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(w);

    let w = spawn_weir(&["run", "-c", c], &[]);
    assert_eq!(admin_ip(&w), "127.0.0.3", "without either, the file");
    drop(w);

    // --listen replaces the first listener's address.
    let w = spawn_weir(
        &["run", "-c", c, "--listen", "127.0.0.6:0"],
        &[("WEIR_LISTENERS__0__ADDRESS", "127.0.0.7:0")],
    );
    assert_eq!(w.addr.ip().to_string(), "127.0.0.6");
    let resp = client.get(w.url("/users")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        502,
        "the listener serves (users' target is down)"
    );
    drop(w);
    let w = spawn_weir(
        &["run", "-c", c],
        &[("WEIR_LISTENERS__0__ADDRESS", "127.0.0.7:0")],
    );
    assert_eq!(w.addr.ip().to_string(), "127.0.0.7");
}

#[test]
fn the_admin_listening_log_line_carries_a_plain_address() {
    let dir = TempDir::new("cli");
    let path = dir.write("weir.yaml", GOOD);
    let w = spawn_weir(&["run", "-c", path.to_str().unwrap()], &[]);
    let log = w.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("admin API listening"))
        .expect("admin API log line");
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    let address = v["address"].as_str().expect("address field");
    assert!(
        address.parse::<SocketAddr>().is_ok(),
        "address {address:?} is not IP:PORT"
    );
    assert_eq!(healthz(address.parse().unwrap()), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_are_interpolated() {
    let dir = TempDir::new("cli");
    let config = dedent(
        r#"
        listeners:
          - name: public
            address: ${LISTEN_ADDR}
        admin:
          listen: ${ADMIN_ADDR:-127.0.0.2:0}
        observability:
          access_log: { enabled: false }
        routes:
          - name: hello
            match: { path: /hello }
            respond:
              status: 200
              headers: { X-Env: "${ENV_NAME}" }
              body: "${GREETING:-hello from the default}"
        "#,
    );
    let path = dir.write("weir.yaml", &config);
    let c = path.to_str().unwrap();
    let w = spawn_weir(
        &["run", "-c", c],
        &[("LISTEN_ADDR", "127.0.0.1:0"), ("ENV_NAME", "prod")],
    );
    let resp = crate::common::client()
        .get(w.url("/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-env"], "prod");
    assert_eq!(resp.text().await.unwrap(), "hello from the default");
    drop(w);

    let out = run(
        &dir,
        &["validate", "-c", c],
        &[("LISTEN_ADDR", "127.0.0.1:0")],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out).1;
    assert!(
        stderr.contains("ENV_NAME"),
        "an unset variable is named: {stderr}"
    );
    assert!(stderr.contains("weir.yaml:13:"), "and located: {stderr}");
}

#[test]
fn explain_names_the_route_or_the_error() {
    let dir = TempDir::new("cli");
    dir.write("weir.yaml", GOOD);
    let explain = |args: &[&str]| {
        let mut all = vec!["explain", "-c", "weir.yaml"];
        all.extend_from_slice(args);
        let out = run(&dir, &all, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "explain {args:?}: {:?}",
            text(&out)
        );
        text(&out).0
    };
    let out = explain(&[
        "GET",
        "http://api.example.com/v2/orders/5",
        "-H",
        "X-Api-Version: 2",
    ]);
    assert!(out.contains("route: \"orders-v2\""), "{out}");
    assert!(out.contains("upstream: \"orders\""), "{out}");
    assert!(
        out.contains("http://127.0.0.1:9002"),
        "the upstream's targets are listed: {out}"
    );
    let out = explain(&["GET", "http://api.example.com/v2/orders/5"]);
    assert!(
        out.contains("route: \"orders-any\""),
        "without the header: {out}"
    );
    let out = explain(&[
        "GET",
        "http://other.example.com/v2/orders/5",
        "-H",
        "X-Api-Version: 2",
    ]);
    assert!(out.contains("route: \"orders-any\""), "another host: {out}");
    let out = explain(&["POST", "http://api.example.com/users/1"]);
    assert!(out.contains("405"), "{out}");
    assert!(out.contains("GET"), "405 lists what is allowed: {out}");
    let out = explain(&["GET", "http://api.example.com/nothing/here"]);
    assert!(out.contains("404"), "{out}");
    assert!(!out.contains("route: \""), "{out}");
}

#[test]
fn explain_names_each_discovery_source() {
    let dir = TempDir::new("cli");
    // `explain` connects to nothing; the addresses refuse connections anyway.
    let (etcd, consul, dns_port) = (
        crate::common::dead_addr(),
        crate::common::dead_addr(),
        crate::common::dead_addr().port(),
    );
    let config = crate::common::config(&format!(
        r#"
        etcd: {{ endpoints: ["http://{etcd}"] }}
        consul: {{ address: "http://{consul}" }}
        upstreams:
          by-etcd:
            discovery: {{ etcd: {{ prefix: /weir/upstreams/users/ }} }}
          by-consul:
            discovery: {{ consul: {{ service: orders, tag: v2, datacenter: dc2 }} }}
          by-dns:
            discovery: {{ dns: {{ name: users.internal, port: {dns_port} }} }}
        routes:
          - {{ name: e, match: {{ prefix: /etcd }}, upstream: by-etcd }}
          - {{ name: c, match: {{ prefix: /consul }}, upstream: by-consul }}
          - {{ name: d, match: {{ prefix: /dns }}, upstream: by-dns }}
        "#
    ));
    let file = dir.write("weir.yaml", &config);
    for (path, says) in [
        (
            "/etcd/1",
            format!(
                "targets from etcd: the keys under \"/weir/upstreams/users/\", watched on \
                 http://{etcd}"
            ),
        ),
        (
            "/consul/1",
            format!(
                "targets from Consul: passing instances of \"orders\" tagged \"v2\" in \
                 datacenter \"dc2\", watched on http://{consul}"
            ),
        ),
        (
            "/dns/1",
            format!("targets from DNS: A/AAAA users.internal port {dns_port}"),
        ),
    ] {
        let out = run(
            &dir,
            &["explain", "-c", file.to_str().unwrap(), "GET", path],
            &[],
        );
        assert_eq!(out.status.code(), Some(0), "{path}: {:?}", text(&out));
        let stdout = text(&out).0;
        assert!(stdout.contains(&says), "{path}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let backend = Backend::start("slow").await;
    let dir = TempDir::new("cli");
    let config = crate::common::config(&format!(
        r#"
        upstreams:
          be:
            targets: [{{ url: "{}" }}]
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: be
        "#,
        backend.url()
    ));
    let path = dir.write("weir.yaml", &config);
    let mut w = spawn_weir(&["run", "-c", path.to_str().unwrap()], &[]);
    let client = crate::common::client();
    let readyz = w.admin_url("/readyz");
    assert_eq!(client.get(&readyz).send().await.unwrap().status(), 200);

    backend.hold();
    let mut in_flight = Vec::new();
    for i in 0..5 {
        let req = client
            .get(w.url(&format!("/slow/{i}")))
            .header("x-hold", "1");
        in_flight.push(tokio::spawn(async move { req.send().await }));
    }
    eventually("5 requests in flight", DEADLINE, || async {
        backend.held() == 5
    })
    .await;

    w.signal("TERM");
    let c = client.clone();
    let r = readyz.clone();
    eventually("/readyz to turn 503 while draining", DEADLINE, || {
        let req = c.get(&r);
        async move { req.send().await.is_ok_and(|resp| resp.status() == 503) }
    })
    .await;
    let addr = w.addr;
    eventually("new connections to be refused", DEADLINE, || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert_eq!(
        w.child.try_wait().unwrap(),
        None,
        "weir exited with requests in flight"
    );

    backend.release();
    for (i, t) in in_flight.into_iter().enumerate() {
        let resp = t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i} failed during the drain: {e}"));
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(crate::common::backend_of(resp).await, "slow");
    }
    assert_eq!(
        w.wait_exit(DEADLINE),
        Some(0),
        "exit code after SIGTERM; log:\n{}",
        w.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_and_sighup_does_not() {
    let dir = TempDir::new("cli");
    let path = dir.write("weir.yaml", GOOD);
    let mut w = spawn_weir(&["run", "-c", path.to_str().unwrap()], &[]);
    let client = crate::common::client();
    w.signal("HUP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        w.child.try_wait().unwrap(),
        None,
        "SIGHUP must not stop weir"
    );
    assert_eq!(
        client
            .get(w.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    w.signal("INT");
    assert_eq!(
        w.wait_exit(DEADLINE),
        Some(0),
        "exit code after SIGINT; log:\n{}",
        w.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_have_unique_keys() {
    let dir = TempDir::new("cli");
    let dead = crate::common::dead_addr();
    let config = crate::common::config(&format!(
        r#"
        upstreams:
          be:
            targets: [{{ url: "http://{dead}" }}]
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: be
        "#
    ));
    let path = dir.write("weir.yaml", &config);
    let w = spawn_weir(&["run", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(
        crate::common::client()
            .get(w.url("/x"))
            .send()
            .await
            .unwrap()
            .status(),
        502
    );
    let w_ref = &w;
    eventually("the failure to be logged", DEADLINE, || async move {
        w_ref.stderr().contains(&dead.to_string())
    })
    .await;
    for line in w.stderr().lines().filter(|l| l.starts_with('{')) {
        let n = line.matches("\"target\":").count();
        assert!(n <= 1, "key \"target\" appears {n} times: {line}");
    }
}
