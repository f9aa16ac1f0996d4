//! gRPC helpers: the test order service (`weir_test_grpc`) behind weir, a tonic client of
//! the gateway, gRPC frames by hand (for raw HTTP/2 and gRPC-Web), and the paths of the
//! example protos.

use std::path::PathBuf;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::transport::{Channel, Endpoint};
use weir_test_grpc::pb::orders_client::OrdersClient;

use super::Gateway;

/// `examples/protos`, absolute: the include directory of `weir/test/v1/orders.proto`.
pub const PROTOS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/protos");

/// The gRPC path prefix of the order service.
pub const SERVICE_PREFIX: &str = "/weir.test.v1.Orders/";

/// A tonic client of the order service, through the gateway (h2c with prior knowledge).
pub async fn client(gw: &Gateway) -> OrdersClient<Channel> {
    let channel = Endpoint::from_shared(gw.url(""))
        .expect("gateway URL")
        .connect()
        .await
        .expect("connect a gRPC channel to weir");
    OrdersClient::new(channel)
}

/// An upstream `svc` (`protocol: grpc`) on `url`, plus `routes` (a YAML list indented as
/// a key of the top level, dedented here), after `top` (other top-level keys).
pub fn grpc_config(url: &str, top: &str, routes: &str) -> String {
    format!(
        "{top}\nupstreams:\n  svc:\n    protocol: grpc\n    targets: [{{ url: \"{url}\" }}]\n\
         routes:\n{routes}",
        top = super::dedent(top),
        routes = super::dedent(routes)
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>(),
    )
}

/// The native gRPC route `native` (the service's prefix) to `svc`, with `extra` lines
/// (route keys, each line indented by two spaces, as in `"  timeout: 1s\n"`) under it.
pub fn native_route(extra: &str) -> String {
    format!("- name: native\n  match: {{ prefix: {SERVICE_PREFIX} }}\n  upstream: svc\n{extra}")
}

/// The REST route `rest` (`/v1/orders`) to `svc`, transcoding with the example proto.
pub fn rest_route() -> String {
    format!(
        "- name: rest\n  match: {{ prefix: /v1/orders }}\n  upstream: svc\n  grpc:\n    \
         protos: [weir/test/v1/orders.proto]\n    import_paths: [\"{PROTOS_DIR}\"]\n"
    )
}

/// One uncompressed gRPC message frame: `0x00`, the length (u32, big endian), the message.
pub fn frame(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(body.len()).unwrap());
    out.put_slice(&body);
    out.freeze()
}

/// A frame of a gRPC-Web body: its flags byte and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebFrame {
    pub flags: u8,
    pub payload: Bytes,
}

impl WebFrame {
    /// The trailer frame (flag 0x80), as opposed to a message.
    pub fn is_trailer(&self) -> bool {
        self.flags & 0x80 != 0
    }

    /// A trailer frame's `name: value` lines, names lower-cased, values trimmed.
    pub fn trailers(&self) -> Vec<(String, String)> {
        String::from_utf8(self.payload.to_vec())
            .expect("trailer frame is text")
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("a trailer line is `name:value`");
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect()
    }
}

/// Splits a (binary) gRPC-Web body into its frames; panics on a truncated frame.
pub fn parse_frames(mut body: Bytes) -> Vec<WebFrame> {
    let mut frames = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a frame header is cut short: {body:?}");
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        assert!(
            body.len() >= len,
            "a frame of {len} bytes is cut short at {}",
            body.len()
        );
        let payload = body.split_to(len);
        frames.push(WebFrame { flags, payload });
    }
    frames
}

/// An encoded descriptor set written to `dir/orders.pb`.
pub fn descriptor_file(dir: &super::TempDir, set: &[u8]) -> PathBuf {
    let path = dir.path().join("orders.pb");
    std::fs::write(&path, set).expect("write the descriptor set");
    path
}

/// The value of `name` in the metadata the test server saw last.
pub fn seen(server: &weir_test_grpc::TestServer, name: &str) -> Option<String> {
    server
        .last_metadata()
        .into_iter()
        .find_map(|(n, v)| (n == name).then_some(v))
}
