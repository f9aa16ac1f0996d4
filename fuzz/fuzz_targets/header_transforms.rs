//! Header (and query) transforms end to end through the application layer: a config with
//! fuzzed `transform.request.headers`, `transform.request.query` and
//! `transform.response.headers` values is loaded by `weir_config::load_str` (the config's
//! own checks), assembled into a `weir_app::Gateway`, and a request with fuzzed path
//! parameters, headers, query, consumer name and client-certificate subject goes through
//! `Gateway::handle` to an in-process forwarder, whose fuzzed response headers then go
//! through `Gateway::transform_response`, as the server does.
//!
//! Checked: no panic; what the config accepts the gateway builds; a request that passes
//! authentication is forwarded (a transform never makes weir refuse its own output); no
//! header value sent either way holds CR, LF or NUL; a query `set` leaves exactly one
//! parameter of its name, whatever the client spelled; and the response headers are exactly
//! `remove`, then `set` (a value that cannot be sent removes the header instead), then `add`.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body_util::Empty;
use libfuzzer_sys::fuzz_target;
use weir_app::access::Authenticator;
use weir_app::body::ReqBody;
use weir_app::cache::{CacheKey, Entry, ResponseCache, StoreDown};
use weir_app::limits::{SharedAnswer, SharedCheck, SharedLimiter};
use weir_app::pipeline::{ConnInfo, Parts};
use weir_app::{Connector, Exchange, ForwardError, Forwarder, Gateway, Outcome};
use weir_config::{MapEnv, Overrides, load_str};
use weir_domain::ErrorKind;
use weir_domain::auth::{Principal, ProviderId, Verdict};
use weir_domain::cache::CacheStore;
use weir_domain::transform::{Facts, Template};
use weir_domain::upstream::Target;

/// Header names transforms may name; the managed ones (`host`, `content-length`,
/// `connection`) are refused by the config, which is part of what is exercised.
const NAMES: [&str; 10] = [
    "x-a",
    "x-b",
    "x-c",
    "x-request-id",
    "x-consumer",
    "cache-control",
    "set-cookie",
    "host",
    "content-length",
    "connection",
];

/// Pieces of values: variables of every kind, `$` forms, and bytes a header cannot hold.
const PIECES: [&str; 16] = [
    "${consumer.name}",
    "${request.id}",
    "${request.ip}",
    "${path.id}",
    "${path.rest}",
    "${header.x-in}",
    "${header.X-In}",
    "${header.x-api-key}",
    "${tls.client_subject}",
    "$$",
    "$",
    "${",
    "\r\n",
    "\0",
    " ",
    "\u{e9}",
];

#[derive(Arbitrary, Debug)]
enum Part {
    Piece(u8),
    Text(String),
}

#[derive(Arbitrary, Debug)]
struct Value(Vec<Part>);

impl Value {
    fn text(&self) -> String {
        let mut s = String::new();
        for p in self.0.iter().take(8) {
            match p {
                Part::Piece(i) => s.push_str(PIECES[usize::from(*i) % PIECES.len()]),
                Part::Text(t) => s.push_str(t),
            }
        }
        s
    }
}

#[derive(Arbitrary, Debug)]
struct FuzzedOps {
    remove: Vec<u8>,
    set: Vec<(u8, Value)>,
    add: Vec<(u8, Value)>,
}

