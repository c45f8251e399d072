//! Server settings from a TOML file, environment variables and flags, in one schema:
//! every flag is also a config-file key of the same name (`--max-send-queue` is
//! `max-send-queue`) and an environment variable (`STRATUS_MAX_SEND_QUEUE`). Flags win
//! over the environment, the environment over the file, the file over the defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use stratus_deflate::{DeflateConfig, Mode};
use stratus_server::{
    Auth, AuthAlgorithm, BrokerAuth, ClientPublish, Config, Hooks, Namespace, NamespaceOptions,
    PresenceMode, Secret, SlowConsumer, TlsFiles, redact,
};

/// Server options (all optional: unset means "from the file, else the default").
#[derive(Args, Deserialize, Serialize, Default, Debug, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct Settings {
    /// TOML file with any of these options (keys as the flag names).
    #[arg(long, env = "STRATUS_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// WebSocket listen address [serve: 127.0.0.1:8080, echo: 127.0.0.1:9001].
    #[arg(long, env = "STRATUS_LISTEN")]
    listen: Option<SocketAddr>,
    /// Admin listener (publish API, /healthz, /readyz) [127.0.0.1:9090].
    #[arg(long, env = "STRATUS_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Bearer token the admin API requires; without one the admin listener may only
    /// bind to loopback.
    #[arg(long, env = "STRATUS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Worker threads [one per core].
    #[arg(long, env = "STRATUS_WORKERS")]
    workers: Option<usize>,
    /// Largest message a client may send, in bytes [serve: 65536, echo: 16 MiB].
    #[arg(long, env = "STRATUS_MAX_MESSAGE")]
    max_message: Option<usize>,
    /// Largest frame payload a client may send [serve: 65536, echo: 16 MiB].
    #[arg(long, env = "STRATUS_MAX_FRAME")]
    max_frame: Option<usize>,
    /// Most frames in one client message [serve: 64, echo: 131072].
    #[arg(long, env = "STRATUS_MAX_FRAGMENTS")]
    max_fragments: Option<usize>,
    /// Most topics one connection may subscribe to [64].
    #[arg(long, env = "STRATUS_MAX_TOPICS")]
    max_topics: Option<usize>,
    /// Messages one connection may send a second, in bursts as large; past it its input
    /// waits. A subscribe or unsubscribe counts as 10 and past it gets an error reply
    /// [serve: 1000, echo: 0 (no limit)].
    #[arg(long, env = "STRATUS_MESSAGE_RATE")]
    message_rate: Option<u32>,
    /// Most WebSocket connections at once, over all workers; beyond, 503 [0: no limit].
    #[arg(long, env = "STRATUS_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most WebSocket connections at once from one IP address; beyond, 429 [0: no limit].
    #[arg(long, env = "STRATUS_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Most sockets that have not finished the upgrade, over all workers; past it the
    /// oldest is closed [4096; 0: no limit].
    #[arg(long, env = "STRATUS_MAX_UNUPGRADED")]
    max_unupgraded: Option<usize>,
    /// Most such sockets from one IP address; past it a new one is closed at once [1024;
    /// 0: no limit].
    #[arg(long, env = "STRATUS_MAX_UNUPGRADED_PER_IP")]
    max_unupgraded_per_ip: Option<usize>,
    /// Origins allowed to connect from a browser, comma-separated `scheme://host[:port]`,
    /// or `*` for any; others get 403 [the server's own origin only].
    #[arg(long, value_delimiter = ',', env = "STRATUS_ALLOWED_ORIGINS")]
    allowed_origins: Option<Vec<String>>,
    /// Token auth at the upgrade: off, or the JWT algorithm every token must be signed
    /// with (hs256, rs256, es256); without a valid token an upgrade gets 401 [off].
    #[arg(long, value_enum, env = "STRATUS_AUTH")]
    auth: Option<AuthArg>,
    /// The HS256 secret (32 bytes or more); prefer the environment or a file to a flag.
    #[arg(long, env = "STRATUS_AUTH_SECRET", hide_env_values = true)]
    auth_secret: Option<String>,
    /// A file with the verification key: the PEM public key for rs256 and es256, or the
    /// secret for hs256.
    #[arg(long, env = "STRATUS_AUTH_KEY_FILE")]
    auth_key_file: Option<PathBuf>,
    /// The `iss` every token must carry [not checked].
    #[arg(long, env = "STRATUS_AUTH_ISSUER")]
    auth_issuer: Option<String>,
    /// The `aud` every token must carry [not checked].
    #[arg(long, env = "STRATUS_AUTH_AUDIENCE")]
    auth_audience: Option<String>,
    /// Bytes queued to one client before the slow-consumer policy applies [1048576].
    #[arg(long, env = "STRATUS_MAX_SEND_QUEUE")]
    max_send_queue: Option<usize>,
    /// Largest message the admin API publishes, in bytes [1048576].
    #[arg(long, env = "STRATUS_MAX_PUBLISH")]
    max_publish: Option<usize>,
    /// Bytes of publishes that may wait for one worker before publishing answers 503
    /// (the node is overloaded) [1048576].
    #[arg(long, env = "STRATUS_MAX_PUBLISH_BACKLOG")]
    max_publish_backlog: Option<usize>,
    /// Most admin API connections at once; one more gets 503 [64].
    #[arg(long, env = "STRATUS_ADMIN_MAX_CONNECTIONS")]
    admin_max_connections: Option<usize>,
    /// Seconds an admin request may take from its first byte to its response; a late one
    /// gets 408 [10].
    #[arg(long, env = "STRATUS_ADMIN_REQUEST_TIMEOUT")]
    admin_request_timeout: Option<f64>,
    /// What to do with a subscriber whose queue is full [close].
    #[arg(long, value_enum, env = "STRATUS_SLOW_CONSUMER")]
    slow_consumer: Option<SlowConsumerArg>,
    /// Seconds a client has to finish the opening handshake [10].
    #[arg(long, env = "STRATUS_HANDSHAKE_TIMEOUT")]
    handshake_timeout: Option<f64>,
    /// Seconds a client has to finish a message it has begun sending; then Close 1008 [30].
    #[arg(long, env = "STRATUS_MESSAGE_TIMEOUT")]
    message_timeout: Option<f64>,
    /// Seconds to wait for the peer's Close or FIN after the server's Close [3].
    #[arg(long, env = "STRATUS_CLOSE_TIMEOUT")]
    close_timeout: Option<f64>,
    /// Seconds of silence before the server pings a client [30].
    #[arg(long, env = "STRATUS_PING_INTERVAL")]
    ping_interval: Option<f64>,
    /// Seconds an unanswered ping may wait before the connection is closed [10].
    #[arg(long, env = "STRATUS_PONG_TIMEOUT")]
    pong_timeout: Option<f64>,
    /// Seconds a shutdown waits for clients to answer Close 1001 [10].
    #[arg(long, env = "STRATUS_DRAIN_TIMEOUT")]
    drain_timeout: Option<f64>,
    /// Microseconds a worker keeps polling for completions after a busy turn before it
    /// sleeps (0: sleep at once) [0].
    #[arg(long, env = "STRATUS_BUSY_POLL_US")]
    busy_poll_us: Option<u64>,
    /// Submission queue entries of each worker's io_uring (the completion queue gets four
    /// times as many) [4096].
    #[arg(long, env = "STRATUS_RING_ENTRIES")]
    ring_entries: Option<u32>,
    /// Most receive buffers in each worker's pool, a power of two up to 32768 (the pool
    /// grows to it under bursts of input) [1024].
    #[arg(long, env = "STRATUS_RECV_BUFFERS")]
    recv_buffers: Option<u16>,
    /// Bytes per receive buffer [65536].
    #[arg(long, env = "STRATUS_RECV_BUFFER_SIZE")]
    recv_buffer_size: Option<usize>,
    /// permessage-deflate: off, shared (no context takeover, compress a broadcast once)
    /// or dedicated (context takeover per connection) [shared].
    #[arg(long, value_enum, env = "STRATUS_DEFLATE")]
    deflate: Option<DeflateArg>,
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such
    /// as `info,stratus_server=debug` [info].
    #[arg(long, env = "STRATUS_LOG_LEVEL")]
    pub(crate) log_level: Option<String>,
    /// Log lines as text or JSON objects [text].
    #[arg(long, value_enum, env = "STRATUS_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// Messages shorter than this many bytes are sent uncompressed [64].
    #[arg(long, env = "STRATUS_DEFLATE_THRESHOLD")]
    deflate_threshold: Option<usize>,
    /// PEM certificate chain (leaf first) for TLS on the WebSocket listener (wss://);
    /// needs tls-key [none: plain ws://].
    #[arg(long, env = "STRATUS_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of tls-cert [none].
    #[arg(long, env = "STRATUS_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM certificate chain for TLS on the admin listener (https://); may be the same
    /// file as tls-cert; needs admin-tls-key [none: plain HTTP].
    #[arg(long, env = "STRATUS_ADMIN_TLS_CERT")]
    admin_tls_cert: Option<PathBuf>,
    /// PEM private key of admin-tls-cert [none].
    #[arg(long, env = "STRATUS_ADMIN_TLS_KEY")]
    admin_tls_key: Option<PathBuf>,
    /// Redis URL (`redis://host:port/db`, or `rediss://` for TLS) through which several
    /// nodes share topics: a publish on any node reaches the subscribers on every node. It
    /// may carry a user and password (`redis://user:password@host`), but broker-username and
    /// broker-password(-file) keep them out of it. Several URLs separated by commas are
    /// shards (`redis://a:6379,redis://b:6379`): each topic lives on one, chosen by its name
    /// and the shard's place in the list, so every node lists the same shards in the same
    /// order and a new shard goes at the end; each shard fails on its own (its topics'
    /// publishes answer 503), and the first also keeps presence, user-level control and
    /// the occupied/vacated events. A Redis Cluster (7+, sharded pub/sub) is named by seeds
    /// (`redis+cluster://a:7000,redis+cluster://b:7000`, `rediss+cluster://` for TLS): the
    /// node reads its masters and slots at start (restart nodes after a resharding or a
    /// failover), keeps each topic's channel and history on its slot's master, and each
    /// master fails on its own, the master of the node-wide slot keeping what the first
    /// shard keeps. NATS is named by `nats://host:4222` (`tls://` for TLS; several URLs
    /// are one NATS cluster's servers): topics on core subjects, histories in a JetStream
    /// stream (nats-server -js); no presence, node list or occupied/vacated events, and a
    /// publish's answer cannot count nodes [none: this node alone].
    #[arg(long, env = "STRATUS_BROKER")]
    broker: Option<String>,
    /// The Redis ACL user (or NATS user) the node signs in as, with the broker password
    /// [the URL's, else Redis's default user; NATS: none].
    #[arg(long, env = "STRATUS_BROKER_USERNAME")]
    broker_username: Option<String>,
    /// The password the node signs in to Redis (or NATS) with; with NATS and no user
    /// name, the token. Prefer the environment or broker-password-file to a flag (a flag
    /// shows in `ps`). Never logged, and withheld by config check [the URL's, else none].
    #[arg(long, env = "STRATUS_BROKER_PASSWORD", hide_env_values = true)]
    pub(crate) broker_password: Option<String>,
    /// A file holding the broker password (trailing line breaks ignored), instead of
    /// broker-password; read at start [none].
    #[arg(long, env = "STRATUS_BROKER_PASSWORD_FILE")]
    broker_password_file: Option<PathBuf>,
    /// PEM file with the CA certificate(s) a rediss:// (or NATS tls://) broker's
    /// certificate must be signed by: a private CA, a self-signed server, or
    /// /etc/ssl/certs/ca-certificates.crt for the host's roots [the Mozilla roots built in].
    #[arg(long, env = "STRATUS_BROKER_CA")]
    broker_ca: Option<PathBuf>,
    /// Messages kept per topic (in Redis with a broker, in the node's memory without), so
    /// a subscriber can resume from the last offset it saw [0: none].
    #[arg(long, env = "STRATUS_HISTORY")]
    history: Option<usize>,
    /// Seconds a message is kept in the history [none: until the count or the memory cap
    /// push it out].
    #[arg(long, env = "STRATUS_HISTORY_TTL")]
    history_ttl: Option<f64>,
    /// Without a broker: most bytes the node's history holds over all topics; past it the
    /// oldest entries of any topic go first [67108864].
    #[arg(long, env = "STRATUS_HISTORY_MEMORY")]
    history_memory: Option<usize>,
    /// Who may publish from a protocol v1 connection: off, subscribers (of the topic), or
    /// claim (tokens whose `publish` claim allows the topic) [off].
    #[arg(long, value_enum, env = "STRATUS_CLIENT_PUBLISH")]
    client_publish: Option<ClientPublishArg>,
    /// Publishes one connection may make a second, in bursts as large; past it, an error
    /// reply `rate_limited` [10; 0: no limit].
    #[arg(long, env = "STRATUS_CLIENT_PUBLISH_RATE")]
    client_publish_rate: Option<u32>,
    /// Seconds before its token expires that a protocol v1 connection is asked to refresh
    /// it [60].
    #[arg(long, env = "STRATUS_REFRESH_LEAD")]
    refresh_lead: Option<f64>,
    /// What presence tracks: off, counts (occupancy: connections and distinct users), or
    /// members (counts and the member list) [counts].
    #[arg(long, value_enum, env = "STRATUS_PRESENCE")]
    presence: Option<PresenceArg>,
    /// Most members listed per topic; past it, presence answers with counts only [1000].
    #[arg(long, env = "STRATUS_PRESENCE_MAX_MEMBERS")]
    presence_max_members: Option<usize>,
    /// Send subscribers their topics' joins and leaves, one coalesced event per topic per
    /// --presence-interval (counts instead, past the member cap) [false].
    #[arg(long, env = "STRATUS_PRESENCE_EVENTS", num_args = 0..=1, default_missing_value = "true")]
    presence_events: Option<bool>,
    /// Seconds between occupancy pushes to each topic's subscribers [0: none].
    #[arg(long, env = "STRATUS_OCCUPANCY_PUSH")]
    occupancy_push: Option<f64>,
    /// Seconds over which presence changes are gathered: joins and leaves coalesced,
    /// counts reported to the cluster [1].
    #[arg(long, env = "STRATUS_PRESENCE_INTERVAL")]
    presence_interval: Option<f64>,
    /// With --broker: seconds a node's presence lives in Redis without a refresh (a
    /// crashed node's members and counts vanish after it) [5].
    #[arg(long, env = "STRATUS_PRESENCE_LEASE")]
    presence_lease: Option<f64>,
    /// Keep occupied/vacated events (a topic's first subscriber anywhere; none for
    /// --vacate-grace), readable with GET /events [false; on with --occupancy-webhook].
    #[arg(long, env = "STRATUS_OCCUPANCY_EVENTS", num_args = 0..=1, default_missing_value = "true")]
    occupancy_events: Option<bool>,
    /// Post occupied/vacated events to this http(s) URL (JSON, signed with
    /// --webhook-secret; retried with backoff) [none].
    #[arg(long, env = "STRATUS_OCCUPANCY_WEBHOOK")]
    occupancy_webhook: Option<String>,
    /// The shared secret webhook posts are signed with (HMAC-SHA256 in
    /// X-Stratus-Signature) [none: unsigned].
    #[arg(long, env = "STRATUS_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Seconds a topic has no subscriber anywhere before it is vacated; one back sooner
    /// fires nothing [5].
    #[arg(long, env = "STRATUS_VACATE_GRACE")]
    vacate_grace: Option<f64>,
    /// POST each WebSocket upgrade without a token to this http(s) URL; the backend's
    /// JSON answer says who the connection is, or refuses it [none].
    #[arg(long, env = "STRATUS_CONNECT_HOOK")]
    connect_hook: Option<String>,
    /// POST each subscribe (in namespaces with subscribe-hook, every topic by default) to
    /// this http(s) URL; the backend allows or refuses it [none].
    #[arg(long, env = "STRATUS_SUBSCRIBE_HOOK")]
    subscribe_hook: Option<String>,
    /// POST each client publish (in namespaces with publish-hook, every topic by default)
    /// to this http(s) URL; the backend allows, refuses or replaces its data [none].
    #[arg(long, env = "STRATUS_PUBLISH_HOOK")]
    publish_hook: Option<String>,
    /// Seconds a hook's answer may take, waiting in line included; past it the hook
    /// refuses (upgrade 504, v1 hook_timeout) [2].
    #[arg(long, env = "STRATUS_HOOK_TIMEOUT")]
    hook_timeout: Option<f64>,
    /// Most hook requests in flight on the node; four times as many wait in line, and
    /// past that hooks refuse at once (upgrade 503, v1 unavailable) [64].
    #[arg(long, env = "STRATUS_HOOK_CONCURRENCY")]
    hook_concurrency: Option<usize>,
    /// Options per topic prefix (config file only): `[namespace."chat:"]` with any of
    /// history, history-ttl, recovery, publish, max-subscribers, max-message,
    /// slow-consumer, presence, presence-max-members, presence-events, occupancy-push,
    /// subscribe-hook, publish-hook (true or false).
    #[arg(skip)]
    namespace: Option<BTreeMap<String, NamespaceSettings>>,
}

