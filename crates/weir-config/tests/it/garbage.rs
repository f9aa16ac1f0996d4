//! No input makes loading panic: random text, YAML-shaped noise, and valid files with
//! random edits all end in `Ok` or in problems.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::TestEnv;
use proptest::prelude::*;
use weir_config::{Overrides, load_str};

const VALID: &str = include_str!("../../../../weir.yaml");

fn load(text: &str, env: &TestEnv) {
    if let Err(problems) = load_str("fuzz.yaml", text, env, &Overrides::default()) {
        assert!(!problems.0.is_empty());
        for p in &problems.0 {
            assert!(!p.to_string().contains('\n'), "a problem spans lines: {p}");
        }
    }
}

/// Fragments that exercise the interesting paths when put together.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("routes:\n".to_owned()),
        Just("  - name: r\n".to_owned()),
        Just("    upstream: u\n".to_owned()),
        Just("    respond: { status: 700 }\n".to_owned()),
        Just("    match: { path: '/a/{x}', prefix: /b }\n".to_owned()),
        Just("upstreams:\n  u:\n    targets: [{ url: 'http://a:1' }]\n".to_owned()),
        Just("admin: { listen: off, token: ${T:-x} }\n".to_owned()),
        Just("listeners: [{ name: a, address: '0.0.0.0:1' }]\n".to_owned()),
        Just("${".to_owned()),
        Just("&a [1]\n".to_owned()),
        Just("*a\n".to_owned()),
        Just("- ".to_owned()),
        Just(": ".to_owned()),
        Just("\t".to_owned()),
        "[a-z_{}\\[\\]:,'\" \n-]{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_text(text in "\\PC{0,200}") {
        load(&text, &TestEnv::default());
    }

    #[test]
    fn yaml_shaped_noise(parts in proptest::collection::vec(fragment(), 0..16)) {
        load(&parts.concat(), &TestEnv::default());
    }

    #[test]
    fn edited_valid_file(at in 0..VALID.len(), len in 0usize..40, insert in "[ -~\n]{0,6}") {
        let mut text = VALID.as_bytes().to_vec();
        let end = (at + len).min(text.len());
        text.splice(at..end, insert.bytes());
        let text = String::from_utf8_lossy(&text);
        load(&text, &TestEnv::default());
    }

    #[test]
    fn random_overrides(key in "WEIR_[A-Z_0-9]{0,30}", value in "\\PC{0,20}") {
        let env = TestEnv::with(&[(key.as_str(), value.as_str())]);
        load(VALID, &env);
    }
}

#[test]
fn hostile_inputs() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
    for text in [
        "",
        "~",
        "---\n---\n",
        "42",
        "routes: [~, 1, [], {}]",
        "upstreams: { '': {} }",
        "upstreams: [1]",
        "listeners: 'x'",
        "\u{feff}admin: {}",
        "routes:\n  - name: a\n    match: { regex: '(((((((((((a*)*)*)*)*)*)*)*)*)*)*){1000}{1000}' }\n    respond: {}\n",
        "workers: 99999999999999999999999999",
        "limits: { max_body_bytes: 18446744073709551615GiB }",
        &deep,
        bomb,
    ] {
        load(text, &TestEnv::default());
    }
    let env = TestEnv::with(&[
        ("WEIR_ROUTES__0__MATCH__HEADERS__X", "1"),
        ("WEIR_UPSTREAMS", "x"),
        ("WEIR_LISTENERS__18446744073709551616__NAME", "x"),
    ]);
    load(VALID, &env);
}
