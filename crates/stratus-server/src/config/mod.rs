//! Server settings and their defaults, and the namespaces that set options per topic
//! prefix (`namespace`).

mod broker;
mod hooks;
mod namespace;
mod nats;

use std::net::SocketAddr;
use std::time::Duration;

use stratus_deflate::DeflateConfig;
use stratus_proto::Limits;
use stratus_proto::handshake::HandshakeLimits;

use crate::model::auth::Auth;
use crate::model::moment;
use crate::model::shard::MAX_SHARDS;
use crate::tls::TlsFiles;
pub use broker::{BrokerAuth, Secret, redact};
pub(crate) use broker::{cluster_seed, connect_failure};
pub use hooks::Hooks;
pub(crate) use namespace::TopicOptions;
pub use namespace::{ClientPublish, Namespace, NamespaceOptions, PresenceMode};
pub(crate) use nats::{NatsBroker, NatsCredentials};

/// What a subscribe or unsubscribe counts for in a connection's message budget (it may
/// cost a broker round trip and a history read).
pub(crate) const COMMAND_COST: u32 = 10;

/// What the server does with client messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// Push server: clients subscribe to topics (at the upgrade or with JSON commands) and
    /// receive what is published to them.
    PubSub,
    /// Echo every text and binary message back (Autobahn's testee).
    Echo,
}

/// What happens to a subscriber whose send queue would pass its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Close 1008 "slow consumer", then TCP close within the close timeout.
    Close,
    /// Skip the message for that subscriber and count it.
    Drop,
    /// Keep only the newest message per topic (or per key, when the publish names one)
    /// until the queue drains; the subscriber is told what it skipped, and never closed.
    Conflate,
}

