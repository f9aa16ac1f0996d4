//! The `google.api.http` method option, read straight from the option bytes.
//!
//! A descriptor set built without `google/api/annotations.proto` still carries the option,
//! but as an unknown field that a reflection pool cannot name. Decoding the bytes with our
//! own message, declared with the published field numbers, reads it either way.

use prost::Message;
use prost_reflect::MethodDescriptor;

/// `google.protobuf.MethodOptions`, only the field we read: the `google.api.http` extension.
#[derive(Clone, PartialEq, Message)]
struct MethodOptions {
    #[prost(message, optional, tag = "72295728")]
    http: Option<HttpRule>,
}

/// `google.api.HttpRule`.
#[derive(Clone, PartialEq, Message)]
pub(super) struct HttpRule {
    #[prost(string, tag = "1")]
    pub(super) selector: String,
    #[prost(oneof = "Pattern", tags = "2, 3, 4, 5, 6, 8")]
    pub(super) pattern: Option<Pattern>,
    #[prost(string, tag = "7")]
    pub(super) body: String,
    #[prost(string, tag = "12")]
    pub(super) response_body: String,
    #[prost(message, repeated, tag = "11")]
    pub(super) additional_bindings: Vec<HttpRule>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum Pattern {
    #[prost(string, tag = "2")]
    Get(String),
    #[prost(string, tag = "3")]
    Put(String),
    #[prost(string, tag = "4")]
    Post(String),
    #[prost(string, tag = "5")]
    Delete(String),
    #[prost(string, tag = "6")]
    Patch(String),
    #[prost(message, tag = "8")]
    Custom(CustomPattern),
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct CustomPattern {
    #[prost(string, tag = "1")]
    pub(super) kind: String,
    #[prost(string, tag = "2")]
    pub(super) path: String,
}

impl Pattern {
    /// The HTTP method and the path template.
    pub(super) fn method_and_path(&self) -> (&str, &str) {
        match self {
            Self::Get(p) => ("GET", p),
            Self::Put(p) => ("PUT", p),
            Self::Post(p) => ("POST", p),
            Self::Delete(p) => ("DELETE", p),
            Self::Patch(p) => ("PATCH", p),
            Self::Custom(c) => (&c.kind, &c.path),
        }
    }
}

/// The method's HTTP rule, if it has one; `Err` when the option's bytes do not decode.
pub(super) fn read(method: &MethodDescriptor) -> Result<Option<HttpRule>, String> {
    // Re-encoding keeps unknown fields, so these are the options as written, whether or not
    // the pool knows the extension.
    let bytes = method.options().encode_to_vec();
    MethodOptions::decode(bytes.as_slice())
        .map(|o| o.http)
        .map_err(|e| format!("the google.api.http option does not decode: {e}"))
}
