#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use weir_domain::grpc::{Binding, BodyRule, GrpcRule, GrpcSpec, HttpTemplate};

use super::*;

const PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/protos");

fn descriptors() -> Vec<u8> {
    let mut compiler = protox::Compiler::new([PROTOS]).unwrap();
    compiler.include_imports(true);
    compiler.open_file("weir/test/v1/orders.proto").unwrap();
    compiler.encode_file_descriptor_set()
}

fn rule(http: &str, template: &str, method: &str, body: BodyRule, resp: Option<&str>) -> GrpcRule {
    GrpcRule {
        http_method: http.to_owned(),
        template: HttpTemplate::parse(template).unwrap(),
        body,
        response_body: resp.map(|r| r.split('.').map(str::to_owned).collect()),
        method: format!("weir.test.v1.Orders.{method}"),
        grpc_path: format!("/weir.test.v1.Orders/{method}"),
        client_streaming: false,
        server_streaming: method == "ListOrders",
    }
}

fn field(name: &str) -> BodyRule {
    BodyRule::Field(vec![name.to_owned()])
}

fn spec() -> Arc<GrpcSpec> {
    use BodyRule::{None as NoBody, Whole};
    Arc::new(GrpcSpec {
        descriptors: Arc::from(descriptors()),
        rules: vec![
            rule("GET", "/v1/orders/{id}", "GetOrder", NoBody, None),
            rule("POST", "/v1/orders", "CreateOrder", Whole, None),
            rule(
                "PATCH",
                "/v1/orders/{order.id}",
                "UpdateOrder",
                field("order"),
                None,
            ),
            rule("GET", "/v1/orders", "ListOrders", NoBody, None),
            rule(
                "GET",
                "/v1/created/{id}",
                "GetOrder",
                NoBody,
                Some("created_at"),
            ),
            rule(
                "GET",
                "/v1/customer/{id}",
                "GetOrder",
                NoBody,
                Some("customer"),
            ),
            rule("GET", "/v1/items/{id}", "GetOrder", NoBody, Some("items")),
            rule("GET", "/v1/search", "CreateOrder", NoBody, None),
            rule("GET", "/v1/limits/{limit}", "ListOrders", NoBody, None),
        ],
        web: false,
        source: "orders.proto".to_owned(),
    })
}

fn transcoder() -> Transcoder {
    Transcoder::new(spec()).unwrap()
}

fn pool() -> DescriptorPool {
    DescriptorPool::decode(descriptors().as_slice()).unwrap()
}

/// The request message's JSON (canonical form), so expectations read as JSON.
fn send(
    t: &Transcoder,
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &str,
) -> Result<String, TranscodeError> {
    let (i, bindings) = t.spec().find(method, path).unwrap();
    let framed = t.request(i, &bindings, query, body.as_bytes())?;
    assert_eq!(framed[0], 0);
    let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]);
    assert_eq!(usize::try_from(len).unwrap(), framed.len() - 5);
    let input = pool()
        .get_service_by_name("weir.test.v1.Orders")
        .unwrap()
        .methods()
        .find(|m| m.full_name() == t.spec().rules[i].method)
        .unwrap()
        .input();
    let message = DynamicMessage::decode(input, &framed[5..]).unwrap();
    Ok(serde_json::to_string(&message).unwrap())
}

