//! What is asked of Consul and what its answers mean, without I/O: the query string, the
//! health endpoint's JSON turned into endpoints, the blocking-query index rules and the
//! retry schedule.

use std::net::Ipv6Addr;
use std::time::Duration;

use serde::Deserialize;
use weir_domain::discovery::{ConsulDiscovery, Endpoint};

/// Consul never holds a blocking query longer than this, whatever `wait` asks.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// A shorter wait would turn the blocking query into polling.
const MIN_WAIT: Duration = Duration::from_secs(1);

/// The wait after a first failure; it doubles with each failure in a row, up to
/// [`MAX_RETRY`], and each wait is a random part of that (full jitter).
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(15);

/// `wait` as weir sends it: within what Consul honours.
pub(super) fn effective_wait(wait: Duration) -> Duration {
    wait.clamp(MIN_WAIT, MAX_WAIT)
}

/// How long a blocking query may take before weir gives up on it: Consul adds up to
/// `wait / 16` of its own jitter to `wait`, and the answer needs time to arrive.
pub(super) fn request_timeout(wait: Duration) -> Duration {
    let wait = effective_wait(wait);
    wait + wait / 16 + Duration::from_secs(5)
}

/// The path and query of one health request: the passing instances of the service (with
/// the tag, in the datacenter when one is set), blocking on `index` when it is not 0.
pub(super) fn health_path(spec: &ConsulDiscovery, index: u64) -> String {
    let mut out = format!(
        "/v1/health/service/{}?passing",
        percent_encode(&spec.service)
    );
    if let Some(tag) = &spec.tag {
        out.push_str("&tag=");
        out.push_str(&percent_encode(tag));
    }
    if let Some(dc) = spec.datacenter.as_ref().or(spec.agent.datacenter.as_ref()) {
        out.push_str("&dc=");
        out.push_str(&percent_encode(dc));
    }
    if index > 0 {
        let wait = effective_wait(spec.agent.wait);
        let wait = if wait.subsec_millis() == 0 {
            format!("{}s", wait.as_secs())
        } else {
            format!("{}ms", wait.as_millis())
        };
        out.push_str(&format!("&index={index}&wait={wait}"));
    }
    out
}

/// Every byte but RFC 3986's unreserved characters as `%XX`: safe in a path segment and
/// in a query value alike, whatever a service or tag name holds.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    weir_domain::percent::encode(s.as_bytes(), weir_domain::percent::unreserved, &mut out);
    out
}

/// The index to send next, after an answer carrying `got` to a request that sent `sent`
/// (Consul's guidance for blocking queries): an index that went backwards (the agent's
/// state was rebuilt) starts over with a query that does not block; an index of 0 (a
/// Consul bug that would make every query return at once) becomes 1.
pub(super) fn next_index(sent: u64, got: u64) -> u64 {
    if got < sent { 0 } else { got.max(1) }
}

/// One entry of `/v1/health/service/<service>`: only the fields weir reads.
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "Node")]
    node: Node,
    #[serde(rename = "Service")]
    service: Service,
}

#[derive(Debug, Deserialize)]
struct Node {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Debug, Deserialize)]
struct Service {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port", default)]
    port: u32,
    #[serde(rename = "Weights", default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default)]
    passing: u32,
}

/// The endpoints of a health answer, sorted by URL, each once; and, in words, the
/// instances that cannot be targets (no address, port 0, an address that is no host).
///
/// Such an instance is left out rather than failing the answer: one bad registration must
/// not freeze every other target of the upstream at its last-known-good set.
pub(super) fn endpoints(body: &[u8]) -> Result<(Vec<Endpoint>, Vec<String>), String> {
    let entries: Vec<Entry> = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not a list of health entries: {e}"))?;
    let mut list = Vec::with_capacity(entries.len());
    let mut skipped = Vec::new();
    for Entry { node, service } in entries {
        // The service's own address, else its node's (Consul's rule for an empty one).
        let host = if service.address.is_empty() {
            node.address
        } else {
            service.address
        };
        if host.is_empty() {
            skipped.push(format!("{:?}: no address", service.id));
            continue;
        }
        let host = if host.parse::<Ipv6Addr>().is_ok() {
            format!("[{host}]")
        } else {
            host
        };
        let weight = service
            .weights
            .map_or(1, |w| w.passing)
            .clamp(1, Endpoint::MAX_WEIGHT);
        match Endpoint::from_url(&format!("http://{host}:{}", service.port), weight) {
            Ok(e) => list.push(e),
            Err(e) => skipped.push(format!("{:?}: {e}", service.id)),
        }
    }
    Ok((crate::discovery::merged(list), skipped))
}

