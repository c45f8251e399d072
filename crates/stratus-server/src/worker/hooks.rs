//! The worker's side of the backend hooks: handing a request to the hook thread (never
//! waiting on it), and going on when its answer comes back through the inbox
//! (`WorkerMsg::Hooked`). A connection that waits for the connect hook stays counted
//! among the sockets mid-upgrade (capped, shed oldest first) and holds its input; its
//! handshake deadline still runs. The hook's answer finds it by its `ConnId`: one that
//! has gone meanwhile (closed, shed, timed out) finds nothing, and the answer is dropped.

use std::net::IpAddr;
use std::time::Instant;

use tracing::{debug, warn};

use crate::config::Config;
use crate::connection::Conn;
use crate::connection::client::Asked;
use crate::connection::sse;
use crate::connection::upgrade::{Refusal, Upgrade, upgrade};
use crate::model::auth;
use crate::model::conn_id::ConnId;
use crate::model::hook::{
    self, Connected, HookAnswer, HookDest, HookFailure, HookJob, HookKind, Verdict,
};
use crate::node::hub::Hub;
use crate::worker::Worker;

/// The refusal of an upgrade whose connect hook failed. The client (not authenticated
/// yet) gets a generic body per status; the failure's detail (error chains, the
/// backend's answer quoted) goes to the log only.
pub(super) fn refusal_for(failure: &HookFailure) -> Refusal {
    let status = failure.http_status();
    let retry = if status == 503 {
        "Retry-After: 5\r\n"
    } else {
        ""
    };
    log_failure(HookKind::Connect, failure);
    let mut refusal = Refusal::new(status, retry, failure.public_text().to_owned());
    refusal.why = format!("connect hook: {failure}");
    refusal
}

/// Logs what `failure` was: the detail a client is not told ([`HookFailure::public_text`]).
pub(super) fn log_failure(kind: HookKind, failure: &HookFailure) {
    let hook = kind.name();
    if failure.is_backend_fault() {
        warn!(hook, error = %failure, "hook failed");
    } else {
        debug!(hook, error = %failure, "hook failed");
    }
}

/// Accepts `asked` (an upgrade, or an event stream), as the connect hook's answer
/// `connected` grants where it was asked, within the connection caps; or refuses it.
pub(super) fn accept(
    hub: &Hub,
    ip: IpAddr,
    config: &Config,
    draining: bool,
    asked: Asked,
    connected: Option<Connected>,
) -> Result<Upgrade, Refusal> {
    let Asked { request, stream } = asked;
    let accepted = upgrade(&request, config, draining, connected)?;
    let accepted = match stream {
        Some(stream) => sse::open(accepted, request.origin.as_deref(), stream)?,
        None => accepted,
    };
    admit(hub, ip, config, accepted)
}

/// Admits an accepted upgrade within the connection caps (overall and per address), or
/// refuses it (503 or 429, with Retry-After).
fn admit(hub: &Hub, ip: IpAddr, config: &Config, accepted: Upgrade) -> Result<Upgrade, Refusal> {
    match hub.admit(ip, config.max_connections, config.max_connections_per_ip) {
        Ok(()) => Ok(accepted),
        Err(over) => {
            let why = over.reason.to_owned();
            Err(Refusal::new(over.status, "Retry-After: 5\r\n", why))
        }
    }
}

/// Asks the connect hook about `request` (read from `conn`, worker `worker`, whose head
/// is `head`): the connection waits for the answer from now on. A request that cannot be
/// handed over (the line is full) is refused at once.
pub(super) fn ask_connect(
    hub: &Hub,
    worker: usize,
    conn: &mut Conn,
    asked: Asked,
    head: &[u8],
    now: Instant,
) -> Result<(), Refusal> {
    let Some(link) = hub.hooks.get() else {
        return Err(refusal_for(&HookFailure::Unavailable(
            "the hook thread is not running".into(),
        )));
    };
    let body = match &asked.stream {
        Some(stream) => hook::connect_body(head, &stream.target, conn.ip(), None, "sse"),
        None => {
            let subprotocol = auth::chosen_protocol(&asked.request.protocols);
            let target = &asked.request.target;
            hook::connect_body(head, target, conn.ip(), subprotocol, "websocket")
        }
    };
    let job = HookJob {
        kind: HookKind::Connect,
        body,
        to: HookDest {
            worker,
            conn: conn.id(),
        },
        asked: now,
        pending: None,
    };
    link.ask(job).map_err(|failure| refusal_for(&failure))?;
    conn.client_mut().authorize(asked);
    Ok(())
}

impl Worker {
    /// A hook's answer for connection `to.conn`.
    pub(super) fn on_hooked(&mut self, to: HookDest, answer: HookAnswer) {
        match answer {
            HookAnswer::Connect(result) => self.on_connect_answer(to.conn, result),
            HookAnswer::Subscribe(..) | HookAnswer::Publish(..) => {
                let ctx = self.clock.context(&self.hub, &self.config);
                self.pubsub
                    .on_hook_answer(&ctx, &mut self.conns, to.conn, answer);
            }
        }
    }

    /// The connect hook answered for connection `id`: it opens (as the upgrade would
    /// with a token granting the same) or is refused with the backend's status, or with
    /// the failure's (504 timeout, 503 unavailable, 502 malformed).
    fn on_connect_answer(&mut self, id: ConnId, result: Result<Verdict<Connected>, HookFailure>) {
        let draining = self.draining.is_some();
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        let Some(asked) = conn.client_mut().take_authorizing() else {
            return;
        };
        // An event stream's page (its origin passed the check before the hook was asked)
        // may read a refusal.
        let page = asked.stream.as_ref().and(asked.request.origin.clone());
        let accepted = match result {
            Ok(Ok(connected)) => accept(
                &self.hub,
                conn.ip(),
                &self.config,
                draining,
                asked,
                Some(connected),
            ),
            Ok(Err(refused)) => Err(Refusal::new(refused.status, "", refused.reason)),
            Err(failure) => Err(refusal_for(&failure)),
        }
        .map_err(|refusal| sse::readable(refusal, page.as_deref()));
        let mut input = conn.take_input(&mut self.scratch);
        self.finish_handshake(id, accepted, &mut input.buf);
        if let Some(conn) = self.conns.get(id) {
            conn.return_input(input, &mut self.scratch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_hook_failure_tells_the_client_no_detail() {
        let secret = "error sending request for url (http://user:pw@backend/connect)";
        let cases = [
            (
                HookFailure::Timeout,
                504,
                "the backend did not answer in time",
            ),
            (
                HookFailure::Unavailable(secret.into()),
                503,
                "the backend is unavailable",
            ),
            (HookFailure::Busy, 503, "the backend is unavailable"),
            (
                HookFailure::Malformed(format!("expected value: {secret}")),
                502,
                "the backend's answer was not understood",
            ),
        ];
        for (failure, status, body) in cases {
            let refusal = refusal_for(&failure);
            let response = String::from_utf8_lossy(&refusal.response).into_owned();
            assert_eq!(refusal.status, status);
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status} ")),
                "{response}"
            );
            assert!(
                response.ends_with(&format!("\r\n\r\n{body}\n")),
                "{response}"
            );
            assert!(!response.contains("pw@"), "{response}");
            assert!(refusal.why.contains(&failure.to_string()), "logged in full");
        }
    }
}
