//! The sweep, a few times a second: pings silent connections, closes unresponsive ones
//! and those past a message's deadline or their token's expiry, ends those whose
//! handshake or close deadline passed, gives up recoveries past their time, resumes input
//! whose budget has refilled, and publishes the worker's gauges. One timer per worker
//! instead of one per connection; the per-connection decisions are
//! [`Client::tick`](crate::connection::Client::tick)'s. Also the drain.

use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use stratus_proto::CloseCode;

use crate::config::Config;
use crate::connection::Tick;
use crate::stats;
use crate::worker::{LISTENER, Worker};

/// How often the sweep runs: a quarter of the shortest timeout it enforces.
pub(super) fn period(config: &Config) -> Duration {
    [
        config.handshake_timeout,
        config.message_timeout,
        config.ping_interval,
        config.pong_timeout,
        config.close_timeout,
    ]
    .into_iter()
    .min()
    .unwrap_or(Duration::from_secs(1))
    .div_f64(4.0)
    .clamp(Duration::from_millis(10), Duration::from_secs(1))
}

impl Worker {
    /// Looks at every connection (see the module docs), and re-arms the accept if it
    /// stopped.
    pub(super) fn sweep(&mut self) {
        self.arm_accept();
        let config = &*self.config;
        let (now, now_ms) = (self.clock.now, self.clock.now_ms());
        let hard_stop = self
            .draining
            .map(|deadline| deadline + config.close_timeout);
        let unix_s = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let counters = &self.hub.workers[self.index];
        let mut queued_bytes = 0;
        self.conns.update_all(|conn| {
            queued_bytes += conn.client().queued_bytes() as u64;
            if conn.is_dead() {
                return false;
            }
            // Its message budget has refilled: its input is read again.
            let mut changed =
                conn.is_input_waiting() && !conn.client().is_input_held(config, now_ms);
            match conn.client_mut().tick(config, now, unix_s, hard_stop) {
                Tick::Quiet => {}
                Tick::Changed => changed = true,
                Tick::Expired { handshake } => {
                    if handshake {
                        stats::add(&counters.handshake_timeouts, 1);
                    }
                    conn.kill();
                    changed = true;
                }
            }
            changed
        });
        counters.queued_bytes.store(queued_bytes, Ordering::Relaxed);
        let unupgraded = self.unupgraded.len() as u64;
        counters.unupgraded.store(unupgraded, Ordering::Relaxed);
        counters
            .ring_overflows
            .store(self.ring.overflows(), Ordering::Relaxed);
        counters
            .ring_lost
            .store(self.ring.lost_completions(), Ordering::Relaxed);
    }

    /// Stops accepting and closes every connection with 1001, to be done by the drain
    /// timeout (upgrades still in their handshake get 503).
    pub(super) fn start_drain(&mut self) {
        let deadline = self.clock.now + self.config.drain_timeout;
        self.draining = Some(deadline);
        let _ = socket2::SockRef::from(&self.listener).shutdown(Shutdown::Both);
        if self.accepting {
            self.ring.cancel_accept(LISTENER);
        }
        self.conns.update_all(|conn| {
            let why = "server shutting down";
            conn.client_mut()
                .close(CloseCode::GOING_AWAY, why, deadline, false);
            true
        });
    }
}
