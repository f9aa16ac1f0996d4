//! Hostile paths and headers at the edge (contract §4; docs/configuration.md "Route access",
//! "Header and query transforms", `trusted_proxies`): encoded and ambiguous paths cannot
//! reach a protected route without its key nor reach an open route's upstream as something
//! else than what was routed; client-chosen `X-Request-Id`, `X-Forwarded-*`, `X-Consumer*`
//! and `Connection` cannot override what weir adds; template values cannot split a message.
//!
//! Everything is sent as raw HTTP/1.1 bytes: a client library would normalize the paths and
//! refuse the headers before weir ever saw them. What the lead's smuggling suite covers
//! (CL/TE, bare LF, chunk sizes, bad header names, NUL/CR/LF in values, Host) is not
//! repeated here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Backend, check_problem_body, dedent, echoed_header, h2c_client, start};

const OPS_KEY: &str = "hostile-ops-key-7d3e91";

// ---------------------------------------------------------------------------------------
// A byte-exact client

/// One response as it was on the wire, read to the end of the connection.
#[derive(Debug)]
struct Wire {
    status: u16,
    /// Header lines as sent, without CRLF.
    lines: Vec<Vec<u8>>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Bytes after the first response: a second response here would be a split.
    after: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn is_problem(&self) -> bool {
        self.header("content-type") == Some("application/problem+json")
    }

    /// One well-formed message: every header line a token, a colon and a value without
    /// control characters (HTAB aside), the body framed exactly, nothing after it.
    fn assert_one_clean_message(&self, what: &str) {
        for line in &self.lines {
            let colon = line.iter().position(|&b| b == b':');
            let ok = colon.is_some_and(|c| {
                c > 0
                    && line[..c]
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                    && line[c + 1..]
                        .iter()
                        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
            });
            assert!(
                ok,
                "{what}: malformed header line {:?}",
                line.escape_ascii().to_string()
            );
        }
        assert!(
            self.after.is_empty(),
            "{what}: bytes after the response (a split?): {:?}",
            self.after.escape_ascii().to_string()
        );
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `request` on a new connection and reads until the server closes it (every request
/// here says `Connection: close`). `None`: closed without a response head.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Option<Wire> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was not closed within 10 s");
    let head_end = find(&all, b"\r\n\r\n")?;
    let mut lines = all[..head_end].split(|&b| b == b'\n').map(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        l.to_vec()
    });
    let status_line = lines.next()?;
    let status = std::str::from_utf8(&status_line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    let lines: Vec<Vec<u8>> = lines.collect();
    let headers: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| {
            let s = String::from_utf8_lossy(l);
            s.split_once(':')
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let rest = &all[head_end + 4..];
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let (body, used) = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        crate::common::decode_chunked(rest).expect("a complete chunked body")
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        assert!(rest.len() >= len, "body shorter than its Content-Length");
        (rest[..len].to_vec(), len)
    } else {
        (rest.to_vec(), rest.len())
    };
    Some(Wire {
        status,
        lines,
        headers,
        body,
        after: rest[used..].to_vec(),
    })
}

/// `GET target` with `Host: test.local`, the given extra header lines and `Connection: close`.
fn get_bytes(target: &[u8], extra: &[&[u8]]) -> Vec<u8> {
    let mut r = b"GET ".to_vec();
    r.extend_from_slice(target);
    r.extend_from_slice(b" HTTP/1.1\r\nHost: test.local\r\n");
    for line in extra {
        r.extend_from_slice(line);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"Connection: close\r\n\r\n");
    r
}

async fn get_raw(addr: SocketAddr, target: &[u8], extra: &[&[u8]]) -> Wire {
    exchange(addr, &get_bytes(target, extra))
        .await
        .unwrap_or_else(|| panic!("GET {}: closed without a response", target.escape_ascii()))
}

fn is_ulid(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b))
}

