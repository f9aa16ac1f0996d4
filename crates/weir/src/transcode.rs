//! REST -> gRPC at the edge: the JSON request made a gRPC call (the pipeline's converter
//! port), and the gRPC answer made JSON again: one object for a unary call, a JSON array or
//! NDJSON for a server stream, and a gRPC error as problem+json with the HTTP status the
//! gRPC code maps to.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use weir_app::GatewayError;
use weir_app::convert::Outbound;
use weir_app::headers::GRPC_TIMEOUT;
use weir_domain::ErrorKind;
use weir_domain::grpc::{code_name, http_status};
use weir_domain::percent;
use weir_infra::grpc::{ResponseDecoder, Transcoder};

use crate::body::{Body, BoxError};
use crate::grpc::{GRPC_MESSAGE, GRPC_STATUS};

/// `Exchange::conversion` of a transcoded call: the rule's index, and this bit when the
/// client asked for NDJSON.
const NDJSON: u32 = 1 << 31;

/// A route's transcoder, with each rule's upstream path built once.
pub struct Transcode {
    transcoder: Transcoder,
    paths: Vec<PathAndQuery>,
}

impl std::fmt::Debug for Transcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcode")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl Transcode {
    /// # Errors
    /// Descriptors or rules that do not build (the config checked them).
    pub fn new(spec: Arc<weir_domain::grpc::GrpcSpec>) -> Result<Self, String> {
        let paths = spec
            .rules
            .iter()
            .map(|r| PathAndQuery::try_from(r.grpc_path.as_str()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            transcoder: Transcoder::new(spec)?,
            paths,
        })
    }

    /// The REST request as the gRPC call of the rule its method and path match.
    pub fn convert(&self, out: Outbound<'_>, body: &Bytes) -> Result<Bytes, GatewayError> {
        let head = out.head;
        let spec = self.transcoder.spec();
        let Some((rule, bindings)) = spec.find(head.method.as_str(), head.uri.path()) else {
            return Err(GatewayError::new(
                ErrorKind::RouteNotFound,
                "no gRPC method of this route answers this method and path",
            ));
        };
        // The query as it goes upstream: a credential weir consumed is already out.
        let message = self
            .transcoder
            .request(rule, &bindings, out.path_and_query.query(), body)
            .map_err(|e| GatewayError::new(ErrorKind::BadRequest, e.to_string()))?;
        let ndjson = accepts_ndjson(&head.headers);
        head.method = Method::POST;
        *out.path_and_query = self.paths[rule].clone();
        let h = &mut head.headers;
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.remove(header::CONTENT_ENCODING);
        // The service stops working on the call when weir stops waiting for it.
        // At most 8 digits: milliseconds up to a day, seconds beyond.
        let ms = out.timeout.as_millis().max(1);
        let deadline = if ms < 100_000_000 {
            format!("{ms}m")
        } else {
            format!("{}S", out.timeout.as_secs().min(99_999_999))
        };
        if let Ok(v) = HeaderValue::try_from(deadline) {
            h.insert(&GRPC_TIMEOUT, v);
        }
        h.remove(header::ACCEPT_ENCODING);
        let index = u32::try_from(rule).unwrap_or(0);
        out.ex.conversion = Some(index | if ndjson { NDJSON } else { 0 });
        Ok(message)
    }

    /// The upstream's gRPC answer to the call `conversion` names, for the REST client.
    pub async fn respond(
        &self,
        conversion: u32,
        resp: Response<Body>,
        request_id: &HeaderValue,
    ) -> Response<Body> {
        let rule = (conversion & !NDJSON) as usize;
        let ndjson = conversion & NDJSON != 0;
        if let Some(err) = crate::grpc::upstream_failure(&resp) {
            return crate::problem::response(&err, request_id);
        }
        if let Some(status) = Status::of(resp.headers()) {
            // Trailers-only: the call ended before any message.
            if status.code != 0 {
                return status.problem(request_id);
            }
        }
        let streaming = self
            .transcoder
            .spec()
            .rules
            .get(rule)
            .is_some_and(|r| r.server_streaming);
        let (head, body) = resp.into_parts();
        let mut stream = JsonStream {
            inner: body,
            decoder: self.transcoder.response(rule),
            ndjson,
            streaming,
            messages: 0,
            out: VecDeque::new(),
            status: Status::of(&head.headers),
            done: false,
        };
        // A unary answer is read whole; a stream's first message (or its end) decides the
        // status line.
        if let Err(e) = std::future::poll_fn(|cx| stream.prime(cx)).await {
            let err = GatewayError::new(ErrorKind::BadGateway, e.to_string());
            return crate::problem::response(&err, request_id);
        }
        if (stream.messages == 0 || !streaming)
            && let Some(status) = stream.status.as_ref().filter(|s| s.code != 0)
        {
            return status.problem(request_id);
        }
        let mut resp = Response::new(Body::converted(stream));
        let content_type = if ndjson && streaming {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        resp
    }
}

fn accepts_ndjson(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| {
        v.as_bytes()
            .windows(b"application/x-ndjson".len())
            .any(|w| w.eq_ignore_ascii_case(b"application/x-ndjson"))
    })
}

