#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use weir_domain::grpc::{BodyRule, GrpcRule};

use super::*;

fn protos() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/protos")
}

fn orders_set() -> Vec<u8> {
    compile(&[PathBuf::from("weir/test/v1/orders.proto")], &[protos()]).unwrap()
}

/// Writes `text` as `name` in a fresh directory and compiles it next to the examples.
fn compile_text(name: &str, text: &str) -> Result<Vec<u8>, String> {
    let dir = std::env::temp_dir().join(format!(
        "weir-config-grpc-{}-{}",
        std::process::id(),
        name.replace('/', "_")
    ));
    let file = dir.join(name);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, text).unwrap();
    let result = compile(&[PathBuf::from(name)], &[dir.clone(), protos()]);
    std::fs::remove_dir_all(&dir).unwrap();
    result
}

fn summary(rules: &[GrpcRule]) -> Vec<String> {
    rules
        .iter()
        .map(|r| {
            let body = match &r.body {
                BodyRule::None => String::new(),
                BodyRule::Whole => " body *".to_owned(),
                BodyRule::Field(f) => format!(" body {}", f.join(".")),
            };
            let stream = if r.server_streaming { " stream" } else { "" };
            format!(
                "{} {} -> {}{body}{stream}",
                r.http_method,
                r.template.as_str(),
                r.grpc_path
            )
        })
        .collect()
}

const ORDERS_RULES: [&str; 5] = [
    "GET /v1/orders/{id} -> /weir.test.v1.Orders/GetOrder",
    "POST /v1/orders -> /weir.test.v1.Orders/CreateOrder body *",
    "PATCH /v1/orders/{order.id} -> /weir.test.v1.Orders/UpdateOrder body order",
    "PUT /v1/orders/{order.id} -> /weir.test.v1.Orders/UpdateOrder body order",
    "GET /v1/orders -> /weir.test.v1.Orders/ListOrders stream",
];

#[test]
fn rules_come_from_the_annotations() {
    let pool = decode_set(&orders_set()).unwrap();
    let rules = rules(&pool).unwrap();
    assert_eq!(summary(&rules), ORDERS_RULES);
    assert_eq!(rules[0].method, "weir.test.v1.Orders.GetOrder");
    assert!(rules.iter().all(|r| !r.client_streaming));
    assert!(rules.iter().all(|r| r.response_body.is_none()));
}

#[test]
fn the_set_keeps_the_annotations_through_a_pool() {
    let pool = decode_set(&orders_set()).unwrap();
    let again = decode_set(&pool.encode_to_vec()).unwrap();
    assert_eq!(summary(&rules(&again).unwrap()), ORDERS_RULES);
}

/// The set as a tool that never saw `google/api/*.proto` would write it: the option is
/// there, as an unknown field.
fn without_google_api(set: &[u8]) -> Vec<u8> {
    let desc = DescriptorPool::global()
        .get_message_by_name("google.protobuf.FileDescriptorSet")
        .unwrap();
    let mut set = DynamicMessage::decode(desc, set).unwrap();
    let Value::List(files) = set.get_field_by_name("file").unwrap().into_owned() else {
        panic!("file is a list");
    };
    let mut kept = Vec::new();
    for file in files {
        let Value::Message(mut file) = file else {
            panic!("a file is a message");
        };
        let name = file.get_field_by_name("name").unwrap();
        if name.as_str().unwrap().starts_with("google/api/") {
            continue;
        }
        let deps = file.get_field_by_name("dependency").unwrap().into_owned();
        let deps: Vec<Value> = deps
            .as_list()
            .unwrap()
            .iter()
            .filter(|d| !d.as_str().unwrap().starts_with("google/api/"))
            .cloned()
            .collect();
        file.set_field_by_name("dependency", Value::List(deps));
        kept.push(Value::Message(file));
    }
    set.set_field_by_name("file", Value::List(kept));
    set.encode_to_vec()
}

#[test]
fn rules_are_read_without_the_google_api_files() {
    let stripped = without_google_api(&orders_set());
    let pool = decode_set(&stripped).unwrap();
    assert!(pool.get_extension_by_name("google.api.http").is_none());
    assert!(pool.get_file_by_name("google/api/http.proto").is_none());
    assert_eq!(summary(&rules(&pool).unwrap()), ORDERS_RULES);
}

#[test]
fn a_set_that_is_not_one_is_refused() {
    let err = decode_set(b"\x0a\x05hello").unwrap_err();
    assert!(err.starts_with("not a usable FileDescriptorSet"), "{err}");
}

#[test]
fn a_set_missing_its_imports_suggests_including_them() {
    let pool = decode_set(&orders_set()).unwrap();
    let file = pool.get_file_by_name("weir/test/v1/orders.proto").unwrap();
    let mut only = Vec::new();
    // One FileDescriptorSet.file entry: field 1, length-delimited.
    prost::encoding::bytes::encode(1, &file.encode_to_vec(), &mut only);
    let err = decode_set(&only).unwrap_err();
    assert!(err.contains("--include_imports"), "{err}");
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let err = compile_text(
        "bad.proto",
        "syntax = \"proto3\";\n\nmessage A {\n  string a = ;\n}\n",
    )
    .unwrap_err();
    assert!(err.starts_with("bad.proto:4:14: "), "{err}");
}