/// Everything a server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// What the server does with messages.
    pub app: App,
    /// WebSocket listen address.
    pub listen: SocketAddr,
    /// Admin listener (publish API, health); `None` for no admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin API requires; without one the admin listener only binds to
    /// loopback addresses.
    pub admin_token: Option<String>,
    /// Worker threads, each with its own io_uring runtime and SO_REUSEPORT listener (at
    /// most 64).
    pub workers: usize,
    /// Frame, message and fragment limits for received messages.
    pub limits: Limits,
    /// Request head limits for the opening handshake.
    pub handshake_limits: HandshakeLimits,
    /// How long a client has to complete the opening handshake.
    pub handshake_timeout: Duration,
    /// How long a client has to finish a message once it has begun sending it (a frame
    /// or a fragmented message in progress); then Close 1008. A peer trickling a frame
    /// a byte at a time holds its partial frame no longer than this.
    pub message_timeout: Duration,
    /// How long the server waits for the peer's Close (or FIN) after sending its Close.
    pub close_timeout: Duration,
    /// Bytes queued for one connection before the slow-consumer policy applies (and above
    /// which the server stops reading from it).
    pub max_send_queue: usize,
    /// What to do with a subscriber whose queue is full.
    pub slow_consumer: SlowConsumer,
    /// Most topics one connection may subscribe to.
    pub max_topics_per_connection: usize,
    /// Messages (of any kind, pings included) one connection may send a second, in bursts
    /// as large; past it its input waits (reading pauses, and the kernel's flow control
    /// holds the client back), so no client can keep a worker busy. A subscribe or
    /// unsubscribe counts as 10 (it may cost a broker round trip and a history read), and
    /// past the budget it gets an error reply. 0: no limit.
    pub message_rate: u32,
    /// Most WebSocket connections open at once over all workers (0: no limit); an upgrade
    /// beyond it gets 503 with Retry-After.
    pub max_connections: usize,
    /// Most WebSocket connections open at once from one IP address (0: no limit); an
    /// upgrade beyond it gets 429 with Retry-After.
    pub max_connections_per_ip: usize,
    /// Most sockets that have not finished the upgrade (reading their request, or
    /// answered and closing), over all workers (each takes its share); past it the oldest
    /// is closed. 0: no limit.
    pub max_unupgraded: usize,
    /// Most such sockets from one address (each worker takes its share); past it a new
    /// one is closed at once. 0: no limit.
    pub max_unupgraded_per_ip: usize,
    /// Origins allowed to open WebSocket connections, as `scheme://host[:port]` (ASCII
    /// case does not matter), or `*` for any. Empty allows only the server's own origin
    /// (the request's Host), so a web page elsewhere cannot use a visitor's browser to
    /// reach a server on localhost or an intranet (cross-site WebSocket hijacking; a page
    /// that rebinds its own name to the server's address passes this check, which only
    /// token auth stops). Behind a proxy that rewrites Host, list the public origin. A
    /// request without an Origin header (not from a browser) is allowed: the check guards
    /// browsers against cross-site use, and other clients can send any Origin they like.
    pub allowed_origins: Vec<String>,
    /// Token auth at the upgrade (`None`: off). With it, an upgrade without a valid token
    /// gets 401, and a connection may subscribe only to the topics its token lists.
    pub auth: Option<Auth>,
    /// Largest message the admin API accepts for publishing.
    pub max_publish: usize,
    /// Bytes of publishes that may wait for one worker (each counted with its frame) before
    /// the node refuses publishes with 503 (overloaded): when the node cannot fan out as
    /// fast as it is published to, publishers are told to come back instead of
    /// subscribers' queues filling up.
    pub max_publish_backlog: usize,
    /// Most admin API connections at once; one more gets 503 and is closed.
    pub admin_max_connections: usize,
    /// How long an admin request may take, from its first byte to the end of its
    /// response (408 when the request is not in by then).
    pub admin_request_timeout: Duration,
    /// A connection silent for this long gets a ping.
    pub ping_interval: Duration,
    /// A ping unanswered for this long closes the connection.
    pub pong_timeout: Duration,
    /// How long a shutdown waits for clients to answer Close 1001.
    pub drain_timeout: Duration,
    /// How long a worker keeps polling for completions after a busy turn before it
    /// sleeps: under load the next ones come within microseconds, and a sleep and wake-up
    /// for each costs more than the poll (zero: sleep at once).
    pub busy_poll: Duration,
    /// Each worker's io_uring: submission entries (the completion queue gets four times
    /// as many), and the pool of receive buffers the kernel fills, shared by the worker's
    /// connections (at most `recv_buffers` of `recv_buffer_size` bytes; it grows on
    /// demand, so this is what a burst of senders can make resident).
    pub ring: stratus_uring::RingConfig,
    /// permessage-deflate: `None` declines every offer.
    pub deflate: Option<DeflateConfig>,
    /// TLS on the WebSocket listener (`wss://`); `None` serves plain `ws://`.
    pub tls: Option<TlsFiles>,
    /// TLS on the admin listener (`https://`); `None` serves plain HTTP. It may name the
    /// same files as `tls`.
    pub admin_tls: Option<TlsFiles>,
    /// A Redis URL through which several servers share topics: every publish goes through
    /// Redis and reaches the subscribers on every server. `redis://host:port/db`, or
    /// `rediss://` for TLS; it may carry a user and password (`redis://user:password@host`),
    /// but `broker_auth` keeps them out of it. Several URLs separated by commas are shards:
    /// each topic lives on one of them (see [`Config::broker_shards`]). `nats://` (or
    /// `tls://`) URLs name a NATS cluster instead ([`Config::broker_nats`]). `None`: this
    /// server alone (the embedded local broker).
    pub broker: Option<String>,
    /// The ACL user and password the node signs in to the broker with, and the CA that
    /// signs a `rediss://` broker's certificate.
    pub broker_auth: BrokerAuth,
    /// Messages kept per topic (in Redis with a broker, in the node's memory without), so
    /// a subscriber can resume from the last offset it saw. 0 keeps none.
    pub history: usize,
    /// Longest a message is kept in the history (`None`: until the count or the memory
    /// cap push it out).
    pub history_ttl: Option<Duration>,
    /// Without a broker: most bytes the node's history holds over all topics (the oldest
    /// entries of any topic go first past it).
    pub history_memory: usize,
    /// Who may publish from a connection (protocol v1), where no namespace says.
    pub client_publish: ClientPublish,
    /// Publishes one connection may make a second, in bursts as large (0: no limit).
    pub client_publish_rate: u32,
    /// How long before a token expires a protocol v1 connection is asked for a fresh
    /// one (`refresh`).
    pub refresh_lead: Duration,
    /// What presence tracks, where no namespace says.
    pub presence: PresenceMode,
    /// Most members listed per topic, where no namespace says (past it: counts only).
    pub presence_max_members: usize,
    /// Whether subscribers get joins and leaves, where no namespace says.
    pub presence_events: bool,
    /// How often subscribers get their topics' occupancy, where no namespace says
    /// (`None`: never).
    pub occupancy_push: Option<Duration>,
    /// How often presence changes are gathered: joins and leaves coalesced into one event
    /// per topic, counts reported to the cluster.
    pub presence_interval: Duration,
    /// With a broker: how long a node's presence (counts, members, occupied topics) stays
    /// in Redis without a refresh; a node that crashed is gone from presence after it.
    pub presence_lease: Duration,
    /// Options per topic prefix, over the settings above.
    pub namespaces: Vec<Namespace>,
    /// Keep occupied/vacated events (a topic's first subscriber anywhere, and none for
    /// `vacate_grace`): readable by offset (`GET /events`), and posted to
    /// `occupancy_webhook` if set (which turns them on too).
    pub occupancy_events: bool,
    /// Where occupied/vacated events are posted (an `http://` or `https://` URL).
    pub occupancy_webhook: Option<String>,
    /// The shared secret the webhook's posts are signed with (HMAC-SHA256, in
    /// `X-Stratus-Signature`); `None`: unsigned.
    pub webhook_secret: Option<String>,
    /// How long a topic has no subscriber anywhere before it is vacated: one that comes
    /// back sooner (a flapping client, a rolling restart) fires nothing.
    pub vacate_grace: Duration,
    /// The backend hooks (connect, subscribe, publish).
    pub hooks: Hooks,
}

