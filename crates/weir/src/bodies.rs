//! Per-route body work, built at load from the route's config: JSON edits of request bodies
//! (the pipeline's [`RequestConverter`] port) and of response bodies (applied here, on the
//! way out). Only JSON bodies that are not compressed are edited: weir never inflates a body
//! to change it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode, request};
use http_body_util::BodyExt;
use weir_app::GatewayError;
use weir_app::convert::{Outbound, RequestConverter};
use weir_app::pipeline::Exchange;
use weir_domain::ErrorKind;
use weir_domain::route::Route;
use weir_infra::json_edit::{JsonEditor, is_json};

use crate::body::Body;
use crate::grpc::Client;
use crate::grpc_web;
use crate::transcode::Transcode;

/// What a route does to bodies.
#[derive(Debug, Default)]
pub struct RouteBodies {
    pub request: Option<Arc<dyn RequestConverter>>,
    pub response_json: Option<ResponseJson>,
    /// REST -> gRPC, for the response side.
    pub transcode: Option<Arc<Transcode>>,
}

impl RouteBodies {
    /// # Errors
    /// A `set` value that does not parse (the config checked it).
    pub fn build(route: &Route, max_body: u64) -> Result<Self, String> {
        let t = &route.transforms;
        let json = match &t.request_body {
            Some(b) => Some(JsonRequest {
                editor: JsonEditor::new(&b.json)?,
                strict: b.strict,
                route: Arc::from(route.name.as_str()),
            }),
            None => None,
        };
        let transcode = match route.grpc.as_ref().filter(|g| !g.rules.is_empty()) {
            Some(spec) => Some(Arc::new(Transcode::new(Arc::clone(spec))?)),
            None => None,
        };
        let request: Option<Arc<dyn RequestConverter>> = match &route.grpc {
            Some(spec) => Some(Arc::new(GrpcConvert {
                transcode: transcode.clone(),
                web: spec.web,
                json,
            })),
            None => json.map(|j| Arc::new(j) as Arc<dyn RequestConverter>),
        };
        let response_json = match &t.response_body {
            Some(b) => Some(ResponseJson {
                editor: JsonEditor::new(&b.json)?,
                strict: b.strict,
                max: route.max_body_bytes.unwrap_or(max_body),
                route: Arc::from(route.name.as_str()),
            }),
            None => None,
        };
        Ok(Self {
            request,
            response_json,
            transcode,
        })
    }
}

impl RouteBodies {
    /// The upstream's answer as the client gets it: made gRPC-Web or JSON again when the
    /// request was converted, its JSON edited when the route says so.
    pub async fn respond(
        &self,
        resp: Response<Body>,
        ex: &Exchange,
        head_request: bool,
    ) -> Response<Body> {
        match ex.conversion {
            Some(c) if grpc_web::is_web(c) => grpc_web::respond(c, resp),
            Some(c) => match &self.transcode {
                Some(t) => t.respond(c, resp, &ex.request_id).await,
                None => resp,
            },
            None => match &self.response_json {
                Some(json) => match json.edit(resp, head_request).await {
                    Ok(resp) => resp,
                    Err(err) => crate::problem::response(&err, &ex.request_id),
                },
                None => resp,
            },
        }
    }
}

/// Whether the body is compressed (and so not editable without inflating it).
fn encoded(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

fn json_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_json(v.as_bytes()))
}

/// `transform.request.body.json`.
#[derive(Debug)]
struct JsonRequest {
    editor: JsonEditor,
    strict: bool,
    route: Arc<str>,
}

impl RequestConverter for JsonRequest {
    fn wants(&self, head: &request::Parts) -> bool {
        self.strict || (json_type(&head.headers) && !encoded(&head.headers))
    }

    fn convert(&self, out: Outbound<'_>, body: Bytes) -> Result<Bytes, GatewayError> {
        self.edit(&out.head.headers, body)
    }
}

impl JsonRequest {
    fn edit(&self, headers: &HeaderMap, body: Bytes) -> Result<Bytes, GatewayError> {
        if body.is_empty() {
            // No body is not a malformed one.
            return Ok(body);
        }
        let problem = if !json_type(headers) {
            "the body is not JSON (Content-Type application/json or +json)".to_owned()
        } else if encoded(headers) {
            "a compressed body cannot be edited".to_owned()
        } else {
            match self.editor.apply(&body) {
                Ok(edited) => return Ok(Bytes::from(edited)),
                Err(e) => e,
            }
        };
        if self.strict {
            return Err(GatewayError::new(ErrorKind::BadRequest, problem));
        }
        tracing::info!(route = %self.route, reason = %problem, "request body passed on unedited");
        Ok(body)
    }
}

/// A route with `grpc`: native gRPC passes as it is; gRPC-Web (when on) becomes gRPC; any
/// other request is a REST call to transcode (when the route has rules), its JSON edited
/// first.
#[derive(Debug)]
struct GrpcConvert {
    transcode: Option<Arc<Transcode>>,
    web: bool,
    json: Option<JsonRequest>,
}

