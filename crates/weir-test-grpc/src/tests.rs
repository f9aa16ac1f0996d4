#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

use crate::TestServer;
use crate::pb::orders_client::OrdersClient;
use crate::pb::{
    ChatMessage, GetOrderRequest, Item, ListOrdersRequest, Order, Status, UpdateOrderRequest,
};
use crate::service::{AMOUNT_CENTS, created_at};

async fn client(server: &TestServer) -> OrdersClient<Channel> {
    OrdersClient::connect(server.url()).await.unwrap()
}

fn get(id: &str, view: &str) -> GetOrderRequest {
    GetOrderRequest {
        id: id.to_owned(),
        view: view.to_owned(),
    }
}

#[tokio::test]
async fn get_order_answers_the_fixed_order_with_the_callers_customer() {
    let server = TestServer::start().await;
    let mut client = client(&server).await;

    let mut request = Request::new(get("42", ""));
    request
        .metadata_mut()
        .insert("x-customer", "acme".parse().unwrap());
    let response = client.get_order(request).await.unwrap();

    assert_eq!(
        response.metadata().get("x-served-by").unwrap(),
        "weir-test-grpc"
    );
    let order = response.into_inner();
    assert_eq!(
        order,
        Order {
            id: "42".to_owned(),
            amount_cents: 9_007_199_254_740_993,
            status: Status::Shipped.into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_767_323_045,
                nanos: 500_000_000,
            }),
            items: vec!["a".to_owned(), "b".to_owned()],
            customer: "acme".to_owned(),
        }
    );
    assert_eq!(order.amount_cents, (1_i64 << 53) + 1);
}

#[tokio::test]
async fn get_order_full_view_adds_an_item_and_no_customer_is_empty() {
    let server = TestServer::start().await;
    let order = client(&server)
        .await
        .get_order(get("7", "full"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.items, ["a", "b", "full"]);
    assert_eq!(order.customer, "");
}

#[tokio::test]
async fn get_order_fails_on_request() {
    let server = TestServer::start().await;
    let mut client = client(&server).await;

    let missing = client.get_order(get("missing", "")).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.message(), "order missing not found");

    for (id, code, message) in [
        ("err-14", Code::Unavailable, "forced 14"),
        ("err-3", Code::InvalidArgument, "forced 3"),
        ("err-16", Code::Unauthenticated, "forced 16"),
    ] {
        let status = client.get_order(get(id, "")).await.unwrap_err();
        assert_eq!(status.code(), code, "{id}");
        assert_eq!(status.message(), message, "{id}");
    }
    assert_eq!(server.calls(), 4);
}

#[tokio::test]
async fn get_order_slow_waits_then_answers() {
    let server = TestServer::start().await;
    let mut client = client(&server).await;
    let started = Instant::now();
    let order = client
        .get_order(get("slow-60", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert_eq!(order.id, "slow-60");
    assert_eq!(order.amount_cents, AMOUNT_CENTS);
}

#[tokio::test]
async fn metadata_and_grpc_timeout_of_the_last_call_are_recorded() {
    let server = TestServer::start().await;
    let mut client = client(&server).await;
    assert_eq!(server.calls(), 0);
    assert!(server.last_metadata().is_empty());

    let mut request = Request::new(get("1", ""));
    let metadata = request.metadata_mut();
    metadata.insert("x-tenant", "t-9".parse().unwrap());
    metadata.insert("grpc-timeout", "500m".parse().unwrap());
    client.get_order(request).await.unwrap();

    assert_eq!(server.calls(), 1);
    let recorded = server.last_metadata();
    assert!(
        recorded.contains(&("x-tenant".to_owned(), "t-9".to_owned())),
        "{recorded:?}"
    );
    assert_eq!(server.last_grpc_timeout().as_deref(), Some("500m"));

    client.get_order(get("2", "")).await.unwrap();
    assert_eq!(server.calls(), 2);
    assert_eq!(server.last_grpc_timeout(), None);
    assert!(
        !server
            .last_metadata()
            .iter()
            .any(|(name, _)| name == "x-tenant")
    );
}

#[tokio::test]
async fn create_order_fills_id_and_time_only_when_unset() {
    let server = TestServer::start().await;
    let mut client = client(&server).await;

    let created = client
        .create_order(Order {
            amount_cents: 5,
            ..Order::default()
        })
        .await
        .unwrap();
    assert_eq!(
        created.metadata().get("x-served-by").unwrap(),
        "weir-test-grpc"
    );
    let created = created.into_inner();
    assert_eq!(created.id, "ord-1");
    assert_eq!(created.amount_cents, 5);
    assert_eq!(created.created_at, Some(created_at()));

    let given = Order {
        id: "mine".to_owned(),
        created_at: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 2,
        }),
        items: vec!["x".to_owned()],
        ..Order::default()
    };
    let echoed = client.create_order(given.clone()).await.unwrap();
    assert_eq!(echoed.into_inner(), given);
}