#[test]
fn get_binds_the_path_and_reads_the_query() {
    let t = transcoder();
    let got = send(&t, "GET", "/v1/orders/7", Some("view=full"), "").unwrap();
    assert_eq!(got, r#"{"id":"7","view":"full"}"#);
    // The path's value stands; a query naming the same field is ignored.
    let got = send(&t, "GET", "/v1/orders/7", Some("id=9&view=a+b%21"), "").unwrap();
    assert_eq!(got, r#"{"id":"7","view":"a b!"}"#);
    let got = send(&t, "HEAD", "/v1/orders/a%20b", None, "").unwrap();
    assert_eq!(got, r#"{"id":"a b"}"#);
}

const FULL_ORDER: &str = r#"{"id":"o1","amountCents":"1234","status":"STATUS_SHIPPED","createdAt":"2026-01-02T03:04:05.500Z","items":["a","b"],"customer":"c"}"#;

#[test]
fn a_whole_body_uses_the_json_mapping() {
    let t = transcoder();
    assert_eq!(
        send(&t, "POST", "/v1/orders", None, FULL_ORDER).unwrap(),
        FULL_ORDER
    );
    // int64 as a number, proto field names, the enum by number, an offset timestamp.
    let body = r#"{"id":"o1","amount_cents":1234,"status":2,
        "created_at":"2026-01-02T04:04:05.5+01:00","items":["a","b"],"customer":"c"}"#;
    assert_eq!(
        send(&t, "POST", "/v1/orders", None, body).unwrap(),
        FULL_ORDER
    );
}

#[test]
fn a_whole_body_leaves_the_query_unread() {
    let t = transcoder();
    let got = send(
        &t,
        "POST",
        "/v1/orders",
        Some("customer=x&nope=1"),
        r#"{"id":"a"}"#,
    );
    assert_eq!(got.unwrap(), r#"{"id":"a"}"#);
}

#[test]
fn an_empty_body_is_an_empty_message() {
    let t = transcoder();
    assert_eq!(send(&t, "POST", "/v1/orders", None, "").unwrap(), "{}");
    assert_eq!(send(&t, "POST", "/v1/orders", None, " \r\n").unwrap(), "{}");
    let got = send(&t, "PATCH", "/v1/orders/o1", None, "").unwrap();
    assert_eq!(got, r#"{"order":{"id":"o1"}}"#);
}

#[test]
fn a_body_field_and_a_nested_path_variable_combine() {
    let t = transcoder();
    let body = r#"{"id":"other","amountCents":5,"status":"STATUS_PENDING"}"#;
    let got = send(&t, "PATCH", "/v1/orders/o1", Some("order.customer=q"), body).unwrap();
    // The path wins over the body, and the query cannot reach into the body's field.
    assert_eq!(
        got,
        r#"{"order":{"id":"o1","amountCents":"5","status":"STATUS_PENDING"}}"#
    );
}

#[test]
fn malformed_bodies_are_bad_json() {
    let t = transcoder();
    for body in [
        r#"{"id":"a","unknown":1}"#,
        r#"{"id":"a""#,
        r#"{"id":"a"} trailing"#,
        r#"{"amountCents":"x"}"#,
        r#"{"status":"NO_SUCH"}"#,
        r#"{"createdAt":"yesterday"}"#,
        r#"["not an object"]"#,
    ] {
        let err = send(&t, "POST", "/v1/orders", None, body).unwrap_err();
        assert!(matches!(err, TranscodeError::BadJson(_)), "{body}: {err:?}");
        assert!(!err.blames_upstream());
    }
    let err = send(&t, "PATCH", "/v1/orders/o", None, r#"{"nope":1}"#).unwrap_err();
    assert!(matches!(err, TranscodeError::BadJson(_)), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn the_query_fills_enums_numbers_and_repeated_fields() {
    let t = transcoder();
    let got = send(
        &t,
        "GET",
        "/v1/orders",
        Some("status=STATUS_SHIPPED&limit=3"),
        "",
    )
    .unwrap();
    assert_eq!(got, r#"{"status":"STATUS_SHIPPED","limit":3}"#);
    let got = send(
        &t,
        "GET",
        "/v1/orders",
        Some("status=3&customer=%C3%A9"),
        "",
    )
    .unwrap();
    assert_eq!(got, r#"{"status":"STATUS_CANCELLED","customer":"é"}"#);
    let query = "items=a&items=b&amountCents=-5&created_at=2026-01-02T03:04:05.500Z&&";
    let got = send(&t, "GET", "/v1/search", Some(query), "").unwrap();
    assert_eq!(
        got,
        r#"{"amountCents":"-5","createdAt":"2026-01-02T03:04:05.500Z","items":["a","b"]}"#
    );
}

#[test]
fn bad_query_parameters_are_refused() {
    let t = transcoder();
    for query in [
        "limit=x",
        "status=NOPE",
        "nope=1",
        "status.x=1",
        "limit=%ZZ",
        "limit=%+1",
    ] {
        let err = send(&t, "GET", "/v1/orders", Some(query), "").unwrap_err();
        assert!(
            matches!(err, TranscodeError::BadQuery(_)),
            "{query}: {err:?}"
        );
    }
    let err = send(&t, "GET", "/v1/search", Some("createdAt=soon"), "").unwrap_err();
    assert!(matches!(err, TranscodeError::BadQuery(_)), "{err:?}");
}

#[test]
fn path_values_must_fit_their_field() {
    let t = transcoder();
    assert_eq!(
        send(&t, "GET", "/v1/limits/5", None, "").unwrap(),
        r#"{"limit":5}"#
    );
    let err = send(&t, "GET", "/v1/limits/abc", None, "").unwrap_err();
    assert!(matches!(err, TranscodeError::BadPathValue(_)), "{err:?}");
    assert!(err.to_string().contains("limit"), "{err}");
}

#[test]
fn bindings_naming_no_field_are_refused() {
    let t = transcoder();
    let bindings = [Binding {
        field: vec!["nope".to_owned()],
        value: "1".to_owned(),
    }];
    let err = t.request(0, &bindings, None, b"").unwrap_err();
    assert!(matches!(err, TranscodeError::BadPathValue(_)), "{err:?}");
    assert_eq!(
        t.request(99, &[], None, b""),
        Err(TranscodeError::NoRule(99))
    );
}

#[test]
fn rules_must_agree_with_the_descriptors() {
    let mut wrong_method = (*spec()).clone();
    wrong_method.rules[0].method = "weir.test.v1.Orders.Nope".to_owned();
    let err = Transcoder::new(Arc::new(wrong_method)).err().unwrap();
    assert!(err.contains("weir.test.v1.Orders.Nope"), "{err}");
    let mut wrong_body = (*spec()).clone();
    wrong_body.rules[2].body = field("nope");
    assert!(Transcoder::new(Arc::new(wrong_body)).is_err());
    let mut not_a_set = (*spec()).clone();
    not_a_set.descriptors = Arc::from(&b"\x0a\x01"[..]);
    assert!(Transcoder::new(Arc::new(not_a_set)).is_err());
}

/// An `Order` from its JSON, framed as the upstream would send it.
fn order_frame(json: &str) -> Bytes {
    let desc = pool().get_message_by_name("weir.test.v1.Order").unwrap();
    let mut de = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(desc, &mut de).unwrap();
    frame(&message.encode_to_vec())
}

#[test]
fn responses_decode_across_any_chunking() {
    let t = transcoder();
    let second = r#"{"id":"o2","status":"STATUS_PENDING"}"#;
    let body = [
        order_frame(FULL_ORDER),
        order_frame(second),
        order_frame("{}"),
    ]
    .concat();
    for split in 1..body.len() {
        let mut decoder = t.response(3);
        let mut out = Vec::new();
        for chunk in body.chunks(split) {
            out.extend(decoder.push(chunk).unwrap());
        }
        assert_eq!(decoder.pending(), 0);
        assert_eq!(out, [FULL_ORDER, second, "{}"], "chunks of {split}");
    }
}

#[test]
fn a_cut_frame_stays_pending() {
    let t = transcoder();
    let body = order_frame(FULL_ORDER);
    let mut decoder = t.response(0);
    assert!(decoder.push(&body[..body.len() - 1]).unwrap().is_empty());
    assert_eq!(decoder.pending(), body.len() - 1);
    assert!(decoder.push(&[]).unwrap().is_empty());
}

#[test]
fn response_body_renders_one_field() {
    let t = transcoder();
    let body = order_frame(FULL_ORDER);
    let one = |rule: usize, body: &[u8]| {
        let mut decoder = t.response(rule);
        let out = decoder.push(body).unwrap();
        assert_eq!(out.len(), 1);
        String::from_utf8(out[0].to_vec()).unwrap()
    };
    assert_eq!(one(4, &body), r#""2026-01-02T03:04:05.500Z""#);
    assert_eq!(one(5, &body), r#""c""#);
    assert_eq!(one(6, &body), r#"["a","b"]"#);
    // Unset fields still give the client a value of the field's type.
    let empty = order_frame("{}");
    assert_eq!(one(5, &empty), r#""""#);
    assert_eq!(one(6, &empty), "[]");
    assert_eq!(one(4, &empty), r#""1970-01-01T00:00:00Z""#);
}

#[test]
fn bad_frames_are_the_upstreams_fault() {
    let t = transcoder();
    let mut compressed = order_frame(FULL_ORDER).to_vec();
    compressed[0] = 1;
    let mut decoder = t.response(0);
    assert_eq!(decoder.push(&compressed), Err(TranscodeError::Compressed));
    // A broken stream stays broken.
    assert_eq!(
        decoder.push(&order_frame("{}")),
        Err(TranscodeError::Compressed)
    );

    let err = t.response(0).push(&[0x80, 0, 0, 0, 0]).unwrap_err();
    assert!(matches!(err, TranscodeError::BadResponse(_)), "{err:?}");

    let huge = u32::try_from(MAX_MESSAGE + 1).unwrap().to_be_bytes();
    let err = t.response(0).push(&[0, huge[0], huge[1], huge[2], huge[3]]);
    assert_eq!(err, Err(TranscodeError::FrameTooLarge(MAX_MESSAGE + 1)));

    let err = t.response(0).push(&frame(b"\xff\xff\xff")).unwrap_err();
    assert!(matches!(err, TranscodeError::BadResponse(_)), "{err:?}");
    assert!(err.blames_upstream());

    assert_eq!(t.response(42).push(b""), Err(TranscodeError::NoRule(42)));
}

#[test]
fn frames_are_length_prefixed() {
    assert_eq!(&frame(b"")[..], &[0, 0, 0, 0, 0]);
    assert_eq!(&frame(b"abc")[..], b"\x00\x00\x00\x00\x03abc");
}

/// A service beside the examples, compiled from text: a response with a repeated message
/// field, a map and an int64, for `response_body` on each.
fn lists_spec() -> Arc<GrpcSpec> {
    struct Source;
    impl protox::file::FileResolver for Source {
        fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
            if name != "lists.proto" {
                return Err(protox::Error::file_not_found(name));
            }
            protox::file::File::from_source(
                name,
                r#"syntax = "proto3";
                package t;
                message Item { string name = 1; int64 n = 2; }
                message Req {}
                message Resp { repeated Item items = 1; int64 total = 2; map<string, Item> by_name = 3; }
                service S { rpc Get(Req) returns (Resp); }"#,
            )
        }
    }
    let mut compiler = protox::Compiler::with_file_resolver(Source);
    compiler.open_file("lists.proto").unwrap();
    let rule = |body: &str| GrpcRule {
        http_method: "GET".to_owned(),
        template: HttpTemplate::parse("/x").unwrap(),
        body: BodyRule::None,
        response_body: Some(vec![body.to_owned()]),
        method: "t.S.Get".to_owned(),
        grpc_path: "/t.S/Get".to_owned(),
        client_streaming: false,
        server_streaming: false,
    };
    Arc::new(GrpcSpec {
        descriptors: Arc::from(compiler.encode_file_descriptor_set()),
        rules: vec![rule("items"), rule("total"), rule("by_name")],
        web: false,
        source: "lists.proto".to_owned(),
    })
}

#[test]
fn response_body_of_lists_and_maps_omits_nested_defaults() {
    let t = Transcoder::new(lists_spec()).unwrap();
    let pool = DescriptorPool::decode(&t.spec().descriptors[..]).unwrap();
    let resp = |json: &str| {
        let desc = pool.get_message_by_name("t.Resp").unwrap();
        let mut de = serde_json::Deserializer::from_str(json);
        frame(
            &DynamicMessage::deserialize(desc, &mut de)
                .unwrap()
                .encode_to_vec(),
        )
    };
    let one = |rule: usize, body: &[u8]| {
        let out = t.response(rule).push(body).unwrap();
        String::from_utf8(out[0].to_vec()).unwrap()
    };
    let full =
        resp(r#"{"items":[{"name":"a"},{"name":"b","n":"2"}],"total":"9","byName":{"a":{}}}"#);
    assert_eq!(one(0, &full), r#"[{"name":"a"},{"name":"b","n":"2"}]"#);
    assert_eq!(one(1, &full), r#""9""#);
    assert_eq!(one(2, &full), r#"{"a":{}}"#);
    let empty = resp("{}");
    assert_eq!(one(0, &empty), "[]");
    assert_eq!(one(1, &empty), r#""0""#);
    assert_eq!(one(2, &empty), "{}");
}
