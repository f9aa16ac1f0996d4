//! The key a response is stored under: the route, the host, the normalized path, the query
//! with its parameters sorted, and the values of the route's `vary` headers (and the
//! consumer, on `per_consumer` routes). Nothing else of the request is in it, and nothing
//! else of the request can change what is served: a header that is not in the key never
//! reaches a stored response's lookup (no poisoning through unkeyed headers).
//!
//! GET and HEAD share keys: a HEAD is answered from a stored GET.

use http::HeaderMap;

/// Separates the parts of a key; no host, path or header value carries it.
const PART: char = '\u{1f}';
/// Separates the `vary` values inside the last part.
const ITEM: char = '\u{1e}';

/// A cache key, with where its parts are, for purging by route or path prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    text: String,
    /// End of the route name.
    route_end: usize,
    /// Start and end of the path (without the query).
    path_start: usize,
    path_end: usize,
}

impl CacheKey {
    /// The key of a request to `route`, for `host` (lower case, without port), the
    /// normalized `path` and the raw `query`; `vary` are the route's header names (lower
    /// case), their values read from `headers`.
    #[must_use]
    pub fn new(
        route: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
        vary: &[String],
        headers: &HeaderMap,
        consumer: Option<&str>,
    ) -> Self {
        let mut text = String::with_capacity(
            route.len() + host.len() + path.len() + query.map_or(0, str::len) + 16,
        );
        text.push_str(route);
        let route_end = text.len();
        text.push(PART);
        text.extend(host.chars().map(|c| c.to_ascii_lowercase()));
        text.push(PART);
        let path_start = text.len();
        text.push_str(path);
        let path_end = text.len();
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            text.push('?');
            let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            // Order does not change what a query means to the cache: `?a=1&b=2` and
            // `?b=2&a=1` are one entry. The sort is stable, so repeated names keep their order.
            params.sort_by(|a, b| name(a).cmp(name(b)));
            for (i, p) in params.iter().enumerate() {
                if i > 0 {
                    text.push('&');
                }
                text.push_str(p);
            }
        }
        text.push(PART);
        for name in vary {
            text.push_str(name);
            text.push('=');
            for (i, v) in headers.get_all(name.as_str()).iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            text.push(ITEM);
        }
        if let Some(c) = consumer {
            text.push_str("@consumer=");
            text.push_str(c);
        }
        Self {
            text,
            route_end,
            path_start,
            path_end,
        }
    }

    /// The whole key, as a store's key.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The route's name.
    #[must_use]
    pub fn route(&self) -> &str {
        &self.text[..self.route_end]
    }

    /// The normalized path, without the query.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.text[self.path_start..self.path_end]
    }

    /// Rebuilds a key from [`Self::as_str`] (a store's key read back, for purging); `None`
    /// when it is not one.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let route_end = text.find(PART)?;
        let host_end = route_end + 1 + text[route_end + 1..].find(PART)?;
        let path_start = host_end + 1;
        let rest = &text[path_start..];
        let path_len = rest.find(['?', PART])?;
        Some(Self {
            text: text.to_owned(),
            route_end,
            path_start,
            path_end: path_start + path_len,
        })
    }
}

/// The name of `name=value` (or the whole parameter without `=`).
fn name(param: &str) -> &str {
    param.split_once('=').map_or(param, |(n, _)| n)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn key(query: Option<&str>, headers: &HeaderMap, consumer: Option<&str>) -> CacheKey {
        let vary = vec!["accept".to_owned(), "accept-language".to_owned()];
        CacheKey::new(
            "orders",
            "API.example.com",
            "/v2/orders",
            query,
            &vary,
            headers,
            consumer,
        )
    }

    #[test]
    fn parts_and_order() {
        let h = HeaderMap::new();
        let k = key(Some("b=2&a=1&&a=0"), &h, None);
        assert_eq!(k.route(), "orders");
        assert_eq!(k.path(), "/v2/orders");
        assert!(k.as_str().contains("api.example.com"));
        assert!(k.as_str().contains("/v2/orders?a=1&a=0&b=2"));
        assert_eq!(k, key(Some("a=1&b=2&a=0"), &h, None));
        assert_eq!(CacheKey::parse(k.as_str()), Some(k.clone()));
        let bare = key(None, &h, None);
        assert_eq!(CacheKey::parse(bare.as_str()), Some(bare.clone()));
        assert_eq!(bare.path(), "/v2/orders");
        assert_eq!(CacheKey::parse("nothing"), None);
    }

    #[test]
    fn vary_values_and_consumer_are_keyed_and_nothing_else() {
        let mut json = HeaderMap::new();
        json.insert("accept", HeaderValue::from_static("application/json"));
        let mut xml = json.clone();
        xml.insert("accept", HeaderValue::from_static("application/xml"));
        assert_ne!(key(None, &json, None), key(None, &xml, None));
        let mut poisoned = json.clone();
        poisoned.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        assert_eq!(key(None, &json, None), key(None, &poisoned, None));
        assert_ne!(key(None, &json, Some("a")), key(None, &json, Some("b")));
        assert_ne!(key(None, &json, Some("a")), key(None, &json, None));
    }
}
