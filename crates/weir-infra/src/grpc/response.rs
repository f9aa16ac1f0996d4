//! The upstream's gRPC response body, frame by frame, as proto3 JSON.

use bytes::{Bytes, BytesMut};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _,
    SerializeOptions, Value,
};

use super::{FRAME_HEADER, TranscodeError};

/// The largest message weir buffers (gRPC's usual receive limit is 4 MiB). A frame header
/// announcing more is refused at once rather than buffered toward an unbounded size.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Reassembles frames from body chunks and renders each message as it completes, so a
/// server stream reaches the client message by message.
pub struct ResponseDecoder {
    output: Option<MessageDescriptor>,
    /// Empty for the whole message.
    response_body: Vec<FieldDescriptor>,
    buffer: BytesMut,
    /// Once a frame is bad the stream cannot be resynchronized: every later push fails too.
    failed: Option<TranscodeError>,
}

impl ResponseDecoder {
    pub(super) fn new(output: MessageDescriptor, response_body: Vec<FieldDescriptor>) -> Self {
        Self {
            output: Some(output),
            response_body,
            buffer: BytesMut::new(),
            failed: None,
        }
    }

    pub(super) fn failing(error: TranscodeError) -> Self {
        Self {
            output: None,
            response_body: Vec::new(),
            buffer: BytesMut::new(),
            failed: Some(error),
        }
    }

    /// Feeds body bytes in any chunking; returns each message completed by them, rendered as
    /// compact proto3 JSON (default values left out, 64-bit integers as strings, enums by
    /// name, well-known types in their JSON forms).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, TranscodeError> {
        let result = self.decode(chunk);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// Bytes held that do not make a whole frame yet; non-zero at the end of the body means
    /// the response was cut short.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    fn decode(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, TranscodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(output) = &self.output else {
            return Err(TranscodeError::BadResponse("no response type".to_owned()));
        };
        self.buffer.extend_from_slice(chunk);
        let mut messages = Vec::new();
        while let Some(header) = self.buffer.get(..FRAME_HEADER) {
            let flags = header[0];
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if flags & 1 != 0 {
                return Err(TranscodeError::Compressed);
            }
            if flags != 0 {
                return Err(TranscodeError::BadResponse(format!(
                    "unknown frame flags {flags:#04x}"
                )));
            }
            if len > MAX_MESSAGE {
                return Err(TranscodeError::FrameTooLarge(len));
            }
            if self.buffer.len() < FRAME_HEADER + len {
                break;
            }
            let frame = self.buffer.split_to(FRAME_HEADER + len);
            let message =
                DynamicMessage::decode(output.clone(), &frame[FRAME_HEADER..]).map_err(|e| {
                    TranscodeError::BadResponse(format!("not a {}: {e}", output.full_name()))
                })?;
            messages.push(render(message, &self.response_body)?);
        }
        Ok(messages)
    }
}

/// The message, or its `response_body` field, as JSON.
fn render(
    message: DynamicMessage,
    response_body: &[FieldDescriptor],
) -> Result<Bytes, TranscodeError> {
    let Some((leaf, parents)) = response_body.split_last() else {
        return to_json(&message, &SerializeOptions::new());
    };
    let mut current = message;
    for field in parents {
        current = take_message(&mut current, field);
    }
    if let Kind::Message(_) = leaf.kind()
        && !leaf.is_list()
        && !leaf.is_map()
    {
        return to_json(&take_message(&mut current, leaf), &SerializeOptions::new());
    }
    // A scalar, list or map has no JSON of its own in the library: render a message holding
    // only it, `{"name":VALUE}`, and cut VALUE out (going through `serde_json::Value` would
    // reorder the fields of messages inside it).
    let mut holder = DynamicMessage::new(current.descriptor());
    if let Some(value) = current.take_field(leaf) {
        holder
            .try_set_field(leaf, value)
            .map_err(|e| TranscodeError::BadResponse(e.to_string()))?;
    }
    let whole = to_json(&holder, &SerializeOptions::new())?;
    let prefix = format!("{{\"{}\":", leaf.json_name());
    if whole.starts_with(prefix.as_bytes()) && whole.ends_with(b"}") {
        return Ok(whole.slice(prefix.len()..whole.len() - 1));
    }
    // Left out as a default: render it with defaults, so the client still gets `[]`, `0` or
    // `""`. An empty or scalar value has no fields to reorder.
    let json = to_value(&holder, &SerializeOptions::new().skip_default_fields(false))?;
    let value = json
        .get(leaf.json_name())
        .unwrap_or(&serde_json::Value::Null);
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| TranscodeError::BadResponse(e.to_string()))
}

fn to_value(
    message: &DynamicMessage,
    options: &SerializeOptions,
) -> Result<serde_json::Value, TranscodeError> {
    message
        .serialize_with_options(serde_json::value::Serializer, options)
        .map_err(|e| TranscodeError::BadResponse(e.to_string()))
}

/// A singular message field's value, its default when unset.
fn take_message(message: &mut DynamicMessage, field: &FieldDescriptor) -> DynamicMessage {
    match message.take_field(field) {
        Some(Value::Message(m)) => m,
        _ => match field.kind() {
            Kind::Message(m) => DynamicMessage::new(m),
            _ => DynamicMessage::new(message.descriptor()),
        },
    }
}

fn to_json(message: &DynamicMessage, options: &SerializeOptions) -> Result<Bytes, TranscodeError> {
    let mut serializer = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(&mut serializer, options)
        .map_err(|e| TranscodeError::BadResponse(e.to_string()))?;
    Ok(Bytes::from(serializer.into_inner()))
}
