//! Turning claims (a JWT payload, an introspection answer) into a [`Principal`].
//!
//! The name and roles travel upstream in `X-Consumer` and `X-Consumer-Roles`, so they are
//! checked here, where they enter: no control characters (header injection), and no `,` in
//! a role (the roles header is comma-separated, so a comma would forge a second role).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use weir_domain::auth::{AuthFailure, Principal};

/// The identity in `claims`: the name is the first of `name_claims` that is a non-empty
/// string; the roles come from `roles_claim` (an array of strings, or one space-separated
/// string; missing or null means none).
pub(crate) fn principal(
    claims: &Map<String, Value>,
    name_claims: &[&str],
    roles_claim: Option<&str>,
) -> Result<Principal, AuthFailure> {
    let name = name_claims
        .iter()
        .find_map(|c| {
            claims
                .get(*c)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .ok_or(AuthFailure::Invalid)?;
    if name.chars().any(char::is_control) {
        return Err(AuthFailure::Invalid);
    }
    let mut roles: Vec<&str> = Vec::new();
    match roles_claim.and_then(|c| claims.get(c)) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => roles.extend(s.split_ascii_whitespace()),
        Some(Value::Array(items)) => {
            for item in items {
                let role = item.as_str().ok_or(AuthFailure::Invalid)?;
                if !role.is_empty() {
                    roles.push(role);
                }
            }
        }
        Some(_) => return Err(AuthFailure::Invalid),
    }
    if roles
        .iter()
        .any(|r| r.contains(',') || r.chars().any(char::is_control))
    {
        return Err(AuthFailure::Invalid);
    }
    Ok(Principal::new(name, &roles))
}

/// Seconds since the Unix epoch, the unit of `exp` and `nbf`.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A numeric date claim (`exp`, `nbf`) in whole seconds; `None` when absent or not a number.
pub(crate) fn numeric_date(claims: &Map<String, Value>, claim: &str) -> Option<u64> {
    let v = claims.get(claim)?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            // Whole seconds, as jsonwebtoken reads them; saturating is fine for a date.
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn roles_come_from_an_array_or_a_spaced_string() {
        let c = claims(json!({"sub": "alice", "roles": ["a", "b"], "scope": "x  y"}));
        let p = principal(&c, &["sub"], Some("roles")).unwrap();
        assert_eq!(&*p.name, "alice");
        assert_eq!(&*p.roles_header, "a,b");
        let p = principal(&c, &["sub"], Some("scope")).unwrap();
        assert_eq!(&*p.roles_header, "x,y");
        let p = principal(&c, &["sub"], Some("missing")).unwrap();
        assert!(p.roles.is_empty());
        let p = principal(&c, &["sub"], None).unwrap();
        assert!(p.roles.is_empty());
    }

    #[test]
    fn names_fall_back_in_order_and_must_exist() {
        let c = claims(json!({"sub": "", "username": "bob", "client_id": "app"}));
        let p = principal(&c, &["sub", "username", "client_id"], None).unwrap();
        assert_eq!(&*p.name, "bob");
        assert_eq!(principal(&c, &["sub"], None), Err(AuthFailure::Invalid));
        let c = claims(json!({"sub": 42}));
        assert_eq!(principal(&c, &["sub"], None), Err(AuthFailure::Invalid));
    }

    #[test]
    fn header_breaking_values_are_refused() {
        let bad = [
            json!({"sub": "a\r\nX-Admin: 1"}),
            json!({"sub": "a", "roles": ["ok", "x,admin"]}),
            json!({"sub": "a", "roles": ["x\u{7f}"]}),
            json!({"sub": "a", "roles": [1]}),
            json!({"sub": "a", "roles": {"r": 1}}),
        ];
        for c in bad {
            assert_eq!(
                principal(&claims(c), &["sub"], Some("roles")),
                Err(AuthFailure::Invalid)
            );
        }
    }

    #[test]
    fn dates_are_whole_seconds() {
        let c = claims(json!({"exp": 10, "nbf": 5.9, "iat": "x"}));
        assert_eq!(numeric_date(&c, "exp"), Some(10));
        assert_eq!(numeric_date(&c, "nbf"), Some(5));
        assert_eq!(numeric_date(&c, "iat"), None);
        assert_eq!(numeric_date(&c, "none"), None);
    }
}