/// A namespace's options in the config file; unset: the server-wide setting.
#[derive(Deserialize, Serialize, Default, Debug, Clone, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct NamespaceSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history_ttl: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish: Option<ClientPublishArg>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_subscribers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_message: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_consumer: Option<SlowConsumerArg>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence: Option<PresenceArg>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_max_members: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_events: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    occupancy_push: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscribe_hook: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_hook: Option<bool>,
}

impl NamespaceSettings {
    fn options(&self, prefix: &str) -> anyhow::Result<NamespaceOptions> {
        let ttl = self
            .history_ttl
            .map(|s| {
                Duration::try_from_secs_f64(s)
                    .with_context(|| format!("namespace {prefix:?}: history-ttl = {s}"))
            })
            .transpose()?;
        Ok(NamespaceOptions {
            history: self.history,
            history_ttl: ttl,
            recovery: self.recovery,
            publish: self.publish.map(ClientPublish::from),
            max_subscribers: self.max_subscribers,
            max_message: self.max_message,
            slow_consumer: self.slow_consumer.map(SlowConsumer::from),
            presence: self.presence.map(PresenceMode::from),
            presence_max_members: self.presence_max_members,
            presence_events: self.presence_events,
            occupancy_push: self
                .occupancy_push
                .map(|s| seconds(Some(s), "occupancy-push", Duration::ZERO))
                .transpose()
                .with_context(|| format!("namespace {prefix:?}"))?,
            subscribe_hook: self.subscribe_hook,
            publish_hook: self.publish_hook,
        })
    }