impl Default for Config {
    /// The push server, on loopback: WebSocket on 127.0.0.1:8080, admin on 127.0.0.1:9090.
    fn default() -> Self {
        Self {
            app: App::PubSub,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            admin_token: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            limits: Limits {
                max_frame: 64 << 10,
                max_message: 64 << 10,
                max_fragments: 64,
            },
            handshake_limits: HandshakeLimits::default(),
            handshake_timeout: Duration::from_secs(10),
            message_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(3),
            max_send_queue: 1 << 20,
            slow_consumer: SlowConsumer::Close,
            max_topics_per_connection: 64,
            message_rate: 1000,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_unupgraded: 4096,
            max_unupgraded_per_ip: 1024,
            allowed_origins: Vec::new(),
            auth: None,
            max_publish: 1 << 20,
            max_publish_backlog: 1 << 20,
            admin_max_connections: 64,
            admin_request_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            busy_poll: Duration::ZERO,
            ring: stratus_uring::RingConfig::default(),
            deflate: Some(DeflateConfig::default()),
            tls: None,
            admin_tls: None,
            broker: None,
            broker_auth: BrokerAuth::default(),
            history: 0,
            history_ttl: None,
            history_memory: 64 << 20,
            client_publish: ClientPublish::Off,
            client_publish_rate: 10,
            refresh_lead: Duration::from_secs(60),
            presence: PresenceMode::Counts,
            presence_max_members: 1000,
            presence_events: false,
            occupancy_push: None,
            presence_interval: Duration::from_secs(1),
            presence_lease: Duration::from_secs(5),
            namespaces: Vec::new(),
            occupancy_events: false,
            occupancy_webhook: None,
            webhook_secret: None,
            vacate_grace: Duration::from_secs(5),
            hooks: Hooks::default(),
        }
    }
}

