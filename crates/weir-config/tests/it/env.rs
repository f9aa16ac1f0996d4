//! `${VAR}` interpolation, `WEIR_*` overrides, flags, and their precedence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{TestEnv, ok_with, problems_with};
use weir_config::{LogFormat, Overrides};
use weir_domain::route::RouteAction;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const UPSTREAM: &str = "\
upstreams:
  api:
    targets: [{ url: 'http://${API_HOST:-127.0.0.1}:${API_PORT}' }]
";

#[test]
fn interpolation_uses_set_variables_and_defaults() {
    let env = TestEnv::with(&[("API_PORT", "9000")]);
    let loaded = ok_with(UPSTREAM, &env, &Overrides::default());
    assert_eq!(
        loaded.upstreams[0].static_targets[0].url,
        "http://127.0.0.1:9000"
    );

    let env = TestEnv::with(&[("API_PORT", "9000"), ("API_HOST", "10.1.1.1")]);
    let loaded = ok_with(UPSTREAM, &env, &Overrides::default());
    assert_eq!(
        loaded.upstreams[0].static_targets[0].addr.authority,
        "10.1.1.1:9000"
    );
}

#[test]
fn an_unset_variable_is_reported_once_at_its_value() {
    let p = problems_with(UPSTREAM, &TestEnv::default(), &Overrides::default());
    assert_eq!(
        p,
        [
            "weir.yaml:3:22: upstreams.api.targets[0].url: environment variable API_PORT is not set (write ${API_PORT:-} to default to empty)"
        ]
    );
}

#[test]
fn templates_that_are_not_variable_names_are_kept() {
    let yaml =
        "routes:\n  - name: r\n    respond: { body: 'hi ${consumer.name} ${path.id} $${HOME}' }\n";
    let loaded = ok_with(
        yaml,
        &TestEnv::with(&[("HOME", "/root")]),
        &Overrides::default(),
    );
    let RouteAction::Respond(r) = &loaded.routes.routes()[0].action else {
        panic!("a respond route")
    };
    assert_eq!(&*r.body, "hi ${consumer.name} ${path.id} ${HOME}");
}

#[test]
fn env_overrides_are_typed_by_their_field() {
    let env = TestEnv::with(&[
        ("WEIR_WORKERS", "2"),
        ("WEIR_ADMIN__TOKEN", "12345"),
        ("WEIR_OBSERVABILITY__ACCESS_LOG__ENABLED", "false"),
        ("WEIR_LIMITS__MAX_BODY_BYTES", "1MiB"),
        ("WEIR_SHUTDOWN_GRACE", "5s"),
        ("WEIR_LISTENERS__0__HTTP2", "false"),
    ]);
    let loaded = ok_with("", &env, &Overrides::default());
    let s = &loaded.settings;
    assert_eq!(s.workers, 2);
    assert_eq!(s.admin.token.as_deref(), Some("12345"));
    assert!(!s.access_log.enabled);
    assert_eq!(s.limits.max_body_bytes, 1 << 20);
    assert_eq!(s.shutdown_grace, Duration::from_secs(5));
    assert!(!s.listeners[0].http2);
    assert_eq!(loaded.effective["workers"], 2);
    assert_eq!(loaded.effective["admin"]["token"], "***");
}

#[test]
fn variables_that_name_no_top_level_key_are_ignored() {
    let env = TestEnv::with(&[
        ("WEIR_CONFIG", "other.yaml"),
        ("WEIR_ADMIN_TOKEN", "t"),
        ("WEIR_LOG", "debug"),
        ("WEIR_", "x"),
        ("NOT_WEIR__ADMIN__LISTEN", "x"),
    ]);
    let loaded = ok_with("", &env, &Overrides::default());
    assert_eq!(loaded.settings.admin.listen, Some(addr("127.0.0.1:9901")));
    assert_eq!(loaded.settings.admin.token, None);
}

