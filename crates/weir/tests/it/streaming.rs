//! Bodies stream through weir both ways: a 1 GiB upload and a 1 GiB download through the
//! `weir` binary, with the process's peak resident memory staying under a fixed bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use crate::common::{Backend, TempDir, echo, peak_rss_kib, spawn_weir};
use futures_util::StreamExt;

const GIB: u64 = 1 << 30;
/// weir's peak RSS (VmHWM) must stay under this while moving 2 GiB: far less than what
/// buffering even a tenth of one body would take.
const PEAK_RSS_BOUND_KIB: u64 = 100 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_streams_with_flat_memory() {
    let backend = Backend::start("sink").await;
    let dir = TempDir::new("stream");
    let config = dir.write(
        "weir.yaml",
        &crate::common::config(&format!(
            r#"
            limits: {{ max_body_bytes: 2GiB }}
            upstreams:
              be:
                targets: [{{ url: "{}" }}]
            routes:
              - name: all
                match: {{ prefix: / }}
                upstream: be
                max_body_bytes: 2GiB
            "#,
            backend.url()
        )),
    );
    let weir = spawn_weir(&["run", "-c", config.to_str().unwrap()], &[]);
    let client = crate::common::client();
    let idle_rss = peak_rss_kib(weir.pid());

    // Upload: 1024 chunks of 1 MiB, all the same bytes, never 1 GiB in memory here either.
    let started = Instant::now();
    let chunk = bytes::Bytes::from(vec![0xA5_u8; 1 << 20]);
    let chunks =
        futures_util::stream::iter((0..1024).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let resp = client
        .put(weir.url("/upload"))
        .header("x-count-only", "1")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("upload through weir");
    let v = echo(resp).await;
    assert_eq!(v["body_len"], GIB, "the backend received the whole upload");
    let upload_time = started.elapsed();

    // Download: the backend streams 1 GiB; count it as it arrives.
    let started = Instant::now();
    let resp = client
        .get(weir.url("/download"))
        .header("x-stream-bytes", GIB.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        received += chunk.expect("download chunk").len() as u64;
    }
    assert_eq!(received, GIB, "the client received the whole download");
    let download_time = started.elapsed();

    let peak = peak_rss_kib(weir.pid());
    eprintln!(
        "weir peak RSS: {} MiB (idle {} MiB); upload {upload_time:?}, download {download_time:?}",
        peak / 1024,
        idle_rss / 1024
    );
    assert!(
        peak < PEAK_RSS_BOUND_KIB,
        "weir's peak RSS reached {} MiB moving 2 GiB; the bound is {} MiB",
        peak / 1024,
        PEAK_RSS_BOUND_KIB / 1024
    );
}