    fn of(options: &NamespaceOptions) -> Self {
        Self {
            history: options.history,
            history_ttl: options.history_ttl.map(|d| d.as_secs_f64()),
            recovery: options.recovery,
            publish: options.publish.map(ClientPublishArg::from),
            max_subscribers: options.max_subscribers,
            max_message: options.max_message,
            slow_consumer: options.slow_consumer.map(SlowConsumerArg::from),
            presence: options.presence.map(PresenceArg::from),
            presence_max_members: options.presence_max_members,
            presence_events: options.presence_events,
            occupancy_push: options.occupancy_push.map(|d| d.as_secs_f64()),
            subscribe_hook: options.subscribe_hook,
            publish_hook: options.publish_hook,
        }
    }
}

#[derive(ValueEnum, Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ClientPublishArg {
    Off,
    Subscribers,
    Claim,
}

impl From<ClientPublishArg> for ClientPublish {
    fn from(arg: ClientPublishArg) -> Self {
        match arg {
            ClientPublishArg::Off => Self::Off,
            ClientPublishArg::Subscribers => Self::Subscribers,
            ClientPublishArg::Claim => Self::Claim,
        }
    }
}

impl From<ClientPublish> for ClientPublishArg {
    fn from(mode: ClientPublish) -> Self {
        match mode {
            ClientPublish::Off => Self::Off,
            ClientPublish::Subscribers => Self::Subscribers,
            ClientPublish::Claim => Self::Claim,
        }
    }
}

