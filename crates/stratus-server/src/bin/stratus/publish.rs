//! `stratus publish`: posts one message to a running server's admin API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

#[derive(Args)]
pub(crate) struct PublishArgs {
    /// The topic to publish to.
    topic: String,
    /// The message; read from standard input when absent.
    message: Option<String>,
    /// The server's admin listener.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// Bearer token for the admin API.
    #[arg(long, env = "STRATUS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Publish as a binary message (default: text).
    #[arg(long)]
    binary: bool,
}

/// Publishes and prints the server's answer (`{"recipients":N}`, or `{"nodes":N}` with a
/// broker).
pub(crate) fn run(args: PublishArgs) -> anyhow::Result<()> {
    let body = match args.message {
        Some(m) => m.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the message from stdin")?;
            buf
        }
    };
    let content_type = if args.binary {
        "application/octet-stream"
    } else {
        "text/plain; charset=utf-8"
    };
    let auth = args
        .admin_token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut stream = TcpStream::connect_timeout(&args.admin, Duration::from_secs(5))
        .with_context(|| format!("connecting to {}", args.admin))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "POST /publish/{} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n{auth}Connection: close\r\n\r\n",
        args.topic,
        args.admin,
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    println!("{}", body.trim());
    let status = head.split(' ').nth(1).unwrap_or_default();
    if status != "200" {
        bail!(
            "publish failed: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(())
}
