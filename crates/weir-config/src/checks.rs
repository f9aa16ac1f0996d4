//! Small checks shared by the settings, upstream and route validation.

use std::net::SocketAddr;
use std::time::Duration;

use crate::node::KeyPath;
use crate::report::Report;
use crate::units::{Dur, Size};

/// A duration; `positive` rejects `0s` where zero would mean "never" or a busy loop.
pub(crate) fn duration(
    r: &mut Report<'_>,
    path: &KeyPath,
    d: &Dur,
    positive: bool,
) -> Option<Duration> {
    let value = r.check(path, d.get())?;
    if positive && value.is_zero() {
        r.at(path, "must be longer than 0");
        return None;
    }
    Some(value)
}

pub(crate) fn size(r: &mut Report<'_>, path: &KeyPath, s: &Size) -> Option<u64> {
    r.check(path, s.get())
}

/// `IP:PORT`. Host names are not resolved: what is bound must be known at load.
pub(crate) fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    t.parse().map_err(|_| {
        if t.is_empty() {
            "an address cannot be empty; write IP:PORT such as 0.0.0.0:8080".to_owned()
        } else if t.parse::<std::net::IpAddr>().is_ok() || t.parse::<u16>().is_ok() {
            format!("\"{t}\" needs both an IP and a port, such as 0.0.0.0:8080")
        } else {
            format!("\"{t}\" is not IP:PORT such as 0.0.0.0:8080 (host names are not resolved)")
        }
    })
}

/// RFC 9110 token characters: what a header name may hold.
pub(crate) fn header_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("\"{name}\" is not a valid header name"))
    }
}

/// Visible ASCII, spaces and tabs: what every HTTP library accepts as a header value.
pub(crate) fn header_value(value: &str) -> Result<(), String> {
    if value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        Ok(())
    } else {
        Err("a header value may hold only visible ASCII characters, spaces and tabs".to_owned())
    }
}

/// A regex; the crate's multi-line error becomes one line.
pub(crate) fn regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(pattern).map_err(|e| match e {
        regex::Error::Syntax(text) => {
            let reason = text
                .lines()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or("invalid syntax");
            format!("invalid regex: {reason}")
        }
        regex::Error::CompiledTooBig(limit) => {
            format!("the regex is too big (over {limit} bytes compiled)")
        }
        other => format!(
            "invalid regex: {}",
            crate::node::one_line(&other.to_string())
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(socket_addr("0.0.0.0:8080").is_ok());
        assert!(socket_addr("[::1]:80").is_ok());
        assert!(socket_addr("8080").unwrap_err().contains("needs both"));
        assert!(
            socket_addr("localhost:80")
                .unwrap_err()
                .contains("not resolved")
        );
        assert!(socket_addr("0.0.0.0:80800").is_err());
    }

    #[test]
    fn headers_and_regexes() {
        assert!(header_name("X-Api-Version").is_ok());
        assert!(header_name("X Api").is_err());
        assert!(header_name("").is_err());
        assert!(header_value("a b\tc").is_ok());
        assert!(header_value("a\nb").is_err());
        assert_eq!(regex("^/(x").unwrap_err(), "invalid regex: unclosed group");
    }
}
