//! Turning `google.api.http` annotations into domain rules, checked against the request and
//! response messages so that a request can only fail on what the client sent.

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};
use weir_domain::grpc::{BodyRule, FieldPath, GrpcRule, HttpTemplate, parse_field_path};

use super::http_rule::{self, HttpRule};

/// Every HTTP rule of every method in the pool, in file order, each method's
/// `additional_bindings` right after its main rule. All problems are returned together, each
/// starting with the method's full name.
pub(crate) fn rules(pool: &DescriptorPool) -> Result<Vec<GrpcRule>, Vec<String>> {
    let mut found = Rules::default();
    for service in pool.services() {
        for method in service.methods() {
            match http_rule::read(&method) {
                Ok(None) => {}
                Ok(Some(rule)) => found.method(&method, &rule),
                Err(e) => found.problems.push(format!("{}: {e}", method.full_name())),
            }
        }
    }
    if found.problems.is_empty() {
        Ok(found.rules)
    } else {
        Err(found.problems)
    }
}

#[derive(Default)]
struct Rules {
    rules: Vec<GrpcRule>,
    problems: Vec<String>,
}

impl Rules {
    fn method(&mut self, method: &MethodDescriptor, rule: &HttpRule) {
        if method.is_client_streaming() {
            // A REST request is one message; there is no way to send a stream of them.
            self.problems.push(format!(
                "{}: has an HTTP rule but is client-streaming, which REST cannot call",
                method.full_name()
            ));
            return;
        }
        self.binding(method, rule);
        for extra in &rule.additional_bindings {
            if !extra.additional_bindings.is_empty() {
                self.problems.push(format!(
                    "{}: additional_bindings cannot have additional_bindings of their own",
                    method.full_name()
                ));
            }
            self.binding(method, extra);
        }
    }

    fn binding(&mut self, method: &MethodDescriptor, rule: &HttpRule) {
        let before = self.problems.len();
        let name = method.full_name();
        let Some(pattern) = &rule.pattern else {
            let what = if rule.selector.is_empty() {
                "an HTTP rule"
            } else {
                "an HTTP rule with only a selector"
            };
            self.problems.push(format!(
                "{name}: {what} needs a method and path (get, put, post, delete, patch or custom)"
            ));
            return;
        };
        let (http_method, path) = pattern.method_and_path();
        if http_method.is_empty() || !http_method.bytes().all(is_token_char) {
            self.problems.push(format!(
                "{name}: custom HTTP method '{http_method}' is not a method name"
            ));
        }
        let template = match HttpTemplate::parse(path) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problems.push(format!("{name}: {e}"));
                None
            }
        };
        let input = method.input();
        for variable in template.iter().flat_map(HttpTemplate::variables) {
            if let Err(e) = path_variable(&input, variable) {
                self.problems.push(format!(
                    "{name}: path variable {{{}}}: {e}",
                    variable.join(".")
                ));
            }
        }
        let body = match rule.body.as_str() {
            "" => BodyRule::None,
            "*" => BodyRule::Whole,
            text => match parse_field_path(text).and_then(|p| resolve(&input, &p).map(|_| p)) {
                Ok(p) => BodyRule::Field(p),
                Err(e) => {
                    self.problems.push(format!("{name}: body: {e}"));
                    BodyRule::None
                }
            },
        };
        let response_body = match rule.response_body.as_str() {
            "" => None,
            text => match parse_field_path(text)
                .and_then(|p| resolve(&method.output(), &p).map(|_| p))
            {
                Ok(p) => Some(p),
                Err(e) => {
                    self.problems.push(format!("{name}: response_body: {e}"));
                    None
                }
            },
        };
        let Some(template) = template else { return };
        if self.problems.len() != before {
            return;
        }
        self.rules.push(GrpcRule {
            http_method: http_method.to_owned(),
            template,
            body,
            response_body,
            method: name.to_owned(),
            grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
            client_streaming: method.is_client_streaming(),
            server_streaming: method.is_server_streaming(),
        });
    }
}

/// RFC 9110's `tchar`: what a method name may contain.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A path variable must land on one scalar (or enum) value: a path segment is one string.
fn path_variable(input: &MessageDescriptor, path: &FieldPath) -> Result<(), String> {
    let field = resolve(input, path)?;
    if field.is_list() || field.is_map() {
        return Err(format!(
            "'{}' is repeated; a path variable names a single value",
            field.name()
        ));
    }
    if let Kind::Message(m) = field.kind() {
        return Err(format!(
            "'{}' is a message ({}); a path variable names a scalar field",
            field.name(),
            m.full_name()
        ));
    }
    Ok(())
}

/// Walks `path` from `message`: every step before the last must be a singular message field.
fn resolve(message: &MessageDescriptor, path: &FieldPath) -> Result<FieldDescriptor, String> {
    let mut current = message.clone();
    let mut names = path.iter().peekable();
    while let Some(name) = names.next() {
        let field = current
            .get_field_by_name(name)
            .ok_or_else(|| format!("{} has no field '{name}'", current.full_name()))?;
        if names.peek().is_none() {
            return Ok(field);
        }
        match field.kind() {
            Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
            _ => {
                return Err(format!(
                    "'{name}' in {} is not a singular message field, so '{}' cannot go inside it",
                    current.full_name(),
                    path.join(".")
                ));
            }
        }
    }
    Err("the field path is empty".to_owned())
}