/// Every value of request header `name` the echo backend saw.
fn echoed_all(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Paths

/// A protected `/admin` prefix on its own upstream next to an open catch-all on another:
/// which backend answered says which route was taken.
fn admin_and_open(admin: &Backend, public: &Backend) -> String {
    format!(
        r#"
        auth:
          providers:
            keys: {{ type: api_key, header: X-Api-Key }}
        consumers:
          - name: ops
            roles: [admin]
            api_keys: ["{OPS_KEY}"]
        upstreams:
          admin:
            targets: [{{ url: "{}" }}]
          public:
            targets: [{{ url: "{}" }}]
        routes:
          - name: admin
            match: {{ prefix: /admin }}
            upstream: admin
            auth: {{ providers: [keys] }}
          - name: open
            match: {{ prefix: / }}
            upstream: public
        "#,
        admin.url(),
        public.url()
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The protected route, forwarded as this path: 401 without the key, 200 with it.
    Admin(&'static str),
    /// The open route, forwarded as this path.
    Open(&'static str),
    /// 400, nothing forwarded.
    Refused,
}

/// (raw request target, what must happen). Targets are bytes: some are not UTF-8.
const PATHS: &[(&[u8], Expect)] = &[
    (b"/admin", Expect::Admin("/admin")),
    (b"/admin/x", Expect::Admin("/admin/x")),
    // Dot segments, plain and encoded, in any case.
    (b"/public/../admin", Expect::Admin("/admin")),
    (b"/%2e%2e/admin", Expect::Admin("/admin")),
    (b"/public/%2e%2e/admin", Expect::Admin("/admin")),
    (b"/public/%2E%2e/admin", Expect::Admin("/admin")),
    (b"/public/.%2E/admin/x", Expect::Admin("/admin/x")),
    (b"/public/%2E%2e/", Expect::Open("/")),
    (b"/%2e/admin", Expect::Admin("/admin")),
    (b"/admin/%2e", Expect::Admin("/admin/")),
    (b"/admin/..", Expect::Open("/")),
    (b"/admin/...", Expect::Admin("/admin/...")),
    (b"/./admin", Expect::Admin("/admin")),
    (b"/admin/.", Expect::Admin("/admin/")),
    (b"/public/../../../admin", Expect::Admin("/admin")),
    // Repeated slashes.
    (b"//admin", Expect::Admin("/admin")),
    (b"///admin//x", Expect::Admin("/admin/x")),
    // Unreserved characters encoded.
    (b"/%61dmin", Expect::Admin("/admin")),
    (b"/%61%64%6d%69%6e/x", Expect::Admin("/admin/x")),
    // Case: paths are case-sensitive (documented; a regex guard covers case-folding origins).
    (b"/ADMIN", Expect::Open("/ADMIN")),
    (b"/%41DMIN", Expect::Open("/ADMIN")),
    // An encoded slash or backslash, or a raw backslash, is a separator to some origins and
    // data to others: refused (routes may allow them with `allow_ambiguous_paths`).
    (b"/public/..%2fadmin", Expect::Refused),
    (b"/public/%2e%2e%2fadmin", Expect::Refused),
    (b"/public/%2e%2e%2f%2e%2e%2fadmin", Expect::Refused),
    (b"/admin%2fx", Expect::Refused),
    (b"/%2fadmin", Expect::Refused),
    (b"/public/..%5cadmin", Expect::Refused),
    (b"/admin%5cx", Expect::Refused),
    (b"/public/..\\admin", Expect::Refused),
    (b"/admin\\x", Expect::Refused),
    (b"\\admin", Expect::Refused),
    // Double encoding is decoded once at most: %252e is the text "%2e".
    (
        b"/public/%252e%252e/admin",
        Expect::Open("/public/%252e%252e/admin"),
    ),
    (b"/%2561dmin", Expect::Open("/%2561dmin")),
    // Overlong UTF-8 for '.' and '/': not decoded, so not dots or slashes.
    (
        b"/public/%c0%ae%c0%ae/admin",
        Expect::Open("/public/%C0%AE%C0%AE/admin"),
    ),
    (
        b"/public/..%c0%afadmin",
        Expect::Open("/public/..%C0%AFadmin"),
    ),
    (b"/public/\xc0\xae\xc0\xae/admin", Expect::Refused),
    // Path parameters: `;` ends a segment's name for prefix routes, as servlet containers
    // read it; a segment that is empty or a dot segment without its parameters is refused.
    (b"/admin;x=1", Expect::Admin("/admin;x=1")),
    (b"/admin;x=1/y", Expect::Admin("/admin;x=1/y")),
    (b"/public/..;/admin", Expect::Refused),
    (b"/;/admin", Expect::Refused),
    (b"/admin/;x/..", Expect::Admin("/admin/")),
    // NUL and malformed escapes: refused.
    (b"/admin%00", Expect::Refused),
    (b"/public%00/../admin", Expect::Refused),
    (b"/admin%", Expect::Refused),
    (b"/admin%2", Expect::Refused),
    (b"/%zzadmin", Expect::Refused),
    // Trailing dots and blanks are part of the segment.
    (b"/admin.", Expect::Open("/admin.")),
    (b"/admin..", Expect::Open("/admin..")),
    (b"/admin./x", Expect::Open("/admin./x")),
    (b"/admin%20", Expect::Open("/admin%20")),
    (b"/admin%09", Expect::Open("/admin%09")),
    // A fragment is never part of the path (nor sent upstream).
    (b"/admin#frag", Expect::Admin("/admin")),
    (b"/public#/../admin", Expect::Open("/public")),
    (b"/public/%23/../admin", Expect::Open("/public/admin")),
    // The query is not the path.
    (b"/public?/../admin", Expect::Open("/public?/../admin")),
    (b"/admin?x=/../public", Expect::Admin("/admin?x=/../public")),
    // Absolute form: routed by its path, forwarded in origin form.
    (b"http://test.local/admin", Expect::Admin("/admin")),
    (
        b"http://test.local/public/../admin",
        Expect::Admin("/admin"),
    ),
    (
        b"http://test.local/%2e%2e/admin/x",
        Expect::Admin("/admin/x"),
    ),
    (b"http://test.local//admin", Expect::Admin("/admin")),
    (b"*", Expect::Refused),
    // Raw UTF-8 is kept as it is (see also raw_utf8_survives_normalization below).
    ("/public/café".as_bytes(), Expect::Open("/public/café")),
];

/// How a permissive origin reads a path: every `%XX` decoded once (`%2F` and `%5C`
/// included), `\` as `/`, `;params` dropped from each segment (Tomcat, Jetty), then dot
/// segments resolved. Case is kept. Windows' dropping of trailing dots and blanks is not
/// modelled: docs/configuration.md tells users of such origins to guard every spelling with
/// a regex route, as for case-insensitive ones.
fn lax_origin_reading(path: &str) -> String {
    let path = path.split('?').next().unwrap_or("");
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                decoded.push(b);
                i += 3;
            }
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<String> = Vec::new();
    for seg in text.split('/').skip(1) {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_owned()),
        }
    }
    format!("/{}", out.join("/"))
}

fn under_admin(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or("");
    path == "/admin" || path.starts_with("/admin/")
}

/// What one table row did.
struct Row {
    target: String,
    without_key: String,
    with_key: String,
    lax: String,
    lax_reads_admin: bool,
}

/// Sends every row of [`PATHS`], asserts each, and returns what happened.
async fn run_path_table() -> Vec<Row> {
    let admin = Backend::start("admin").await;
    let public = Backend::start("public").await;
    let gw = start(&admin_and_open(&admin, &public)).await;
    let key_line = format!("X-Api-Key: {OPS_KEY}");
    let mut rows = Vec::new();
    for &(target, expect) in PATHS {
        let shown = target.escape_ascii().to_string();
        let hits = || (admin.hits(), public.hits());
        let before = hits();
        let plain = get_raw(gw.addr, target, &[]).await;
        let body = String::from_utf8_lossy(&plain.body).into_owned();
        let mut row = Row {
            target: shown.clone(),
            without_key: String::new(),
            with_key: "-".into(),
            lax: "-".into(),
            lax_reads_admin: false,
        };
        match expect {
            Expect::Refused => {
                assert_eq!(plain.status, 400, "GET {shown}: {body}");
                assert_eq!(hits(), before, "GET {shown} was refused yet forwarded");
                row.without_key = if plain.is_problem() {
                    check_problem_body(
                        &plain.json(),
                        400,
                        "bad_request",
                        plain.header("x-request-id"),
                    );
                    "400 problem".into()
                } else {
                    "400 (HTTP parser)".into()
                };
            }
            Expect::Admin(forwarded) => {
                assert_eq!(plain.status, 401, "GET {shown} without the key: {body}");
                assert!(plain.is_problem(), "GET {shown}: {:?}", plain.headers);
                assert_eq!(
                    hits(),
                    before,
                    "GET {shown} reached a backend without the key"
                );
                row.without_key = "401".into();
                let keyed = get_raw(gw.addr, target, &[key_line.as_bytes()]).await;
                assert_eq!(
                    keyed.status,
                    200,
                    "GET {shown} with the key: {}",
                    String::from_utf8_lossy(&keyed.body)
                );
                let v = keyed.json();
                assert_eq!(v["backend"], "admin", "GET {shown}: {v}");
                assert_eq!(v["path"], forwarded, "GET {shown}: forwarded as");
                assert_eq!(echoed_header(&v, "x-consumer"), Some("ops"), "{v}");
                assert_eq!(hits(), (before.0 + 1, before.1), "GET {shown}");
                row.with_key = format!("200 admin {forwarded}");
            }
            Expect::Open(forwarded) => {
                assert_eq!(plain.status, 200, "GET {shown}: {body}");
                let v = plain.json();
                assert_eq!(v["backend"], "public", "GET {shown}: {v}");
                let received = v["path"].as_str().unwrap();
                assert_eq!(received, forwarded, "GET {shown}: forwarded as");
                // The open upstream reads paths literally (hyper): never the protected one.
                assert!(!under_admin(received), "GET {shown}: {received}");
                assert!(v["headers"].get("x-consumer").is_none(), "{v}");
                assert_eq!(hits(), (before.0, before.1 + 1), "GET {shown}");
                row.without_key = format!("200 public {received}");
                row.lax = lax_origin_reading(received);
                row.lax_reads_admin = under_admin(&row.lax);
            }
        }
        rows.push(row);
    }
    gw.stop().await;
    rows
}

fn print_table(rows: &[Row]) {
    let w = rows
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(0)
        .max(10);
    let w2 = rows
        .iter()
        .map(|r| r.without_key.len())
        .max()
        .unwrap_or(0)
        .max(11);
    let w3 = rows
        .iter()
        .map(|r| r.with_key.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut out = String::new();
    writeln!(
        out,
        "\n{:w$}  {:w2$}  {:w3$}  a lax origin reads",
        "raw target", "without key", "with key"
    )
    .unwrap();
    for r in rows {
        writeln!(
            out,
            "{:w$}  {:w2$}  {:w3$}  {}{}",
            r.target,
            r.without_key,
            r.with_key,
            r.lax,
            if r.lax_reads_admin {
                "  <-- /admin"
            } else {
                ""
            }
        )
        .unwrap();
    }
    println!("{out}");
}

/// Every spelling in [`PATHS`] is refused or routed exactly as its normalized form, and the
/// upstream receives that normalized form: the protected route is never reached without
/// its key, and the open route's upstream never receives a path that it (reading paths
/// literally) takes for `/admin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_spellings_route_and_forward_as_their_normalized_form() {
    let rows = run_path_table().await;
    print_table(&rows);
}

/// The open route's upstream may be an origin that reads paths more loosely than weir
/// routes them: one that decodes `%2F` and `%5C`, takes `\` for `/`, drops `;params`
/// (Tomcat, Jetty, Spring) or trailing dots (Windows). Behind a catch-all open route,
/// such an origin reads some spellings as `/admin` that weir routed as open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_routed_open_reads_as_admin_to_a_lax_origin() {
    let rows = run_path_table().await;
    print_table(&rows);
    let bad: Vec<&str> = rows
        .iter()
        .filter(|r| r.lax_reads_admin)
        .map(|r| r.target.as_str())
        .collect();
    assert!(
        bad.is_empty(),
        "routed to the open upstream, read as /admin by a lax origin: {bad:?}"
    );
}