#[derive(Arbitrary, Debug)]
struct Fuzzed {
    request: FuzzedOps,
    response: FuzzedOps,
    query_set: Option<Value>,
    auth: bool,
    consumer: String,
    subject: Option<String>,
    id: String,
    rest: String,
    client_query: String,
    x_in: Vec<Vec<u8>>,
    upstream_headers: Vec<(u8, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct Ops {
    remove: Vec<String>,
    /// Distinct names (a YAML map).
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
}

impl Ops {
    fn put(list: &mut Vec<(String, String)>, name: &str, value: String) {
        if list.len() < 4 && !list.iter().any(|(n, _)| n == name) {
            list.push((name.to_owned(), value));
        }
    }
}

/// One case, from either input form.
#[derive(Debug, Default)]
struct Case {
    request: Ops,
    response: Ops,
    query_set: Option<String>,
    auth: bool,
    consumer: String,
    subject: Option<String>,
    id: String,
    rest: String,
    client_query: String,
    x_in: Vec<Vec<u8>>,
    upstream_headers: Vec<(String, Vec<u8>)>,
}

fn name(i: u8) -> &'static str {
    NAMES[usize::from(i) % NAMES.len()]
}

fn from_fuzzed(f: Fuzzed) -> Case {
    let ops = |o: &FuzzedOps| {
        let mut out = Ops {
            remove: o
                .remove
                .iter()
                .take(3)
                .map(|n| name(*n).to_owned())
                .collect(),
            ..Ops::default()
        };
        for (n, v) in &o.set {
            Ops::put(&mut out.set, name(*n), v.text());
        }
        for (n, v) in &o.add {
            Ops::put(&mut out.add, name(*n), v.text());
        }
        out
    };
    Case {
        request: ops(&f.request),
        response: ops(&f.response),
        query_set: f.query_set.as_ref().map(Value::text),
        auth: f.auth,
        consumer: f.consumer,
        subject: f.subject,
        id: f.id,
        rest: f.rest,
        client_query: f.client_query,
        x_in: f.x_in.into_iter().take(3).collect(),
        upstream_headers: f
            .upstream_headers
            .into_iter()
            .take(6)
            .map(|(n, v)| (name(n).to_owned(), v))
            .collect(),
    }
}

/// `\r`, `\n`, `\0` and `\\` in the text form.
fn unescape(s: &str) -> String {
    s.replace("\\r", "\r")
        .replace("\\n", "\n")
        .replace("\\0", "\0")
        .replace("\\\\", "\\")
}

/// The text form (after a first line `text`), one fact a line: `request.set NAME VALUE`,
/// `request.add NAME VALUE`, `request.remove NAME` (and `response.*`), `query VALUE`,
/// `auth`, `consumer NAME`, `subject S`, `id X`, `rest X`, `client_query Q`, `x-in V`,
/// `upstream NAME V`. Values may hold `\r`, `\n` and `\0`.
fn from_text(text: &str) -> Case {
    let mut c = Case {
        id: "7".to_owned(),
        rest: "x".to_owned(),
        ..Case::default()
    };
    for line in text.lines().take(32) {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        let (word, after) = rest.split_once(' ').unwrap_or((rest, ""));
        let value = unescape(rest);
        match key {
            "request.set" => Ops::put(&mut c.request.set, word, unescape(after)),
            "request.add" => Ops::put(&mut c.request.add, word, unescape(after)),
            "request.remove" => c.request.remove.push(word.to_owned()),
            "response.set" => Ops::put(&mut c.response.set, word, unescape(after)),
            "response.add" => Ops::put(&mut c.response.add, word, unescape(after)),
            "response.remove" => c.response.remove.push(word.to_owned()),
            "query" => c.query_set = Some(value),
            "auth" => c.auth = true,
            "consumer" => c.consumer = value,
            "subject" => c.subject = Some(value),
            "id" => c.id = value,
            "rest" => c.rest = value,
            "client_query" => c.client_query = value,
            "x-in" => c.x_in.push(value.into_bytes()),
            "upstream" => c
                .upstream_headers
                .push((word.to_owned(), unescape(after).into_bytes())),
            _ => {}
        }
    }
    c
}

fn yaml_ops(ops: &Ops, out: &mut String, indent: &str) {
    let map = |list: &[(String, String)]| {
        let entries: Vec<String> = list
            .iter()
            .map(|(n, v)| {
                format!(
                    "{}: {}",
                    serde_json::Value::String(n.clone()),
                    serde_json::Value::String(v.clone())
                )
            })
            .collect();
        format!("{{{}}}", entries.join(", "))
    };
    let remove: Vec<String> = ops
        .remove
        .iter()
        .map(|n| serde_json::Value::String(n.clone()).to_string())
        .collect();
    out.push_str(&format!(
        "{indent}headers:\n{indent}  remove: [{}]\n{indent}  set: {}\n{indent}  add: {}\n",
        remove.join(", "),
        map(&ops.set),
        map(&ops.add)
    ));
}

fn config(c: &Case) -> String {
    let mut y = String::from(
        "auth:\n  providers:\n    keys: { type: api_key }\n\
         upstreams:\n  u: { targets: [{ url: \"http://127.0.0.1:9\" }] }\n\
         routes:\n  - name: t\n    match: { path: \"/t/{id}/{*rest}\" }\n    upstream: u\n",
    );
    if c.auth {
        y.push_str("    auth: { providers: [keys] }\n");
    }
    y.push_str("    transform:\n      request:\n");
    yaml_ops(&c.request, &mut y, "        ");
    if let Some(q) = &c.query_set {
        y.push_str(&format!(
            "        query: {{ set: {{ q: {} }}, remove: [debug] }}\n",
            serde_json::Value::String(q.clone())
        ));
    }
    y.push_str("      response:\n");
    yaml_ops(&c.response, &mut y, "        ");
    y
}

/// The identity port: whatever name the fuzzer chose (the real providers refuse control
/// characters; this is the layer behind them, which must not rely on that).
struct AnyName(String);

impl Authenticator for AnyName {
    async fn verify(&self, _: ProviderId, _: &str) -> Verdict {
        Verdict::Accepted(Principal::new(&self.0, &["r"]))
    }
}

struct NoShared;

impl SharedLimiter for NoShared {
    async fn decide(&self, _: &[SharedCheck]) -> Result<SharedAnswer, ()> {
        Err(())
    }
}

struct NoCache;

impl ResponseCache for NoCache {
    async fn get(&self, _: CacheStore, _: &CacheKey) -> Result<Option<Arc<Entry>>, StoreDown> {
        Ok(None)
    }
    async fn put(&self, _: CacheStore, _: &CacheKey, _: Arc<Entry>) -> Result<(), StoreDown> {
        Ok(())
    }
}

/// The upstream: keeps the request it was sent and answers with the fuzzed headers.
#[derive(Clone)]
struct Upstream {
    seen: Arc<Mutex<Option<http::request::Parts>>>,
    answer: HeaderMap,
}

impl Connector for Upstream {
    type Conn = ();
    fn conn(&self, _: &Target) {}
}

impl Forwarder<ReqBody<Empty<Bytes>>> for Upstream {
    type ResBody = Empty<Bytes>;

