//! The edge of one request: take the snapshot, run the pipeline, turn its outcome (or
//! error) into the response, and arrange for metrics and the access log when it is done.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use http::header;
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use weir_app::headers::{X_REQUEST_ID, is_upgrade, remove_hop_by_hop};
use weir_app::pipeline::{ConnInfo, Exchange, Outcome};
use weir_app::request_id;
use weir_domain::framing::Ambiguity;
use weir_infra::metrics::method_index;

use crate::body::{Body, CountingBody, Finish, LogParts};
use crate::server::{ConnSlot, Shared};
use crate::{grpc, problem};

/// Handles one request. Never fails: every error is already a response. `refused` is the
/// framing guard's verdict on this request's head (see `weir_domain::framing`).
pub async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    conn: &ConnInfo,
    refused: Option<Ambiguity>,
    slot: &Arc<ConnSlot>,
) -> Response<Body> {
    let start = Instant::now();
    let snapshot = shared.snapshot.load_full();
    let method_index = method_index(req.method());
    let grpc_client = grpc::Client::of(req.headers());
    let head_request = req.method() == http::Method::HEAD;
    // Every error in the form the client reads.
    let fail = |err: &weir_app::GatewayError, request_id: &http::HeaderValue| match grpc_client {
        Some(client) => grpc::error_response(err, client),
        None => problem::response(err, request_id),
    };
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if request_id::is_well_formed(v) => v.clone(),
        _ => request_id::generate(),
    };
    if let Some(challenges) = &snapshot.challenges
        && !conn.tls
        && let Some(answer) = crate::acme::http01(challenges, req.uri().path())
    {
        return answer;
    }
    let mut exchange = Exchange::new(request_id, conn.peer_ip);
    let mut req = req;
    let trace = snapshot.tracer.as_ref().map(|t| t.begin(&mut req, start));
    if trace.as_ref().is_some_and(|t| t.sampled) {
        exchange.phases = Some(Box::default());
    }
    let log = snapshot.access_log.as_ref().map(|_| LogParts {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        user_agent: req.headers().get(header::USER_AGENT).cloned(),
        bytes_in: Arc::new(AtomicU64::new(0)),
    });
    // A body weir answers without reading makes the connection unusable for a next request;
    // say so, so clients do not send one on it.
    let client_version = req.version();
    let http1_with_body = client_version <= Version::HTTP_11 && !req.body().is_end_stream();
    let mut req = req.map(|b| CountingBody::new(b, log.as_ref().map(|l| Arc::clone(&l.bytes_in))));
    let asked_upgrade = req.headers().contains_key(header::UPGRADE);
    // The client side of a WebSocket switch must be claimed before the request is consumed.
    let client_upgrade = (req.version() == Version::HTTP_11 && is_upgrade(req.headers()))
        .then(|| hyper::upgrade::on(&mut req));

    let result = match refused {
        // Nothing of an ambiguous request is forwarded.
        Some(why) => Err(weir_app::GatewayError::new(
            weir_domain::ErrorKind::BadRequest,
            why.describe(),
        )),
        None => snapshot.gateway.handle(req, conn, &mut exchange).await,
    };
    let answered_by_weir = !matches!(result, Ok(Outcome::Proxied(..)));
    let mut switched = false;
    let mut in_flight = None;
    let mut response = match result {
        Ok(Outcome::Proxied(mut resp, guard)) => {
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            switched = switching;
            match (switching, client_upgrade) {
                (true, None) => {
                    // An upstream may not switch protocols the client did not ask for.
                    let err = weir_app::GatewayError::new(
                        weir_domain::ErrorKind::BadGateway,
                        "the upstream switched protocols unasked",
                    );
                    fail(&err, &exchange.request_id)
                }
                (switching, client) => {
                    if let Some(client) = client.filter(|_| switching) {
                        crate::tunnel::spawn(
                            client,
                            hyper::upgrade::on(&mut resp),
                            Arc::clone(slot),
                            snapshot.settings.limits.idle_timeout,
                        );
                    }
                    remove_hop_by_hop(resp.headers_mut(), switching);
                    snapshot
                        .gateway
                        .transform_response(&exchange, resp.headers_mut());
                    // The status line speaks the client's HTTP version, not the upstream's:
                    // an HTTP/1.0 upstream must not turn a keep-alive client into a closing one.
                    *resp.version_mut() = client_version;
                    in_flight = Some(guard);
                    if let Some(client) = grpc_client
                        && let Some(err) = grpc::upstream_failure(&resp)
                    {
                        // An HTTP error from something that is not a gRPC server (a proxy,
                        // a wrong port): the client still gets a gRPC status.
                        grpc::error_response(&err, client)
                    } else {
                        let resp = resp.map(Body::upstream);
                        match exchange.route {
                            Some(r) => {
                                snapshot.bodies[r]
                                    .respond(resp, &exchange, head_request)
                                    .await
                            }
                            None => resp,
                        }
                    }
                }
            }
        }
        Ok(Outcome::Respond(i)) => reply(snapshot.replies[i].as_ref()),
        Ok(Outcome::Fallback(i)) => reply(snapshot.fallbacks[i].as_ref()),
        Ok(Outcome::Cached(mut cached)) => {
            if let Some(refresh) = cached.refresh.take() {
                let gateway = Arc::clone(&snapshot.gateway);
                tokio::spawn(async move {
                    gateway.revalidate::<CountingBody<Incoming>>(refresh).await;
                });
            }
            let (status, mut headers) = cached.head(weir_app::cache::unix_ms());
            let body = match exchange
                .route
                .and_then(|r| snapshot.bodies[r].response_json.as_ref())
            {
                Some(json) => {
                    // A HEAD's headers describe the GET's edited body: edit it, send none.
                    let (stored, head_only) = cached.stored_body();
                    json.edit_full(status, &mut headers, stored, false)
                        .map(|b| if head_only { Bytes::new() } else { b })
                }
                None => Ok(cached.body()),
            };
            match body {
                Ok(body) => {
                    let mut resp = Response::new(Body::full(body));
                    *resp.status_mut() = status;
                    *resp.headers_mut() = headers;
                    snapshot
                        .gateway
                        .transform_response(&exchange, resp.headers_mut());
                    resp
                }
                Err(err) => fail(&err, &exchange.request_id),
            }
        }
        Ok(Outcome::Preflight(headers)) => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            *resp.headers_mut() = headers;
            snapshot
                .gateway
                .transform_response(&exchange, resp.headers_mut());
            resp
        }
        Err(err) => fail(&err, &exchange.request_id),
    };
    snapshot
        .gateway
        .decorate(&mut exchange, response.headers_mut());
    // A malformed request ends its connection: what follows it on the wire is in doubt. So
    // does an upgrade that did not happen, since the framing guard stopped reading there.
    let malformed = answered_by_weir && response.status() == StatusCode::BAD_REQUEST;
    let unswitched = asked_upgrade && !switched;
    if client_version <= Version::HTTP_11
        && (malformed || unswitched || (answered_by_weir && http1_with_body))
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    response
        .headers_mut()
        .insert(&X_REQUEST_ID, exchange.request_id.clone());
    let status = response.status().as_u16();
    let finish = Finish {
        snapshot,
        start,
        method_index,
        status,
        exchange,
        in_flight,
        log,
        trace,
    };
    response.body_mut().set_finish(Box::new(finish));
    response
}

/// A prebuilt static response (`respond:` or a static `fallback`).
fn reply(prebuilt: Option<&crate::snapshot::StaticReply>) -> Response<Body> {
    match prebuilt {
        Some(reply) => {
            let mut resp = Response::new(Body::full(reply.body.clone()));
            *resp.status_mut() = reply.status;
            *resp.headers_mut() = reply.headers.clone();
            resp
        }
        None => Response::new(Body::empty()),
    }
}