#[test]
fn precedence_is_flags_then_env_then_file_then_defaults() {
    let yaml = "\
listeners: [{ name: main, address: '0.0.0.0:8000' }]
admin: { listen: '127.0.0.1:7000' }
observability: { log: { level: warn } }
";
    let file_only = ok_with(yaml, &TestEnv::default(), &Overrides::default()).settings;
    assert_eq!(file_only.listeners[0].address, addr("0.0.0.0:8000"));
    assert_eq!(file_only.admin.listen, Some(addr("127.0.0.1:7000")));
    assert_eq!(file_only.log.level, "warn");
    assert_eq!(file_only.log.format, LogFormat::Json); // default

    let env = TestEnv::with(&[
        ("WEIR_LISTENERS__0__ADDRESS", "0.0.0.0:8001"),
        ("WEIR_ADMIN__LISTEN", "127.0.0.1:7001"),
        ("WEIR_OBSERVABILITY__LOG__LEVEL", "error"),
        ("WEIR_OBSERVABILITY__LOG__FORMAT", "text"),
    ]);
    let with_env = ok_with(yaml, &env, &Overrides::default()).settings;
    assert_eq!(with_env.listeners[0].address, addr("0.0.0.0:8001"));
    assert_eq!(with_env.listeners[0].name, "main");
    assert_eq!(with_env.admin.listen, Some(addr("127.0.0.1:7001")));
    assert_eq!(with_env.log.level, "error");
    assert_eq!(with_env.log.format, LogFormat::Text);

    let flags = Overrides {
        listen: Some("0.0.0.0:8002".into()),
        admin_listen: Some("off".into()),
        log_level: Some("debug".into()),
        log_format: Some("json".into()),
        workers: Some(4),
    };
    let with_flags = ok_with(yaml, &env, &flags).settings;
    assert_eq!(with_flags.listeners[0].address, addr("0.0.0.0:8002"));
    assert_eq!(with_flags.admin.listen, None);
    assert_eq!(with_flags.log.level, "debug");
    assert_eq!(with_flags.log.format, LogFormat::Json);
    assert_eq!(with_flags.workers, 4);
}

#[test]
fn listen_flag_creates_the_default_listener_when_there_is_none() {
    let flags = Overrides {
        listen: Some("127.0.0.1:18080".into()),
        ..Overrides::default()
    };
    let s = ok_with("", &TestEnv::default(), &flags).settings;
    assert_eq!(s.listeners.len(), 1);
    assert_eq!(s.listeners[0].name, "public");
    assert_eq!(s.listeners[0].address, addr("127.0.0.1:18080"));
}

#[test]
fn override_problems_are_located_at_the_variable_or_flag() {
    let env = TestEnv::with(&[
        ("WEIR_WORKERS", "two"),
        ("WEIR_ADMIN__LISTNE", "x"),
        ("WEIR_LISTENERS__3__ADDRESS", "x"),
    ]);
    let flags = Overrides {
        listen: Some("nowhere".into()),
        log_format: Some("xml".into()),
        ..Overrides::default()
    };
    let p = problems_with("admin: { listen: '127.0.0.1:9901' }\n", &env, &flags);
    assert_eq!(
        p,
        [
            "env:WEIR_ADMIN__LISTNE: admin.listne: unknown key \"listne\" (expected one of listen, token)",
            "env:WEIR_LISTENERS__3__ADDRESS: listeners: index 3 is past the end of the list, which has 1 item; 1 appends one",
            "env:WEIR_WORKERS: workers: expected a whole number (0 or more), found a string",
            "flag:--listen: listeners[0].address: \"nowhere\" is not IP:PORT such as 0.0.0.0:8080 (host names are not resolved)",
            "flag:--log-format: observability.log.format: \"xml\" is not one of json, text",
        ]
    );
}

#[test]
fn an_empty_token_means_no_token() {
    let yaml = "admin: { token: '${WEIR_ADMIN_TOKEN:-}' }\n";
    let loaded = ok_with(yaml, &TestEnv::default(), &Overrides::default());
    assert_eq!(loaded.settings.admin.token, None);
    assert_eq!(loaded.effective["admin"]["token"], "");
    let env = TestEnv::with(&[("WEIR_ADMIN_TOKEN", "s3cret")]);
    let loaded = ok_with(yaml, &env, &Overrides::default());
    assert_eq!(loaded.settings.admin.token.as_deref(), Some("s3cret"));
    assert_eq!(loaded.effective["admin"]["token"], "***");
}
