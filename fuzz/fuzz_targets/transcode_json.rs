//! REST → gRPC transcoding (`weir_infra::grpc::Transcoder`) with the test order service's
//! descriptor set (`weir_test_grpc::DESCRIPTOR_SET`), loaded through the config as
//! `routes[].grpc.descriptor_set`, so the rules are the ones its `google.api.http`
//! annotations give. Fuzzed methods, paths, queries and JSON bodies go to the request side;
//! fuzzed upstream bytes, in fuzzed chunks, go to the response side.
//!
//! Checked: no panic; a request message is one well-formed frame no bigger than a small
//! multiple of its input; every response message is valid JSON, their total bounded by the
//! input; and for `POST /v1/orders` (the whole body is an `Order`, as is the answer) JSON →
//! protobuf → JSON → protobuf gives the same message again.
#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use weir_config::{MapEnv, Overrides, load_str_in};
use weir_domain::grpc::GrpcSpec;
use weir_infra::grpc::{FRAME_HEADER, Transcoder};

struct Fixture {
    spec: Arc<GrpcSpec>,
    transcoder: Transcoder,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("weir-fuzz-grpc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        std::fs::write(dir.join("orders.bin"), weir_test_grpc::DESCRIPTOR_SET)
            .expect("the descriptor set is written");
        let yaml = "upstreams:\n  svc: { protocol: grpc, targets: [{ url: \"http://127.0.0.1:9\" }] }\n\
                    routes:\n  - name: rest\n    match: { prefix: /v1 }\n    upstream: svc\n    \
                    grpc: { descriptor_set: orders.bin }\n";
        let loaded = load_str_in("fuzz.yaml", yaml, &dir, &MapEnv::default(), &Overrides::default())
            .unwrap_or_else(|e| panic!("the fixture's config loads: {e}"));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = loaded.routes.routes()[0]
            .grpc
            .clone()
            .expect("the route transcodes");
        let transcoder = Transcoder::new(Arc::clone(&spec)).expect("the transcoder builds");
        Fixture { spec, transcoder }
    })
}

const METHODS: [&str; 6] = ["GET", "POST", "PATCH", "PUT", "DELETE", "get"];
const PATHS: [&str; 6] = [
    "/v1/orders",
    "/v1/orders/",
    "/v1/orders/7",
    "/v1/orders/%2F",
    "/v1/orders/a%20b",
    "/v1/orders/x/y",
];
const QUERY: [&str; 12] = [
    "view=full",
    "status=STATUS_SHIPPED",
    "status=2",
    "limit=3",
    "limit=-1",
    "limit=99999999999",
    "customer=bob",
    "order.id=9",
    "items=a",
    "amountCents=9007199254740993",
    "amount_cents=1e3",
    "createdAt=2026-01-02T03:04:05Z",
];
const FIELDS: [&str; 10] = [
    "id",
    "amountCents",
    "amount_cents",
    "status",
    "createdAt",
    "items",
    "customer",
    "order",
    "view",
    "unknown",
];

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Timestamp(u8),
    Array(Vec<Json>),
    Object(Vec<(u8, Json)>),
}

impl Json {
    fn render(&self, depth: u32, out: &mut String) {
        match self {
            _ if depth > 6 => out.push_str("null"),
            Self::Null => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Int(i) => out.push_str(&i.to_string()),
            Self::Float(f) => out.push_str(&serde_json::Value::from(*f).to_string()),
            Self::Str(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
            Self::Timestamp(i) => out.push_str(
                [
                    "\"2026-01-02T03:04:05.500Z\"",
                    "\"1970-01-01T00:00:00Z\"",
                    "\"0001-01-01T00:00:00Z\"",
                    "\"9999-12-31T23:59:59.999999999Z\"",
                    "\"2026-01-02T03:04:05+01:00\"",
                    "\"10000-01-01T00:00:00Z\"",
                ][usize::from(*i) % 6],
            ),
            Self::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.render(depth + 1, out);
                }
                out.push(']');
            }
            Self::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&format!("\"{}\":", FIELDS[usize::from(*k) % FIELDS.len()]));
                    v.render(depth + 1, out);
                }
                out.push('}');
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Body {
    Raw(Vec<u8>),
    Json(Json),
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    path: Result<u8, String>,
    query: Vec<Result<u8, String>>,
    body: Body,
    response: Vec<u8>,
    /// Where the response bytes are cut into chunks.
    cuts: Vec<u16>,
}

