//! The tokio-tungstenite broadcast peer for `fanout`: the pattern of tungstenite's own
//! server example (a shared map of per-connection channels, each connection forwarding
//! its channel to its socket), with the publish API of `stratus serve` so the same load
//! generator drives both. A publish is framed by tungstenite once per recipient.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// Topic -> the channels of its subscribers.
type Topics = Arc<Mutex<HashMap<String, Vec<UnboundedSender<Message>>>>>;

pub(crate) async fn serve(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    let topics: Topics = Arc::default();
    let ws = TcpListener::bind(listen).await?;
    let api = TcpListener::bind(admin).await?;
    println!("tungstenite broadcast on {listen}, publish API on {admin}");
    tokio::spawn(publish_api(api, topics.clone()));
    loop {
        match ws.accept().await {
            Ok((stream, _)) => {
                stream.set_nodelay(true)?;
                tokio::spawn(subscriber(stream, topics.clone()));
            }
            // Out of descriptors, most likely: try again shortly rather than exit.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

// The handshake callback's error type is tungstenite's own.
#[allow(clippy::result_large_err)]
async fn subscriber(stream: TcpStream, topics: Topics) -> anyhow::Result<()> {
    let mut topic = String::new();
    let ws = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, res: Response| {
        if let Some(q) = req.uri().query() {
            topic = q
                .split('&')
                .find_map(|kv| kv.strip_prefix("topic="))
                .unwrap_or_default()
                .to_owned();
        }
        Ok(res)
    })
    .await?;
    let (tx, mut rx) = unbounded_channel();
    topics
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(topic)
        .or_default()
        .push(tx);
    let (mut write, mut read) = ws.split();
    // Reading runs on its own task, as in tungstenite's example; when the client leaves
    // (Close, EOF or an error) the writer stops too, so a departed subscriber does not
    // keep its socket until a publish finds it gone.
    let mut reader = tokio::spawn(async move {
        while let Some(Ok(message)) = read.next().await {
            if message.is_close() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Some(message) => write.send(message).await?,
                None => break,
            },
            _ = &mut reader => break,
        }
    }
    Ok(())
}

async fn publish_api(listener: TcpListener, topics: Topics) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let topics = topics.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            loop {
                let mut line = String::new();
                if read.read_line(&mut line).await? == 0 {
                    return anyhow::Ok(());
                }
                let topic = line
                    .split(' ')
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/publish/"))
                    .unwrap_or_default()
                    .to_owned();
                let mut length = 0;
                loop {
                    line.clear();
                    read.read_line(&mut line).await?;
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse()?;
                    }
                }
                let mut body = vec![0; length];
                read.read_exact(&mut body).await?;
                let message = Message::text(String::from_utf8(body)?);
                let recipients = {
                    let mut topics = topics.lock().unwrap_or_else(PoisonError::into_inner);
                    let subs = topics.entry(topic).or_default();
                    subs.retain(|tx| tx.send(message.clone()).is_ok());
                    subs.len()
                };
                let reply = format!("{{\"recipients\":{recipients}}}");
                write
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                            reply.len()
                        )
                        .as_bytes(),
                    )
                    .await?;
            }
        });
    }
}
