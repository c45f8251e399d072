//! The client against the Stratus echo server: both ends of the same protocol core.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use bytes::Bytes;
use stratus_client::{Error, connect};
use stratus_proto::{CloseCode, Message};
use stratus_server::{Config, Server};

fn server() -> Server {
    Server::start(Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: 2,
        ..Config::echo()
    })
    .unwrap()
}

#[test]
fn messages_round_trip_and_close_cleanly() {
    let server = server();
    let url = format!("ws://{}/", server.local_addr());
    stratus_uring::run(async move {
        let mut client = connect(&url).await.unwrap();
        let big = Message::binary(vec![0xA5; 3 << 20]);
        for message in [
            Message::text("hello"),
            Message::text("κόσμε €"),
            Message::binary(vec![0, 1, 2, 255]),
            Message::text(""),
            big,
        ] {
            client.send(&message).await.unwrap();
            assert_eq!(client.recv().await.unwrap(), Some(message));
        }
        client
            .send(&Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        assert_eq!(
            client.recv().await.unwrap(),
            Some(Message::Pong(Bytes::from_static(b"p")))
        );
        client.close(CloseCode::NORMAL, "done").await.unwrap();
        assert!(matches!(
            client.send(&Message::text("x")).await,
            Err(Error::Closing)
        ));
    })
    .unwrap();
    server.stop().unwrap();
}

#[test]
fn many_clients_in_flight_on_all_workers() {
    let server = server();
    let url = format!("ws://{}/", server.local_addr());
    stratus_uring::run(async move {
        let mut tasks = Vec::new();
        for i in 0..200 {
            let url = url.clone();
            tasks.push(stratus_uring::spawn(async move {
                let mut client = connect(&url).await.unwrap();
                for j in 0..20 {
                    let m = Message::text(format!("{i}-{j}"));
                    client.send(&m).await.unwrap();
                    assert_eq!(client.recv().await.unwrap(), Some(m));
                }
                client.close(CloseCode::NORMAL, "").await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
    .unwrap();
    server.stop().unwrap();
}

#[test]
fn bad_urls_are_refused() {
    stratus_uring::run(async {
        assert!(matches!(connect("http://x/").await, Err(Error::Url(_))));
        assert!(matches!(connect("ftp://x/").await, Err(Error::Url(_))));
        assert!(matches!(connect("not a url").await, Err(Error::Url(_))));
    })
    .unwrap();
}