/// Raw UTF-8 in a path (curl and browsers' address bars send it) is kept byte for byte when
/// something else in the path is normalized, as it is when nothing is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_utf8_survives_normalization() {
    let admin = Backend::start("admin").await;
    let public = Backend::start("public").await;
    let gw = start(&admin_and_open(&admin, &public)).await;
    for (sent, forwarded) in [
        ("/public/café", "/public/café"),
        ("/public/café/./x", "/public/café/x"),
        ("/public/café/a%20b", "/public/café/a%20b"),
        ("//public/日本/%7e", "/public/日本/~"),
    ] {
        let w = get_raw(gw.addr, sent.as_bytes(), &[]).await;
        assert_eq!(w.status, 200, "GET {sent}: {w:?}");
        assert_eq!(w.json()["path"], forwarded, "GET {sent}");
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// X-Request-Id

/// The route `/e` to the echo backend with `transform` (YAML lines under the route), after
/// `top` (top-level keys); any other path is a 404 problem.
fn echo_route(backend: &Backend, top: &str, transform: &str) -> String {
    format!(
        "{top}\nupstreams:\n  be:\n    targets: [{{ url: \"{}\" }}]\n\
         routes:\n  - name: e\n    match: {{ prefix: /e }}\n    upstream: be\n{transform}",
        backend.url(),
        top = dedent(top),
    )
}

#[derive(Clone, Copy, Debug)]
enum Id {
    /// Kept, as this value.
    Kept(&'static str),
    /// Replaced by a generated ULID.
    Replaced,
    /// 400 by the HTTP parser, nothing forwarded.
    Refused,
}

/// The rule (contract §4, weir-app/src/request_id.rs): 1 to 128 characters of
/// `[A-Za-z0-9._:-]` are kept, anything else is replaced by a fresh ULID. Whichever it is,
/// the one id is what the upstream gets (once), what the client gets (once), what a
/// response template renders and what a problem body names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_outside_the_safe_alphabet_or_length_are_replaced_everywhere() {
    let backend = Backend::start("b").await;
    let gw = start(&echo_route(
        &backend,
        "",
        "    transform:\n      response:\n        headers:\n          \
         set: { X-Req: \"id=${request.id}\" }\n",
    ))
    .await;
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-";
    let of_len = |n: usize| -> Vec<u8> { (0..n).map(|i| alphabet[i % alphabet.len()]).collect() };
    let max: &'static str = Box::leak(String::from_utf8(of_len(128)).unwrap().into_boxed_str());
    let (over, kib, kib20) = (of_len(129), of_len(1024), of_len(20 * 1024));
    let cases: Vec<(&str, Vec<&[u8]>, Id)> = vec![
        ("128 safe characters", vec![max.as_bytes()], Id::Kept(max)),
        ("129 safe characters", vec![&over], Id::Replaced),
        ("1 KiB", vec![&kib], Id::Replaced),
        ("20 KiB", vec![&kib20], Id::Replaced),
        ("empty", vec![b""], Id::Replaced),
        (
            "surrounding blanks are not the value",
            vec![b"  padded-id_1  "],
            Id::Kept("padded-id_1"),
        ),
        ("inner space", vec![b"a b"], Id::Replaced),
        ("inner tab", vec![b"a\tb"], Id::Replaced),
        (
            "obs-text (UTF-8)",
            vec!["caf\u{e9}-1".as_bytes()],
            Id::Replaced,
        ),
        ("Latin-1 byte", vec![b"caf\xe9"], Id::Replaced),
        (
            "encoded CR LF, as text",
            vec![b"id%0d%0aSet-Cookie:%20x=1"],
            Id::Replaced,
        ),
        ("markup", vec![b"<script>alert(1)</script>"], Id::Replaced),
        ("path-like", vec![b"../../etc/passwd"], Id::Replaced),
        ("quotes", vec![b"\"id\""], Id::Replaced),
        ("comma list", vec![b"a,b"], Id::Replaced),
        ("SOH control", vec![b"a\x01b"], Id::Refused),
        ("ESC control", vec![b"a\x1b[31mb"], Id::Refused),
        ("DEL", vec![b"a\x7fb"], Id::Refused),
        (
            "two lines, the first well-formed",
            vec![b"first-ok", b"second bad"],
            Id::Kept("first-ok"),
        ),
        (
            "two lines, the first malformed",
            vec![b"first bad", b"second-ok"],
            Id::Replaced,
        ),
        (
            "two well-formed lines",
            vec![b"one-1", b"two-2"],
            Id::Kept("one-1"),
        ),
    ];
    let mut report = String::from("\nX-Request-Id sent                     -> outcome\n");
    for (what, values, expect) in &cases {
        let lines: Vec<Vec<u8>> = values
            .iter()
            .map(|v| [b"X-Request-Id: ".as_slice(), v].concat())
            .collect();
        let extra: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let before = backend.hits();
        let proxied = get_raw(gw.addr, b"/e/x", &extra).await;
        let missing = get_raw(gw.addr, b"/nothing-here", &extra).await;
        if let Id::Refused = expect {
            assert_eq!(proxied.status, 400, "{what}: {proxied:?}");
            assert_eq!(missing.status, 400, "{what}: {missing:?}");
            assert_eq!(backend.hits(), before, "{what}: refused yet forwarded");
            writeln!(report, "{what:38} -> 400 by the HTTP parser").unwrap();
            continue;
        }
        assert_eq!(proxied.status, 200, "{what}: {proxied:?}");
        proxied.assert_one_clean_message(what);
        assert_eq!(
            proxied.count("x-request-id"),
            1,
            "{what}: {:?}",
            proxied.headers
        );
        let id = proxied.header("x-request-id").unwrap().to_owned();
        match expect {
            Id::Kept(v) => assert_eq!(id, *v, "{what}"),
            _ => assert!(is_ulid(&id), "{what}: replaced by {id:?}, not a ULID"),
        }
        let v = proxied.json();
        assert_eq!(
            echoed_all(&v, "x-request-id"),
            std::slice::from_ref(&id),
            "{what}: upstream got {v}"
        );
        assert_eq!(
            proxied.header("x-req"),
            Some(format!("id={id}").as_str()),
            "{what}"
        );

        assert_eq!(missing.status, 404, "{what}: {missing:?}");
        missing.assert_one_clean_message(what);
        assert_eq!(missing.count("x-request-id"), 1, "{what}");
        let problem_id = missing.header("x-request-id").unwrap();
        match expect {
            Id::Kept(v) => assert_eq!(problem_id, *v, "{what}"),
            _ => {
                assert!(is_ulid(problem_id), "{what}: {problem_id:?}");
                assert_ne!(problem_id, id, "{what}: each request its own id");
            }
        }
        check_problem_body(&missing.json(), 404, "route_not_found", Some(problem_id));
        writeln!(
            report,
            "{what:38} -> {}",
            if matches!(expect, Id::Kept(_)) {
                "kept"
            } else {
                "replaced by a ULID"
            }
        )
        .unwrap();
    }
    println!("{report}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// X-Forwarded-*, the client address

/// `/ip` shows the client address weir resolved (`${request.ip}` upstream and back);
/// `/rl` is limited per client address, `limit` at once.
fn ip_config(backend: &Backend, trusted: &str, limit: u32) -> String {
    format!(
        r#"
        {trusted}
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: ip
            match: {{ prefix: /ip }}
            upstream: be
            transform:
              request:
                headers: {{ set: {{ X-Seen-Ip: "${{request.ip}}" }} }}
              response:
                headers: {{ set: {{ X-Ip: "${{request.ip}}" }} }}
          - name: rl
            match: {{ prefix: /rl }}
            upstream: be
            rate_limit: [{{ key: ip, limit: {limit}, per: 1m }}]
        "#,
        url = backend.url()
    )
}

/// The forged headers a client could try, as header lines.
const FORGED: &[&[u8]] = &[
    b"X-Forwarded-For: 198.51.100.1",
    b"X-Forwarded-For: 198.51.100.2, 10.0.0.1",
    b"X-Forwarded-Proto: https",
    b"X-Forwarded-Host: evil.example",
    b"X-Real-IP: 198.51.100.3",
    b"Forwarded: for=198.51.100.4;proto=https;host=evil.example",
];

/// From a peer outside `trusted_proxies`, forged forwarding headers move nothing: the
/// client address (for `key: ip` limits and `${request.ip}`) is the socket peer, and the
/// upstream gets weir's own `X-Forwarded-For`, `-Proto` and `-Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_headers_from_an_untrusted_peer_change_no_client_address() {
    let backend = Backend::start("b").await;
    let gw = start(&ip_config(&backend, "", 2)).await;
    for (i, forged) in FORGED.iter().enumerate() {
        let shown = forged.escape_ascii().to_string();
        let w = get_raw(gw.addr, b"/ip", &[forged]).await;
        assert_eq!(w.status, 200, "{shown}");
        assert_eq!(w.header("x-ip"), Some("127.0.0.1"), "{shown}");
        let v = w.json();
        assert_eq!(
            echoed_header(&v, "x-seen-ip"),
            Some("127.0.0.1"),
            "{shown}: {v}"
        );
        assert_eq!(
            echoed_header(&v, "x-forwarded-for"),
            Some("127.0.0.1"),
            "{shown}: {v}"
        );
        assert_eq!(
            echoed_header(&v, "x-forwarded-proto"),
            Some("http"),
            "{shown}: {v}"
        );
        assert_eq!(
            echoed_header(&v, "x-forwarded-host"),
            Some("test.local"),
            "{shown}: {v}"
        );
        // The rate limit counts the peer: the third request is refused, however forged.
        let w = get_raw(gw.addr, b"/rl", &[forged]).await;
        let expected = if i < 2 { 200 } else { 429 };
        assert_eq!(w.status, expected, "request {i} to /rl with {shown}");
    }
    // All the forgeries at once, too.
    let w = get_raw(gw.addr, b"/ip", FORGED).await;
    let v = w.json();
    assert_eq!(echoed_header(&v, "x-seen-ip"), Some("127.0.0.1"), "{v}");
    assert_eq!(
        echoed_header(&v, "x-forwarded-for"),
        Some("127.0.0.1"),
        "{v}"
    );
    assert_eq!(w.header("x-ip"), Some("127.0.0.1"));
    gw.stop().await;
}

/// Behind a trusted proxy (here the test client, 127.0.0.0/8), the client address is the
/// right-most `X-Forwarded-For` entry that is not itself trusted, across repeated header
/// lines; an entry that is not an address stops the walk at the last trusted hop. Rate
/// limits count that address, and `-Proto`/`-Host` from the proxy are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_trusted_proxies_the_right_most_untrusted_entry_is_the_client() {
    let backend = Backend::start("b").await;
    let gw = start(&ip_config(&backend, "trusted_proxies: [127.0.0.0/8]", 1)).await;
    let cases: &[(&[&[u8]], &str)] = &[
        (&[], "127.0.0.1"),
        (&[b"X-Forwarded-For: 198.51.100.1"], "198.51.100.1"),
        (
            &[b"X-Forwarded-For: 203.0.113.7, 198.51.100.1"],
            "198.51.100.1",
        ),
        (
            &[b"X-Forwarded-For: 198.51.100.9, 127.0.0.9"],
            "198.51.100.9",
        ),
        (
            &[b"X-Forwarded-For: 198.51.100.9 ,127.0.0.9,  127.1.2.3"],
            "198.51.100.9",
        ),
        (
            &[
                b"X-Forwarded-For: 203.0.113.7",
                b"X-Forwarded-For: 198.51.100.4",
            ],
            "198.51.100.4",
        ),
        (&[b"X-Forwarded-For: 2001:db8::7"], "2001:db8::7"),
        (&[b"X-Forwarded-For: not-an-ip"], "127.0.0.1"),
        (&[b"X-Forwarded-For: 198.51.100.1, not-an-ip"], "127.0.0.1"),
        (&[b"X-Forwarded-For: 198.51.100.1:4711"], "127.0.0.1"),
        (
            &[b"X-Forwarded-For: 198.51.100.5, 127.0.0.8, not-an-ip, 127.0.0.9"],
            "127.0.0.9",
        ),
        (&[b"X-Real-IP: 198.51.100.3"], "127.0.0.1"),
        (&[b"Forwarded: for=198.51.100.4"], "127.0.0.1"),
    ];
    for (lines, client) in cases {
        let shown: Vec<String> = lines.iter().map(|l| l.escape_ascii().to_string()).collect();
        let w = get_raw(gw.addr, b"/ip", lines).await;
        assert_eq!(w.status, 200, "{shown:?}");
        assert_eq!(w.header("x-ip"), Some(*client), "{shown:?}");
        let v = w.json();
        assert_eq!(
            echoed_header(&v, "x-seen-ip"),
            Some(*client),
            "{shown:?}: {v}"
        );
        // The proxy's chain is kept and the peer appended.
        let xff = echoed_header(&v, "x-forwarded-for").unwrap();
        assert!(xff.ends_with("127.0.0.1"), "{shown:?}: {xff}");
    }
    // A proxy's own -Proto and -Host are believed.
    let w = get_raw(
        gw.addr,
        b"/ip",
        &[
            b"X-Forwarded-Proto: https",
            b"X-Forwarded-Host: api.example.com",
        ],
    )
    .await;
    let v = w.json();
    assert_eq!(echoed_header(&v, "x-forwarded-proto"), Some("https"), "{v}");
    assert_eq!(
        echoed_header(&v, "x-forwarded-host"),
        Some("api.example.com"),
        "{v}"
    );

    // One request per client address at once: buckets follow the resolved address.
    let limited: &[(&[u8], u16)] = &[
        (b"X-Forwarded-For: 198.51.100.1", 200),
        (b"X-Forwarded-For: 198.51.100.2", 200),
        (b"X-Forwarded-For: 203.0.113.7, 198.51.100.1", 429),
        (b"X-Forwarded-For: 198.51.100.2, 127.0.0.5", 429),
        (b"X-Forwarded-For: 203.0.113.7", 200),
    ];
    for (line, status) in limited {
        let w = get_raw(gw.addr, b"/rl", &[line]).await;
        assert_eq!(w.status, *status, "{}", line.escape_ascii());
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// X-Consumer*

fn identity_routes(backend: &Backend) -> String {
    format!(
        r#"
        auth:
          providers:
            keys: {{ type: api_key, header: X-Api-Key }}
        consumers:
          - name: ops
            roles: [admin, read]
            api_keys: ["{OPS_KEY}"]
        upstreams:
          be:
            targets: [{{ url: "{}" }}]
        routes:
          - name: closed
            match: {{ prefix: /closed }}
            upstream: be
            auth: {{ providers: [keys] }}
          - name: open
            match: {{ prefix: /open }}
            upstream: be
        "#,
        backend.url()
    )
}

/// Header names an upstream may take for `X-Consumer*`: weir's prefix in any case, repeated,
/// and with `_` for `-` (CGI, PHP, WSGI and Rack turn both into `HTTP_X_CONSUMER`).
const CLAIMS: &[&[u8]] = &[
    b"X-Consumer: mallory",
    b"x-consumer: mallory-2",
    b"X-CONSUMER-ROLES: superuser",
    b"X-Consumer-Id: 0",
    b"X-Consumer-Anything: x",
    b"X-Consumers: all",
];

const UNDERSCORE_CLAIMS: &[&[u8]] = &[
    b"X_Consumer: mallory",
    b"X-Consumer_Roles: superuser",
    b"x_consumer_roles: superuser",
];

fn identity_like(v: &Value) -> Vec<String> {
    v["headers"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.replace('_', "-").starts_with("x-consumer"))
        .cloned()
        .collect()
}

/// A client's identity claims, repeated and in any case, never reach the upstream: on an
/// open route nothing names a consumer, behind auth only weir's own values do. Over HTTP/2
/// as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_identity_claims_never_reach_the_upstream() {
    let backend = Backend::start("b").await;
    let gw = start(&identity_routes(&backend)).await;
    let key_line = format!("X-Api-Key: {OPS_KEY}");

    let w = get_raw(gw.addr, b"/open/x", CLAIMS).await;
    assert_eq!(w.status, 200);
    let v = w.json();
    assert!(
        identity_like(&v).is_empty(),
        "claims reached an open route: {v}"
    );

    let mut lines = CLAIMS.to_vec();
    lines.push(key_line.as_bytes());
    let w = get_raw(gw.addr, b"/closed/x", &lines).await;
    assert_eq!(w.status, 200);
    let v = w.json();
    assert_eq!(echoed_all(&v, "x-consumer"), ["ops"], "{v}");
    assert_eq!(echoed_all(&v, "x-consumer-roles"), ["admin,read"], "{v}");
    let mut seen = identity_like(&v);
    seen.sort();
    assert_eq!(seen, ["x-consumer", "x-consumer-roles"], "{v}");

    // Without the key the claims do not authenticate anything.
    let w = get_raw(gw.addr, b"/closed/x", CLAIMS).await;
    assert_eq!(w.status, 401);

    // HTTP/2 (h2c): the same.
    let h2 = h2c_client();
    let resp = h2
        .get(gw.url("/closed/x"))
        .header("x-api-key", OPS_KEY)
        .header("x-consumer", "mallory")
        .header("x-consumer-roles", "superuser")
        .header("x-consumer-extra", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(echoed_all(&v, "x-consumer"), ["ops"], "{v}");
    assert_eq!(echoed_all(&v, "x-consumer-roles"), ["admin,read"], "{v}");
    assert!(v["headers"].get("x-consumer-extra").is_none(), "{v}");
    let v: Value = h2
        .get(gw.url("/open/x"))
        .header("x-consumer", "mallory")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(identity_like(&v).is_empty(), "{v}");
    gw.stop().await;
}

/// Gateways that pass `X_Consumer` while stripping `X-Consumer` let a client speak for an
/// upstream that reads headers through CGI-style names (`HTTP_X_CONSUMER`): on an open
/// route its claim is the only one; behind auth it competes with weir's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_spellings_of_identity_headers_never_reach_the_upstream() {
    let backend = Backend::start("b").await;
    let gw = start(&identity_routes(&backend)).await;
    let w = get_raw(gw.addr, b"/open/x", UNDERSCORE_CLAIMS).await;
    // Refusing such a request is as good as dropping the header.
    if w.status == 200 {
        let v = w.json();
        assert!(identity_like(&v).is_empty(), "on the open route: {v}");
    } else {
        assert_eq!(w.status, 400, "{w:?}");
    }
    let key_line = format!("X-Api-Key: {OPS_KEY}");
    let mut lines = UNDERSCORE_CLAIMS.to_vec();
    lines.push(key_line.as_bytes());
    let w = get_raw(gw.addr, b"/closed/x", &lines).await;
    if w.status == 200 {
        let v = w.json();
        let mut seen = identity_like(&v);
        seen.sort();
        assert_eq!(seen, ["x-consumer", "x-consumer-roles"], "behind auth: {v}");
    } else {
        assert_eq!(w.status, 400, "{w:?}");
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Connection

/// A client naming weir's own headers in `Connection` (CVE-2024-45410's class) strips none
/// of them: weir removes what the client listed first and adds its own after. The listed
/// headers the client itself sent are removed (RFC 9110 §7.6.1), whatever the spacing,
/// case or number of `Connection` lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_strip_weirs_headers_and_strips_the_clients_own() {
    let backend = Backend::start("b").await;
    let gw = start(&identity_routes(&backend)).await;
    let key_line = format!("X-Api-Key: {OPS_KEY}");
    let key = key_line.as_bytes();
    let cases: &[(&str, &[&[u8]])] = &[
        ("X-Consumer", &[b"Connection: X-Consumer"]),
        (
            "roles, XFF and request id",
            &[b"Connection: X-Consumer-Roles, X-Forwarded-For, X-Request-Id"],
        ),
        (
            "close first",
            &[b"Connection: close, X-Consumer, X-Forwarded-Proto, X-Forwarded-Host"],
        ),
        (
            "on a second Connection line",
            &[
                b"Connection: keep-alive",
                b"Connection: X-Consumer, X-Forwarded-For",
            ],
        ),
        (
            "odd spacing and case",
            &[b"Connection:   x-CONSUMER ,, X-consumer-roles\t,x-request-id  "],
        ),
        (
            "with forged values",
            &[
                b"Connection: X-Consumer, X-Forwarded-For",
                b"X-Consumer: mallory",
                b"X-Forwarded-For: 6.6.6.6",
            ],
        ),
    ];
    for (what, lines) in cases {
        let mut lines = lines.to_vec();
        lines.push(key);
        let w = get_raw(gw.addr, b"/closed/x", &lines).await;
        assert_eq!(w.status, 200, "{what}: {w:?}");
        let id = w.header("x-request-id").unwrap().to_owned();
        let v = w.json();
        assert_eq!(echoed_all(&v, "x-consumer"), ["ops"], "{what}: {v}");
        assert_eq!(
            echoed_all(&v, "x-consumer-roles"),
            ["admin,read"],
            "{what}: {v}"
        );
        assert_eq!(
            echoed_all(&v, "x-forwarded-for"),
            ["127.0.0.1"],
            "{what}: {v}"
        );
        assert_eq!(echoed_all(&v, "x-forwarded-proto"), ["http"], "{what}: {v}");
        assert_eq!(
            echoed_all(&v, "x-forwarded-host"),
            ["test.local"],
            "{what}: {v}"
        );
        assert_eq!(echoed_all(&v, "x-request-id"), [id], "{what}: {v}");
        assert!(v["headers"].get("connection").is_none(), "{what}: {v}");
        assert!(v["headers"].get("x-api-key").is_none(), "{what}: {v}");
    }

    // The client's own headers it names are hop-by-hop: gone, however listed.
    let own: &[(&str, &[&[u8]])] = &[
        ("one", &[b"Connection: X-Foo", b"X-Bar: 2"]),
        ("two", &[b"Connection: X-Foo, X-Bar"]),
        (
            "spacing, case, empty members",
            &[b"Connection: ,x-FOO ,,\tX-bar ,"],
        ),
        ("after close", &[b"Connection: close, X-Foo, X-Bar"]),
    ];
    for (what, lines) in own {
        let listed: Vec<String> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(b"Connection:"))
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
            .filter(|t| t.starts_with("x-"))
            .collect();
        let mut lines = lines.to_vec();
        lines.extend_from_slice(&[b"X-Foo: 1", b"X-Bar: 2", b"X-Keep: 3"]);
        let w = get_raw(gw.addr, b"/open/x", &lines).await;
        assert_eq!(w.status, 200, "{what}: {w:?}");
        let v = w.json();
        for name in ["x-foo", "x-bar"] {
            let listed = listed.iter().any(|l| l == name);
            assert_eq!(
                v["headers"].get(name).is_none(),
                listed,
                "{what}: {name} listed in Connection: {listed}, yet: {v}"
            );
        }
        assert_eq!(echoed_all(&v, "x-keep"), ["3"], "{what}: {v}");
        assert!(v["headers"].get("connection").is_none(), "{what}: {v}");
    }

    // Naming the framing headers changes nothing about the framing: weir frames the body
    // it forwards itself, so the upstream reads exactly the body sent, and one request.
    for (what, framing, body) in [
        (
            "Content-Length",
            "Content-Length: 5\r\n",
            "hello".to_owned(),
        ),
        (
            "Transfer-Encoding",
            "Transfer-Encoding: chunked\r\n",
            "5\r\nhello\r\n0\r\n\r\n".to_owned(),
        ),
    ] {
        let before = backend.hits();
        let request = format!(
            "POST /open/x HTTP/1.1\r\nHost: test.local\r\nConnection: {what}\r\n{framing}\
             Connection: close\r\n\r\n{body}"
        );
        let w = exchange(gw.addr, request.as_bytes())
            .await
            .expect("a response");
        assert_eq!(w.status, 200, "Connection: {what}: {w:?}");
        w.assert_one_clean_message(what);
        let v = w.json();
        assert_eq!(v["body_len"], 5, "Connection: {what}: {v}");
        assert_eq!(v["body_fnv"], crate::common::Fnv::hex(b"hello"), "{v}");
        assert_eq!(backend.hits(), before + 1, "Connection: {what}");
    }
    gw.stop().await;
}

/// `Connection` may come as several lines (RFC 9110 §5.3: one list), and a sender's
/// `Connection: close` followed by `Connection: X-Foo` lists X-Foo as much as one line
/// would. Both ways: the upstream must not get the client's X-Foo, nor the client the
/// upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_listed_on_any_connection_line_are_hop_by_hop() {
    let backend = Backend::start("b").await;
    let gw = start(&echo_route(&backend, "", "")).await;
    let mut leaks = Vec::new();
    for first in ["close", "keep-alive"] {
        let first_line = format!("Connection: {first}");
        let w = get_raw(
            gw.addr,
            b"/e/x",
            &[
                first_line.as_bytes(),
                b"Connection: X-Foo",
                b"X-Foo: 1",
                b"X-Keep: 3",
            ],
        )
        .await;
        assert_eq!(w.status, 200, "{w:?}");
        let v = w.json();
        assert_eq!(echoed_all(&v, "x-keep"), ["3"], "{v}");
        if v["headers"].get("x-foo").is_some() {
            leaks.push(format!(
                "request after {first_line}: X-Foo reached the upstream"
            ));
        }

        let respond = format!("X-Respond-Header: Connection: {first}");
        let w = get_raw(
            gw.addr,
            b"/e/x",
            &[
                respond.as_bytes(),
                b"X-Respond-Header: Connection: X-Backend-Secret",
                b"X-Respond-Header: X-Backend-Secret: internal",
            ],
        )
        .await;
        assert_eq!(w.status, 200, "{w:?}");
        if w.header("x-backend-secret").is_some() {
            leaks.push(format!(
                "response after Connection: {first}: X-Backend-Secret reached the client"
            ));
        }
    }
    assert!(leaks.is_empty(), "{leaks:#?}");
    gw.stop().await;
}

/// `Host` is not a connection option: a client naming it in `Connection` must not make
/// weir send the upstream an HTTP/1.1 request without `Host` (RFC 9112 §3.2), which a
/// virtual-hosting origin answers from its default host, whatever that is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_host_in_connection_does_not_drop_host_upstream() {
    let backend = Backend::start("b").await;
    let gw = start(&echo_route(&backend, "", "")).await;
    for line in [
        b"Connection: Host".as_slice(),
        b"Connection: keep-alive, host",
    ] {
        let w = get_raw(gw.addr, b"/e/x", &[line]).await;
        // Refusing the request would do as well as keeping Host.
        if w.status == 400 {
            continue;
        }
        assert_eq!(w.status, 200, "{w:?}");
        let v = w.json();
        assert_eq!(
            echoed_all(&v, "host"),
            ["test.local"],
            "{}: {v}",
            line.escape_ascii()
        );
    }
    gw.stop().await;
}

