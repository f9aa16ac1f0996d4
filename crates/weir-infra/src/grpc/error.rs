//! What can go wrong between JSON and protobuf, and whose fault it is.

/// A request that cannot become the gRPC message (the client's fault: 400), or a response
/// that cannot become JSON (the upstream's fault: 502). The text is safe to show a client:
/// it names fields and values the client sent or the service declared, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranscodeError {
    /// The body is not JSON, or not the message's JSON form (including unknown fields).
    BadJson(String),
    /// A query parameter names no field, or its value does not fit the field.
    BadQuery(String),
    /// A path segment's value does not fit the field it binds.
    BadPathValue(String),
    /// The upstream's frame or message does not decode as the declared response.
    BadResponse(String),
    /// The upstream compressed a frame although weir asked for identity.
    Compressed,
    /// The upstream announced a frame larger than weir buffers.
    FrameTooLarge(usize),
    /// The caller named a rule the spec does not have: a bug in weir, not in the exchange.
    NoRule(usize),
}

impl TranscodeError {
    /// True when the upstream, not the client, sent something wrong.
    #[must_use]
    pub fn blames_upstream(&self) -> bool {
        matches!(
            self,
            Self::BadResponse(_) | Self::Compressed | Self::FrameTooLarge(_)
        )
    }
}

impl std::fmt::Display for TranscodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadJson(e) => write!(f, "the request body is not valid for this method: {e}"),
            Self::BadQuery(e) => write!(f, "bad query parameter: {e}"),
            Self::BadPathValue(e) => write!(f, "bad path value: {e}"),
            Self::BadResponse(e) => write!(f, "the upstream's gRPC response is malformed: {e}"),
            Self::Compressed => f.write_str("the upstream sent a compressed gRPC message"),
            Self::FrameTooLarge(n) => {
                write!(
                    f,
                    "the upstream sent a gRPC message of {n} bytes, over the limit"
                )
            }
            Self::NoRule(i) => write!(f, "no transcoding rule {i}"),
        }
    }
}

impl std::error::Error for TranscodeError {}
