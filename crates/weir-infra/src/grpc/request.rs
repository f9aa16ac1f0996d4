//! The transcoder: rules prepared against the descriptors, and a REST request turned into
//! the gRPC request message.
//!
//! Where a field gets its value, by precedence: the path's bindings, then the body, then the
//! query. The query only fills what neither of the others covers, and is not read at all
//! when the body is the whole message (`body: "*"`), as the `google.api.http` spec says.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, MessageDescriptor,
    MethodDescriptor,
};
use weir_domain::grpc::{Binding, BodyRule, GrpcSpec};

use super::fields::{self, dotted, message_at};
use super::response::ResponseDecoder;
use super::{TranscodeError, frame};

/// One route's transcoding: its spec and, per rule, the messages and fields it touches.
pub struct Transcoder {
    spec: Arc<GrpcSpec>,
    rules: Vec<Prepared>,
}

struct Prepared {
    input: MessageDescriptor,
    output: MessageDescriptor,
    body: Body,
    /// Empty for the whole response.
    response_body: Vec<FieldDescriptor>,
}

enum Body {
    None,
    Whole,
    Field(Vec<FieldDescriptor>),
}

impl Transcoder {
    /// Builds from a spec whose rules were checked at config load; an error here means the
    /// descriptors and the rules disagree.
    pub fn new(spec: Arc<GrpcSpec>) -> Result<Self, String> {
        let pool = DescriptorPool::decode(&spec.descriptors[..])
            .map_err(|e| format!("the gRPC descriptors do not decode: {e}"))?;
        let rules = spec
            .rules
            .iter()
            .map(|rule| {
                let method = find_method(&pool, &rule.method)?;
                let in_rule = |e: String| format!("{}: {e}", rule.method);
                let body = match &rule.body {
                    BodyRule::None => Body::None,
                    BodyRule::Whole => Body::Whole,
                    BodyRule::Field(path) => Body::Field(
                        fields::resolve(&method.input(), path.iter().map(String::as_str))
                            .map_err(in_rule)?,
                    ),
                };
                let response_body = match &rule.response_body {
                    None => Vec::new(),
                    Some(path) => {
                        fields::resolve(&method.output(), path.iter().map(String::as_str))
                            .map_err(in_rule)?
                    }
                };
                Ok(Prepared {
                    input: method.input(),
                    output: method.output(),
                    body,
                    response_body,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { spec, rules })
    }

    #[must_use]
    pub fn spec(&self) -> &GrpcSpec {
        &self.spec
    }

    /// The REST request as the framed gRPC request message. `rule` and `bindings` come from
    /// [`GrpcSpec::find`]; `query` is the raw query string; an empty (or blank) body is an
    /// empty message.
    pub fn request(
        &self,
        rule: usize,
        bindings: &[Binding],
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Bytes, TranscodeError> {
        let prepared = self.rules.get(rule).ok_or(TranscodeError::NoRule(rule))?;
        let mut message = DynamicMessage::new(prepared.input.clone());
        let has_body = body.iter().any(|b| !b.is_ascii_whitespace());
        match &prepared.body {
            Body::Whole if has_body => message = whole(&prepared.input, body)?,
            Body::Field(path) if has_body => body_field(&mut message, path, body)?,
            _ => {}
        }
        let mut bound = Vec::with_capacity(bindings.len());
        for binding in bindings {
            let path = fields::resolve(&prepared.input, binding.field.iter().map(String::as_str))
                .map_err(TranscodeError::BadPathValue)?;
            fields::set_text(&mut message, &path, &binding.value)
                .map_err(TranscodeError::BadPathValue)?;
            bound.push(path);
        }
        if let Some(query) = query.filter(|_| !matches!(prepared.body, Body::Whole)) {
            let body_path = match &prepared.body {
                Body::Field(path) => Some(path.as_slice()),
                Body::None | Body::Whole => None,
            };
            let covered = |p: &[FieldDescriptor]| {
                body_path.is_some_and(|b| p.starts_with(b))
                    || bound.iter().any(|b| p.starts_with(b))
            };
            apply_query(&mut message, &prepared.input, query, covered)?;
        }
        Ok(frame(&message.encode_to_vec()))
    }

    /// A decoder of the upstream's response body for `rule`.
    #[must_use]
    pub fn response(&self, rule: usize) -> ResponseDecoder {
        match self.rules.get(rule) {
            Some(p) => ResponseDecoder::new(p.output.clone(), p.response_body.clone()),
            None => ResponseDecoder::failing(TranscodeError::NoRule(rule)),
        }
    }
}

fn find_method(pool: &DescriptorPool, full_name: &str) -> Result<MethodDescriptor, String> {
    let (service, name) = full_name
        .rsplit_once('.')
        .ok_or_else(|| format!("'{full_name}' is not a method's full name"))?;
    pool.get_service_by_name(service)
        .and_then(|s| s.methods().find(|m| m.name() == name))
        .ok_or_else(|| format!("the descriptors have no method {full_name}"))
}

/// `body: "*"`: the body is the message.
fn whole(input: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, TranscodeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let message = DynamicMessage::deserialize_with_options(
        input.clone(),
        &mut de,
        &DeserializeOptions::new(),
    )
    .map_err(|e| TranscodeError::BadJson(e.to_string()))?;
    de.end()
        .map_err(|e| TranscodeError::BadJson(e.to_string()))?;
    Ok(message)
}

/// `body: "order"`: the body is one field's value, of whatever type it has. It is read as
/// the JSON of a message holding only that field, so every field type (repeated, map,
/// well-known) reads exactly as it would inside the whole message.
fn body_field(
    message: &mut DynamicMessage,
    path: &[FieldDescriptor],
    body: &[u8],
) -> Result<(), TranscodeError> {
    let bad = |e: String| TranscodeError::BadJson(e);
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let Some((leaf, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut holder_json = serde_json::Map::new();
    holder_json.insert(leaf.name().to_owned(), json);
    let mut holder = DynamicMessage::deserialize_with_options(
        leaf.parent_message().clone(),
        serde_json::Value::Object(holder_json),
        &DeserializeOptions::new(),
    )
    .map_err(|e| bad(format!("{}: {e}", dotted(path))))?;
    if let Some(value) = holder.take_field(leaf) {
        message_at(message, parents)
            .map_err(bad)?
            .try_set_field(leaf, value)
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

/// Query parameters into the fields that `covered` does not claim. `a.b=1` sets a nested
/// field, a repeated field takes every occurrence, and a name that is no field is an error,
/// as an unknown JSON field is.
fn apply_query(
    message: &mut DynamicMessage,
    input: &MessageDescriptor,
    query: &str,
    covered: impl Fn(&[FieldDescriptor]) -> bool,
) -> Result<(), TranscodeError> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = form_decode(key)?;
        let value = form_decode(value)?;
        let path = fields::resolve(input, key.split('.'))
            .map_err(|e| TranscodeError::BadQuery(format!("'{key}': {e}")))?;
        if covered(&path) {
            continue;
        }
        fields::set_text(message, &path, &value).map_err(TranscodeError::BadQuery)?;
    }
    Ok(())
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(text: &str) -> Result<String, TranscodeError> {
    if !text.contains(['%', '+']) {
        return Ok(text.to_owned());
    }
    let form = weir_domain::percent::Decoding {
        plus_is_space: true,
        ..Default::default()
    };
    let bytes = weir_domain::percent::decode(text.as_bytes(), form).map_err(|_| {
        TranscodeError::BadQuery(format!("'{text}' has a malformed percent-encoding"))
    })?;
    String::from_utf8(bytes)
        .map_err(|_| TranscodeError::BadQuery(format!("'{text}' is not UTF-8 once decoded")))
}
