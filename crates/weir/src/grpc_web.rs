//! gRPC-Web to gRPC: a browser's call made a gRPC call (the content type, and the body
//! base64-decoded in text mode), and the answer made gRPC-Web again: the messages as they
//! come, the trailers as a last frame in the body (browsers cannot read HTTP trailers),
//! all base64 in text mode.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response};
use http_body::{Body as HttpBody, Frame};
use weir_app::GatewayError;
use weir_app::convert::Outbound;
use weir_domain::ErrorKind;
use weir_infra::grpc::web::{TextEncoder, decode_text, trailer_frame};

use crate::body::{Body, BoxError};
use crate::grpc::Client;

/// `Exchange::conversion` of a gRPC-Web call: this bit, and `TEXT` in text mode.
pub const WEB: u32 = 1 << 30;
const TEXT: u32 = 1 << 29;

/// Whether `conversion` names a gRPC-Web call.
#[must_use]
pub const fn is_web(conversion: u32) -> bool {
    conversion & WEB != 0
}

/// The browser's request as a gRPC request.
pub fn convert(client: Client, out: Outbound<'_>, body: Bytes) -> Result<Bytes, GatewayError> {
    let text = client == Client::WebText;
    let body = if text {
        Bytes::from(decode_text(&body).map_err(|e| {
            GatewayError::new(
                ErrorKind::BadRequest,
                format!("the grpc-web-text body is not base64: {e}"),
            )
        })?)
    } else {
        body
    };
    let Outbound { head, ex, .. } = out;
    let h = &mut head.headers;
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    // What the browser sent to describe gRPC-Web itself.
    h.remove("x-grpc-web");
    ex.conversion = Some(WEB | if text { TEXT } else { 0 });
    Ok(body)
}

/// The upstream's gRPC answer as gRPC-Web.
#[must_use]
pub fn respond(conversion: u32, resp: Response<Body>) -> Response<Body> {
    let text = conversion & TEXT != 0;
    let (mut head, body) = resp.into_parts();
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if text {
            "application/grpc-web-text+proto"
        } else {
            "application/grpc-web+proto"
        }),
    );
    head.headers.remove(header::CONTENT_LENGTH);
    let body = WebBody {
        inner: body,
        text: text.then(TextEncoder::new),
        done: false,
    };
    Response::from_parts(head, Body::converted(body))
}

/// Messages through as they come, trailers as the last frame; base64 in text mode.
struct WebBody {
    inner: Body,
    text: Option<TextEncoder>,
    done: bool,
}

impl WebBody {
    fn encode(&mut self, bytes: &Bytes) -> Bytes {
        match &mut self.text {
            Some(enc) => enc.encode(bytes),
            None => bytes.clone(),
        }
    }

    /// The end of the body: the trailer frame (when the upstream sent trailers), then what
    /// the text encoder still holds.
    fn end(&mut self, trailers: Option<&HeaderMap>) -> Bytes {
        self.done = true;
        let mut out = trailers.map_or_else(Bytes::new, |t| {
            let frame = trailer_frame(t);
            self.encode(&frame)
        });
        if let Some(enc) = &mut self.text {
            let rest = enc.finish();
            if !rest.is_empty() {
                let mut joined = Vec::with_capacity(out.len() + rest.len());
                joined.extend_from_slice(&out);
                joined.extend_from_slice(&rest);
                out = Bytes::from(joined);
            }
        }
        out
    }
}

impl HttpBody for WebBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let out = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.encode(&data),
                    Err(frame) => {
                        let trailers = frame.into_trailers().ok();
                        self.end(trailers.as_ref())
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.end(None),
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
