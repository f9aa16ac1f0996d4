//! Checking identity providers and consumers, and building the domain's `AuthSettings`.
//!
//! A JWT provider's `public_key_file` and an identity provider's `ca_file` are read here, at
//! load time, so a missing or wrong file is a validation problem, not a failure of every
//! request. Nothing touches the network: a JWKS or an introspection endpoint is only checked
//! to be a usable URL (see [`crate::idp`]).

use std::path::Path;

use serde_json::Value;
use weir_domain::auth::{
    Algorithm, ApiKey, ApiKeySpec, AuthSettings, BasicCredential, BasicSpec, Consumer,
    IntrospectionSpec, JwtKey, JwtSpec, KeyFamily, Provider, ProviderKind, Secret,
};

use crate::checks::{duration, header_name, header_value};
use crate::idp;
use crate::model::{AuthConfig, ConsumerConfig, PROVIDER_TYPES, ProviderConfig};
use crate::node::KeyPath;
use crate::pem::{self, Curve};
use crate::report::{Report, closest};

/// An HMAC key shorter than its hash output makes HS256 tokens guessable offline.
const MIN_HMAC_SECRET: usize = 32;

/// One entry per provider of the file, in order (their `ProviderId`s); `None` where it has
/// problems (all reported). `dir` is where a relative `public_key_file` is found.
pub(crate) fn providers(cfg: &AuthConfig, dir: &Path, r: &mut Report<'_>) -> Vec<Option<Provider>> {
    let list = KeyPath::root().key("auth").key("providers");
    cfg.providers
        .iter()
        .map(|(name, p)| {
            let path = list.key(name);
            if name.trim().is_empty() {
                r.at_key(&path, "a provider needs a non-empty name");
                return None;
            }
            let kind = provider(p.as_ref()?, &path, dir, r)?;
            Some(Provider {
                name: name.clone(),
                kind,
            })
        })
        .collect()
}

fn provider(
    p: &ProviderConfig,
    path: &KeyPath,
    dir: &Path,
    r: &mut Report<'_>,
) -> Option<ProviderKind> {
    let kind = p.kind.trim();
    if !PROVIDER_TYPES.contains(&kind) {
        let mut message = format!("\"{kind}\" is not one of {}", PROVIDER_TYPES.join(", "));
        if let Some(near) = closest(kind, PROVIDER_TYPES.into_iter()) {
            message.push_str(&format!("; did you mean \"{near}\"?"));
        }
        r.at(&path.key("type"), message);
        return None;
    }
    let before = r.issues.len();
    for (key, set, types) in p.keys() {
        if set && !types.contains(&kind) {
            let plural = if types.len() > 1 { "s" } else { "" };
            r.at_key(
                &path.key(key),
                format!(
                    "`{key}` applies to type{plural} {}, not {kind}",
                    types.join(" and ")
                ),
            );
        }
    }
    let built = match kind {
        "api_key" => api_key(p, path, r).map(ProviderKind::ApiKey),
        "basic" => basic(p, path, r).map(ProviderKind::Basic),
        "jwt" => jwt(p, path, dir, r).map(ProviderKind::Jwt),
        _ => oauth2(p, path, dir, r).map(ProviderKind::OAuth2),
    };
    if r.issues.len() != before {
        return None;
    }
    built
}

fn api_key(p: &ProviderConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<ApiKeySpec> {
    let header = match p.api_key_header().map(str::trim) {
        Some(h) => r
            .check(&path.key("header"), header_name(h))
            .map(|()| Some(h.to_ascii_lowercase())),
        None => Some(None),
    };
    let query = match p.query.as_deref().map(str::trim) {
        Some(q) => r
            .check(&path.key("query"), query_name(q))
            .map(|()| Some(q.to_owned())),
        None => Some(None),
    };
    Some(ApiKeySpec {
        header: header?,
        query: query?,
    })
}

/// A query parameter name weir can find without decoding: unreserved URL characters.
fn query_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not a query parameter name (letters, digits, -, ., _ and ~)"
        ))
    }
}