#[derive(ValueEnum, Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PresenceArg {
    Off,
    Counts,
    Members,
}

impl From<PresenceArg> for PresenceMode {
    fn from(arg: PresenceArg) -> Self {
        match arg {
            PresenceArg::Off => Self::Off,
            PresenceArg::Counts => Self::Counts,
            PresenceArg::Members => Self::Members,
        }
    }
}

impl From<PresenceMode> for PresenceArg {
    fn from(mode: PresenceMode) -> Self {
        match mode {
            PresenceMode::Off => Self::Off,
            PresenceMode::Counts => Self::Counts,
            PresenceMode::Members => Self::Members,
        }
    }
}

#[derive(ValueEnum, Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SlowConsumerArg {
    Close,
    Drop,
    Conflate,
}

impl From<SlowConsumerArg> for SlowConsumer {
    fn from(arg: SlowConsumerArg) -> Self {
        match arg {
            SlowConsumerArg::Close => Self::Close,
            SlowConsumerArg::Drop => Self::Drop,
            SlowConsumerArg::Conflate => Self::Conflate,
        }
    }
}

impl From<SlowConsumer> for SlowConsumerArg {
    fn from(policy: SlowConsumer) -> Self {
        match policy {
            SlowConsumer::Close => Self::Close,
            SlowConsumer::Drop => Self::Drop,
            SlowConsumer::Conflate => Self::Conflate,
        }
    }
}

#[derive(ValueEnum, Deserialize, Serialize, Debug, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum AuthArg {
    Off,
    Hs256,
    Rs256,
    Es256,
}

#[derive(ValueEnum, Deserialize, Serialize, Debug, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum DeflateArg {
    Off,
    Shared,
    Dedicated,
}

/// Field by field: the flag if given, else the file's value.
macro_rules! merge {
    ($flags:ident, $file:ident, $($field:ident),+) => {
        Settings { config: None, $($field: $flags.$field.or($file.$field)),+ }
    };
}

fn seconds(value: Option<f64>, name: &str, default: Duration) -> anyhow::Result<Duration> {
    value.map_or(Ok(default), |v| {
        Duration::try_from_secs_f64(v).with_context(|| format!("{name} = {v}"))
    })
}