/// A call's end: `grpc-status` and `grpc-message`.
#[derive(Debug, Clone)]
struct Status {
    code: u32,
    message: String,
}

impl Status {
    fn of(headers: &HeaderMap) -> Option<Self> {
        let code = std::str::from_utf8(headers.get(&GRPC_STATUS)?.as_bytes())
            .ok()?
            .trim()
            .parse()
            .unwrap_or(2);
        let message = headers
            .get(&GRPC_MESSAGE)
            .map(|m| percent_decode(m.as_bytes()))
            .unwrap_or_default();
        Some(Self { code, message })
    }

    /// The gRPC error as problem+json, with the HTTP status its code maps to.
    fn problem(&self, request_id: &HeaderValue) -> Response<Body> {
        let status = StatusCode::from_u16(http_status(self.code))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = format!("grpc_{}", code_name(self.code).to_ascii_lowercase());
        let body = serde_json::json!({
            "type": format!("https://weir.dev/errors/{code}"),
            "title": status.canonical_reason().unwrap_or(""),
            "status": status.as_u16(),
            "detail": self.message,
            "code": code,
            "grpc_status": self.code,
            "request_id": String::from_utf8_lossy(request_id.as_bytes()),
        });
        let mut resp = Response::new(Body::full(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }

    /// The error as the last element of a stream already under way.
    fn element(&self) -> String {
        serde_json::json!({
            "error": { "code": self.code, "status": code_name(self.code), "message": self.message }
        })
        .to_string()
    }
}

/// `grpc-message` as text: percent-decoded, a malformed escape kept as written.
fn percent_decode(bytes: &[u8]) -> String {
    let lenient = percent::Decoding {
        lenient: true,
        ..Default::default()
    };
    let decoded = percent::decode(bytes, lenient).unwrap_or_default();
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The upstream's frames as JSON, as they arrive.
struct JsonStream {
    inner: Body,
    decoder: ResponseDecoder,
    ndjson: bool,
    streaming: bool,
    messages: usize,
    out: VecDeque<Bytes>,
    /// The call's status, once known.
    status: Option<Status>,
    done: bool,
}

impl JsonStream {
    /// Reads until there is something to send or the call is over.
    fn prime(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        while (self.out.is_empty() || !self.streaming) && !self.done {
            ready!(self.fill(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes one frame from the upstream and turns it into output.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    for message in self.decoder.push(&data).map_err(|e| e.to_string())? {
                        if !self.streaming && self.messages > 0 {
                            // A unary call has one answer; reading on would let an upstream
                            // that never stops hold the request (and a core) forever.
                            return Poll::Ready(Err(
                                "the upstream sent more than one message for a unary call".into(),
                            ));
                        }
                        self.message(message);
                    }
                }
                Err(frame) => {
                    if let Some(status) = frame.trailers_ref().and_then(Status::of) {
                        self.status = Some(status);
                    }
                    self.finish();
                }
            },
            Some(Err(e)) => return Poll::Ready(Err(e)),
            None => self.finish(),
        }
        Poll::Ready(Ok(()))
    }

    fn message(&mut self, json: Bytes) {
        if self.streaming {
            let sep: &'static [u8] = match (self.ndjson, self.messages) {
                (true, _) => b"",
                (false, 0) => b"[",
                (false, _) => b",",
            };
            if !sep.is_empty() {
                self.out.push_back(Bytes::from_static(sep));
            }
            self.out.push_back(json);
            if self.ndjson {
                self.out.push_back(Bytes::from_static(b"\n"));
            }
        } else if self.messages == 0 {
            self.out.push_back(json);
        }
        self.messages += 1;
    }

    fn finish(&mut self) {
        self.done = true;
        let status = self.status.clone().unwrap_or_else(|| Status {
            code: 2,
            message: "the upstream ended the call without a gRPC status".to_owned(),
        });
        if self.decoder.pending() > 0 {
            tracing::debug!(
                bytes = self.decoder.pending(),
                "gRPC response ended inside a message"
            );
        }
        if !self.streaming {
            if self.messages == 0 && status.code == 0 {
                self.out.push_back(Bytes::from_static(b"{}"));
            }
            return;
        }
        if status.code != 0 && self.messages > 0 {
            // Too late for a status line: the error is the stream's last element.
            let sep = if self.ndjson { "" } else { "," };
            let nl = if self.ndjson { "\n" } else { "" };
            self.out
                .push_back(Bytes::from(format!("{sep}{}{nl}", status.element())));
        }
        if !self.ndjson {
            let close: &'static [u8] = if self.messages == 0 { b"[]" } else { b"]" };
            self.out.push_back(Bytes::from_static(close));
        }
    }
}

impl HttpBody for JsonStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(b) = self.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            if let Err(e) = ready!(self.fill(cx)) {
                return Poll::Ready(Some(Err(e)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_decode() {
        assert_eq!(percent_decode(b"50%25 d%C3%BCne %zz"), "50% düne %zz");
    }
}
