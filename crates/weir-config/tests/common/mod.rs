//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use weir_config::{Env, Loaded, Overrides, Problems, load_str};

/// An environment given as a map, so tests never touch the process environment.
#[derive(Clone, Debug, Default)]
pub struct TestEnv(pub BTreeMap<String, String>);

impl TestEnv {
    pub fn with(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }
}

impl Env for TestEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn vars(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

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