/// The same from the other side: an upstream naming `X-Request-Id` (and setting its own) in
/// its response's `Connection` does not take weir's id away from the client, nor replace it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cannot_strip_or_replace_the_request_id_of_the_response() {
    let backend = Backend::start("b").await;
    let gw = start(&echo_route(&backend, "", "")).await;
    let w = get_raw(
        gw.addr,
        b"/e/x",
        &[
            b"X-Request-Id: client-id-42",
            b"X-Respond-Header: Connection: X-Request-Id, X-Other",
            b"X-Respond-Header: X-Request-Id: upstream-id",
            b"X-Respond-Header: X-Other: 1",
        ],
    )
    .await;
    assert_eq!(w.status, 200, "{w:?}");
    w.assert_one_clean_message("upstream Connection");
    assert_eq!(w.count("x-request-id"), 1, "{:?}", w.headers);
    assert_eq!(
        w.header("x-request-id"),
        Some("client-id-42"),
        "{:?}",
        w.headers
    );
    assert_eq!(w.header("x-other"), None, "{:?}", w.headers);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Templates

/// What is tried, the target, extra header lines, and the path the upstream gets (`None`:
/// refused with 400).
type TemplateCase = (
    &'static str,
    &'static [u8],
    &'static [&'static [u8]],
    Option<&'static str>,
);

