//! ACME on TLS listeners: one manager per `tls.acme` section, serving its certificate by
//! SNI and answering its challenges — TLS-ALPN-01 in the listener's handshake, HTTP-01 on
//! the plain listeners (`/.well-known/acme-challenge/`). A manager whose settings a reload
//! did not change carries on (it is not restarted mid-order).

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use tokio_rustls::rustls::sign::CertifiedKey;
use weir_config::{AcmeSettings, Settings};
use weir_infra::acme::{self, Acme, ChallengeKind, Challenges};
use weir_infra::tls::server::DynamicCerts;

use crate::body::Body;

/// The path prefix of HTTP-01 answers (RFC 8555 §8.3).
const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// One running manager, and the challenges every manager of the process answers.
#[derive(Debug)]
pub struct Managed {
    pub settings: AcmeSettings,
    pub acme: Acme,
    pub challenges: Arc<Challenges>,
}

impl DynamicCerts for Managed {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.acme.current()
    }

    fn challenge(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.challenges.tls_alpn01(domain)
    }
}

/// The managers of `settings`' TLS listeners (same index as the listeners; `None` for the
/// others), reusing those of `previous` whose settings are unchanged.
pub fn start(
    settings: &Settings,
    challenges: &Arc<Challenges>,
    previous: &[Option<Arc<Managed>>],
) -> Result<Vec<Option<Arc<Managed>>>, String> {
    let plain = settings.listeners.iter().any(|l| l.tls.is_none());
    // Listeners with the same section (one port on IPv4 and IPv6, say) share one manager:
    // two would order two certificates into one storage and answer each other's challenges.
    let mut made: Vec<Arc<Managed>> = Vec::new();
    let mut out = Vec::with_capacity(settings.listeners.len());
    for l in &settings.listeners {
        let Some(a) = l.tls.as_ref().and_then(|t| t.acme.as_ref()) else {
            out.push(None);
            continue;
        };
        let kept = made
            .iter()
            .chain(previous.iter().flatten())
            .find(|m| m.settings == *a)
            .map(Arc::clone);
        let managed = match kept {
            Some(m) => m,
            None => {
                // HTTP-01 first where a plain listener can answer it (port 80 is the one a
                // CA validates, and it works behind TLS-passthrough balancers too);
                // TLS-ALPN-01 on this listener otherwise.
                let kinds = if plain {
                    vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01]
                } else {
                    vec![ChallengeKind::TlsAlpn01]
                };
                let mut s = acme::AcmeSettings::new(
                    a.directory.clone(),
                    a.domains.clone(),
                    a.storage_dir.clone(),
                );
                s.email.clone_from(&a.email);
                s.ca_pem.clone_from(&a.ca_pem);
                s.renew_before = a.renew_before;
                let acme = Acme::start(s, kinds, Arc::clone(challenges))
                    .map_err(|e| format!("listener {}: acme: {e}", l.name))?;
                Arc::new(Managed {
                    settings: a.clone(),
                    acme,
                    challenges: Arc::clone(challenges),
                })
            }
        };
        if !made.iter().any(|m| Arc::ptr_eq(m, &managed)) {
            made.push(Arc::clone(&managed));
        }
        out.push(Some(managed));
    }
    Ok(out)
}

/// The answer to an HTTP-01 validation request, when `path` is one and it is pending.
pub fn http01(challenges: &Challenges, path: &str) -> Option<Response<Body>> {
    let token = path.strip_prefix(HTTP01_PREFIX)?;
    let key_authorization = challenges.http01(token)?;
    let mut resp = Response::new(Body::full(Bytes::from(key_authorization)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}
