//! A route's edge policies: `ip`, `cors` and `auth`.

use weir_domain::auth::{CorsPolicy, IpPolicy, ProviderId, RouteAuth};
use weir_domain::net::Cidr;
use weir_domain::route::Access;

use crate::auth::roles;
use crate::checks::{duration, header_name};
use crate::model::{CorsConfig, IpConfig, RouteAuthConfig, RouteConfig};
use crate::node::KeyPath;
use crate::report::{Report, closest};
use crate::routes::methods;

/// The route's access policies; `None` when any is wrong (all reported).
pub(crate) fn build(
    cfg: &RouteConfig,
    path: &KeyPath,
    providers: &[&str],
    r: &mut Report<'_>,
) -> Option<Access> {
    let ip = match &cfg.ip {
        Some(c) => ip(c, &path.key("ip"), r).map(Some),
        None => Some(None),
    };
    let cors = match &cfg.cors {
        Some(c) => cors(c, &path.key("cors"), r).map(Some),
        None => Some(None),
    };
    let auth = match &cfg.auth {
        Some(c) => auth(c, &path.key("auth"), providers, r).map(Some),
        None => Some(None),
    };
    Some(Access {
        ip: ip?,
        cors: cors?,
        auth: auth?,
    })
}

fn ip(c: &IpConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<IpPolicy> {
    if c.allow.is_empty() && c.deny.is_empty() {
        r.at(path, "list at least one network under allow or deny");
        return None;
    }
    let mut cidrs = |key: &str, list: &[String]| -> Option<Vec<Cidr>> {
        let mut out = Some(Vec::with_capacity(list.len()));
        for (i, text) in list.iter().enumerate() {
            match (
                r.check(&path.key(key).index(i), Cidr::parse(text.trim())),
                &mut out,
            ) {
                (Some(c), Some(v)) => v.push(c),
                _ => out = None,
            }
        }
        out
    };
    let allow = cidrs("allow", &c.allow);
    let deny = cidrs("deny", &c.deny);
    Some(IpPolicy {
        allow: allow?,
        deny: deny?,
    })
}

fn cors(c: &CorsConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<CorsPolicy> {
    let before = r.issues.len();
    let at = path.key("origins");
    let wildcard = c.origins.iter().any(|o| o.trim() == "*");
    let mut origins = Vec::with_capacity(c.origins.len());
    if c.origins.is_empty() {
        r.at(
            &at,
            "list at least one origin, such as https://app.example.com, or \"*\"",
        );
    } else if wildcard && c.origins.len() > 1 {
        r.at(
            &at,
            "\"*\" allows every origin; it cannot be listed with other origins",
        );
    } else if !wildcard {
        for (i, o) in c.origins.iter().enumerate() {
            if let Some(o) = r.check(&at.index(i), origin(o))
                && !origins.contains(&o)
            {
                origins.push(o);
            }
        }
    }
    if wildcard && c.credentials {
        r.at(
            &path.key("credentials"),
            "a wildcard origin cannot be combined with credentials",
        );
    }
    let methods = methods(&c.methods, &path.key("methods"), r);
    let headers = header_list(&c.headers, &path.key("headers"), r).map(|list| {
        // `["*"]`: any request header, which is what an empty list means.
        if list == ["*"] { Vec::new() } else { list }
    });
    let expose_headers = header_list(&c.expose_headers, &path.key("expose_headers"), r);
    if c.credentials && c.expose_headers.iter().any(|h| h.trim() == "*") {
        r.at(
            &path.key("expose_headers"),
            "\"*\" exposes every header only without credentials; list the headers",
        );
    }
    let max_age = match &c.max_age {
        Some(d) => duration(r, &path.key("max_age"), d, false).map(Some),
        None => Some(None),
    };
    if r.issues.len() != before {
        return None;
    }
    Some(CorsPolicy {
        origins,
        any_origin: wildcard,
        methods: methods?,
        headers: headers?,
        expose_headers: expose_headers?,
        credentials: c.credentials,
        max_age: max_age?,
    })
}

/// `scheme://host[:port]`, as browsers send it in `Origin`: scheme and host in lower case and
/// the scheme's default port left out, so that the comparison can be exact.
fn origin(text: &str) -> Result<String, String> {
    let t = text.trim();
    let shape = || {
        format!(
            "\"{t}\" is not an origin: write scheme://host[:port], such as https://app.example.com"
        )
    };
    let (scheme, rest) = t.split_once("://").ok_or_else(shape)?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok || rest.is_empty() {
        return Err(shape());
    }
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "\"{t}\" is not an origin: an origin has no path, query or trailing slash"
        ));
    }
    if rest.contains('@') {
        return Err(format!("\"{t}\" is not an origin: it cannot hold a user"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("\"{t}\" has a bad port"))?;
            (h, Some(port))
        }
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c));
    if !host_ok {
        return Err(format!(
            "\"{t}\" is not an origin: \"{host}\" is not a host name"
        ));
    }
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    let host = host.to_ascii_lowercase();
    Ok(match port {
        Some(p) if Some(p) != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Header names in lower case, without repeats.
fn header_list(list: &[String], path: &KeyPath, r: &mut Report<'_>) -> Option<Vec<String>> {
    let mut out = Some(Vec::with_capacity(list.len()));
    let star = list.iter().any(|h| h.trim() == "*");
    if star && list.len() > 1 {
        r.at(path, "\"*\" cannot be listed with other headers");
        return None;
    }
    for (i, name) in list.iter().enumerate() {
        let name = name.trim();
        match (r.check(&path.index(i), header_name(name)), &mut out) {
            (Some(()), Some(v)) => {
                let lower = name.to_ascii_lowercase();
                if !v.contains(&lower) {
                    v.push(lower);
                }
            }
            _ => out = None,
        }
    }
    out
}

fn auth(
    c: &RouteAuthConfig,
    path: &KeyPath,
    names: &[&str],
    r: &mut Report<'_>,
) -> Option<RouteAuth> {
    let at = path.key("providers");
    let mut providers = Some(Vec::with_capacity(c.providers.len()));
    if c.providers.is_empty() {
        r.at(&at, "list at least one provider of auth.providers");
        providers = None;
    }
    let mut seen = Vec::with_capacity(c.providers.len());
    for (i, name) in c.providers.iter().enumerate() {
        let name = name.trim();
        let found = match names.iter().position(|n| *n == name) {
            Some(id) if seen.contains(&id) => Err(format!("provider \"{name}\" is listed twice")),
            Some(id) => {
                seen.push(id);
                Ok(ProviderId(id))
            }
            None => {
                let mut message = format!("unknown provider \"{name}\"");
                if names.is_empty() {
                    message.push_str(" (no providers are defined under auth.providers)");
                } else if let Some(near) = closest(name, names.iter().copied()) {
                    message.push_str(&format!("; did you mean \"{near}\"?"));
                }
                Err(message)
            }
        };
        match (r.check(&at.index(i), found), &mut providers) {
            (Some(id), Some(v)) => v.push(id),
            _ => providers = None,
        }
    }
    let roles = roles(&c.roles, &path.key("roles"), r);
    Some(RouteAuth {
        providers: providers?,
        roles: roles?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalized_like_browsers_send_them() {
        assert_eq!(
            origin("https://App.Example.com").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            origin("https://app.example.com:443").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            origin("http://localhost:3000").unwrap(),
            "http://localhost:3000"
        );
        assert_eq!(origin("http://[::1]:8080").unwrap(), "http://[::1]:8080");
        assert_eq!(origin("http://[::1]").unwrap(), "http://[::1]");
        assert!(
            origin("https://app.example.com/")
                .unwrap_err()
                .contains("no path")
        );
        assert!(origin("app.example.com").unwrap_err().contains("scheme://"));
        assert!(origin("https://").is_err());
        assert!(origin("https://a:0").unwrap_err().contains("bad port"));
        assert!(origin("https://u@a").is_err());
        assert!(origin("https://a b").is_err());
    }
}
