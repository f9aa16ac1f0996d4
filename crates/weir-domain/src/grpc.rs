//! REST → gRPC transcoding rules, as plain values: which HTTP request maps to which gRPC
//! method (`google.api.http` annotations), the gRPC status codes in both directions, and the
//! `grpc-timeout` header.
//!
//! The descriptors travel as encoded bytes: reading them (and the JSON mapping) needs a
//! protobuf library, which belongs to the outer crates.

mod status;
mod template;

use std::sync::Arc;

pub use status::{code, code_for_http, code_name, http_status, parse_timeout};
pub use template::{Binding, HttpTemplate, parse_field_path};

/// A path of field names into a message: `["order", "id"]` for `order.id`.
pub type FieldPath = Vec<String>;

/// Where the HTTP body goes in the request message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyRule {
    /// `body: ""`: no body; every field not in the path comes from the query.
    None,
    /// `body: "*"`: the body is the whole message; the query is not read.
    Whole,
    /// `body: "order"`: the body is that field's value.
    Field(FieldPath),
}

/// One HTTP binding of one gRPC method. A method with `additional_bindings` has one rule per
/// binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcRule {
    /// `GET`, `POST`, `PUT`, `DELETE`, `PATCH`, or a `custom` rule's kind as written.
    pub http_method: String,
    pub template: HttpTemplate,
    pub body: BodyRule,
    /// The response field that becomes the HTTP body, instead of the whole response.
    pub response_body: Option<FieldPath>,
    /// The method's full name, `weir.test.v1.Orders.GetOrder`, for descriptor lookups.
    pub method: String,
    /// The HTTP/2 `:path` sent upstream, `/weir.test.v1.Orders/GetOrder`.
    pub grpc_path: String,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

impl GrpcRule {
    fn accepts(&self, method: &str) -> bool {
        // HEAD is GET without the body, so a GET binding serves it too.
        self.http_method == method || (method == "HEAD" && self.http_method == "GET")
    }
}

/// What a route with `grpc:` transcodes: the descriptors and the rules read from them.
#[derive(Clone)]
pub struct GrpcSpec {
    /// The encoded `FileDescriptorSet`, imports included.
    pub descriptors: Arc<[u8]>,
    /// In file order; `additional_bindings` follow their method's main rule.
    pub rules: Vec<GrpcRule>,
    /// Accept gRPC-Web clients too.
    pub web: bool,
    /// Where the descriptors came from (file names), for `weir explain`.
    pub source: String,
}

impl GrpcSpec {
    /// The first rule (in file order, as the annotations were written) whose method and
    /// template match, with the path's bindings.
    #[must_use]
    pub fn find(&self, method: &str, path: &str) -> Option<(usize, Vec<Binding>)> {
        self.rules.iter().enumerate().find_map(|(i, rule)| {
            if !rule.accepts(method) {
                return None;
            }
            rule.template.matches(path).map(|b| (i, b))
        })
    }
}

impl std::fmt::Debug for GrpcSpec {
    // The descriptor bytes would drown everything else.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcSpec")
            .field(
                "descriptors",
                &format_args!("{} bytes", self.descriptors.len()),
            )
            .field("rules", &self.rules)
            .field("web", &self.web)
            .field("source", &self.source)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rule(http_method: &str, template: &str, method: &str) -> GrpcRule {
        GrpcRule {
            http_method: http_method.to_owned(),
            template: HttpTemplate::parse(template).unwrap(),
            body: BodyRule::None,
            response_body: None,
            method: method.to_owned(),
            grpc_path: format!("/{method}"),
            client_streaming: false,
            server_streaming: false,
        }
    }

    fn spec(rules: Vec<GrpcRule>) -> GrpcSpec {
        GrpcSpec {
            descriptors: Arc::from(&b""[..]),
            rules,
            web: false,
            source: "test".to_owned(),
        }
    }

    #[test]
    fn find_takes_the_first_matching_rule() {
        let spec = spec(vec![
            rule("GET", "/v1/orders/{id}", "Get"),
            rule("POST", "/v1/orders/{id}:cancel", "Cancel"),
            rule("GET", "/v1/orders/special", "Special"),
            rule("GET", "/v1/orders", "List"),
        ]);
        let (i, b) = spec.find("GET", "/v1/orders/7").unwrap();
        assert_eq!((i, b[0].value.as_str()), (0, "7"));
        // Written order wins: the earlier `{id}` shadows the literal after it.
        assert_eq!(spec.find("GET", "/v1/orders/special").unwrap().0, 0);
        assert_eq!(spec.find("POST", "/v1/orders/7:cancel").unwrap().0, 1);
        assert_eq!(spec.find("GET", "/v1/orders").unwrap().0, 3);
        assert!(spec.find("DELETE", "/v1/orders/7").is_none());
        assert!(spec.find("GET", "/v2/orders").is_none());
    }

    #[test]
    fn head_matches_get_rules_only() {
        let spec = spec(vec![
            rule("POST", "/v1/x", "Post"),
            rule("GET", "/v1/x", "Get"),
        ]);
        assert_eq!(spec.find("HEAD", "/v1/x").unwrap().0, 1);
        assert_eq!(spec.find("POST", "/v1/x").unwrap().0, 0);
    }

    #[test]
    fn custom_methods_match_by_kind() {
        let spec = spec(vec![rule("LIST", "/v1/things", "List")]);
        assert_eq!(spec.find("LIST", "/v1/things").unwrap().0, 0);
        assert!(spec.find("GET", "/v1/things").is_none());
    }

    #[test]
    fn debug_leaves_out_the_bytes() {
        let text = format!("{:?}", spec(Vec::new()));
        assert!(text.contains("0 bytes"), "{text}");
    }
}