#[tokio::test]
async fn update_order_echoes_the_order_and_requires_one() {
    let server = TestServer::start().await;
    let mut client = client(&server).await;

    let order = Order {
        id: "o-5".to_owned(),
        customer: "acme".to_owned(),
        ..Order::default()
    };
    let updated = client
        .update_order(UpdateOrderRequest {
            order: Some(order.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated, order);

    let status = client
        .update_order(UpdateOrderRequest { order: None })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "order is required");
}

async fn list(
    client: &mut OrdersClient<Channel>,
    limit: i32,
    customer: &str,
) -> (Vec<Order>, Option<tonic::Status>) {
    let request = ListOrdersRequest {
        status: Status::Pending.into(),
        limit,
        customer: customer.to_owned(),
    };
    let mut stream = client.list_orders(request).await.unwrap().into_inner();
    let mut orders = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(order)) => orders.push(order),
            Ok(None) => return (orders, None),
            Err(status) => return (orders, Some(status)),
        }
    }
}

#[tokio::test]
async fn list_orders_streams_limit_orders() {
    let server = TestServer::start().await;
    let mut client = client(&server).await;

    let (orders, end) = list(&mut client, 0, "acme").await;
    assert!(end.is_none());
    let ids: Vec<_> = orders.iter().map(|order| order.id.as_str()).collect();
    assert_eq!(ids, ["o1", "o2", "o3"]);
    for (i, order) in (1..).zip(&orders) {
        assert_eq!(order.amount_cents, i * 100);
        assert_eq!(order.status, i32::from(Status::Pending));
        assert_eq!(order.customer, "acme");
    }

    let (orders, _) = list(&mut client, 5, "").await;
    assert_eq!(orders.len(), 5);
    assert_eq!(orders[4].id, "o5");
}

#[tokio::test]
async fn list_orders_fail_mid_breaks_after_one_order() {
    let server = TestServer::start().await;
    let (orders, end) = list(&mut client(&server).await, 3, "fail-mid").await;
    assert_eq!(orders.len(), 1);
    let end = end.unwrap();
    assert_eq!(end.code(), Code::Unavailable);
    assert_eq!(end.message(), "stream broke");
}

#[tokio::test]
async fn list_orders_slow_spaces_the_orders() {
    let server = TestServer::start().await;
    let started = Instant::now();
    let (orders, end) = list(&mut client(&server).await, 2, "slow").await;
    assert!(end.is_none());
    assert_eq!(orders.len(), 2);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn upload_items_adds_up() {
    let server = TestServer::start().await;
    let items = [3, 4, 5].map(|quantity| Item {
        sku: format!("sku-{quantity}"),
        quantity,
    });
    let summary = client(&server)
        .await
        .upload_items(tokio_stream::iter(items))
        .await
        .unwrap();
    assert_eq!(
        summary.metadata().get("x-served-by").unwrap(),
        "weir-test-grpc"
    );
    let summary = summary.into_inner();
    assert_eq!((summary.items, summary.quantity), (3, 12));
}

#[tokio::test]
async fn chat_answers_each_message_before_the_next_is_sent() {
    let server = TestServer::start().await;
    let (tx, rx) = mpsc::channel(1);
    let mut replies = client(&server)
        .await
        .chat(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    for (seq, text) in (1..).zip(["hi", "there", "again"]) {
        tx.send(ChatMessage {
            seq: 0,
            text: text.to_owned(),
        })
        .await
        .unwrap();
        // The stream stays open: this reply can only come from per-message echoing.
        let reply = tokio::time::timeout(Duration::from_secs(1), replies.message())
            .await
            .expect("a reply before the next message is sent")
            .unwrap()
            .unwrap();
        assert_eq!(reply.seq, seq);
        assert_eq!(reply.text, format!("echo: {text}"));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
}

#[tokio::test]
async fn dropping_the_server_ends_its_connections_and_refuses_new_ones() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut open = client(&server).await;
    open.get_order(get("1", "")).await.unwrap();

    drop(server);

    // The open connection is cut too, so a pooled client cannot keep using it.
    assert!(open.get_order(get("2", "")).await.is_err());

    let connected = Endpoint::from_shared(url)
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await;
    assert!(connected.is_err());
}

#[test]
fn descriptor_set_holds_the_service_and_its_imports() {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(crate::DESCRIPTOR_SET).unwrap();
    let names: Vec<_> = set.file.iter().filter_map(|f| f.name.as_deref()).collect();
    for name in [
        "weir/test/v1/orders.proto",
        "google/api/annotations.proto",
        "google/api/http.proto",
        "google/protobuf/timestamp.proto",
        "google/protobuf/descriptor.proto",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
}

#[tokio::test]
async fn dropping_the_server_breaks_a_stream_in_flight() {
    let server = TestServer::start().await;
    let request = ListOrdersRequest {
        status: Status::Shipped.into(),
        limit: 3,
        customer: "slow".to_owned(),
    };
    let mut client = client(&server).await;
    let mut orders = client.list_orders(request).await.unwrap().into_inner();
    assert_eq!(orders.message().await.unwrap().unwrap().id, "o1");

    drop(server);

    assert!(orders.message().await.is_err());
}