/// Feeds `bytes` to the response decoder of `rule` in the given chunks; returns the
/// messages, each checked to be JSON, or `None` when the decoder refused the bytes.
fn decode(f: &Fixture, rule: usize, bytes: &[u8], cuts: &[u16]) -> Option<Vec<Vec<u8>>> {
    let mut decoder = f.transcoder.response(rule);
    let mut at = 0;
    let mut messages = Vec::new();
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| usize::from(*c) % (bytes.len() + 1))
        .collect();
    points.sort_unstable();
    points.push(bytes.len());
    for p in points {
        if p < at {
            continue;
        }
        for m in decoder.push(&bytes[at..p]).ok()? {
            serde_json::from_slice::<serde_json::Value>(&m)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&m)));
            messages.push(m.to_vec());
        }
        at = p;
    }
    Some(messages)
}

/// One request (and upstream answer) from either input form.
struct Case {
    method: String,
    path: String,
    query: Option<String>,
    body: Vec<u8>,
    response: Vec<u8>,
    cuts: Vec<u16>,
}

fn from_fuzzed(input: Input) -> Case {
    let query: Vec<String> = input
        .query
        .iter()
        .take(6)
        .map(|q| match q {
            Ok(i) => QUERY[usize::from(*i) % QUERY.len()].to_owned(),
            Err(s) => s.clone(),
        })
        .collect();
    Case {
        method: METHODS[usize::from(input.method) % METHODS.len()].to_owned(),
        path: match &input.path {
            Ok(i) => PATHS[usize::from(*i) % PATHS.len()].to_owned(),
            Err(s) => s.clone(),
        },
        query: (!query.is_empty()).then(|| query.join("&")),
        body: match &input.body {
            Body::Raw(b) => b.clone(),
            Body::Json(j) => {
                let mut s = String::new();
                j.render(0, &mut s);
                s.into_bytes()
            }
        },
        response: input.response,
        cuts: input.cuts,
    }
}

/// The text form (the seeds): `text`, then `METHOD TARGET` on a line, then the body.
fn from_text(text: &[u8]) -> Option<Case> {
    let text = std::str::from_utf8(text).ok()?;
    let (line, body) = text.split_once('\n').unwrap_or((text, ""));
    let (method, target) = line.split_once(' ')?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    Some(Case {
        method: method.to_owned(),
        path: path.to_owned(),
        query,
        body: body.as_bytes().to_vec(),
        response: Vec::new(),
        cuts: Vec::new(),
    })
}

fuzz_target!(|data: &[u8]| {
    let case = match data.strip_prefix(b"text\n") {
        Some(text) => from_text(text),
        None => Input::arbitrary_take_rest(Unstructured::new(data))
            .ok()
            .map(from_fuzzed),
    };
    let Some(Case {
        method,
        path,
        query,
        body,
        response,
        cuts,
    }) = case
    else {
        return;
    };
    let f = fixture();
    let method = method.as_str();
    let Some((rule, bindings)) = f.spec.find(method, &path) else {
        return;
    };
    if std::env::var_os("WEIR_FUZZ_DEBUG").is_some() {
        let out = f
            .transcoder
            .request(rule, &bindings, query.as_deref(), &body);
        eprintln!("{method} {path} rule {rule} {bindings:?} -> {out:?}");
    }
    let given = path.len() + query.as_ref().map_or(0, String::len) + body.len();
    if let Ok(frame) = f
        .transcoder
        .request(rule, &bindings, query.as_deref(), &body)
    {
        assert!(frame.len() >= FRAME_HEADER && frame[0] == 0, "{frame:?}");
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len, frame.len() - FRAME_HEADER);
        assert!(
            frame.len() <= FRAME_HEADER + 2 * given + 64,
            "{} bytes from {given}",
            frame.len()
        );
        if f.spec.rules[rule].method.ends_with(".CreateOrder") && query.is_none() {
            // The request and the response are both an `Order`: the message rendered as
            // JSON must transcode back to itself.
            let json = decode(f, rule, &frame, &[])
                .unwrap_or_else(|| panic!("weir cannot read its own frame {frame:?}"));
            assert_eq!(json.len(), 1);
            let again = f
                .transcoder
                .request(rule, &[], None, &json[0])
                .unwrap_or_else(|e| {
                    panic!(
                        "{e:?} for its own JSON {:?}",
                        String::from_utf8_lossy(&json[0])
                    )
                });
            assert_eq!(
                again,
                frame,
                "JSON {:?} from {:?}",
                String::from_utf8_lossy(&json[0]),
                String::from_utf8_lossy(&body)
            );
        }
    }
    if let Some(messages) = decode(f, rule, &response, &cuts) {
        let total: usize = messages.iter().map(Vec::len).sum();
        assert!(
            total <= 16 * response.len() + 1024,
            "{total} bytes of JSON from {} bytes",
            response.len()
        );
    }
});