/// Every template input a request controls, fed CR/LF and other control bytes in every
/// encoding that reaches weir: path parameters in a rewritten path, a header and a query
/// value; the query itself through a query transform; a client header through
/// `${header.NAME}`; the request id through a response template. The client always reads
/// one well-formed message, and no value the upstream receives holds CR or LF or makes a
/// header of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_template_input_splits_the_request_or_the_response() {
    let backend = Backend::start("b").await;
    let gw = start(&format!(
        r#"
        auth:
          providers:
            keys: {{ type: api_key, header: X-Api-Key }}
        consumers:
          - name: ops
            api_keys: ["{OPS_KEY}"]
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: items
            match: {{ path: "/items/{{id}}/{{*rest}}" }}
            upstream: be
            auth: {{ providers: [keys] }}
            transform:
              request:
                path:
                  rewrite: {{ regex: '^/items/[^/]+/(.*)$', to: '/v/${{path.id}}/$1' }}
                headers:
                  set:
                    X-Item: "item=${{path.id}}"
                    X-Rest: "${{path.rest}}"
                    X-Copied: "${{header.X-Note}}"
                    X-Who: "${{consumer.name}}"
                query:
                  set: {{ item: "${{path.id}}", note: "${{header.X-Note}}" }}
                  remove: [debug]
              response:
                headers:
                  set:
                    X-Req: "${{request.id}}"
                    X-Who: "${{consumer.name}}@${{request.ip}}"
        "#,
        url = backend.url()
    ))
    .await;
    let key_line = format!("X-Api-Key: {OPS_KEY}");
    let key = key_line.as_bytes();
    let cases: &[TemplateCase] = &[
        (
            "CR LF in the path parameter",
            b"/items/a%0d%0aSet-Cookie:%20x=1/r",
            &[],
            Some("/v/a%0D%0ASet-Cookie:%20x=1/r?item=a%250D%250ASet-Cookie:%2520x%3D1&note="),
        ),
        (
            // Refused for its encoded slash (`HTTP%2f1.1`) before any template runs.
            "a whole response in the parameter",
            b"/items/%0d%0a%0d%0aHTTP%2f1.1%20200%20OK%0d%0aX-Evil:%201/r",
            &[],
            None,
        ),
        (
            "a whole response in the parameter, without a slash",
            b"/items/%0d%0a%0d%0aHTTP%201.1%20200%20OK%0d%0aX-Evil:%201/r",
            &[],
            Some(
                "/v/%0D%0A%0D%0AHTTP%201.1%20200%20OK%0D%0AX-Evil:%201/r\
                 ?item=%250D%250A%250D%250AHTTP%25201.1%2520200%2520OK%250D%250AX-Evil:%25201&note=",
            ),
        ),
        (
            "CR LF in the catch-all parameter",
            b"/items/1/a%0d%0aX-Evil:%201",
            &[],
            Some("/v/1/a%0D%0AX-Evil:%201?item=1&note="),
        ),
        (
            "CR LF and NUL-free controls in the query",
            b"/items/1/r?q=%0d%0aX-Evil:%201&debug=%0a&z=%01%7f",
            &[],
            Some("/v/1/r?q=%0d%0aX-Evil:%201&z=%01%7f&item=1&note="),
        ),
        (
            "CR LF as text in a copied header",
            b"/items/1/r",
            &[b"X-Note: a%0d%0aX-Evil: 1"],
            Some("/v/1/r?item=1&note=a%250d%250aX-Evil:%201"),
        ),
        (
            "obs-text and HTAB in a copied header",
            b"/items/1/r",
            &[b"X-Note: caf\xc3\xa9\tx"],
            Some("/v/1/r?item=1&note=caf%C3%A9%09x"),
        ),
        (
            "CR LF in the request id",
            b"/items/1/r",
            &[b"X-Request-Id: a%0d%0aX-Evil:%201"],
            Some("/v/1/r?item=1&note="),
        ),
        ("encoded NUL in the parameter", b"/items/a%00b/r", &[], None),
    ];
    for (what, target, extra, forwarded) in cases {
        let mut lines = extra.to_vec();
        lines.push(key);
        let before = backend.hits();
        let w = get_raw(gw.addr, target, &lines).await;
        w.assert_one_clean_message(what);
        assert!(
            w.headers
                .iter()
                .all(|(n, _)| n != "x-evil" && n != "set-cookie"),
            "{what}: a header line was injected into the response: {:?}",
            w.headers
        );
        let Some(forwarded) = forwarded else {
            assert_eq!(w.status, 400, "{what}: {w:?}");
            assert_eq!(backend.hits(), before, "{what}");
            continue;
        };
        assert_eq!(
            w.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&w.body)
        );
        let id = w.header("x-request-id").unwrap();
        assert!(is_ulid(id), "{what}: {id}");
        assert_eq!(w.header("x-req"), Some(id), "{what}");
        assert_eq!(w.header("x-who"), Some("ops@127.0.0.1"), "{what}");
        let v = w.json();
        assert_eq!(v["path"], *forwarded, "{what}: {v}");
        let headers = v["headers"].as_object().unwrap();
        for (name, values) in headers {
            assert!(
                name != "x-evil" && name != "set-cookie",
                "{what}: a header was injected upstream: {v}"
            );
            for value in values.as_array().unwrap() {
                let value = value.as_str().unwrap();
                assert!(
                    !value.contains(['\r', '\n', '\0']),
                    "{what}: {name}: {value:?}"
                );
            }
        }
        assert_eq!(echoed_all(&v, "x-who"), ["ops"], "{what}: {v}");
        assert_eq!(echoed_all(&v, "x-item").len(), 1, "{what}: {v}");
        assert_eq!(echoed_all(&v, "x-copied").len(), 1, "{what}: {v}");
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Many headers

