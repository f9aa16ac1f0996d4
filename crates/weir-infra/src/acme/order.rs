//! One issuance against the ACME directory (RFC 8555): find or register the account for the
//! stored account key, order a certificate for the domains, answer each pending
//! authorization with the first allowed challenge type the CA offers, finalize with a fresh
//! ECDSA P-256 key, and download the chain.
//!
//! Every failure comes back as one line naming the step and the CA's reason (for a failed
//! challenge, the validation error the CA recorded), for the manager to log and retry.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::ClientConfig;
use rustls_pki_types::PrivateKeyDer;

use super::ChallengeKind;
use super::challenges::{Challenges, Published};
use super::store::{Issued, Store};

/// The HTTPS client toward the directory, built once and cloned per issuance (clones share
/// the connection pool).
pub(super) type AcmeHttp = Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an order is polled while the CA validates or signs, and for how long. The CA
/// validates in seconds; a minute and a half covers a slow one without hiding a stuck one.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(100))
    .backoff(1.5)
    .timeout(Duration::from_secs(90));

/// What one issuance needs, prepared at start.
pub(super) struct Issuer {
    pub(super) http: AcmeHttp,
    pub(super) directory: String,
    /// `mailto:` contact, if any.
    pub(super) contact: Option<String>,
    /// Lowercase, the first is the certificate's name.
    pub(super) domains: Vec<String>,
    pub(super) kinds: Vec<ChallengeKind>,
    pub(super) store: Store,
    pub(super) challenges: Arc<Challenges>,
}

impl Issuer {
    /// Obtains a certificate. After `failures` failed attempts the challenge types are tried
    /// in turn: a CA that cannot reach the plain listener (HTTP-01 offered, but port 80 is
    /// internal) gets TLS-ALPN-01 on the next attempt.
    pub(super) async fn issue(&self, failures: usize) -> Result<Issued, String> {
        let mut kinds = self.kinds.clone();
        let n = kinds.len();
        if n > 0 {
            kinds.rotate_left(failures % n);
        }
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("new order refused: {}", chain(&e)))?;

        // Lives until the order is decided, whatever way this function returns.
        let mut published = Published::new(Arc::clone(&self.challenges));
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz =
                authz.map_err(|e| format!("cannot fetch an authorization: {}", chain(&e)))?;
            let name = authz.identifier().to_string();
            match authz.status {
                // Validated for this account recently: nothing to prove.
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(format!("authorization for {name} is {other:?}")),
            }
            let offered: Vec<&ChallengeType> = authz.challenges.iter().map(|c| &c.r#type).collect();
            let Some(kind) = kinds
                .iter()
                .find(|k| offered.contains(&&k.challenge_type()))
            else {
                return Err(format!(
                    "the CA offers no allowed challenge type for {name} (offered {offered:?}, \
                     allowed {:?})",
                    kinds
                ));
            };
            let mut challenge = authz
                .challenge(kind.challenge_type())
                .ok_or_else(|| format!("{kind:?} challenge for {name} vanished"))?;
            let key_authorization = challenge.key_authorization();
            match kind {
                ChallengeKind::Http01 => {
                    published.http01(&challenge.token, key_authorization.as_str());
                }
                ChallengeKind::TlsAlpn01 => {
                    published.tls_alpn01(&name, key_authorization.digest().as_ref())?;
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("{kind:?} challenge for {name}: {}", chain(&e)))?;
        }

        let status = order
            .poll_ready(&POLL)
            .await
            .map_err(|e| format!("order did not become ready: {}", chain(&e)))?;
        if status != OrderStatus::Ready {
            return Err(format!(
                "order is {status:?}: {}",
                challenge_errors(&mut order).await
            ));
        }
        drop(published);

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("cannot make a certificate key: {e}"))?;
        let mut params = rcgen::CertificateParams::new(self.domains.clone())
            .map_err(|e| format!("cannot make a CSR: {e}"))?;
        // The names are in subjectAltName; CAs ignore the subject, RFC 8555 7.4.
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| format!("cannot make a CSR: {e}"))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| format!("finalize refused: {}", chain(&e)))?;
        let chain_pem = order
            .poll_certificate(&POLL)
            .await
            .map_err(|e| format!("certificate not issued: {}", chain(&e)))?;
        let issued = Issued::from_pem(chain_pem.into_bytes(), key.serialize_pem().into_bytes())
            .map_err(|e| format!("issued {e}"))?;
        if !issued.covers(&self.domains) {
            return Err(format!(
                "issued certificate names {:?}, not all of {:?}",
                issued.names, self.domains
            ));
        }
        Ok(issued)
    }

    /// The account of the stored key: found on the CA, or registered there (a CA that forgot
    /// it, or a new directory, gets the same key again rather than a second key on disk).
    async fn account(&self) -> Result<Account, String> {
        let pkcs8 = self.store.account_key()?;
        let key = instant_acme::Key::from_pkcs8_der(pkcs8.clone_key())
            .map_err(|e| format!("ACME account key rejected: {e}"))?;
        let (account, _credentials) = Account::builder_with_http(Box::new(self.http.clone()))
            .create_from_key((key, PrivateKeyDer::Pkcs8(pkcs8)), self.directory.clone())
            .await
            .map_err(|e| format!("directory {} or its account: {}", self.directory, chain(&e)))?;
        // Registration by key carries no contact; set it every time rather than remember
        // whether this CA has it (one request per issuance).
        if let Some(contact) = &self.contact {
            account
                .update_contacts(&[contact.as_str()])
                .await
                .map_err(|e| format!("account contact: {}", chain(&e)))?;
        }
        Ok(account)
    }
}

/// The validation errors the CA recorded on the order's challenges, for the log line.
async fn challenge_errors(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let Ok(mut authz) = authz else { continue };
        let name = authz.identifier().to_string();
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        for c in &state.challenges {
            if let Some(problem) = &c.error {
                reasons.push(format!("{name} {:?}: {problem}", c.r#type));
            }
        }
    }
    if reasons.is_empty() {
        "the CA gave no reason".to_owned()
    } else {
        reasons.join("; ")
    }
}

/// An error with its sources, `: `-separated: instant-acme's "HTTP request failure" or
/// hyper's "client error (Connect)" alone say nothing; the refused connection or the
/// certificate rustls rejected is further down.
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // `#[error(transparent)]` layers repeat their source's text.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The HTTPS client for the directory: rustls on aws-lc-rs, trusting `ca_pem` (a test CA
/// such as pebble's) or else the system's roots, HTTP/1.1.
pub(super) fn http_client(ca_pem: Option<&[u8]>) -> Result<AcmeHttp, String> {
    let roots = crate::tls::roots(ca_pem).map_err(|e| format!("ACME: {e}"))?;
    let config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("ACME TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    // The scheme is https; the TLS layer above wraps this plain TCP connector.
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}
