#![allow(clippy::unwrap_used)]

use super::*;

fn t(text: &str) -> HttpTemplate {
    HttpTemplate::parse(text).unwrap()
}

fn bind(text: &str, path: &str) -> Option<Vec<(String, String)>> {
    t(text).matches(path).map(|bs| {
        bs.into_iter()
            .map(|b| (b.field.join("."), b.value))
            .collect()
    })
}

fn pairs(items: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    Some(
        items
            .iter()
            .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

#[test]
fn literals_match_exactly() {
    assert_eq!(bind("/v1/orders", "/v1/orders"), pairs(&[]));
    assert_eq!(bind("/v1/orders", "/v1/orders/"), None);
    assert_eq!(bind("/v1/orders", "/v1/order"), None);
    assert_eq!(bind("/v1/orders", "/v1"), None);
    assert_eq!(bind("/v1/orders", "v1/orders"), None);
    assert_eq!(bind("/", "/"), pairs(&[]));
    assert_eq!(bind("/", "/x"), None);
}

#[test]
fn a_bare_variable_is_one_segment() {
    assert_eq!(
        bind("/v1/orders/{id}", "/v1/orders/7"),
        pairs(&[("id", "7")])
    );
    assert_eq!(bind("/v1/orders/{id}", "/v1/orders/"), None);
    assert_eq!(bind("/v1/orders/{id}", "/v1/orders/7/x"), None);
    assert_eq!(t("/v1/orders/{id}"), t("/v1/orders/{id}"));
}

#[test]
fn nested_field_paths_bind() {
    assert_eq!(
        bind("/v1/orders/{order.id}", "/v1/orders/a1"),
        pairs(&[("order.id", "a1")])
    );
    let template = t("/v1/{a.b_c.d1}/{e}");
    let vars: Vec<_> = template.variables().cloned().collect();
    assert_eq!(
        vars,
        vec![
            vec!["a".to_owned(), "b_c".to_owned(), "d1".to_owned()],
            vec!["e".to_owned()]
        ]
    );
}

#[test]
fn multi_segment_variables_keep_their_slashes() {
    let text = "/v1/{name=shelves/*/books/*}";
    assert_eq!(
        bind(text, "/v1/shelves/s1/books/b2"),
        pairs(&[("name", "shelves/s1/books/b2")])
    );
    assert_eq!(bind(text, "/v1/shelves/s1/novels/b2"), None);
    assert_eq!(
        bind("/v1/{shelf=*}/books/{book}", "/v1/s/books/b"),
        pairs(&[("shelf", "s"), ("book", "b")])
    );
}

#[test]
fn double_star_takes_the_rest() {
    assert_eq!(
        bind("/files/{path=**}", "/files/a/b/c.txt"),
        pairs(&[("path", "a/b/c.txt")])
    );
    assert_eq!(bind("/files/{path=**}", "/files"), pairs(&[("path", "")]));
    assert_eq!(
        bind("/files/{path=docs/**}", "/files/docs/x/y"),
        pairs(&[("path", "docs/x/y")])
    );
    assert_eq!(bind("/files/**", "/files/a/b"), pairs(&[]));
    assert_eq!(bind("/files/{path=docs/**}", "/files/img/x"), None);
}

#[test]
fn star_without_variable_matches_one_segment() {
    assert_eq!(bind("/v1/*/items", "/v1/x/items"), pairs(&[]));
    assert_eq!(bind("/v1/*/items", "/v1/x/y/items"), None);
}

#[test]
fn verbs_are_split_from_the_last_segment() {
    let text = "/v1/orders/{id}:cancel";
    assert_eq!(bind(text, "/v1/orders/7:cancel"), pairs(&[("id", "7")]));
    assert_eq!(bind(text, "/v1/orders/7"), None);
    assert_eq!(bind(text, "/v1/orders/7:undo"), None);
    assert_eq!(bind(text, "/v1/orders/:cancel"), None);
    assert_eq!(
        bind("/v1/orders:batchGet", "/v1/orders:batchGet"),
        pairs(&[])
    );
    assert_eq!(
        bind("/v1/{name=**}:watch", "/v1/a/b:watch"),
        pairs(&[("name", "a/b")])
    );
    // Without a verb in the template, a colon is part of the segment.
    assert_eq!(
        bind("/v1/orders/{id}", "/v1/orders/7:x"),
        pairs(&[("id", "7:x")])
    );
}

#[test]
fn values_are_percent_decoded() {
    assert_eq!(
        bind("/v1/orders/{id}", "/v1/orders/a%20b%2Fc"),
        pairs(&[("id", "a b/c")])
    );
    assert_eq!(
        bind("/v1/orders/{id}", "/v1/orders/caf%C3%A9"),
        pairs(&[("id", "café")])
    );
    // Multi-segment values keep an encoded slash encoded, so it stays distinct from a separator.
    assert_eq!(
        bind("/v1/{name=**}", "/v1/a%20b/c%2Fd%2fe"),
        pairs(&[("name", "a b/c%2Fd%2fe")])
    );
    // Matching is on the raw path: an encoded slash is not a separator.
    assert_eq!(bind("/v1/{a}/{b}", "/v1/x%2Fy"), None);
    // Not UTF-8 once decoded, or malformed: no match.
    assert_eq!(bind("/v1/orders/{id}", "/v1/orders/%FF"), None);
    assert_eq!(bind("/v1/orders/{id}", "/v1/orders/%G1"), None);
    assert_eq!(bind("/v1/orders/{id}", "/v1/orders/%4"), None);
}

#[test]
fn literals_compare_raw() {
    assert_eq!(bind("/v1/a%20b", "/v1/a%20b"), pairs(&[]));
    assert_eq!(bind("/v1/a b", "/v1/a%20b"), None);
}

#[test]
fn the_text_is_kept() {
    let text = "/v1/{name=shelves/*}/books:x";
    assert_eq!(t(text).as_str(), text);
    assert_eq!(t(text).to_string(), text);
}

fn error(text: &str) -> String {
    HttpTemplate::parse(text).unwrap_err()
}

#[test]
fn malformed_templates_say_why() {
    let cases = [
        ("v1/orders", "must start with '/'"),
        ("", "must start with '/'"),
        ("/v1//orders", "expected a segment, found '/'"),
        ("/v1/orders/", "expected a segment, found the end"),
        ("/v1/{id", "unclosed '{'"),
        ("/v1/{id=*", "expected '}'"),
        ("/v1/{}", "empty name"),
        ("/v1/{a..b}", "empty name"),
        ("/v1/{1a}", "'1a' is not a field name"),
        ("/v1/{a-b}", "'a-b' is not a field name"),
        ("/v1/{a={b}}", "variables cannot nest"),
        ("/v1/**/x", "'**' may only be the last segment"),
        ("/v1/{a=**}/x", "'**' may only be the last segment"),
        ("/v1/{id}/{id}", "variable 'id' appears twice"),
        ("/v1/x:", "expected a verb after ':'"),
        ("/v1/x:a/b", "unexpected '/'"),
        ("/v1/x:a:b", "unexpected ':'"),
        ("/v1/x}", "unexpected '}'"),
        ("/v1/a=b", "unexpected '='"),
        ("/v1/{id=}", "expected a segment, found '}'"),
    ];
    for (text, want) in cases {
        let got = error(text);
        assert!(got.contains(want), "{text:?}: {got}");
        assert!(got.contains(&format!("'{text}'")), "{text:?}: {got}");
    }
}

#[test]
fn field_paths_parse() {
    assert_eq!(parse_field_path("order").unwrap(), vec!["order".to_owned()]);
    assert_eq!(
        parse_field_path("a.b").unwrap(),
        vec!["a".to_owned(), "b".to_owned()]
    );
    assert!(parse_field_path("").is_err());
    assert!(parse_field_path("a.").is_err());
    assert!(parse_field_path("*").is_err());
}

proptest::proptest! {
    #[test]
    fn parsing_never_panics(text in "/[a-z{}=*/.:%_1]{0,24}") {
        let _ = HttpTemplate::parse(&text);
    }

    #[test]
    fn matching_never_panics(path in "/[a-z/%0-9A-F:]{0,24}") {
        for text in ["/v1/{a}/{b=x/**}", "/{n=**}:v", "/v1/*/{c.d=*/y}", "/"] {
            let _ = t(text).matches(&path);
        }
    }

    #[test]
    fn a_bound_segment_round_trips(value in "[a-zA-Z0-9._~-]{1,12}") {
        let got = t("/v1/{id}").matches(&format!("/v1/{value}")).unwrap();
        proptest::prop_assert_eq!(&got[0].value, &value);
    }
}