fn basic(p: &ProviderConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<BasicSpec> {
    let realm = p.realm();
    // It is sent as `WWW-Authenticate: Basic realm="..."`: a quoted string in a header.
    let ok = header_value(realm).is_ok() && !realm.contains(['"', '\\', '\t']);
    if !ok {
        r.at(
            &path.key("realm"),
            "a realm may hold only visible ASCII characters and spaces, without \" or \\",
        );
        return None;
    }
    Some(BasicSpec {
        realm: realm.to_owned(),
    })
}

/// Where a JWT provider's keys come from, for checking which algorithms fit.
#[derive(Clone, Copy)]
enum Source {
    Secret,
    File(KeyFamily, Option<Curve>),
    Jwks,
}

fn jwt(p: &ProviderConfig, path: &KeyPath, dir: &Path, r: &mut Report<'_>) -> Option<JwtSpec> {
    let given: Vec<&str> = [
        ("secret", p.secret.is_some()),
        ("public_key_file", p.public_key_file.is_some()),
        ("jwks_url", p.jwks_url.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    // The source is known from the key given, even when its value has a problem, so the
    // algorithms are checked against it in the same run.
    let (key, source) = match (given.as_slice(), &p.secret, &p.public_key_file, &p.jwks_url) {
        (["secret"], Some(secret), _, _) => {
            let key = if secret.len() < MIN_HMAC_SECRET {
                r.at(
                    &path.key("secret"),
                    format!("an HMAC secret needs at least {MIN_HMAC_SECRET} bytes"),
                );
                None
            } else {
                Some(JwtKey::Secret(Secret::new(secret.clone())))
            };
            (key, Some(Source::Secret))
        }
        (["public_key_file"], _, Some(file), _) => {
            match public_key_file(file, &path.key("public_key_file"), dir, r) {
                Some((key, source)) => (Some(key), Some(source)),
                None => (None, None),
            }
        }
        (["jwks_url"], _, _, Some(url)) => {
            let url = r.check(&path.key("jwks_url"), idp::url(url, idp::JWKS_EXAMPLE));
            let ca_pem = idp::ca_file(p, url.as_deref(), path, dir, r);
            let refresh = duration(r, &path.key("jwks_refresh"), &p.jwks_refresh(), true);
            let key = match (url, refresh, ca_pem) {
                (Some(url), Some(refresh), Some(ca_pem)) => Some(JwtKey::Jwks {
                    url,
                    refresh,
                    ca_pem,
                }),
                _ => None,
            };
            (key, Some(Source::Jwks))
        }
        ([], ..) => {
            r.at(
                path,
                "a jwt provider needs one of secret, public_key_file and jwks_url",
            );
            (None, None)
        }
        _ => {
            r.at(
                path,
                format!(
                    "use only one of secret, public_key_file and jwks_url (found {})",
                    given.join(", ")
                ),
            );
            (None, None)
        }
    };
    if p.jwks_url.is_none() {
        for (key, set) in [
            ("jwks_refresh", p.jwks_refresh.is_some()),
            ("ca_file", p.ca_file.is_some()),
        ] {
            if set {
                r.at_key(
                    &path.key(key),
                    format!("`{key}` applies only with jwks_url"),
                );
            }
        }
    }
    let algorithms = algorithms(p, path, source, r);
    let issuer = match &p.issuer {
        Some(i) => not_empty(r, &path.key("issuer"), i, "an issuer").map(Some),
        None => Some(None),
    };
    let mut audiences = Some(Vec::new());
    for (i, a) in p.audiences.iter().flatten().enumerate() {
        let at = path.key("audiences").index(i);
        match (not_empty(r, &at, a, "an audience"), &mut audiences) {
            (Some(a), Some(list)) => list.push(a),
            _ => audiences = None,
        }
    }
    let roles_claim = roles_claim(p, path, r);
    let leeway = duration(r, &path.key("leeway"), &p.leeway(), false);
    let timeout = duration(r, &path.key("timeout"), &p.timeout(), true);
    Some(JwtSpec {
        key: key?,
        algorithms: algorithms?,
        issuer: issuer?,
        audiences: audiences?,
        roles_claim: roles_claim?,
        leeway: leeway?,
        timeout: timeout?,
    })
}

/// Reads and sniffs the key file, relative to the config file's directory.
fn public_key_file(
    file: &str,
    path: &KeyPath,
    dir: &Path,
    r: &mut Report<'_>,
) -> Option<(JwtKey, Source)> {
    let hint = "a PEM public key is a few hundred bytes";
    let (bytes, shown) = idp::read(file, path, dir, MAX_KEY_FILE, hint, r)?;
    let key = r.check(path, pem::public_key(&bytes))?;
    Some((
        JwtKey::PublicKey {
            path: shown,
            pem: key.pem,
            family: key.family,
        },
        Source::File(key.family, key.curve),
    ))
}

/// A key file larger than this is not a key (and `/dev/zero` must not hang a reload).
const MAX_KEY_FILE: u64 = 64 * 1024;

fn family_needs(family: KeyFamily) -> &'static str {
    match family {
        KeyFamily::Hmac => "an HMAC secret",
        KeyFamily::Rsa => "an RSA key",
        KeyFamily::Ec => "an EC key",
        KeyFamily::Ed => "an Ed25519 key",
    }
}

/// The written algorithms, each checked against the key; or the key's default.
fn algorithms(
    p: &ProviderConfig,
    path: &KeyPath,
    source: Option<Source>,
    r: &mut Report<'_>,
) -> Option<Vec<Algorithm>> {
    let at = path.key("algorithms");
    let Some(written) = &p.algorithms else {
        return Some(vec![match source? {
            Source::Secret => Algorithm::HS256,
            Source::File(KeyFamily::Rsa, _) | Source::Jwks => Algorithm::RS256,
            Source::File(KeyFamily::Ec, Some(Curve::P384)) => Algorithm::ES384,
            Source::File(KeyFamily::Ec, _) => Algorithm::ES256,
            Source::File(KeyFamily::Ed, _) => Algorithm::EdDSA,
            // Never sniffed from a file.
            Source::File(KeyFamily::Hmac, _) => Algorithm::HS256,
        }]);
    };
    if written.is_empty() {
        r.at(
            &at,
            "list at least one algorithm, or leave `algorithms` out for the key's default",
        );
        return None;
    }
    let mut out = Some(Vec::with_capacity(written.len()));
    let mut seen = Vec::with_capacity(written.len());
    for (i, name) in written.iter().enumerate() {
        let item = at.index(i);
        let name = name.trim();
        let parsed = if name.eq_ignore_ascii_case("none") {
            Err("alg none is never accepted".to_owned())
        } else {
            Algorithm::parse(name).ok_or_else(|| {
                let names = Algorithm::ALL.map(Algorithm::name);
                match closest(name, names.into_iter()) {
                    Some(near) => format!("unknown algorithm \"{name}\"; did you mean \"{near}\"?"),
                    None => format!("unknown algorithm \"{name}\" (one of {})", names.join(", ")),
                }
            })
        };
        let checked = parsed.and_then(|a| {
            if seen.contains(&a) {
                return Err(format!("{name} is listed twice"));
            }
            seen.push(a);
            match source {
                Some(s) => fits(a, s).map(|()| a),
                None => Ok(a),
            }
        });
        match (r.check(&item, checked), &mut out) {
            (Some(a), Some(list)) => list.push(a),
            _ => out = None,
        }
    }
    out
}

/// Whether a key from `source` can verify `alg`.
fn fits(alg: Algorithm, source: Source) -> Result<(), String> {
    let name = alg.name();
    let needs = family_needs(alg.family());
    match source {
        Source::Secret if alg.family() != KeyFamily::Hmac => Err(format!(
            "{name} needs {needs}; a `secret` verifies HS256, HS384 and HS512 only"
        )),
        Source::File(family, _) if alg.family() != family => Err(format!(
            "{name} needs {needs}, but public_key_file holds {}",
            family_needs(family)
        )),
        Source::File(_, Some(curve)) => {
            let wanted = match alg {
                Algorithm::ES256 => Curve::P256,
                Algorithm::ES384 => Curve::P384,
                _ => curve,
            };
            if wanted == curve {
                Ok(())
            } else {
                Err(format!(
                    "{name} needs a {} key, but public_key_file holds a {} key",
                    wanted.name(),
                    curve.name()
                ))
            }
        }
        Source::Jwks if alg.family() == KeyFamily::Hmac => Err(format!(
            "{name} needs {needs}, which a JWKS never holds; use `secret` for HMAC tokens"
        )),
        _ => Ok(()),
    }
}

fn roles_claim(p: &ProviderConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<Option<String>> {
    match &p.roles_claim {
        Some(c) => not_empty(r, &path.key("roles_claim"), c, "a claim name").map(Some),
        None => Some(None),
    }
}

fn not_empty(r: &mut Report<'_>, path: &KeyPath, value: &str, what: &str) -> Option<String> {
    let v = value.trim();
    if v.is_empty() {
        r.at(path, format!("{what} cannot be empty"));
        None
    } else {
        Some(v.to_owned())
    }
}

fn oauth2(
    p: &ProviderConfig,
    path: &KeyPath,
    dir: &Path,
    r: &mut Report<'_>,
) -> Option<IntrospectionSpec> {
    let mut required = |key: &str, value: &Option<String>| -> Option<String> {
        match value {
            Some(v) => Some(v.clone()),
            None => {
                r.at(path, format!("missing required key \"{key}\""));
                None
            }
        }
    };
    let url = required("introspection_url", &p.introspection_url);
    let client_id = required("client_id", &p.client_id);
    let client_secret = required("client_secret", &p.client_secret);
    let url = url.and_then(|u| {
        r.check(
            &path.key("introspection_url"),
            idp::url(&u, idp::INTROSPECTION_EXAMPLE),
        )
    });
    // Without a URL, whether ca_file fits is unknown; only the file is checked then.
    let ca_pem = idp::ca_file(p, url.as_deref(), path, dir, r);
    let client_id = client_id.and_then(|id| {
        let at = path.key("client_id");
        let id = not_empty(r, &at, &id, "a client_id")?;
        r.check(
            &at,
            header_value(&id).map_err(|_| {
                "a client_id may hold only visible ASCII characters and spaces".to_owned()
            }),
        )
        .map(|()| id)
    });
    let client_secret = client_secret.and_then(|s| {
        if s.is_empty() {
            r.at(&path.key("client_secret"), "client_secret cannot be empty");
            None
        } else {
            Some(Secret::new(s))
        }
    });
    let cache_ttl = duration(r, &path.key("cache_ttl"), &p.cache_ttl(), false);
    let negative_ttl = duration(r, &path.key("negative_ttl"), &p.negative_ttl(), false);
    let roles_claim = roles_claim(p, path, r);
    let timeout = duration(r, &path.key("timeout"), &p.timeout(), true);
    Some(IntrospectionSpec {
        url: url?,
        ca_pem: ca_pem?,
        client_id: client_id?,
        client_secret: client_secret?,
        cache_ttl: cache_ttl?,
        negative_ttl: negative_ttl?,
        roles_claim: roles_claim?,
        timeout: timeout?,
    })
}

/// Every consumer, or `None` when any has problems (all reported).
pub(crate) fn consumers(
    list: &[Option<ConsumerConfig>],
    r: &mut Report<'_>,
) -> Option<Vec<Consumer>> {
    let base = KeyPath::root().key("consumers");
    let mut out = Some(Vec::with_capacity(list.len()));
    let mut names: Vec<(&str, usize)> = Vec::new();
    let mut usernames: Vec<(&str, usize)> = Vec::new();
    let mut keys: Vec<(KeyRef<'_>, String)> = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let Some(c) = c else {
            out = None;
            continue;
        };
        let path = base.index(i);
        let before = r.issues.len();
        let name = c.name.as_str();
        if let Err(message) = consumer_name(name) {
            r.at(&path.key("name"), message);
        } else if let Some((_, j)) = names.iter().find(|(n, _)| *n == name) {
            r.at(
                &path.key("name"),
                format!("duplicate consumer name \"{name}\" (also consumers[{j}])"),
            );
        } else {
            names.push((name, i));
        }
        let roles = roles(&c.roles, &path.key("roles"), r);
        let mut api_keys = Vec::with_capacity(c.api_keys.len());
        for (j, key) in c.api_keys.iter().enumerate() {
            let at = path.key("api_keys").index(j);
            let Some(parsed) = r.check(&at, api_key_value(key)) else {
                continue;
            };
            let here = format!("consumers[{i}].api_keys[{j}]");
            if let Some((_, other)) = keys.iter().find(|(k, _)| *k == parsed) {
                // Which consumer would a request with this key be? Never print the key.
                r.at(&at, format!("this API key is also {other}"));
                continue;
            }
            keys.push((parsed, here));
            api_keys.push(match parsed {
                KeyRef::Plain(k) => ApiKey::Plain(Secret::new(k.to_owned())),
                KeyRef::Sha256(digest) => ApiKey::Sha256(digest),
            });
        }
        let basic = c.basic.as_ref().map(|b| {
            let at = path.key("basic");
            let user = b.username.as_str();
            if let Err(message) = username(user) {
                r.at(&at.key("username"), message);
            } else if let Some((_, j)) = usernames.iter().find(|(u, _)| *u == user) {
                r.at(
                    &at.key("username"),
                    format!("duplicate username \"{user}\" (also consumers[{j}].basic)"),
                );
            } else {
                usernames.push((user, i));
            }
            r.check(&at.key("password_hash"), password_hash(&b.password_hash));
            BasicCredential {
                username: b.username.clone(),
                password_hash: Secret::new(b.password_hash.clone()),
            }
        });
        match (&mut out, roles) {
            (Some(v), Some(roles)) if r.issues.len() == before => v.push(Consumer {
                name: c.name.clone(),
                roles,
                api_keys,
                basic,
            }),
            _ => out = None,
        }
    }
    out
}

/// A consumer's API key as configured, for finding duplicates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyRef<'a> {
    Plain(&'a str),
    Sha256([u8; 32]),
}

fn api_key_value(key: &str) -> Result<KeyRef<'_>, String> {
    if let Some(hex) = key.strip_prefix("sha256:") {
        return sha256_hex(hex).map(KeyRef::Sha256).ok_or_else(|| {
            "a hashed key is sha256: and 64 hex digits (the key's SHA-256)".to_owned()
        });
    }
    if key.is_empty() {
        return Err("an API key cannot be empty".to_owned());
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an API key may hold only visible ASCII characters, without spaces".to_owned());
    }
    Ok(KeyRef::Plain(key))
}

fn sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let digit = |b: u8| char::from(b).to_digit(16);
        *o = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// Sent as `X-Consumer`: one header value that no comma-splitting proxy can misread.
fn consumer_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("a consumer needs a name".to_owned());
    }
    let ok = name
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b',')
        && !name.starts_with(' ')
        && !name.ends_with(' ');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" cannot be a consumer name: it is sent in X-Consumer, so it may hold \
             visible ASCII characters and inner spaces, but no commas"
        ))
    }
}

