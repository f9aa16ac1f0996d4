//! The admin API (contract §6), on its own listener, separate from traffic.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use weir_domain::route::{PathPattern, RouteAction};
use weir_infra::metrics::{family, label, render_routes};

use crate::reload::{Control, ReloadError};
use crate::server::Shared;

/// The admin routes; with a token, every call needs `Authorization: Bearer <token>`.
pub fn router(shared: &Arc<Shared>, control: &Arc<Control>, token: Option<String>) -> Router {
    let control = Arc::clone(control);
    let app = Router::new()
        .route(
            "/reload",
            post(move || {
                let control = Arc::clone(&control);
                async move { reload(&control).await }
            }),
        )
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route("/routes", get(routes))
        .route("/upstreams", get(upstreams))
        .route("/cache/purge", post(purge))
        .with_state(Arc::clone(shared));
    match token {
        Some(t) => app.layer(middleware::from_fn_with_state(Arc::new(t), require_token)),
        None => app,
    }
}

async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        return next.run(req).await;
    }
    let mut resp = problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the admin API needs Authorization: Bearer <admin.token>",
        None,
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"weir-admin\""),
    );
    resp
}

/// A problem+json answer of the admin API.
fn problem(status: StatusCode, code: &str, detail: &str, extra: Option<(&str, Value)>) -> Response {
    let request_id = weir_app::request_id::generate();
    let mut body = json!({
        "type": format!("https://weir.dev/errors/{code}"),
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
        "request_id": String::from_utf8_lossy(request_id.as_bytes()),
    });
    if let (Some((k, v)), Some(map)) = (extra, body.as_object_mut()) {
        map.insert(k.to_owned(), v);
    }
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp.headers_mut().insert("x-request-id", request_id);
    resp
}

/// `POST /reload`: 200 with the running version, or 422 with the problems `weir validate`
/// prints (the running configuration stays).
async fn reload(control: &Control) -> Response {
    match control.reload().await {
        Ok(version) => axum::Json(json!({"version": version})).into_response(),
        Err(ReloadError::Problems(problems)) => {
            let list: Vec<Value> = problems
                .0
                .iter()
                .map(|p| {
                    json!({
                        "file": p.file, "line": p.line, "col": p.col,
                        "path": p.path, "message": p.message,
                        "text": p.to_string(),
                    })
                })
                .collect();
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                &format!(
                    "the configuration has {} problem(s); the running one stays",
                    list.len()
                ),
                Some(("problems", Value::Array(list))),
            )
        }
        Err(e @ ReloadError::Build(_)) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            &e.to_string(),
            None,
        ),
        Err(e @ ReloadError::NoSource) => problem(
            StatusCode::CONFLICT,
            "reload_unavailable",
            &e.to_string(),
            None,
        ),
    }
}

/// `POST /cache/purge` with `{"route": NAME}` or `{"prefix": "/path"}`: removes the matching
/// entries from the memory store and from Redis.
async fn purge(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let bad = |detail: &str| problem(StatusCode::BAD_REQUEST, "bad_request", detail, None);
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&body) else {
        return bad("the body must be a JSON object: {\"route\": NAME} or {\"prefix\": \"/path\"}");
    };
    let route = map.get("route").and_then(Value::as_str);
    let prefix = map.get("prefix").and_then(Value::as_str);
    if map.len() != 1 || route.is_none() == prefix.is_none() {
        return bad("give exactly one of \"route\" (a route name) and \"prefix\" (a path prefix)");
    }
    let snap = shared.snapshot.load_full();
    let what = match (route, prefix) {
        (Some(r), _) => {
            if !snap.route_names.iter().any(|n| &**n == r) {
                return bad(&format!("no route is named {r:?}"));
            }
            weir_infra::cache::Purge::Route(r.to_owned())
        }
        (_, Some(p)) if p.starts_with('/') => weir_infra::cache::Purge::Prefix(p.to_owned()),
        _ => return bad("a prefix is a path: it starts with /"),
    };
    let purged = snap.gateway.cache.purge(&what).await;
    match purged.redis {
        Some(Err(e)) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "cache_store_unavailable",
            &format!(
                "purged {} entries from memory, but Redis could not be purged: {e}",
                purged.memory
            ),
            Some(("purged", json!(purged.memory))),
        ),
        Some(Ok(n)) => axum::Json(json!({"purged": purged.memory + n})).into_response(),
        None => axum::Json(json!({"purged": purged.memory})).into_response(),
    }
}

