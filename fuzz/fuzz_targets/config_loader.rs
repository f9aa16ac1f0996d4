//! Arbitrary text as a configuration file: `weir validate` and every reload run exactly
//! `weir_config::load_str`, so it must never panic, and every problem it reports must say
//! where in the file it is (a line and column inside the text) on one printable line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_config::{MapEnv, Overrides, load_str};

fuzz_target!(|data: &[u8]| {
    // The loader reads files with `read_to_string`, so only UTF-8 ever reaches it; lossy
    // conversion keeps the rest of a mostly-text input useful instead of discarding it.
    let text = String::from_utf8_lossy(data);
    let env = MapEnv::default();
    let Err(problems) = load_str("fuzz.yaml", &text, &env, &Overrides::default()) else {
        return;
    };
    assert!(!problems.0.is_empty(), "an error without a problem");
    // Lines as a YAML parser counts them (LF, CRLF, lone CR), plus one for a problem at the
    // very end (an unterminated construct).
    let lines = text.split(['\n', '\r']).count() as u32 + 1;
    for p in &problems.0 {
        assert_eq!(p.file, "fuzz.yaml", "{p:?}");
        assert!(
            p.line >= 1 && p.col >= 1,
            "a problem without a place in the file: {p:?}"
        );
        assert!(p.line <= lines, "line {} of {lines}: {p:?}", p.line);
        let shown = p.to_string();
        assert!(
            !shown.chars().any(char::is_control),
            "a problem is one printable line: {shown:?}"
        );
    }
});