/// A role travels in `X-Consumer-Roles`, joined by commas.
pub(crate) fn role(role: &str) -> Result<(), String> {
    if role.is_empty() {
        return Err("a role cannot be empty".to_owned());
    }
    if role.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        Ok(())
    } else {
        Err(format!(
            "\"{role}\" is not a role: use visible ASCII characters without commas or spaces \
             (roles are sent comma-separated in X-Consumer-Roles)"
        ))
    }
}

/// Checked roles, in order, without repeats; `None` when one is wrong (reported).
pub(crate) fn roles(list: &[String], path: &KeyPath, r: &mut Report<'_>) -> Option<Vec<String>> {
    let mut out = Some(Vec::with_capacity(list.len()));
    for (i, name) in list.iter().enumerate() {
        match (r.check(&path.index(i), role(name)), &mut out) {
            (Some(()), Some(v)) => {
                if !v.contains(name) {
                    v.push(name.clone());
                }
            }
            _ => out = None,
        }
    }
    out
}

fn username(user: &str) -> Result<(), String> {
    if user.is_empty() {
        Err("a username cannot be empty".to_owned())
    } else if user.contains(':') {
        Err("a username cannot hold ':' (Basic credentials are username:password)".to_owned())
    } else if user.chars().any(char::is_control) {
        Err("a username cannot hold control characters".to_owned())
    } else {
        Ok(())
    }
}