    async fn forward(
        &self,
        _: &(),
        req: Request<ReqBody<Empty<Bytes>>>,
        _: Duration,
    ) -> Result<Response<Empty<Bytes>>, ForwardError> {
        let (head, _) = req.into_parts();
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(head);
        let mut resp = Response::new(Empty::new());
        *resp.headers_mut() = self.answer.clone();
        Ok(resp)
    }
}

/// The facts a response transform may read.
struct ResponseFacts<'a> {
    consumer: Option<&'a str>,
    request_id: &'a [u8],
    ip: IpAddr,
    subject: Option<&'a str>,
}

impl Facts for ResponseFacts<'_> {
    fn consumer(&self) -> Option<&str> {
        self.consumer
    }
    fn request_id(&self) -> &[u8] {
        self.request_id
    }
    fn client_ip(&self) -> IpAddr {
        self.ip
    }
    fn path_param(&self, _: &str) -> Option<&str> {
        None
    }
    fn header(&self, _: &str, _: &mut Vec<u8>) {}
    fn client_subject(&self) -> Option<&str> {
        self.subject
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    })
}

fn assert_sendable(headers: &HeaderMap, side: &str) {
    for (n, v) in headers {
        assert!(
            !v.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "{side} header {n}: {v:?}"
        );
    }
}

/// Whether a raw query parameter name means `want` once decoded (form rules), as an
/// upstream would read it.
fn means(raw: &str, want: &str) -> bool {
    let b = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: Option<&u8>| c.and_then(|c| char::from(*c).to_digit(16));
                match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                    (Some(h), Some(l)) => {
                        out.push(u8::try_from(h * 16 + l).unwrap_or(0));
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out == want.as_bytes()
}

/// `WEIR_FUZZ_DEBUG=1` shows why an input stopped early (to check that seeds get through).
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("WEIR_FUZZ_DEBUG").is_some())
}

/// Whether the request path normalizes to something routes take as it is.
fn path_is_plain(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or_default();
    weir_domain::path::normalize(path).is_ok_and(|p| !weir_domain::path::is_ambiguous(&p))
}

