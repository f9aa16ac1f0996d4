//! Fields set from text. Path segments and query values are strings; each field kind reads
//! its own, the way proto3's JSON mapping reads a JSON string for it.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
use bytes::Bytes;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

/// Wrapper messages: set from the text of their one `value` field.
const WRAPPERS: [&str; 9] = [
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
];

/// Messages whose JSON form is a string, so text is all they need.
const STRING_SHAPED: [&str; 3] = [
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
];

/// The fields named by `names` (proto or lowerCamelCase JSON names) from `message`; every
/// step but the last must be a singular message.
pub(super) fn resolve<'a>(
    message: &MessageDescriptor,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<FieldDescriptor>, String> {
    let mut current = message.clone();
    let mut path: Vec<FieldDescriptor> = Vec::new();
    for name in names {
        if let Some(last) = path.last() {
            current = match last.kind() {
                Kind::Message(m) if !last.is_list() && !last.is_map() => m,
                _ => return Err(format!("'{}' has no fields", last.name())),
            };
        }
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| format!("unknown field '{name}'"))?;
        path.push(field);
    }
    if path.is_empty() {
        return Err("empty field name".to_owned());
    }
    Ok(path)
}

/// The message at the end of `path` (all singular message fields), created where unset.
pub(super) fn message_at<'m>(
    mut message: &'m mut DynamicMessage,
    path: &[FieldDescriptor],
) -> Result<&'m mut DynamicMessage, String> {
    for field in path {
        message = message
            .get_field_mut(field)
            .as_message_mut()
            .ok_or_else(|| format!("'{}' has no fields", field.name()))?;
    }
    Ok(message)
}

/// Sets the field at the end of `path` from `text`, or appends to it when repeated.
pub(super) fn set_text(
    message: &mut DynamicMessage,
    path: &[FieldDescriptor],
    text: &str,
) -> Result<(), String> {
    let Some((leaf, parents)) = path.split_last() else {
        return Err("empty field name".to_owned());
    };
    let named = |e: String| format!("{}: {e}", dotted(path));
    if leaf.is_map() {
        return Err(named("a map field cannot be set from text".to_owned()));
    }
    let value = parse(&leaf.kind(), text).map_err(named)?;
    let parent = message_at(message, parents)?;
    if leaf.is_list() {
        if let Some(list) = parent.get_field_mut(leaf).as_list_mut() {
            list.push(value);
        }
        Ok(())
    } else {
        parent
            .try_set_field(leaf, value)
            .map_err(|e| named(e.to_string()))
    }
}

/// `a.b.c`, for messages.
pub(super) fn dotted(path: &[FieldDescriptor]) -> String {
    path.iter()
        .map(FieldDescriptor::name)
        .collect::<Vec<_>>()
        .join(".")
}

fn parse(kind: &Kind, text: &str) -> Result<Value, String> {
    let bad = |what: &str| format!("'{text}' is not {what}");
    Ok(match kind {
        Kind::Double => Value::F64(text.parse().map_err(|_| bad("a number"))?),
        Kind::Float => Value::F32(text.parse().map_err(|_| bad("a number"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| bad("a 32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| bad("a 64-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(
            text.parse()
                .map_err(|_| bad("an unsigned 32-bit integer"))?,
        ),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(
            text.parse()
                .map_err(|_| bad("an unsigned 64-bit integer"))?,
        ),
        Kind::Bool => Value::Bool(match text {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(bad("true or false")),
        }),
        Kind::String => Value::String(text.to_owned()),
        Kind::Bytes => Value::Bytes(Bytes::from(
            STANDARD_PAD_INDIFFERENT
                .decode(text)
                .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(text))
                .map_err(|_| bad("base64"))?,
        )),
        Kind::Enum(e) => match e.get_value_by_name(text) {
            Some(v) => Value::EnumNumber(v.number()),
            None => Value::EnumNumber(
                text.parse()
                    .map_err(|_| bad(&format!("a value of {}", e.name())))?,
            ),
        },
        Kind::Message(m) => parse_message(m, text)?,
    })
}

fn parse_message(message: &MessageDescriptor, text: &str) -> Result<Value, String> {
    let name = message.full_name();
    if WRAPPERS.contains(&name) {
        let mut wrapper = DynamicMessage::new(message.clone());
        if let Some(field) = message.get_field_by_name("value") {
            let value = parse(&field.kind(), text)?;
            wrapper
                .try_set_field(&field, value)
                .map_err(|e| e.to_string())?;
        }
        return Ok(Value::Message(wrapper));
    }
    if STRING_SHAPED.contains(&name) {
        let json = serde_json::Value::String(text.to_owned());
        return DynamicMessage::deserialize(message.clone(), json)
            .map(Value::Message)
            .map_err(|e| format!("'{text}' is not a {}: {e}", message.name()));
    }
    Err(format!(
        "is a message ({name}); it can only be given in the body"
    ))
}