impl RequestConverter for GrpcConvert {
    fn wants(&self, head: &request::Parts) -> bool {
        match Client::of(&head.headers) {
            Some(Client::Grpc) => false,
            Some(Client::Web | Client::WebText) => self.web,
            None => self.transcode.is_some() || self.json.as_ref().is_some_and(|j| j.wants(head)),
        }
    }

    fn convert(&self, out: Outbound<'_>, body: Bytes) -> Result<Bytes, GatewayError> {
        match Client::of(&out.head.headers) {
            Some(client @ (Client::Web | Client::WebText)) => grpc_web::convert(client, out, body),
            _ => {
                let body = match &self.json {
                    Some(j) if j.wants(out.head) => j.edit(&out.head.headers, body)?,
                    _ => body,
                };
                match &self.transcode {
                    Some(t) => t.convert(out, &body),
                    None => Ok(body),
                }
            }
        }
    }
}

/// `transform.response.body.json`.
#[derive(Debug)]
pub struct ResponseJson {
    editor: JsonEditor,
    strict: bool,
    /// The route's `max_body_bytes`: a larger body passes unedited.
    max: u64,
    route: Arc<str>,
}

impl ResponseJson {
    /// Edits a JSON body the client will get in full (a cached one).
    ///
    /// # Errors
    /// A malformed body on a strict route.
    pub fn edit_full(
        &self,
        status: StatusCode,
        headers: &mut HeaderMap,
        body: Bytes,
        head_request: bool,
    ) -> Result<Bytes, GatewayError> {
        if !json_type(headers) || encoded(headers) || body.len() as u64 > self.max {
            return Ok(body);
        }
        if bodiless(status, head_request, headers) {
            return Ok(body);
        }
        self.apply(headers, body)
    }

    fn apply(&self, headers: &mut HeaderMap, body: Bytes) -> Result<Bytes, GatewayError> {
        match self.editor.apply(&body) {
            Ok(edited) => {
                fix_headers(headers, edited.len());
                Ok(Bytes::from(edited))
            }
            Err(e) if self.strict => Err(GatewayError::new(
                ErrorKind::BadGateway,
                format!("the upstream's response is not the JSON the route edits: {e}"),
            )),
            Err(e) => {
                tracing::info!(route = %self.route, reason = %e, "response body passed on unedited");
                Ok(body)
            }
        }
    }

    /// Edits an upstream's response: read whole (up to the route's limit), edited, sent with
    /// its new length. Too large a body goes on unedited, streaming; a malformed one goes on
    /// unedited, or is a 502 when the route is strict.
    pub async fn edit(
        &self,
        resp: Response<Body>,
        head_request: bool,
    ) -> Result<Response<Body>, GatewayError> {
        if !json_type(resp.headers()) || encoded(resp.headers()) {
            return Ok(resp);
        }
        let (mut head, mut body) = resp.into_parts();
        if bodiless(head.status, head_request, &mut head.headers) {
            return Ok(Response::from_parts(head, body));
        }
        let mut buf = BytesMut::new();
        loop {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        buf.extend_from_slice(&data);
                        if buf.len() as u64 > self.max {
                            tracing::info!(route = %self.route, max = self.max, "response body too large to edit; passed on unedited");
                            let body = Body::prefixed(buf.freeze(), body);
                            return Ok(Response::from_parts(head, body));
                        }
                    }
                    // Trailers end a JSON body's stream; they have nowhere to go once the
                    // body has a length.
                    Err(_) => break,
                },
                Some(Err(e)) => {
                    return Err(GatewayError::new(
                        ErrorKind::BadGateway,
                        format!("the upstream's response body failed: {e}"),
                    ));
                }
            }
        }
        let body = self.apply(&mut head.headers, buf.freeze())?;
        Ok(Response::from_parts(head, Body::full(body)))
    }
}

/// Whether an answer carries no body to edit: a HEAD's, a 1xx, 204 or 304. A HEAD's
/// headers describe the GET's body, which would be edited: its length and a strong
/// validator are not known, so they go.
fn bodiless(status: StatusCode, head_request: bool, headers: &mut HeaderMap) -> bool {
    if head_request {
        headers.remove(header::CONTENT_LENGTH);
        drop_strong_etag(headers);
        return true;
    }
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// The headers of an edited body: its new length, and no validator of the old bytes.
fn fix_headers(headers: &mut HeaderMap, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    drop_strong_etag(headers);
}

/// A strong validator named the upstream's bytes, not the edited ones.
fn drop_strong_etag(headers: &mut HeaderMap) {
    if headers
        .get(header::ETAG)
        .is_some_and(|e| !e.as_bytes().starts_with(b"W/"))
    {
        headers.remove(header::ETAG);
    }
}