/// An argon2id PHC string or a bcrypt hash. The value is never quoted back.
fn password_hash(hash: &str) -> Result<(), String> {
    if let Some(rest) = hash.strip_prefix("$argon2id$") {
        // [v=19$]m=..,t=..,p=..$salt$hash
        let parts: Vec<&str> = rest.split('$').collect();
        let params = if parts.len() == 4 { parts[1] } else { parts[0] };
        let ok = (parts.len() == 3 || (parts.len() == 4 && parts[0].starts_with("v=")))
            && params.contains("m=")
            && params.contains("t=")
            && params.contains("p=")
            && parts.iter().all(|p| !p.is_empty());
        return if ok {
            Ok(())
        } else {
            Err("the argon2id hash is malformed (expected $argon2id$v=19$m=...,t=...,p=...$salt$hash)"
                .to_owned())
        };
    }
    if ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
        let cost = hash.get(4..6).and_then(|c| c.parse::<u32>().ok());
        let ok = hash.len() == 60
            && cost.is_some_and(|c| (4..=31).contains(&c))
            && hash.as_bytes().get(6) == Some(&b'$');
        return if ok {
            Ok(())
        } else {
            Err("the bcrypt hash is malformed (expected 60 characters: $2b$, a cost from 04 to 31, $, then 53 more)"
                .to_owned())
        };
    }
    Err(
        "password_hash must be an argon2id hash ($argon2id$...) or a bcrypt hash ($2b$...)"
            .to_owned(),
    )
}

