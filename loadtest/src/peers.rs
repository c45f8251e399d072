//! The servers Stratus is measured against, each an echo server in the configuration its
//! authors' examples use: tokio-tungstenite (`read.forward(write)`), fastwebsockets
//! (`FragmentCollector`, auto pong and close), and a raw io_uring TCP echo with no
//! WebSocket framing at all, the physical limit for echo on this machine.
//!
//! `--threads 1` runs a current-thread runtime (one core, like one Stratus worker).

use std::net::SocketAddr;

use anyhow::Context;
use bytes::BytesMut;
use clap::{Args, ValueEnum};
use futures_util::{StreamExt, TryStreamExt};
use stratus_proto::handshake::{HandshakeLimits, RequestReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(ValueEnum, Debug, Clone, Copy)]
pub(crate) enum PeerKind {
    /// tokio-tungstenite echo.
    Tungstenite,
    /// fastwebsockets echo.
    Fastwebsockets,
    /// Raw TCP echo on io_uring (no WebSocket framing).
    UringTcp,
    /// tokio-tungstenite push server: `/ws?topic=T` subscribes, `POST /publish/T` on
    /// `--admin` broadcasts (the publish API of `stratus serve`).
    TungsteniteBroadcast,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct PeerArgs {
    /// Which server.
    kind: PeerKind,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9002")]
    listen: SocketAddr,
    /// Runtime threads (1: current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Admin (publish API) address, for the broadcast peer.
    #[arg(long, default_value = "127.0.0.1:9092")]
    admin: SocketAddr,
}

pub(crate) fn run(args: PeerArgs) -> anyhow::Result<()> {
    if let PeerKind::UringTcp = args.kind {
        let mut listeners = stratus_uring::bind_listeners(args.listen, 1, 4096)?;
        let listener = listeners.pop().context("no listener bound")?;
        return stratus_uring::run(uring_tcp_echo(listener))?;
    }
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    if let PeerKind::TungsteniteBroadcast = args.kind {
        return runtime.block_on(crate::broadcast_peer::serve(args.listen, args.admin));
    }
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await?;
        println!("{:?} echo on {}", args.kind, args.listen);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            match args.kind {
                PeerKind::Tungstenite => tokio::spawn(tungstenite_echo(stream)),
                _ => tokio::spawn(fastwebsockets_echo(stream)),
            };
        }
    })
}

async fn tungstenite_echo(stream: TcpStream) -> anyhow::Result<()> {
    let ws = tokio_tungstenite::accept_async(stream).await?;
    let (write, read) = ws.split();
    read.try_filter(|m| std::future::ready(m.is_text() || m.is_binary()))
        .forward(write)
        .await?;
    Ok(())
}

async fn fastwebsockets_echo(mut stream: TcpStream) -> anyhow::Result<()> {
    // The upgrade (fastwebsockets leaves it to hyper); only the steady state is measured.
    let mut reader = RequestReader::new(HandshakeLimits::default());
    let mut buf = Vec::new();
    let request = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some((request, _)) = reader.read(&buf)? {
            break request;
        }
    };
    stream.write_all(&request.accept("")).await?;
    let mut ws = fastwebsockets::WebSocket::after_handshake(stream, fastwebsockets::Role::Server);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let mut ws = fastwebsockets::FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            fastwebsockets::OpCode::Close => return Ok(()),
            fastwebsockets::OpCode::Text | fastwebsockets::OpCode::Binary => {
                ws.write_frame(frame).await?;
            }
            _ => {}
        }
    }
}

async fn uring_tcp_echo(listener: std::net::TcpListener) -> anyhow::Result<()> {
    let listener = stratus_uring::Listener::from_std(listener).context("listener")?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        stratus_uring::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 << 10);
            loop {
                let (result, returned) = stream.read_into(buf, 64 << 10).await;
                buf = returned;
                match result {
                    Ok(n) if n > 0 => {}
                    _ => return,
                }
                let (result, _) = stream.writev_all(vec![buf.split().freeze()]).await;
                if result.is_err() {
                    return;
                }
            }
        });
    }
}