/// Many small headers, well under `max_header_bytes`, are either all forwarded or refused
/// whole with 431 and nothing forwarded: never cut, never forwarded in part. A head of 90
/// header lines (browsers send about 20) is always forwarded. The connection is closed
/// after a refusal, the response read whole (no hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_headers_are_forwarded_whole_or_refused_whole() {
    let backend = Backend::start("b").await;
    let gw = start(&echo_route(&backend, "", "")).await;
    let mut report = String::new();
    for n in [50usize, 90, 100, 101, 200, 1000] {
        let lines: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("X-H{i}: {i}").into_bytes())
            .collect();
        let extra: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let before = backend.hits();
        let w = get_raw(gw.addr, b"/e/x", &extra).await;
        match w.status {
            200 => {
                let v = w.json();
                let got = (0..n)
                    .filter(|i| echoed_header(&v, &format!("x-h{i}")) == Some(&*i.to_string()))
                    .count();
                assert_eq!(got, n, "{n} headers: {got} forwarded");
            }
            431 if n > 90 => {
                assert_eq!(backend.hits(), before, "{n} headers: refused yet forwarded");
            }
            s => panic!("{n} headers: {s} {w:?}"),
        }
        writeln!(
            report,
            "{n:5} headers -> {}{}",
            w.status,
            if w.is_problem() {
                " problem+json"
            } else if w.status == 200 {
                ""
            } else {
                " (no problem body)"
            }
        )
        .unwrap();
    }
    println!("\n{report}");
    gw.stop().await;
}