impl Settings {
    /// The flags over the config file (if one was named).
    pub(crate) fn resolve(self) -> anyhow::Result<Self> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let file: Settings =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let flags = self;
        // The broker password is one setting in two forms (the value, or a file): the
        // layer that gives either form gives both, so STRATUS_BROKER_PASSWORD overrides a
        // broker-password-file in the file, as the environment overrides the file.
        let (broker_password, broker_password_file) =
            if flags.broker_password.is_some() || flags.broker_password_file.is_some() {
                (
                    flags.broker_password.clone(),
                    flags.broker_password_file.clone(),
                )
            } else {
                (
                    file.broker_password.clone(),
                    file.broker_password_file.clone(),
                )
            };
        let merged = merge!(
            flags,
            file,
            listen,
            admin_listen,
            admin_token,
            workers,
            max_message,
            max_frame,
            max_fragments,
            max_topics,
            message_rate,
            max_connections,
            max_connections_per_ip,
            max_unupgraded,
            max_unupgraded_per_ip,
            allowed_origins,
            auth,
            auth_secret,
            auth_key_file,
            auth_issuer,
            auth_audience,
            max_send_queue,
            max_publish,
            max_publish_backlog,
            admin_max_connections,
            admin_request_timeout,
            slow_consumer,
            handshake_timeout,
            message_timeout,
            close_timeout,
            ping_interval,
            pong_timeout,
            drain_timeout,
            busy_poll_us,
            ring_entries,
            recv_buffers,
            recv_buffer_size,
            log_level,
            log_format,
            deflate,
            deflate_threshold,
            tls_cert,
            tls_key,
            admin_tls_cert,
            admin_tls_key,
            broker,
            broker_username,
            broker_password,
            broker_password_file,
            broker_ca,
            history,
            history_ttl,
            history_memory,
            client_publish,
            client_publish_rate,
            refresh_lead,
            presence,
            presence_max_members,
            presence_events,
            occupancy_push,
            presence_interval,
            presence_lease,
            occupancy_events,
            occupancy_webhook,
            webhook_secret,
            vacate_grace,
            connect_hook,
            subscribe_hook,
            publish_hook,
            hook_timeout,
            hook_concurrency,
            namespace
        );
        Ok(Settings {
            broker_password,
            broker_password_file,
            ..merged
        })
    }

    /// Every setting of `config` and these log settings, as a file would give them
    /// (`stratus config check`). The admin token, the auth secret, the webhook secret and
    /// the broker's password (set, or in the URL) are left out: they are secrets.
    pub(crate) fn effective(&self, config: &Config) -> Self {
        Self {
            config: None,
            log_level: Some(self.log_level.clone().unwrap_or_else(|| "info".into())),
            log_format: Some(self.log_format.unwrap_or(LogFormat::Text)),
            listen: Some(config.listen),
            admin_listen: config.admin_listen,
            admin_token: None,
            workers: Some(config.workers),
            max_message: Some(config.limits.max_message),
            max_frame: Some(config.limits.max_frame),
            max_fragments: Some(config.limits.max_fragments),
            max_topics: Some(config.max_topics_per_connection),
            message_rate: Some(config.message_rate),
            max_connections: Some(config.max_connections),
            max_connections_per_ip: Some(config.max_connections_per_ip),
            max_unupgraded: Some(config.max_unupgraded),
            max_unupgraded_per_ip: Some(config.max_unupgraded_per_ip),
            allowed_origins: Some(config.allowed_origins.clone()),
            auth: Some(
                config
                    .auth
                    .as_ref()
                    .map_or(AuthArg::Off, |a| match a.algorithm() {
                        AuthAlgorithm::Hs256 => AuthArg::Hs256,
                        AuthAlgorithm::Rs256 => AuthArg::Rs256,
                        AuthAlgorithm::Es256 => AuthArg::Es256,
                    }),
            ),
            auth_secret: None,
            auth_key_file: self.auth_key_file.clone(),
            auth_issuer: self.auth_issuer.clone(),
            auth_audience: self.auth_audience.clone(),
            max_send_queue: Some(config.max_send_queue),
            max_publish: Some(config.max_publish),
            max_publish_backlog: Some(config.max_publish_backlog),
            admin_max_connections: Some(config.admin_max_connections),
            admin_request_timeout: Some(config.admin_request_timeout.as_secs_f64()),
            slow_consumer: Some(config.slow_consumer.into()),
            handshake_timeout: Some(config.handshake_timeout.as_secs_f64()),
            message_timeout: Some(config.message_timeout.as_secs_f64()),
            close_timeout: Some(config.close_timeout.as_secs_f64()),
            ping_interval: Some(config.ping_interval.as_secs_f64()),
            pong_timeout: Some(config.pong_timeout.as_secs_f64()),
            drain_timeout: Some(config.drain_timeout.as_secs_f64()),
            busy_poll_us: Some(config.busy_poll.as_micros() as u64),
            ring_entries: Some(config.ring.entries),
            recv_buffers: Some(config.ring.recv_buffers),
            recv_buffer_size: Some(config.ring.recv_buffer_size),
            deflate: Some(match config.deflate {
                None => DeflateArg::Off,
                Some(d) if d.mode == Mode::Shared => DeflateArg::Shared,
                Some(_) => DeflateArg::Dedicated,
            }),
            deflate_threshold: config.deflate.map(|d| d.threshold),
            tls_cert: config.tls.as_ref().map(|t| t.cert.clone()),
            tls_key: config.tls.as_ref().map(|t| t.key.clone()),
            admin_tls_cert: config.admin_tls.as_ref().map(|t| t.cert.clone()),
            admin_tls_key: config.admin_tls.as_ref().map(|t| t.key.clone()),
            broker: config.broker.as_deref().map(redact),
            broker_username: config.broker_auth.username.clone(),
            broker_password: None,
            broker_password_file: self.broker_password_file.clone(),
            broker_ca: config.broker_auth.ca.clone(),
            history: Some(config.history),
            history_ttl: config.history_ttl.map(|d| d.as_secs_f64()),
            history_memory: Some(config.history_memory),
            client_publish: Some(config.client_publish.into()),
            client_publish_rate: Some(config.client_publish_rate),
            refresh_lead: Some(config.refresh_lead.as_secs_f64()),
            presence: Some(config.presence.into()),
            presence_max_members: Some(config.presence_max_members),
            presence_events: Some(config.presence_events),
            occupancy_push: Some(config.occupancy_push.map_or(0.0, |d| d.as_secs_f64())),
            presence_interval: Some(config.presence_interval.as_secs_f64()),
            presence_lease: Some(config.presence_lease.as_secs_f64()),
            occupancy_events: Some(config.occupancy_events),
            occupancy_webhook: config.occupancy_webhook.as_deref().map(redact),
            webhook_secret: None,
            vacate_grace: Some(config.vacate_grace.as_secs_f64()),
            connect_hook: config.hooks.connect.as_deref().map(redact),
            subscribe_hook: config.hooks.subscribe.as_deref().map(redact),
            publish_hook: config.hooks.publish.as_deref().map(redact),
            hook_timeout: Some(config.hooks.timeout.as_secs_f64()),
            hook_concurrency: Some(config.hooks.concurrency),
            namespace: Some(
                config
                    .namespaces
                    .iter()
                    .map(|ns| (ns.prefix.clone(), NamespaceSettings::of(&ns.options)))
                    .collect(),
            ),
        }
    }

    /// The token verifier the auth settings ask for (`None`: off).
    fn auth(&self) -> anyhow::Result<Option<Auth>> {
        let algorithm = match self.auth {
            None | Some(AuthArg::Off) => return Ok(None),
            Some(AuthArg::Hs256) => AuthAlgorithm::Hs256,
            Some(AuthArg::Rs256) => AuthAlgorithm::Rs256,
            Some(AuthArg::Es256) => AuthAlgorithm::Es256,
        };
        let key = match (&self.auth_key_file, &self.auth_secret) {
            (Some(path), _) => {
                std::fs::read(path).with_context(|| format!("auth-key-file {}", path.display()))?
            }
            (None, Some(secret)) if algorithm == AuthAlgorithm::Hs256 => secret.clone().into(),
            _ => anyhow::bail!(
                "auth = {:?} needs auth-key-file (or auth-secret for hs256)",
                algorithm
            ),
        };
        let (issuer, audience) = (self.auth_issuer.as_deref(), self.auth_audience.as_deref());
        Auth::new(algorithm, &key, issuer, audience)
            .map(Some)
            .map_err(anyhow::Error::msg)
    }

    /// How the node signs in to its broker: these settings over `base`. The password comes
    /// from broker-password or broker-password-file, not both.
    fn broker_auth(&self, base: BrokerAuth) -> anyhow::Result<BrokerAuth> {
        let password = match (&self.broker_password, &self.broker_password_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "broker-password and broker-password-file are both set (in the same place): \
                 give one"
            ),
            (Some(password), None) if password.is_empty() => {
                anyhow::bail!("broker-password is empty")
            }
            (Some(password), None) => Some(Secret::new(password.clone())),
            (None, Some(path)) => Some(
                Secret::read_file(path).map_err(|e| anyhow::anyhow!("broker-password-file {e}"))?,
            ),
            (None, None) => base.password,
        };
        Ok(BrokerAuth {
            username: self.broker_username.clone().or(base.username),
            password,
            ca: self.broker_ca.clone().or(base.ca),
        })
    }

    /// These settings over `base` (the defaults of the command).
    pub(crate) fn apply(self, base: Config) -> anyhow::Result<Config> {
        let auth = self.auth()?;
        let broker_auth = self.broker_auth(base.broker_auth.clone())?;
        let deflate = match self.deflate {
            None => base.deflate.map(|d| DeflateConfig {
                threshold: self.deflate_threshold.unwrap_or(d.threshold),
                ..d
            }),
            Some(DeflateArg::Off) => None,
            Some(mode @ (DeflateArg::Shared | DeflateArg::Dedicated)) => Some(DeflateConfig {
                mode: if matches!(mode, DeflateArg::Shared) {
                    Mode::Shared
                } else {
                    Mode::Dedicated
                },
                threshold: self.deflate_threshold.unwrap_or(64),
            }),
        };
        let mut limits = base.limits;
        limits.max_message = self.max_message.unwrap_or(limits.max_message);
        limits.max_frame = self.max_frame.unwrap_or(limits.max_frame);
        limits.max_fragments = self.max_fragments.unwrap_or(limits.max_fragments);
        Ok(Config {
            listen: self.listen.unwrap_or(base.listen),
            admin_listen: self.admin_listen.or(base.admin_listen),
            admin_token: self.admin_token.or(base.admin_token),
            workers: self.workers.unwrap_or(base.workers),
            limits,
            max_topics_per_connection: self.max_topics.unwrap_or(base.max_topics_per_connection),
            message_rate: self.message_rate.unwrap_or(base.message_rate),
            max_connections: self.max_connections.unwrap_or(base.max_connections),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(base.max_connections_per_ip),
            max_unupgraded: self.max_unupgraded.unwrap_or(base.max_unupgraded),
            max_unupgraded_per_ip: self
                .max_unupgraded_per_ip
                .unwrap_or(base.max_unupgraded_per_ip),
            allowed_origins: self.allowed_origins.unwrap_or(base.allowed_origins),
            auth: auth.or(base.auth),
            max_send_queue: self.max_send_queue.unwrap_or(base.max_send_queue),
            max_publish: self.max_publish.unwrap_or(base.max_publish),
            max_publish_backlog: self.max_publish_backlog.unwrap_or(base.max_publish_backlog),
            admin_max_connections: self
                .admin_max_connections
                .unwrap_or(base.admin_max_connections),
            admin_request_timeout: seconds(
                self.admin_request_timeout,
                "admin-request-timeout",
                base.admin_request_timeout,
            )?,
            slow_consumer: self.slow_consumer.map_or(base.slow_consumer, Into::into),
            handshake_timeout: seconds(
                self.handshake_timeout,
                "handshake-timeout",
                base.handshake_timeout,
            )?,
            message_timeout: seconds(
                self.message_timeout,
                "message-timeout",
                base.message_timeout,
            )?,
            close_timeout: seconds(self.close_timeout, "close-timeout", base.close_timeout)?,
            ping_interval: seconds(self.ping_interval, "ping-interval", base.ping_interval)?,
            pong_timeout: seconds(self.pong_timeout, "pong-timeout", base.pong_timeout)?,
            drain_timeout: seconds(self.drain_timeout, "drain-timeout", base.drain_timeout)?,
            busy_poll: self
                .busy_poll_us
                .map_or(base.busy_poll, Duration::from_micros),
            ring: stratus_uring::RingConfig {
                entries: self.ring_entries.unwrap_or(base.ring.entries),
                recv_buffers: self.recv_buffers.unwrap_or(base.ring.recv_buffers),
                recv_buffer_size: self.recv_buffer_size.unwrap_or(base.ring.recv_buffer_size),
            },
            deflate,
            tls: pair(self.tls_cert, self.tls_key, "tls")?.or(base.tls),
            admin_tls: pair(self.admin_tls_cert, self.admin_tls_key, "admin-tls")?
                .or(base.admin_tls),
            broker: self.broker.or(base.broker),
            broker_auth,
            history: self.history.unwrap_or(base.history),
            history_ttl: match self.history_ttl {
                Some(s) => Some(seconds(Some(s), "history-ttl", Duration::ZERO)?),
                None => base.history_ttl,
            },
            history_memory: self.history_memory.unwrap_or(base.history_memory),
            client_publish: self.client_publish.map_or(base.client_publish, Into::into),
            client_publish_rate: self.client_publish_rate.unwrap_or(base.client_publish_rate),
            refresh_lead: seconds(self.refresh_lead, "refresh-lead", base.refresh_lead)?,
            presence: self.presence.map_or(base.presence, Into::into),
            presence_max_members: self
                .presence_max_members
                .unwrap_or(base.presence_max_members),
            presence_events: self.presence_events.unwrap_or(base.presence_events),
            occupancy_push: match seconds(self.occupancy_push, "occupancy-push", Duration::ZERO)? {
                Duration::ZERO => base.occupancy_push,
                every => Some(every),
            },
            presence_interval: seconds(
                self.presence_interval,
                "presence-interval",
                base.presence_interval,
            )?,
            presence_lease: seconds(self.presence_lease, "presence-lease", base.presence_lease)?,
            occupancy_events: self.occupancy_events.unwrap_or(base.occupancy_events),
            occupancy_webhook: self.occupancy_webhook.or(base.occupancy_webhook),
            webhook_secret: self.webhook_secret.or(base.webhook_secret),
            vacate_grace: seconds(self.vacate_grace, "vacate-grace", base.vacate_grace)?,
            hooks: Hooks {
                connect: self.connect_hook.or(base.hooks.connect),
                subscribe: self.subscribe_hook.or(base.hooks.subscribe),
                publish: self.publish_hook.or(base.hooks.publish),
                timeout: seconds(self.hook_timeout, "hook-timeout", base.hooks.timeout)?,
                concurrency: self.hook_concurrency.unwrap_or(base.hooks.concurrency),
            },
            namespaces: match self.namespace {
                Some(namespaces) => namespaces
                    .iter()
                    .map(|(prefix, ns)| {
                        Ok(Namespace {
                            prefix: prefix.clone(),
                            options: ns.options(prefix)?,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
                None => base.namespaces,
            },
            ..base
        })
    }
}

/// A certificate and its key, both given or neither.
fn pair(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    name: &str,
) -> anyhow::Result<Option<TlsFiles>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => anyhow::bail!("{name}-cert is set but {name}-key is not"),
        (None, Some(_)) => anyhow::bail!("{name}-key is set but {name}-cert is not"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("stratus-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("stratus.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\nmax-send-queue = 4096\nslow-consumer = \"drop\"\nping-interval = 2.5\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "stratus",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:7001",
        ]);
        let config = cli
            .settings
            .resolve()
            .unwrap()
            .apply(Config::default())
            .unwrap();
        assert_eq!(
            config.listen,
            "127.0.0.1:7001".parse().unwrap(),
            "flag wins"
        );
        assert_eq!(config.max_send_queue, 4096, "file value");
        assert_eq!(config.slow_consumer, SlowConsumer::Drop);
        assert_eq!(config.ping_interval, Duration::from_millis(2500));
        assert_eq!(
            config.pong_timeout,
            Config::default().pong_timeout,
            "default"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        assert!(toml::from_str::<Settings>("no-such-option = 1").is_err());
    }

    #[test]
    fn auth_needs_its_key_and_config_check_withholds_the_secret() {
        let without_key = Cli::parse_from(["stratus", "--auth", "hs256"]);
        let err = without_key.settings.apply(Config::default()).unwrap_err();
        assert!(err.to_string().contains("auth-secret"), "{err}");
        let short = Cli::parse_from(["stratus", "--auth", "hs256", "--auth-secret", "short"]);
        assert!(short.settings.apply(Config::default()).is_err());

        let secret = "a secret of at least thirty-two bytes....";
        let cli = Cli::parse_from(["stratus", "--auth", "hs256", "--auth-secret", secret]);
        let config = cli.settings.clone().apply(Config::default()).unwrap();
        let auth = config.auth.as_ref().expect("auth is on");
        assert_eq!(auth.algorithm(), stratus_server::AuthAlgorithm::Hs256);
        let printed = toml::to_string(&cli.settings.effective(&config)).unwrap();
        assert!(printed.contains("auth = \"hs256\""), "{printed}");
        assert!(!printed.contains(secret), "{printed}");
    }

    #[test]
    fn broker_url_is_a_setting_and_config_check_masks_its_password() {
        let url = "redis://stratus:hunter2@127.0.0.1:6380/2";
        let cli = Cli::parse_from(["stratus", "--broker", url]);
        let config = cli.settings.clone().apply(Config::default()).unwrap();
        assert_eq!(config.broker.as_deref(), Some(url));
        let printed = toml::to_string(&cli.settings.effective(&config)).unwrap();
        assert!(
            printed.contains("broker = \"redis://stratus:***@127.0.0.1:6380/2\""),
            "{printed}"
        );
        assert!(!printed.contains("hunter2"), "{printed}");
        let bad = Cli::parse_from(["stratus", "--broker", "http://127.0.0.1:6379"]);
        let config = bad.settings.apply(Config::default()).unwrap();
        assert!(config.validate().unwrap_err().contains("redis://"));
        let alone = Cli::parse_from(["stratus", "--history", "100"]);
        let config = alone.settings.apply(Config::default()).unwrap();
        assert!(
            config.validate().is_ok(),
            "a history without a broker is kept in memory"
        );
    }

    #[test]
    fn the_broker_password_comes_from_one_place_and_config_check_withholds_it() {
        let dir = std::env::temp_dir().join(format!("stratus-broker-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password_file = dir.join("redis-password");
        std::fs::write(&password_file, "from-the-file\n").unwrap();
        let file = dir.join("stratus.toml");
        std::fs::write(
            &file,
            format!(
                "broker = \"rediss://redis.internal:6380/0\"\nbroker-username = \"stratus\"\n\
                 broker-password-file = {:?}\n",
                password_file.to_str().unwrap()
            ),
        )
        .unwrap();
        let settings = |flags: &[&str]| {
            let mut args = vec!["stratus", "--config", file.to_str().unwrap()];
            args.extend_from_slice(flags);
            Cli::parse_from(args).settings.resolve().unwrap()
        };
        let password =
            |settings: Settings| settings.apply(Config::default()).map(|c| c.broker_auth);

        // From the file's password file, with the file's user name.
        let auth = password(settings(&[])).unwrap();
        assert_eq!(auth.password, Some(Secret::new("from-the-file")));
        assert_eq!(auth.username.as_deref(), Some("stratus"));
        // A flag (or STRATUS_BROKER_PASSWORD: the same layer) in either form overrides the
        // file's, whichever form the file used.
        let auth = password(settings(&["--broker-password", "from-a-flag"])).unwrap();
        assert_eq!(auth.password, Some(Secret::new("from-a-flag")));
        assert_eq!(
            auth.username.as_deref(),
            Some("stratus"),
            "the user is its own key"
        );
        let other = dir.join("other");
        std::fs::write(&other, "from-another-file").unwrap();
        let flag = ["--broker-password-file", other.to_str().unwrap()];
        assert_eq!(
            password(settings(&flag)).unwrap().password,
            Some(Secret::new("from-another-file"))
        );
        // Both forms in one layer: refused, naming neither value.
        let both = [&["--broker-password", "from-a-flag"][..], &flag[..]].concat();
        let err = password(settings(&both)).unwrap_err().to_string();
        assert!(err.contains("both set"), "{err}");
        assert!(!err.contains("from-a-flag"), "{err}");
        let err = password(settings(&["--broker-password", ""])).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let gone = ["--broker-password-file", "/nonexistent/stratus-password"];
        let err = password(settings(&gone)).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/stratus-password"), "{err}");

        // config check: the password file's path and the user, never the password.
        let flagged = settings(&["--broker-password", "from-a-flag"]);
        let config = flagged.clone().apply(Config::default()).unwrap();
        config.validate().unwrap();
        let printed = toml::to_string(&flagged.effective(&config)).unwrap();
        assert!(
            printed.contains("broker-username = \"stratus\""),
            "{printed}"
        );
        assert!(!printed.contains("from-a-flag"), "{printed}");
        assert!(!printed.contains("broker-password ="), "{printed}");
        let from_file = settings(&[]);
        let config = from_file.clone().apply(Config::default()).unwrap();
        let printed = toml::to_string(&from_file.effective(&config)).unwrap();
        assert!(printed.contains("broker-password-file = "), "{printed}");
        assert!(!printed.contains("from-the-file"), "{printed}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn deflate_can_be_turned_off() {
        let cli = Cli::parse_from(["stratus", "--deflate", "off"]);
        assert!(
            cli.settings
                .apply(Config::default())
                .unwrap()
                .deflate
                .is_none()
        );
    }

    #[test]
    fn hook_settings_come_from_flags_and_the_file_and_config_check_masks_their_passwords() {
        let file: Settings = toml::from_str(
            r#"
            connect-hook = "http://app:s3cret@127.0.0.1:8000/connect"
            subscribe-hook = "http://127.0.0.1:8000/subscribe"
            hook-timeout = 0.5
            [namespace."public."]
            subscribe-hook = false
            "#,
        )
        .unwrap();
        let flags = Cli::parse_from(["stratus", "--hook-concurrency", "8"]).settings;
        let merged = Settings {
            hook_concurrency: flags.hook_concurrency,
            ..file
        };
        let config = merged.clone().apply(Config::default()).unwrap();
        assert!(config.validate().is_ok());
        let hooks = &config.hooks;
        assert_eq!(
            hooks.connect.as_deref(),
            Some("http://app:s3cret@127.0.0.1:8000/connect")
        );
        assert_eq!(hooks.timeout, Duration::from_millis(500));
        assert_eq!((hooks.concurrency, hooks.publish.as_deref()), (8, None));
        assert_eq!(config.namespaces[0].options.subscribe_hook, Some(false));
        let printed = toml::to_string(&merged.effective(&config)).unwrap();
        assert!(printed.contains("hook-concurrency = 8"), "{printed}");
        assert!(printed.contains("subscribe-hook = false"), "{printed}");
        assert!(!printed.contains("s3cret"), "{printed}");
        // A namespace may not turn on a hook whose URL is not set.
        let orphan: Settings = toml::from_str("[namespace.\"x.\"]\npublish-hook = true\n").unwrap();
        let config = orphan.apply(Config::default()).unwrap();
        assert!(config.validate().unwrap_err().contains("publish-hook"));
    }
}