impl Config {
    /// Checks what cannot be checked field by field, and loads the TLS certificates and
    /// keys: a reason to refuse the config.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(admin) = self.admin_listen
            && self.admin_token.is_none()
            && !admin.ip().is_loopback()
        {
            return Err(format!(
                "the admin listener on {admin} needs an admin token (or a loopback address)"
            ));
        }
        if self.workers == 0 {
            return Err("workers must be at least 1".into());
        }
        // A connection keeps these as 4-byte moments (see `model::moment`).
        for (name, timeout) in [
            ("handshake-timeout", self.handshake_timeout),
            ("message-timeout", self.message_timeout),
            ("close-timeout", self.close_timeout),
            ("ping-interval", self.ping_interval),
            ("pong-timeout", self.pong_timeout),
        ] {
            if timeout >= moment::LONGEST {
                return Err(format!("{name} must be under 24 days"));
            }
        }
        if self.presence_interval < Duration::from_millis(10) {
            return Err("presence-interval must be at least 0.01 s".into());
        }
        if self.presence_lease < self.presence_interval * 2 {
            return Err(
                "presence-lease must be at least twice presence-interval (each report renews \
                 it; one late report must not lapse it)"
                    .into(),
            );
        }
        if self.message_rate != 0 && self.message_rate < COMMAND_COST {
            return Err(format!(
                "message-rate {} is below what one command costs ({COMMAND_COST}); 0 means \
                 no limit",
                self.message_rate
            ));
        }
        if self.max_publish_backlog == 0 {
            return Err("max-publish-backlog must be more than 0".into());
        }
        if self.admin_max_connections == 0 {
            return Err("admin-max-connections must be at least 1".into());
        }
        if !(1..=32768).contains(&self.ring.entries) {
            return Err(format!(
                "ring-entries ({}) must be between 1 and 32768",
                self.ring.entries
            ));
        }
        let buffers = self.ring.recv_buffers;
        if !buffers.is_power_of_two() || buffers > 1 << 15 || self.ring.recv_buffer_size == 0 {
            return Err(format!(
                "recv-buffers ({buffers}) must be a power of two up to 32768, and \
                 recv-buffer-size more than 0"
            ));
        }
        if self.admin_tls.is_some() && self.admin_listen.is_none() {
            return Err("admin TLS is configured but there is no admin listener".into());
        }
        self.tls
            .as_ref()
            .map(TlsFiles::load)
            .transpose()
            .map_err(|e| format!("tls: {e}"))?;
        self.admin_tls
            .as_ref()
            .map(TlsFiles::load)
            .transpose()
            .map_err(|e| format!("admin tls: {e}"))?;
        self.broker_shards()?;
        if self.broker_nats()?.is_some() && self.keeps_occupancy_events() {
            return Err(
                "occupancy events (occupancy-events, occupancy-webhook) need a Redis \
                        broker or none: a NATS broker carries publishes and histories only"
                    .into(),
            );
        }
        if self.history_ttl == Some(Duration::ZERO) {
            return Err("history-ttl must be more than 0".into());
        }
        self.validate_namespaces()?;
        self.validate_occupancy()?;
        self.hooks.validate(self.handshake_timeout)?;
        self.validate_namespace_hooks()?;
        Ok(())
    }

    /// Whether occupied/vacated events are kept.
    pub(crate) fn keeps_occupancy_events(&self) -> bool {
        self.occupancy_events || self.occupancy_webhook.is_some()
    }

    /// The webhook must be an http(s) URL; the grace and the lease must be more than 0.
    fn validate_occupancy(&self) -> Result<(), String> {
        if let Some(hook) = &self.occupancy_webhook {
            let parsed =
                url::Url::parse(hook).map_err(|e| format!("occupancy-webhook {hook:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(format!(
                    "occupancy-webhook {hook:?}: must be an http:// or https:// URL"
                ));
            }
        }
        if self.webhook_secret.as_deref() == Some("") {
            return Err("webhook-secret must not be empty".into());
        }
        if self.keeps_occupancy_events()
            && (self.vacate_grace.is_zero()
                || self.presence_lease.is_zero()
                || self.presence_interval.is_zero())
        {
            return Err(
                "occupancy events need vacate-grace, presence-lease and presence-interval \
                 above 0"
                    .into(),
            );
        }
        Ok(())
    }

    /// The client for `broker`'s first (or only) shard, if set (`redis://` or `rediss://`,
    /// signing in with `broker_auth`): the one that carries what is the node's rather than
    /// a topic's (see [`Config::broker_shards`]). The error names the URL with its password
    /// masked.
    #[cfg(test)]
    pub(crate) fn broker_client(&self) -> Result<Option<redis::Client>, String> {
        Ok(self
            .broker_shards()?
            .and_then(|shards| shards.into_iter().next()))
    }

    /// The clients for `broker`'s shards, in order, if set: one URL, or several separated
    /// by commas (`redis://10.0.0.5:6379,redis://10.0.0.6:6379`; see [`shard_urls`]), each made by `broker_auth`. Each topic lives on one shard, chosen
    /// by its name and the shard's position in the list (`model::shard`), so every node
    /// must list the same shards in the same order, and a shard is added at the end. The
    /// first shard also carries what is the node's rather than a topic's: presence, the
    /// node list, user-level control, the control channel, the occupied/vacated events.
    /// `None` too for a NATS broker ([`Config::broker_nats`]).
    pub(crate) fn broker_shards(&self) -> Result<Option<Vec<redis::Client>>, String> {
        let Some(list) = &self.broker else {
            return Ok(None);
        };
        if self.broker_nats()?.is_some() {
            return Ok(None);
        }
        let urls = shard_urls(list);
        if urls.len() > MAX_SHARDS {
            return Err(format!(
                "broker: {} shards, at most {MAX_SHARDS}",
                urls.len()
            ));
        }
        let seeds = self.broker_cluster();
        if seeds
            .as_ref()
            .is_some_and(|seeds| seeds.len() != urls.len())
        {
            return Err(format!(
                "broker {}: a Redis Cluster is named by its seeds only (redis+cluster:// or \
                 rediss+cluster://), not mixed with redis:// shards",
                redact(list)
            ));
        }
        let mut clients = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            if url.is_empty() {
                return Err(format!(
                    "broker {}: shard {index} is empty (a stray comma?)",
                    redact(list)
                ));
            }
            if urls[..index].contains(url) {
                return Err(format!(
                    "broker {}: shard {index} repeats an earlier shard",
                    redact(list)
                ));
            }
            let seed = seeds.as_ref().and_then(|seeds| seeds.get(index));
            clients.push(self.broker_auth.client(seed.map_or(url, String::as_str))?);
        }
        Ok(Some(clients))
    }

    /// The NATS broker, if `broker` names one (`nats://` or `tls://` URLs: one NATS
    /// cluster's servers, see `config::nats`); an error if it mixes them with others.
    pub(crate) fn broker_nats(&self) -> Result<Option<NatsBroker>, String> {
        let Some(list) = &self.broker else {
            return Ok(None);
        };
        let urls = shard_urls(list);
        if !urls.iter().any(|url| nats::is_nats(url)) {
            return Ok(None);
        }
        if urls.len() > MAX_SHARDS {
            return Err(format!(
                "broker: {} servers, at most {MAX_SHARDS}",
                urls.len()
            ));
        }
        self.broker_auth.nats(&urls).map(Some)
    }

    /// The history every topic a NATS broker keeps may have (JetStream limits a stream,
    /// not each subject): the most entries and the longest age any topic's options keep
    /// (`None`: some topic keeps its history without an age bound).
    pub(crate) fn widest_history(&self) -> (usize, Option<Duration>) {
        let options = std::iter::once((Some(self.history), self.history_ttl)).chain(
            self.namespaces.iter().map(|ns| {
                (
                    ns.options.history,
                    ns.options.history_ttl.or(self.history_ttl),
                )
            }),
        );
        let mut widest = (0, Some(Duration::ZERO));
        for (count, ttl) in options {
            let count = count.unwrap_or(self.history);
            if count == 0 {
                continue;
            }
            widest.0 = widest.0.max(count);
            widest.1 = match (widest.1, ttl) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        widest
    }

    /// With `--broker redis+cluster://a,redis+cluster://b` (or `rediss+cluster://`): the
    /// Redis Cluster's seeds, as plain URLs (`redis://a`, `redis://b`), in order. The
    /// broker thread asks them for the cluster's masters and slots at start
    /// (`broker::cluster`); `broker_shards` gives their clients. `None` without a broker
    /// or with plain shards.
    pub(crate) fn broker_cluster(&self) -> Option<Vec<String>> {
        let urls = shard_urls(self.broker.as_deref()?);
        let seeds: Vec<String> = urls.iter().filter_map(|url| cluster_seed(url)).collect();
        (!seeds.is_empty()).then_some(seeds)
    }

    /// The echo server (Autobahn's testee) on 127.0.0.1:9001, with limits that let every
    /// Autobahn case pass.
    pub fn echo() -> Self {
        Self {
            app: App::Echo,
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            admin_listen: None,
            limits: Limits::default(),
            message_rate: 0,
            ..Self::default()
        }
    }
}