#[test]
fn unknown_types_name_file_line_and_column() {
    let text = "syntax = \"proto3\";\npackage p;\nmessage A {\n  Missing m = 1;\n}\n";
    let err = compile_text("types.proto", text).unwrap_err();
    assert!(err.starts_with("types.proto:4:3: "), "{err}");
    assert!(err.contains("Missing"), "{err}");
}

#[test]
fn missing_imports_name_the_importing_line() {
    let text = "syntax = \"proto3\";\n\nimport \"nowhere/x.proto\";\n";
    let err = compile_text("imports.proto", text).unwrap_err();
    assert!(err.starts_with("imports.proto:3:1: "), "{err}");
    assert!(err.contains("nowhere/x.proto"), "{err}");
}

#[test]
fn missing_files_are_named() {
    let err = compile(&[PathBuf::from("nope.proto")], &[protos()]).unwrap_err();
    assert!(err.contains("nope.proto"), "{err}");
}

const BAD_RULES: &str = r#"
syntax = "proto3";
package bad;
import "google/api/annotations.proto";

message Inner { string id = 1; }
message Req {
  string id = 1;
  Inner inner = 2;
  repeated string tags = 3;
}
message Resp { string out = 1; }

service Bad {
  rpc Template(Req) returns (Resp) { option (google.api.http) = { get: "/v1/{id" }; }
  rpc NoField(Req) returns (Resp) { option (google.api.http) = { get: "/v1/{nope}" }; }
  rpc Message(Req) returns (Resp) { option (google.api.http) = { get: "/v1/{inner}" }; }
  rpc Repeated(Req) returns (Resp) { option (google.api.http) = { get: "/v1/{tags}" }; }
  rpc Through(Req) returns (Resp) { option (google.api.http) = { get: "/v1/{id.x}" }; }
  rpc Body(Req) returns (Resp) { option (google.api.http) = { post: "/v1" body: "other" }; }
  rpc RespBody(Req) returns (Resp) {
    option (google.api.http) = { post: "/v1" response_body: "nope" };
  }
  rpc Stream(stream Req) returns (Resp) { option (google.api.http) = { post: "/v1/s" }; }
  rpc Selector(Req) returns (Resp) { option (google.api.http) = { selector: "bad.Bad.X" }; }
  rpc Custom(Req) returns (Resp) {
    option (google.api.http) = { custom: { kind: "NO WAY" path: "/v1/c" } };
  }
  rpc Extra(Req) returns (Resp) {
    option (google.api.http) = {
      get: "/v1/extra/{inner.id}"
      additional_bindings { post: "/v1/extra" body: "missing" }
    };
  }
  rpc Fine(Req) returns (Resp) {
    option (google.api.http) = { custom: { kind: "LIST" path: "/v1/fine" } response_body: "out" };
  }
}
"#;

#[test]
fn rule_problems_are_all_reported_by_method() {
    let set = compile_text("bad/rules.proto", BAD_RULES).unwrap();
    let problems = rules(&decode_set(&set).unwrap()).unwrap_err();
    let expected = [
        ("bad.Bad.Template:", "unclosed '{'"),
        (
            "bad.Bad.NoField:",
            "path variable {nope}: bad.Req has no field 'nope'",
        ),
        ("bad.Bad.Message:", "'inner' is a message (bad.Inner)"),
        ("bad.Bad.Repeated:", "'tags' is repeated"),
        (
            "bad.Bad.Through:",
            "'id' in bad.Req is not a singular message field",
        ),
        ("bad.Bad.Body:", "body: bad.Req has no field 'other'"),
        (
            "bad.Bad.RespBody:",
            "response_body: bad.Resp has no field 'nope'",
        ),
        ("bad.Bad.Stream:", "client-streaming"),
        (
            "bad.Bad.Selector:",
            "with only a selector needs a method and path",
        ),
        ("bad.Bad.Custom:", "'NO WAY' is not a method name"),
        ("bad.Bad.Extra:", "body: bad.Req has no field 'missing'"),
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for ((method, what), got) in expected.iter().zip(&problems) {
        assert!(got.starts_with(method) && got.contains(what), "{got}");
    }
}

#[test]
fn custom_methods_and_response_body_are_read() {
    // The same file with only `Fine` in the service.
    let start = BAD_RULES.find("service Bad {").unwrap();
    let fine_rpc = &BAD_RULES[BAD_RULES.find("  rpc Fine").unwrap()..];
    let text = format!("{}service Bad {{\n{fine_rpc}", &BAD_RULES[..start]);
    let set = compile_text("fine/rules.proto", &text).unwrap();
    let rules = rules(&decode_set(&set).unwrap()).unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].http_method, "LIST");
    assert_eq!(rules[0].template.as_str(), "/v1/fine");
    assert_eq!(rules[0].response_body, Some(vec!["out".to_owned()]));
}

#[test]
fn google_api_files_are_built_in() {
    let dir = std::env::temp_dir().join(format!("weir-config-grpc-builtin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("svc.proto"),
        "syntax = \"proto3\";\npackage p;\nimport \"google/api/annotations.proto\";\n\
         message M { string id = 1; }\n\
         service S { rpc Get(M) returns (M) { option (google.api.http) = { get: \"/m/{id}\" }; } }\n",
    )
    .unwrap();
    // Only the service's own directory: the google/api files come from weir.
    let set = compile(&[PathBuf::from("svc.proto")], std::slice::from_ref(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    let rules = rules(&decode_set(&set.unwrap()).unwrap()).unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].grpc_path, "/p.S/Get");
    assert_eq!(rules[0].template.as_str(), "/m/{id}");
}