/// The wait before trying again after `failures` failed requests in a row (1 for the
/// first): a random part (`random`) of [`FIRST_RETRY`] doubled per failure, at most
/// [`MAX_RETRY`]. Full jitter: the weirs that lost one agent together do not come back to
/// it in step.
pub(super) fn retry_delay(failures: u32, random: u64) -> Duration {
    crate::discovery::backoff(failures, FIRST_RETRY, MAX_RETRY, 0.0, random)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weir_domain::discovery::ConsulAgent;

    use super::*;

    fn spec(tag: Option<&str>, dc: Option<&str>, agent_dc: Option<&str>) -> ConsulDiscovery {
        ConsulDiscovery {
            service: "users".to_owned(),
            tag: tag.map(str::to_owned),
            datacenter: dc.map(str::to_owned),
            agent: Arc::new(ConsulAgent {
                address: "http://127.0.0.1:8500".to_owned(),
                token: None,
                datacenter: agent_dc.map(str::to_owned),
                ca_pem: None,
                wait: Duration::from_secs(55),
            }),
        }
    }

    fn urls(list: &[Endpoint]) -> Vec<(&str, u32)> {
        list.iter().map(|e| (e.url.as_str(), e.weight)).collect()
    }

    #[test]
    fn the_first_query_does_not_block_and_later_ones_do() {
        let s = spec(None, None, None);
        assert_eq!(health_path(&s, 0), "/v1/health/service/users?passing");
        assert_eq!(
            health_path(&s, 42),
            "/v1/health/service/users?passing&index=42&wait=55s"
        );
    }

    #[test]
    fn tag_and_datacenter_are_asked_for_and_encoded() {
        let s = spec(Some("v2"), None, Some("dc1"));
        assert_eq!(
            health_path(&s, 0),
            "/v1/health/service/users?passing&tag=v2&dc=dc1"
        );
        // The upstream's datacenter wins over the agent section's.
        let s = spec(Some("a b&c=d"), Some("eu/west"), Some("dc1"));
        assert_eq!(
            health_path(&s, 7),
            "/v1/health/service/users?passing&tag=a%20b%26c%3Dd&dc=eu%2Fwest&index=7&wait=55s"
        );
        let mut s = spec(None, None, None);
        s.service = "us?ers/../x#é".to_owned();
        assert_eq!(
            health_path(&s, 0),
            "/v1/health/service/us%3Fers%2F..%2Fx%23%C3%A9?passing"
        );
    }

    #[test]
    fn wait_stays_within_what_consul_honours() {
        let mut s = spec(None, None, None);
        let base = (*s.agent).clone();
        let agent = |wait| {
            Arc::new(ConsulAgent {
                wait,
                ..base.clone()
            })
        };
        s.agent = agent(Duration::from_millis(1500));
        assert!(health_path(&s, 3).ends_with("&wait=1500ms"));
        s.agent = agent(Duration::from_millis(10));
        assert!(health_path(&s, 3).ends_with("&wait=1s"));
        s.agent = agent(Duration::from_secs(3600));
        assert!(health_path(&s, 3).ends_with("&wait=600s"));
        assert_eq!(
            request_timeout(Duration::from_secs(32)),
            Duration::from_secs(39)
        );
        assert_eq!(
            request_timeout(Duration::from_secs(3600)),
            Duration::from_millis(600_000 + 37_500 + 5_000)
        );
    }

    #[test]
    fn the_index_follows_consuls_rules() {
        assert_eq!(next_index(0, 12), 12, "first answer");
        assert_eq!(next_index(12, 15), 15, "a change");
        assert_eq!(next_index(15, 15), 15, "the wait ended without a change");
        assert_eq!(next_index(15, 9), 0, "backwards: start over");
        assert_eq!(next_index(0, 9), 9, "after starting over");
        assert_eq!(next_index(0, 0), 1, "0 would never block");
    }

    #[test]
    fn entries_become_sorted_endpoints() {
        let body = br#"[
          {"Node": {"Address": "10.0.0.1"},
           "Service": {"ID": "b", "Address": "10.0.0.9", "Port": 9000,
                       "Weights": {"Passing": 3, "Warning": 1}}, "Checks": []},
          {"Node": {"Address": "10.0.0.2"},
           "Service": {"ID": "a", "Address": "", "Port": 9001,
                       "Weights": {"Passing": 0, "Warning": 1}}},
          {"Node": {"Address": "10.0.0.3"},
           "Service": {"ID": "v6", "Address": "fd00::7", "Port": 80}},
          {"Node": {"Address": "10.0.0.4"},
           "Service": {"ID": "dns", "Address": "users-1.internal", "Port": 8080,
                       "Weights": {"Passing": 4000000}}},
          {"Node": {"Address": "10.0.0.5"},
           "Service": {"ID": "dup", "Address": "10.0.0.9", "Port": 9000}}
        ]"#;
        let (list, skipped) = endpoints(body).unwrap();
        assert_eq!(
            urls(&list),
            [
                ("http://10.0.0.2:9001", 1),
                ("http://10.0.0.9:9000", 4),
                ("http://[fd00::7]:80", 1),
                ("http://users-1.internal:8080", Endpoint::MAX_WEIGHT),
            ]
        );
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(list[2].addr.host, "[fd00::7]");
    }

    #[test]
    fn an_empty_list_is_an_answer_and_unusable_instances_are_left_out() {
        assert_eq!(endpoints(b"[]").unwrap(), (Vec::new(), Vec::new()));
        let body = br#"[
          {"Node": {"Address": ""}, "Service": {"ID": "none", "Address": "", "Port": 80}},
          {"Node": {"Address": "10.0.0.1"}, "Service": {"ID": "zero", "Port": 0}},
          {"Node": {"Address": "10.0.0.1"}, "Service": {"ID": "big", "Port": 70000}},
          {"Node": {"Address": "10.0.0.1"}, "Service": {"ID": "path", "Address": "a/b", "Port": 1}},
          {"Node": {"Address": "10.0.0.1"}, "Service": {"ID": "ok", "Port": 81}}
        ]"#;
        let (list, skipped) = endpoints(body).unwrap();
        assert_eq!(urls(&list), [("http://10.0.0.1:81", 1)]);
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert!(skipped[0].starts_with("\"none\""), "{skipped:?}");
    }

    #[test]
    fn an_answer_that_is_not_health_entries_is_a_failure() {
        for body in [&b""[..], b"{}", b"[{\"Service\": {}}]", b"<html>", b"[1]"] {
            let err = endpoints(body).unwrap_err();
            assert!(err.starts_with("the answer is not"), "{err}");
        }
    }

    #[test]
    fn retries_back_off_with_full_jitter() {
        let (low, high) = (0, u64::MAX);
        assert_eq!(retry_delay(1, low), Duration::ZERO);
        assert!(retry_delay(1, high) <= FIRST_RETRY);
        assert!(retry_delay(1, high) > Duration::from_millis(499));
        assert!(retry_delay(2, high) > Duration::from_millis(999));
        assert!(retry_delay(3, high) <= Duration::from_secs(2));
        assert!(retry_delay(6, high) > Duration::from_millis(14_999));
        assert!(retry_delay(u32::MAX, high) <= MAX_RETRY);
        let waits: std::collections::HashSet<Duration> = (0..20)
            .map(|_| retry_delay(4, crate::discovery::random()))
            .collect();
        assert!(waits.len() > 10, "{waits:?}");
    }
}
