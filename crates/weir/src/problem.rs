//! The one place errors become responses: the contract's problem+json (RFC 9457).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use weir_app::GatewayError;

use crate::body::Body;

/// Renders an error. `detail` is written as given: phases never put secrets or internal
/// addresses in it.
#[must_use]
pub fn response(err: &GatewayError, request_id: &HeaderValue) -> Response<Body> {
    let kind = err.kind;
    let body = serde_json::json!({
        "type": format!("https://weir.dev/errors/{}", kind.code()),
        "title": kind.title(),
        "status": kind.status(),
        "detail": err.detail,
        "code": kind.code(),
        "request_id": String::from_utf8_lossy(request_id.as_bytes()),
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut resp = Response::new(Body::full(bytes));
    *resp.status_mut() =
        StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for challenge in err.challenges.iter().flat_map(|c| c.iter()) {
        h.append(header::WWW_AUTHENTICATE, challenge.clone());
    }
    if let Some(secs) = err.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(allow) = err.allow {
        let list = allow.names().collect::<Vec<_>>().join(", ");
        if let Ok(v) = HeaderValue::from_str(&list) {
            h.insert(header::ALLOW, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use weir_domain::ErrorKind;
    use weir_domain::route::MethodSet;

    use super::*;

    #[tokio::test]
    async fn every_kind_renders_the_contract_shape() {
        for kind in ErrorKind::ALL {
            let err = GatewayError::new(kind, "why \"quoted\"");
            let resp = response(&err, &HeaderValue::from_static("01ID"));
            assert_eq!(resp.status().as_u16(), kind.status());
            assert_eq!(
                resp.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["code"], kind.code());
            assert_eq!(v["status"], kind.status());
            assert_eq!(
                v["type"],
                format!("https://weir.dev/errors/{}", kind.code())
            );
            assert_eq!(v["detail"], "why \"quoted\"");
            assert_eq!(v["request_id"], "01ID");
        }
        let resp = response(
            &GatewayError::method_not_allowed(MethodSet::from_names(["GET", "PUT"]).unwrap()),
            &HeaderValue::from_static("x"),
        );
        assert_eq!(resp.headers()[header::ALLOW], "GET, PUT");
    }
}
