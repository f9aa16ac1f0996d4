//! The order service: fixed answers that integration tests assert on, plus a record of each
//! call's metadata.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::pb::orders_server::Orders;
use crate::pb::{
    ChatMessage, GetOrderRequest, Item, ListOrdersRequest, Order, UpdateOrderRequest, UploadSummary,
};

/// 2^53 + 1: the smallest integer a JSON number (an f64) cannot hold, so a transcoder that
/// does not write int64 as a string corrupts it visibly.
pub(crate) const AMOUNT_CENTS: i64 = 9_007_199_254_740_993;

/// 2026-01-02T03:04:05.500Z, with a fraction so RFC 3339 output must carry the nanos.
pub(crate) fn created_at() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_767_323_045,
        nanos: 500_000_000,
    }
}

/// What reached the service, shared with [`crate::TestServer`] for assertions.
#[derive(Default)]
pub(crate) struct Recorder {
    calls: AtomicUsize,
    last_metadata: Mutex<Vec<(String, String)>>,
}

impl Recorder {
    fn record(&self, metadata: &MetadataMap) {
        // Through the raw headers, so `-bin` values appear too (as their base64 wire text).
        let headers = metadata.clone().into_headers();
        let pairs = headers
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        // The metadata first: a test that sees the new count must also see this call's headers.
        *self
            .last_metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = pairs;
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn last_metadata(&self) -> Vec<(String, String)> {
        self.last_metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub(crate) struct OrderService {
    pub(crate) recorder: Arc<Recorder>,
}

type ReplyStream<T> = ReceiverStream<Result<T, Status>>;

/// Marks a response as coming from this service, so a test can tell it from one the gateway
/// made up.
fn served<T>(message: T) -> Response<T> {
    let mut response = Response::new(message);
    response
        .metadata_mut()
        .insert("x-served-by", MetadataValue::from_static("weir-test-grpc"));
    response
}

/// The ids that make GetOrder fail or wait instead of answering at once.
fn special_id(id: &str) -> Result<Option<Duration>, Status> {
    if id == "missing" {
        return Err(Status::not_found(format!("order {id} not found")));
    }
    if let Some(code) = id.strip_prefix("err-").and_then(|n| n.parse::<i32>().ok())
        && (0..=16).contains(&code)
    {
        return Err(Status::new(Code::from_i32(code), format!("forced {code}")));
    }
    let delay = id
        .strip_prefix("slow-")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis);
    Ok(delay)
}

#[tonic::async_trait]
impl Orders for OrderService {
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        self.recorder.record(request.metadata());
        let customer = request
            .metadata()
            .get("x-customer")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let GetOrderRequest { id, view } = request.into_inner();
        if let Some(delay) = special_id(&id)? {
            tokio::time::sleep(delay).await;
        }
        let mut items = vec!["a".to_owned(), "b".to_owned()];
        if view == "full" {
            items.push("full".to_owned());
        }
        Ok(served(Order {
            id,
            amount_cents: AMOUNT_CENTS,
            status: crate::pb::Status::Shipped.into(),
            created_at: Some(created_at()),
            items,
            customer,
        }))
    }

    async fn create_order(&self, request: Request<Order>) -> Result<Response<Order>, Status> {
        self.recorder.record(request.metadata());
        let mut order = request.into_inner();
        if order.id.is_empty() {
            "ord-1".clone_into(&mut order.id);
        }
        order.created_at.get_or_insert_with(created_at);
        Ok(served(order))
    }

    async fn update_order(
        &self,
        request: Request<UpdateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        self.recorder.record(request.metadata());
        let order = request
            .into_inner()
            .order
            .ok_or_else(|| Status::invalid_argument("order is required"))?;
        Ok(served(order))
    }

    type ListOrdersStream = ReplyStream<Order>;

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<Self::ListOrdersStream>, Status> {
        self.recorder.record(request.metadata());
        let ListOrdersRequest {
            status,
            limit,
            customer,
        } = request.into_inner();
        let limit = match limit {
            0 => 3,
            n if n < 0 => return Err(Status::invalid_argument("limit must not be negative")),
            n => i64::from(n),
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for i in 1..=limit {
                if i > 1 && customer == "slow" {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let order = Order {
                    id: format!("o{i}"),
                    amount_cents: i * 100,
                    status,
                    customer: customer.clone(),
                    ..Order::default()
                };
                // A send fails only when the client has gone: nobody is left to stream to.
                if tx.send(Ok(order)).await.is_err() {
                    return;
                }
                if customer == "fail-mid" {
                    let _ = tx.send(Err(Status::unavailable("stream broke"))).await;
                    return;
                }
            }
        });
        Ok(served(ReceiverStream::new(rx)))
    }

    async fn upload_items(
        &self,
        request: Request<Streaming<Item>>,
    ) -> Result<Response<UploadSummary>, Status> {
        self.recorder.record(request.metadata());
        let mut items = request.into_inner();
        let mut summary = UploadSummary::default();
        while let Some(item) = items.message().await? {
            summary.items += 1;
            summary.quantity += item.quantity;
        }
        Ok(served(summary))
    }

    type ChatStream = ReplyStream<ChatMessage>;

    async fn chat(
        &self,
        request: Request<Streaming<ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        self.recorder.record(request.metadata());
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        // Replies go out as each message arrives, not after the client half-closes, so a
        // gateway that buffers either direction makes the tests hang instead of pass.
        tokio::spawn(async move {
            let mut seq = 0;
            loop {
                let reply = match incoming.message().await {
                    Ok(Some(message)) => {
                        seq += 1;
                        Ok(ChatMessage {
                            seq,
                            text: format!("echo: {}", message.text),
                        })
                    }
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(served(ReceiverStream::new(rx)))
    }
}