fn render_cache(
    out: &mut String,
    stores: &weir_infra::cache::CacheStores<Arc<weir_app::cache::Entry>>,
) {
    let memory = stores.memory();
    family(
        out,
        "weir_cache_memory_bytes",
        "gauge",
        "Bytes held by the memory cache store (its bound is limits.max_cache_bytes).",
    );
    let _ = writeln!(out, "weir_cache_memory_bytes {}", memory.bytes());
    family(
        out,
        "weir_cache_memory_entries",
        "gauge",
        "Responses held by the memory cache store.",
    );
    let _ = writeln!(out, "weir_cache_memory_entries {}", memory.entries());
    if let Some(up) = stores.redis_healthy() {
        family(
            out,
            "weir_cache_redis_up",
            "gauge",
            "1 while the Redis cache store answers; 0 while cached routes bypass it.",
        );
        let _ = writeln!(out, "weir_cache_redis_up {}", u8::from(up));
    }
}

/// Compares without an early exit, so response timing does not reveal a token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready.load(Ordering::Relaxed) {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not ready"})),
        )
            .into_response()
    }
}

async fn config(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    let snap = shared.snapshot.load();
    let loaded_at = snap
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    axum::Json(json!({"version": snap.version, "loaded_at": loaded_at, "config": snap.effective}))
}

async fn routes(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    let snap = shared.snapshot.load();
    let gw = &snap.gateway;
    let list: Vec<Value> = gw
        .routes
        .routes_in_match_order()
        .into_iter()
        .map(|r| {
            let m = &r.matcher;
            let action = match &r.action {
                RouteAction::Upstream(id) => json!({"upstream": gw.upstreams[id.0].name}),
                RouteAction::Respond(s) => json!({"respond": {"status": s.status}}),
            };
            json!({
                "name": r.name,
                "match": {
                    "host": m.host.as_ref().map(ToString::to_string),
                    "kind": m.path.kind(),
                    "path": path_source(&m.path),
                    "methods": m.methods.names().collect::<Vec<_>>(),
                    "headers": m.headers.iter().map(|h| json!({"name": h.name, "value": h.value})).collect::<Vec<_>>(),
                },
                "priority": r.priority,
                "action": action,
                "timeout_ms": r.timeout.map(|t| t.as_millis() as u64),
                "max_body_bytes": r.max_body_bytes.unwrap_or(gw.max_body_bytes),
                "pipeline": crate::explain::pipeline_steps(gw, r),
            })
        })
        .collect();
    axum::Json(json!({"routes": list}))
}

fn path_source(p: &PathPattern) -> String {
    match p {
        PathPattern::Exact(s) | PathPattern::Prefix(s) => s.clone(),
        PathPattern::Template(t) => t.source.clone(),
        PathPattern::Regex(r) => r.as_str().to_owned(),
    }
}

async fn upstreams(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(crate::upstream_view::json(&shared.snapshot.load()))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let snap = shared.snapshot.load();
    let mut out = String::with_capacity(16 * 1024);
    let routes = snap
        .route_names
        .iter()
        .map(AsRef::as_ref)
        .zip(snap.route_metrics.iter().map(AsRef::as_ref))
        .chain(std::iter::once(("", &*snap.unmatched_metrics)));
    render_routes(&mut out, routes);
    crate::upstream_view::render_metrics(&mut out, &snap);
    render_cache(&mut out, &snap.gateway.cache.0);
    family(
        &mut out,
        "weir_connections_active",
        "gauge",
        "Open client connections, by listener.",
    );
    for l in shared.listeners.load().iter() {
        let _ = writeln!(
            out,
            "weir_connections_active{{listener=\"{}\"}} {}",
            label(&l.name.load()),
            l.active.load(Ordering::Relaxed)
        );
    }
    family(
        &mut out,
        "weir_config_reloads_total",
        "counter",
        "Configuration reloads, by result.",
    );
    for (i, result) in ["success", "failure"].iter().enumerate() {
        let _ = writeln!(
            out,
            "weir_config_reloads_total{{result=\"{result}\"}} {}",
            shared.reloads[i].load(Ordering::Relaxed)
        );
    }
    if let Some(log) = &snap.access_log {
        family(
            &mut out,
            "weir_access_log_dropped_total",
            "counter",
            "Access-log lines dropped because the writer fell behind.",
        );
        let _ = writeln!(out, "weir_access_log_dropped_total {}", log.dropped());
    }
    family(
        &mut out,
        "weir_build_info",
        "gauge",
        "Always 1; the labels describe the build.",
    );
    let _ = writeln!(
        out,
        "weir_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secreT", b"secret"));
        assert!(!super::constant_time_eq(b"", b"secret"));
        assert!(!super::constant_time_eq(b"secret2", b"secret"));
    }
}