/// `list` cut into its URLs, trimmed: at each comma followed by a scheme (`redis://`, or
/// anything else `xyz://`, refused later by name), by another comma or by nothing (an empty
/// shard, refused later), and not at other commas: a comma in a URL's password is part of
/// the password (a password cut there would be refused with its tail in the message).
fn shard_urls(list: &str) -> Vec<&str> {
    let mut urls = Vec::new();
    let mut start = 0;
    for (comma, _) in list.match_indices(',') {
        let next = list[comma + 1..].trim_start();
        let scheme = next.find("://").is_some_and(|end| {
            next[..end]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+')
        });
        if scheme || next.is_empty() || next.starts_with(',') {
            urls.push(list[start..comma].trim());
            start = comma + 1;
        }
    }
    urls.push(list[start..].trim());
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nats_stream_keeps_the_widest_history_any_topic_asks_for() {
        let minute = Duration::from_secs(60);
        let namespace = |prefix: &str, history, history_ttl| Namespace {
            prefix: prefix.into(),
            options: NamespaceOptions {
                history,
                history_ttl,
                ..NamespaceOptions::default()
            },
        };
        let mut config = Config {
            history: 10,
            history_ttl: Some(minute),
            namespaces: vec![
                namespace("a:", Some(50), None),
                // Keeps nothing: its unbounded age does not count.
                namespace("b:", Some(0), None),
                namespace("c:", None, Some(2 * minute)),
            ],
            ..Config::default()
        };
        assert_eq!(config.widest_history(), (50, Some(2 * minute)));
        config.history_ttl = None;
        assert_eq!(
            config.widest_history(),
            (50, None),
            "a topic without an age bound"
        );
        let mut nats = Config {
            broker: Some("nats://127.0.0.1:4222".into()),
            occupancy_events: true,
            ..Config::default()
        };
        assert!(nats.validate().unwrap_err().contains("NATS"));
        nats.occupancy_events = false;
        assert!(matches!(nats.broker_shards(), Ok(None)), "no Redis shards");
        assert!(nats.broker_nats().unwrap().is_some());
        nats.broker = Some("nats://a:1,redis://b:2".into());
        assert!(nats.validate().is_err(), "NATS and Redis mixed");
    }

    #[test]
    fn connection_timeouts_must_fit_a_moment() {
        let day = Duration::from_secs(86_400);
        let ping = |every: Duration| Config {
            ping_interval: every,
            ..Config::default()
        };
        assert!(ping(day * 24).validate().is_ok());
        let err = ping(day * 25).validate().unwrap_err();
        assert_eq!(err, "ping-interval must be under 24 days");
        let close = Config {
            close_timeout: moment::LONGEST,
            ..Config::default()
        };
        assert!(close.validate().is_err());
    }

    #[test]
    fn only_redis_urls_are_accepted_as_brokers() {
        let broker = |url: &str| Config {
            broker: Some(url.into()),
            ..Config::default()
        };
        assert!(broker("redis://127.0.0.1:6379/0").broker_client().is_ok());
        assert!(broker("rediss://127.0.0.1:6379").broker_client().is_ok());
        assert!(broker("http://127.0.0.1:6379").broker_client().is_err());
        assert!(matches!(Config::default().broker_client(), Ok(None)));
        let err = broker("http://stratus:hunter2@127.0.0.1:6379")
            .validate()
            .unwrap_err();
        assert!(err.contains("stratus:***@"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn several_broker_urls_are_shards_in_order() {
        let broker = |list: &str| Config {
            broker: Some(list.into()),
            ..Config::default()
        };
        let shards = broker("redis://127.0.0.1:6379/0, rediss://127.0.0.1:6380,redis://h:1")
            .broker_shards()
            .unwrap()
            .unwrap();
        let ports: Vec<String> = shards
            .iter()
            .map(|c| c.get_connection_info().addr().to_string())
            .collect();
        assert_eq!(ports, ["127.0.0.1:6379", "127.0.0.1:6380", "h:1"]);
        let first = broker("redis://127.0.0.1:6379/0,redis://127.0.0.1:6380")
            .broker_client()
            .unwrap()
            .unwrap();
        assert_eq!(
            first.get_connection_info().addr().to_string(),
            "127.0.0.1:6379",
            "what is the node's lives on the first shard"
        );
        for (list, why) in [
            ("redis://a:1,,redis://b:1", "shard 1 is empty"),
            ("redis://a:1,", "shard 1 is empty"),
            ("redis://u:hunter2@a:1,redis://u:hunter2@a:1", "repeats"),
            ("redis://a:1,http://u:hunter2@b:1", "only redis://"),
        ] {
            let err = broker(list).validate().unwrap_err();
            assert!(err.contains(why), "{list}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = broker("redis://u:hunt,er2@a:x").validate().unwrap_err();
        assert!(
            err.contains("u:***@a:x") && err.contains("invalid port"),
            "{err}"
        );
        assert!(!err.contains("hunt") && !err.contains("er2@"), "{err}");
        let commas = broker("redis://u:pa,ss@a:1, redis://u:1,2@b:2,redis://c:3")
            .broker_shards()
            .unwrap()
            .unwrap();
        let addrs: Vec<String> = commas
            .iter()
            .map(|c| c.get_connection_info().addr().to_string())
            .collect();
        assert_eq!(
            addrs,
            ["a:1", "b:2", "c:3"],
            "a comma in a password is the password's"
        );
        let many: Vec<String> = (1..=MAX_SHARDS + 1)
            .map(|port| format!("redis://h:{port}"))
            .collect();
        let err = broker(&many.join(",")).validate().unwrap_err();
        assert!(err.contains("at most"), "{err}");
    }

    #[test]
    fn a_redis_cluster_is_named_by_its_seeds_alone() {
        let broker = |list: &str| Config {
            broker: Some(list.into()),
            ..Config::default()
        };
        let cluster = broker("redis+cluster://u:hunter2@10.0.0.5:7000, rediss+cluster://h:7001");
        assert_eq!(
            cluster.broker_cluster().unwrap(),
            ["redis://u:hunter2@10.0.0.5:7000", "rediss://h:7001"]
        );
        let seeds = cluster.broker_shards().unwrap().unwrap();
        let addrs: Vec<String> = seeds
            .iter()
            .map(|c| c.get_connection_info().addr().to_string())
            .collect();
        assert_eq!(addrs, ["10.0.0.5:7000", "h:7001"]);
        assert!(cluster.validate().is_ok());
        assert_eq!(broker("redis://a:1,redis://b:2").broker_cluster(), None);
        for (list, why) in [
            ("redis+cluster://u:hunter2@a:1,redis://b:2", "not mixed"),
            ("redis://u:hunter2@a:1,redis+cluster://b:2", "not mixed"),
            ("http+cluster://u:hunter2@a:1", "only redis://"),
        ] {
            let err = broker(list).validate().unwrap_err();
            assert!(err.contains(why), "{list}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn the_occupancy_webhook_must_be_an_http_url_and_the_grace_more_than_zero() {
        let hook = |url: &str| Config {
            occupancy_webhook: Some(url.into()),
            ..Config::default()
        };
        assert!(
            hook("https://app.example.com/hook")
                .validate_occupancy()
                .is_ok()
        );
        assert!(hook("http://127.0.0.1:8000/").validate_occupancy().is_ok());
        for bad in ["ftp://example.com/", "not a url", "mailto:a@example.com"] {
            assert!(hook(bad).validate_occupancy().is_err(), "{bad}");
        }
        let no_grace = Config {
            vacate_grace: Duration::ZERO,
            ..hook("http://127.0.0.1/")
        };
        assert!(no_grace.validate_occupancy().is_err());
        let empty_secret = Config {
            webhook_secret: Some(String::new()),
            ..Config::default()
        };
        assert!(empty_secret.validate_occupancy().is_err());
        assert!(!Config::default().keeps_occupancy_events());
        assert!(hook("http://127.0.0.1/").keeps_occupancy_events());
    }
}
