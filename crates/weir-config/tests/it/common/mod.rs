//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use weir_config::{Loaded, Overrides, Problems, load_str};

pub use weir_config::MapEnv as TestEnv;

pub fn load(yaml: &str) -> Result<Loaded, Problems> {
    load_str(
        "weir.yaml",
        yaml,
        &TestEnv::default(),
        &Overrides::default(),
    )
}

pub fn load_with(yaml: &str, env: &TestEnv, flags: &Overrides) -> Result<Loaded, Problems> {
    load_str("weir.yaml", yaml, env, flags)
}

/// The problems of a config that must not load, one `Display` line each.
pub fn problems(yaml: &str) -> Vec<String> {
    problems_with(yaml, &TestEnv::default(), &Overrides::default())
}

pub fn problems_with(yaml: &str, env: &TestEnv, flags: &Overrides) -> Vec<String> {
    match load_str("weir.yaml", yaml, env, flags) {
        Ok(_) => panic!("expected problems, but the config loaded:\n{yaml}"),
        Err(p) => p.0.iter().map(ToString::to_string).collect(),
    }
}

/// Loads a config that must be valid, printing its problems otherwise.
pub fn ok(yaml: &str) -> Loaded {
    ok_with(yaml, &TestEnv::default(), &Overrides::default())
}

pub fn ok_with(yaml: &str, env: &TestEnv, flags: &Overrides) -> Loaded {
    match load_str("weir.yaml", yaml, env, flags) {
        Ok(l) => l,
        Err(p) => panic!("expected the config to load, got:\n{p}"),
    }
}