fuzz_target!(|data: &[u8]| {
    let input = match data.strip_prefix(b"text\n") {
        Some(text) => {
            let Ok(text) = std::str::from_utf8(text) else {
                return;
            };
            from_text(text)
        }
        None => {
            let Ok(f) = Fuzzed::arbitrary_take_rest(Unstructured::new(data)) else {
                return;
            };
            from_fuzzed(f)
        }
    };
    let yaml = config(&input);
    let loaded = match load_str(
        "fuzz.yaml",
        &yaml,
        &MapEnv::default(),
        &Overrides::default(),
    ) {
        Ok(l) => l,
        Err(problems) => {
            if debug() {
                eprintln!("{yaml}\n-> {problems}");
            }
            return;
        }
    };
    // The values as the config parsed them (after its own `$${` and `${VAR:-default}`).
    let response_ops = loaded.routes.routes()[0]
        .transforms
        .response_headers
        .clone();
    let mut answer = HeaderMap::new();
    for (n, v) in &input.upstream_headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            answer.append(n, v);
        }
    }
    let upstream = Upstream {
        seen: Arc::default(),
        answer,
    };
    let gateway = Gateway::new(Parts {
        routes: loaded.routes,
        upstreams: loaded.upstreams,
        forwarders: vec![upstream.clone()],
        providers: loaded.auth.providers,
        authenticator: AnyName(input.consumer.clone()),
        shared_limiter: NoShared,
        cache: NoCache,
        trusted_proxies: loaded.settings.trusted_proxies.clone(),
        max_header_bytes: loaded.settings.limits.max_header_bytes,
        max_body_bytes: loaded.settings.limits.max_body_bytes,
        converters: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("the config loaded but the gateway refused it: {e}\n{yaml}"));

    let uri = format!("/t/{}/{}?{}", input.id, input.rest, input.client_query);
    let mut builder = Request::builder()
        .uri(uri.as_str())
        .header("host", "gw.example")
        .header("x-api-key", "k");
    for v in &input.x_in {
        let Ok(v) = HeaderValue::from_bytes(v) else {
            return;
        };
        builder = builder.header("x-in", v);
    }
    let Ok(req) = builder.body(Empty::<Bytes>::new()) else {
        return;
    };
    let mut conn = ConnInfo::new(SocketAddr::from((Ipv4Addr::new(192, 0, 2, 7), 40000)), &[]);
    conn.client_subject = input.subject.as_deref().map(Arc::from);
    let request_id = HeaderValue::from_static("01FUZZ");
    let mut ex = Exchange::new(request_id.clone(), conn.peer_ip);

    let result = runtime().block_on(gateway.handle(req, &conn, &mut ex));
    let mut resp = match result {
        Ok(Outcome::Proxied(resp, _guard)) => resp,
        Ok(_) => panic!("a plain upstream route answered without its upstream"),
        // The route matches only paths with a non-empty id and rest.
        Err(e) if e.kind == ErrorKind::RouteNotFound => {
            if debug() {
                eprintln!("{uri}: {e:?}");
            }
            return;
        }
        // A path that does not normalize, or holds a separator origins read differently,
        // is refused before any transform runs.
        Err(e) if e.kind == ErrorKind::BadRequest && !path_is_plain(&uri) => return,
        // A name that cannot be sent in X-Consumer is refused at authentication.
        Err(e) if e.kind == ErrorKind::Unauthorized && input.auth => {
            assert!(
                HeaderValue::from_bytes(input.consumer.as_bytes()).is_err(),
                "refused a consumer {:?}: {e:?}",
                input.consumer
            );
            return;
        }
        Err(e) => panic!("{e:?} for {uri:?} with\n{yaml}"),
    };
    let sent = upstream
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .expect("the upstream was called");
    assert_sendable(&sent.headers, "request");
    if input.query_set.is_some() {
        let query = sent.uri.query().unwrap_or_default();
        let q = query
            .split('&')
            .filter(|p| means(p.split('=').next().unwrap_or(""), "q"));
        assert_eq!(q.count(), 1, "query {query:?} from {uri:?}");
    }

    weir_app::headers::remove_hop_by_hop(resp.headers_mut(), false);
    let mut expected = resp.headers().clone();
    gateway.transform_response(&ex, resp.headers_mut());
    assert_sendable(resp.headers(), "response");

    // The response transform as documented (remove, then set, where a value that cannot be
    // sent removes the header, then add), from the values the config parsed.
    let facts = ResponseFacts {
        consumer: ex.principal.as_ref().map(|p| &*p.name),
        request_id: request_id.as_bytes(),
        ip: conn.peer_ip,
        subject: input.subject.as_deref(),
    };
    let render = |t: &Template| {
        let mut out = Vec::new();
        t.render(&facts, &mut out);
        HeaderValue::from_bytes(&out).ok()
    };
    let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).expect("the config checked it");
    for n in &response_ops.remove {
        expected.remove(name(n));
    }
    for (n, t) in &response_ops.set {
        match render(t) {
            Some(h) => expected.insert(name(n), h),
            None => expected.remove(name(n)),
        };
    }
    for (n, t) in &response_ops.add {
        if let Some(h) = render(t) {
            expected.append(name(n), h);
        }
    }
    assert_eq!(resp.headers(), &expected, "response headers with\n{yaml}");
    if debug() {
        eprintln!(
            "{yaml}\n-> sent {:?} {:?}\n-> answered {:?}",
            sent.uri,
            sent.headers,
            resp.headers()
        );
    }
});