/// Puts each JWT provider's algorithms into the effective config: a default depends on the
/// key, which only the built provider knows.
pub(crate) fn fill_effective(effective: &mut Value, auth: &AuthSettings) {
    for p in &auth.providers {
        if let ProviderKind::Jwt(spec) = &p.kind
            && let Some(entry) = effective
                .pointer_mut("/auth/providers")
                .and_then(|v| v.get_mut(&p.name))
                .and_then(Value::as_object_mut)
        {
            let names = spec.algorithms.iter().map(|a| Value::from(a.name()));
            entry.insert("algorithms".to_owned(), Value::Array(names.collect()));
        }
    }
}

/// The public keys and CA bundles read from files, for the config's version: changing a
/// file's content is a new version even though the config's text is the same.
pub(crate) fn key_material(auth: &AuthSettings) -> String {
    let mut out = String::new();
    for p in &auth.providers {
        let pem = match &p.kind {
            ProviderKind::Jwt(JwtSpec {
                key: JwtKey::PublicKey { pem, .. },
                ..
            }) => Some(pem),
            ProviderKind::Jwt(JwtSpec {
                key: JwtKey::Jwks { ca_pem, .. },
                ..
            })
            | ProviderKind::OAuth2(IntrospectionSpec { ca_pem, .. }) => ca_pem.as_ref(),
            _ => None,
        };
        if let Some(pem) = pem {
            out.push_str(&String::from_utf8_lossy(pem));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_keys() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let KeyRef::Sha256(d) = api_key_value(&format!("sha256:{hex}")).unwrap() else {
            panic!("a digest")
        };
        assert_eq!(d[0], 0x9f);
        assert_eq!(d[31], 0x08);
        let upper = format!("sha256:{}", hex.to_ascii_uppercase());
        assert!(api_key_value(&upper).is_ok());
        assert!(api_key_value("sha256:abc").is_err());
        assert!(api_key_value(&format!("sha256:{}", "g".repeat(64))).is_err());
        assert!(api_key_value("").is_err());
        assert!(api_key_value("a key").is_err());
        assert!(matches!(api_key_value("k-1"), Ok(KeyRef::Plain("k-1"))));
    }

    #[test]
    fn password_hashes() {
        let argon = "$argon2id$v=19$m=19456,t=2,p=1$vQPxJBytClIYPNOReT0j9w$lNEJozeOIjtyLxz7uofpFddsk2fs0m1Tp2JprcJfa1E";
        assert_eq!(password_hash(argon), Ok(()));
        assert_eq!(password_hash("$argon2id$m=1,t=1,p=1$c2FsdA$aGFzaA"), Ok(()));
        let bcrypt = "$2b$10$vB3H0y0jKXQc1mnslFBcT.2F81LqvgpWKoCasUPbE4/R73nxG/0xC";
        assert_eq!(password_hash(bcrypt), Ok(()));
        assert_eq!(password_hash(&bcrypt.replace("$2b$", "$2y$")), Ok(()));
        assert!(password_hash("$argon2id$v=19$m=1$salt").is_err());
        assert!(password_hash(&bcrypt[..59]).is_err());
        assert!(password_hash(&bcrypt.replace("$10$", "$99$")).is_err());
        assert!(password_hash("$argon2i$v=19$m=1,t=1,p=1$a$b").is_err());
        assert!(password_hash("hunter2").is_err());
    }

    #[test]
    fn names_and_roles() {
        assert!(consumer_name("acme corp").is_ok());
        assert!(consumer_name("a,b").is_err());
        assert!(consumer_name(" a").is_err());
        assert!(consumer_name("a\tb").is_err());
        assert!(consumer_name("é").is_err());
        assert!(consumer_name("").is_err());
        assert!(role("orders:read").is_ok());
        assert!(role("a b").is_err());
        assert!(role("a,b").is_err());
        assert!(role("").is_err());
        assert!(username("acme").is_ok());
        assert!(username("a:b").is_err());
        assert!(query_name("api_key").is_ok());
        assert!(query_name("a&b").is_err());
    }

    #[test]
    fn algorithms_fit_their_key() {
        use Algorithm::{ES256, ES384, EdDSA, HS256, PS256, RS256};
        assert!(fits(HS256, Source::Secret).is_ok());
        assert!(fits(RS256, Source::Secret).is_err());
        assert!(fits(PS256, Source::File(KeyFamily::Rsa, None)).is_ok());
        assert!(fits(EdDSA, Source::File(KeyFamily::Rsa, None)).is_err());
        let p384 = Source::File(KeyFamily::Ec, Some(Curve::P384));
        assert!(fits(ES384, p384).is_ok());
        assert_eq!(
            fits(ES256, p384).unwrap_err(),
            "ES256 needs a P-256 key, but public_key_file holds a P-384 key"
        );
        assert!(fits(HS256, Source::Jwks).is_err());
        assert!(fits(ES256, Source::Jwks).is_ok());
    }
}
