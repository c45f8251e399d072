//! The Autobahn testsuite's client-mode testee: asks the fuzzing server for the case
//! count, runs every case echoing each message, then asks it to write the reports.
//!
//! `cargo run --release -p stratus-client --example autobahn -- ws://127.0.0.1:9001 stratus`

use stratus_client::{ClientConfig, Error, connect, connect_with};
use stratus_proto::{CloseCode, Message};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "ws://127.0.0.1:9001".into());
    let agent = args.next().unwrap_or_else(|| "stratus".into());
    stratus_uring::run(async move {
        let count = case_count(&base, &agent).await?;
        println!("{count} cases");
        for case in 1..=count {
            let url = format!("{base}/runCase?case={case}&agent={agent}");
            if let Err(err) = run_case(&url).await {
                println!("case {case}: {err}");
            }
        }
        let mut reports = connect(&format!("{base}/updateReports?agent={agent}")).await?;
        reports.close(CloseCode::NORMAL, "").await?;
        println!("reports updated");
        Ok(())
    })?
}

async fn case_count(base: &str, agent: &str) -> anyhow::Result<u32> {
    let mut client = connect(&format!("{base}/getCaseCount?agent={agent}")).await?;
    let count = match client.recv().await? {
        Some(Message::Text(text)) => std::str::from_utf8(&text)?.trim().parse()?,
        other => anyhow::bail!("expected the case count, got {other:?}"),
    };
    client.close(CloseCode::NORMAL, "").await?;
    Ok(count)
}

/// Echoes every message until the server closes.
async fn run_case(url: &str) -> Result<(), Error> {
    let mut client = connect_with(url, ClientConfig::default()).await?;
    while let Some(message) = client.recv().await? {
        if message.is_data() {
            match client.send(&message).await {
                Ok(()) | Err(Error::Closing) => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(())
}
