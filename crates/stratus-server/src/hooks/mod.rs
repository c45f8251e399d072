//! The backend hooks' thread: a tokio current-thread runtime of its own (like the
//! broker's) that POSTs each hook request to the backend with `reqwest` and hands the
//! parsed answer back to the worker that asked, through the hub. A worker never waits on
//! it: requests reach it over a bounded channel (`node::hook_link`), answers go back as
//! `WorkerMsg::Hooked`, like history pages.
//!
//! Bounded in time and number: at most `--hook-concurrency` requests in flight (the
//! others wait in the channel), each answered within `--hook-timeout` of being asked,
//! waiting in line included; an answer body past [`MAX_ANSWER`] is malformed. Every
//! failure (timeout, connection refused, a 5xx, a malformed answer) is an answer too, so
//! the connection that asked always hears back.
//!
//! reqwest (0.12, HTTP/1, rustls on ring) rather than hyper-util's client: it pools
//! keep-alive connections per host, does https with the same TLS stack as the listener,
//! and reads bodies and maps errors (connect, timeout) without glue of our own.

use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::warn;

use crate::config::{Config, Hooks};
use crate::messages::WorkerMsg;
use crate::model::hook::{HookAnswer, HookFailure, HookJob, HookKind};
use crate::node::hook_link::{HookLink, HookStats};
use crate::node::hub::Hub;

/// Largest answer body read from the backend.
pub(crate) const MAX_ANSWER: usize = 1 << 20;

/// The hook thread's state, made before the thread starts.
struct HookTask {
    jobs: mpsc::Receiver<HookJob>,
    stats: Arc<HookStats>,
    hooks: Hooks,
    stop: oneshot::Receiver<()>,
}

/// The running hook thread: stop it with [`HookThread::stop`].
pub(crate) struct HookThread {
    thread: std::thread::JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl HookThread {
    /// Ends the thread (requests in flight are dropped) and waits for it.
    pub(crate) fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        self.thread
            .join()
            .map_err(|_| std::io::Error::other("hook thread panicked"))
    }
}

/// Starts the hook thread if `config` sets any hook, and gives `hub` the way to it.
pub(crate) fn start(config: &Config, hub: &Arc<Hub>) -> std::io::Result<Option<HookThread>> {
    let hooks = config.hooks.clone();
    if !hooks.any() {
        return Ok(None);
    }
    let (tx, jobs) = mpsc::channel(hooks.queue());
    let stats = Arc::new(HookStats::default());
    let _ = hub.hooks.set(HookLink::new(tx, stats.clone()));
    let (stop_tx, stop) = oneshot::channel();
    let task = HookTask {
        jobs,
        stats,
        hooks,
        stop,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let hub = Arc::downgrade(hub);
    let thread = std::thread::Builder::new()
        .name("stratus-hooks".into())
        .spawn(move || task.run(runtime, hub))?;
    Ok(Some(HookThread {
        thread,
        stop: stop_tx,
    }))
}

impl HookTask {
    /// Runs until stopped, answering through `hub` while it lives.
    fn run(mut self, runtime: tokio::runtime::Runtime, hub: Weak<Hub>) {
        runtime.block_on(async move {
            let client = match reqwest::Client::builder()
                .pool_max_idle_per_host(self.hooks.concurrency)
                // A redirect is an answer like any 3xx: malformed, not followed.
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(self.hooks.timeout)
                .build()
            {
                Ok(client) => client,
                Err(err) => {
                    warn!(error = %err, "the hook client could not be built; every hook fails");
                    reqwest::Client::new()
                }
            };
            let slots = Arc::new(Semaphore::new(self.hooks.concurrency));
            let hooks = Arc::new(self.hooks);
            loop {
                let job = tokio::select! {
                    job = self.jobs.recv() => job,
                    _ = &mut self.stop => None,
                };
                let Some(job) = job else {
                    return;
                };
                let slot = tokio::select! {
                    slot = slots.clone().acquire_owned() => slot,
                    _ = &mut self.stop => return,
                };
                let Ok(slot) = slot else {
                    return;
                };
                let (client, hooks, stats, hub) = (
                    client.clone(),
                    hooks.clone(),
                    self.stats.clone(),
                    hub.clone(),
                );
                tokio::spawn(async move {
                    let answer = ask(&client, &hooks, &stats, job.kind, job.body, job.asked).await;
                    let answer = HookAnswer::parse(
                        job.kind,
                        job.pending,
                        answer
                            .as_ref()
                            .map(|(s, b)| (*s, b.as_slice()))
                            .map_err(Clone::clone),
                    );
                    if let Some(why) = answer.malformed() {
                        warn!(hook = job.kind.name(), why, "malformed hook answer");
                    }
                    stats.answered(job.kind, answer.outcome(), job.asked.elapsed());
                    drop(slot);
                    if let Some(hub) = hub.upgrade() {
                        hub.tell(job.to.worker, WorkerMsg::Hooked { to: job.to, answer });
                    }
                });
            }
        });
    }
}

/// POSTs `body` to the `kind` hook's URL: the status and body of the answer, or why
/// there is none, within what is left of the timeout since `asked`.
async fn ask(
    client: &reqwest::Client,
    hooks: &Hooks,
    stats: &HookStats,
    kind: HookKind,
    body: Vec<u8>,
    asked: Instant,
) -> Result<(u16, Vec<u8>), HookFailure> {
    let url = match kind {
        HookKind::Connect => &hooks.connect,
        HookKind::Subscribe => &hooks.subscribe,
        HookKind::Publish => &hooks.publish,
    };
    let Some(url) = url else {
        return Err(HookFailure::Unavailable(format!(
            "no {} hook is set",
            kind.name()
        )));
    };
    let left = hooks.timeout.saturating_sub(asked.elapsed());
    if left.is_zero() {
        return Err(HookFailure::Timeout);
    }
    stats
        .in_flight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let request = async {
        let mut response = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(failure)?;
        let status = response.status().as_u16();
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failure)? {
            if answer.len() + chunk.len() > MAX_ANSWER {
                return Err(HookFailure::Malformed(format!(
                    "answer larger than {MAX_ANSWER} bytes"
                )));
            }
            answer.extend_from_slice(&chunk);
        }
        Ok((status, answer))
    };
    let result = tokio::time::timeout(left, request)
        .await
        .unwrap_or(Err(HookFailure::Timeout));
    stats
        .in_flight
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    result
}

/// What a failed request means for the hook.
fn failure(err: reqwest::Error) -> HookFailure {
    if err.is_timeout() {
        HookFailure::Timeout
    } else {
        HookFailure::Unavailable(without_url(err))
    }
}

/// The error's text, with its causes, without the URL (which may carry credentials).
fn without_url(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    while let Some(e) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
