//! Thread per core: each worker thread drives its own io_uring with its own SO_REUSEPORT
//! listener on the shared address, and owns the connections it accepts. The admin API
//! and the broker have a thread each. [`Server`] starts them, publishes into them, and
//! drains them.
//!
//! The composition root: the only module that knows every layer. It makes the channels
//! between the threads (the workers' inboxes, the broker's queues) and hands each side
//! its end.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::thread::JoinHandle;

use stratus_proto::Message;
use tokio::sync::mpsc;
use tracing::info;

use crate::admin::{self, Admin};
use crate::broker::{BrokerTask, Keyspace, Link, NatsLink};
use crate::config::Config;
use crate::events::EventsTask;
use crate::messages::{BrokerRequest, Node, PublishError};
use crate::model::publication::Publication;
use crate::node::broker_link::{BrokerLink, ShardLink};
use crate::node::delivery::Delivery;
use crate::node::hub::{Hub, WorkerLink};
use crate::node::occupancy_events::EventsLink;
use crate::stats::{BrokerStats, Stats};
use crate::worker::Worker;

/// Most workers: a topic's workers are tracked in a 64-bit mask.
const MAX_WORKERS: usize = 64;

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    hub: Arc<Hub>,
    workers: Vec<JoinHandle<io::Result<()>>>,
    /// The admin thread, and a handle on its listener to shut it down with.
    admin: Option<(JoinHandle<io::Result<()>>, socket2::Socket)>,
    /// The presence clock's thread, and what stops it (dropped).
    presence: (JoinHandle<()>, std::sync::mpsc::Sender<()>),
    /// The thread that talks to the Redis broker, if there is one.
    broker: Option<JoinHandle<()>>,
    /// The backend hooks' thread, if any hook is set.
    hooks: Option<crate::hooks::HookThread>,
}

/// Starts the presence clock: every `interval`, the hub's presence tick. It stops when
/// the sender returned is dropped.
fn spawn_presence_clock(
    hub: Arc<Hub>,
    interval: std::time::Duration,
) -> io::Result<(JoinHandle<()>, std::sync::mpsc::Sender<()>)> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("stratus-presence".into())
        .spawn(move || {
            let mut tick = 0u64;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(interval)
            {
                tick += 1;
                hub.presence_tick(tick);
            }
        })?;
    Ok((thread, stop))
}

/// The broker as `--broker` names it: each shard's client (in a Redis Cluster, each
/// master's, with a RESP3 client of it for sharded pub/sub), the first carrying what is
/// node-wide, and a cluster's slot map; or NATS, one task for the whole NATS cluster.
struct BrokerPlan {
    shards: Vec<(redis::Client, Option<redis::Client>)>,
    slots: Option<Box<[u8]>>,
    nats: Option<NatsLink>,
}

impl BrokerPlan {
    /// The plan for `config`'s broker, if it has one: its shards in `--broker` order, or
    /// a Redis Cluster's masters as its seeds tell them (asked now, once), or NATS.
    fn new(config: &Config) -> Result<Option<Self>, String> {
        if let Some(broker) = config.broker_nats()? {
            let history = config.keeps_history().then(|| config.widest_history());
            return Ok(Some(Self {
                shards: Vec::new(),
                slots: None,
                nats: Some(NatsLink { broker, history }),
            }));
        }
        let Some(clients) = config.broker_shards()? else {
            return Ok(None);
        };
        let Some(seeds) = config.broker_cluster() else {
            let shards = clients.into_iter().map(|client| (client, None)).collect();
            return Ok(Some(Self {
                shards,
                slots: None,
                nats: None,
            }));
        };
        let map = crate::broker::cluster::discover(&seeds, &config.broker_auth)?;
        let masters: Vec<&str> = map.masters.iter().map(|m| m.address.as_str()).collect();
        info!(?masters, "Redis Cluster: one broker task per master");
        let shards = map
            .masters
            .into_iter()
            .map(|m| (m.client, Some(m.resp3)))
            .collect();
        Ok(Some(Self {
            shards,
            slots: Some(map.slots),
            nats: None,
        }))
    }

    /// How the broker names its keys.
    fn keys(&self) -> Keyspace {
        match self.slots {
            Some(_) => Keyspace::Cluster,
            None => Keyspace::Plain,
        }
    }
}

/// The hub's link to the broker and one broker task per shard of `plan`, in its order
/// (the first also carries presence, user-level control and the control channel);
/// `None` without a shard.
fn broker_shards(plan: BrokerPlan, config: &Config) -> Option<(BrokerLink, Vec<BrokerTask>)> {
    let in_cluster = |task: BrokerTask, resp3: Option<redis::Client>| match resp3 {
        Some(resp3) => task.in_cluster(resp3),
        None => task,
    };
    let ends = || {
        let publishes = mpsc::unbounded_channel();
        let requests = mpsc::unbounded_channel();
        (publishes, requests, Arc::new(BrokerStats::default()))
    };
    let mut clients = plan.shards.into_iter();
    let (first, first_resp3) = match plan.nats {
        Some(nats) => (Link::Nats(Box::new(nats)), None),
        None => {
            let (client, resp3) = clients.next()?;
            (Link::redis(client), resp3)
        }
    };
    let ((publish_tx, publish_rx), (request_tx, request_rx), stats) = ends();
    let link = ShardLink::new(publish_tx.clone(), request_tx, stats.clone());
    // The first shard reads presence too, on the connection it reads histories on.
    let reads = config.keeps_history() || config.keeps_presence();
    let publishes = (publish_tx, publish_rx);
    let first = BrokerTask::new(first, reads, publishes, request_rx, stats);
    let (mut links, mut tasks) = (Vec::new(), Vec::new());
    for (index, (client, resp3)) in (1..).zip(clients) {
        let ((publish_tx, publishes), (request_tx, requests), stats) = ends();
        links.push(ShardLink::new(publish_tx, request_tx, stats.clone()));
        let reads = config.keeps_history();
        let task = first.shard(index, client, reads, publishes, requests, stats);
        tasks.push(in_cluster(task, resp3));
    }
    tasks.insert(0, in_cluster(first, first_resp3));
    let link = BrokerLink::new(link, links);
    let link = match plan.slots {
        Some(slots) => link.with_slots(slots),
        None => link,
    };
    Some((link, tasks))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl Server {
    /// Binds one listener per worker (and the admin listener) and starts the workers.
    pub fn start(config: Config) -> io::Result<Self> {
        config.validate().map_err(invalid)?;
        let load = |files: &Option<crate::tls::TlsFiles>| {
            files
                .as_ref()
                .map(crate::tls::TlsFiles::load)
                .transpose()
                .map_err(|e| invalid(e.to_string()))
        };
        let (tls, admin_tls) = (load(&config.tls)?, load(&config.admin_tls)?);
        let workers = config.workers.clamp(1, MAX_WORKERS);
        let listeners = stratus_uring::bind_listeners(config.listen, workers, 4096)?;
        let local_addr = match listeners.first() {
            Some(listener) => listener.local_addr()?,
            None => return Err(invalid("no listener bound".into())),
        };
        let admin = match config.admin_listen {
            Some(addr) => stratus_uring::bind_listeners(addr, 1, 1024)?.pop(),
            None => None,
        };
        let admin_addr = admin
            .as_ref()
            .map(std::net::TcpListener::local_addr)
            .transpose()?;
        let (links, inboxes): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let wake = Arc::new(stratus_uring::Wake::new()?);
                let link = WorkerLink {
                    tx,
                    wake: wake.clone(),
                    backlog: AtomicUsize::new(0),
                };
                Ok((link, (rx, wake)))
            })
            .collect::<io::Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let plan = BrokerPlan::new(&config).map_err(invalid)?;
        // What is node-wide lives on the first shard (a cluster's node-wide master).
        let node_wide = plan
            .as_ref()
            .and_then(|plan| Some((plan.shards.first()?.0.clone(), plan.keys())));
        let (broker, broker_tasks) = plan.and_then(|plan| broker_shards(plan, &config)).unzip();
        let config = Arc::new(config);
        let (events_link, events_inbox) = match config.keeps_occupancy_events() {
            true => {
                let (link, inbox) = EventsLink::new();
                (Some(link), Some(inbox))
            }
            false => (None, None),
        };
        let hub = Arc::new(Hub::new(links, broker, config.clone()).with_events(events_link));
        if let Some(inbox) = events_inbox {
            // On the first shard, with the rest of what is the node's and not a topic's.
            EventsTask::new(inbox, hub.node_id.clone(), &config, node_wide)
                .map_err(invalid)?
                .spawn()?;
        }
        let broker = broker_tasks
            .map(|tasks| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let node: Arc<dyn Node + Send> = hub.clone();
                std::thread::Builder::new()
                    .name("stratus-broker".into())
                    .spawn(move || BrokerTask::run(tasks, runtime, node))
            })
            .transpose()?;
        let hooks = crate::hooks::start(&config, &hub)?;
        let presence = spawn_presence_clock(hub.clone(), config.presence_interval)?;
        let mut threads = Vec::with_capacity(workers);
        for (index, (listener, (inbox, wake))) in listeners.into_iter().zip(inboxes).enumerate() {
            let (hub, config, tls) = (hub.clone(), config.clone(), tls.clone());
            let thread = std::thread::Builder::new()
                .name(format!("stratus-worker-{index}"))
                .spawn(move || {
                    Worker::new(index, hub, config, listener, inbox, wake, tls)?.run()
                })?;
            threads.push(thread);
        }
        let admin = match admin {
            Some(listener) => {
                let control = socket2::Socket::from(listener.try_clone()?);
                let admin = Admin {
                    hub: hub.clone(),
                    config: config.clone(),
                    tls: admin_tls,
                };
                let thread = std::thread::Builder::new()
                    .name("stratus-admin".into())
                    .spawn(move || stratus_uring::run(admin::serve(admin, listener)))?;
                Some((thread, control))
            }
            None => None,
        };
        info!(%local_addr, ?admin_addr, workers, "listening");
        Ok(Self {
            local_addr,
            admin_addr,
            hub,
            workers: threads,
            admin,
            broker,
            hooks,
            presence,
        })
    }

    /// The address the WebSocket listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Publishes `message` (text or binary) to every subscriber of `topic`, from any
    /// thread. The message is framed once per node; the returned [`Delivery`] tells how
    /// far it went. With a broker it goes through Redis to every node, and fails with
    /// [`PublishError::BrokerUnavailable`] while Redis is unreachable.
    pub fn publish(&self, topic: &str, message: Message) -> Result<Delivery, PublishError> {
        self.hub.publish(topic, Publication::from_message(message)?)
    }

    /// Publishes `json` (a JSON document, checked) to every subscriber of `topic`, as
    /// [`Server::publish`] does: raw-mode subscribers get it as text, protocol v1
    /// subscribers as a JSON value in the `data` of their push. With `key`, it is the
    /// newest value of that key (the `conflate` policy keeps one per key).
    pub fn publish_json(
        &self,
        topic: &str,
        json: impl Into<bytes::Bytes>,
        key: Option<&str>,
    ) -> Result<Delivery, PublishError> {
        let publication = Publication::json(json.into())?.with_key(key)?;
        self.hub.publish(topic, publication)
    }

    /// The server's counters.
    pub fn stats(&self) -> &Stats {
        &self.hub.stats
    }

    /// Topics with at least one subscriber anywhere.
    pub fn topic_count(&self) -> usize {
        self.hub.topic_count()
    }

    /// Shuts down: stops accepting (upgrades still in their handshake get 503), sends
    /// Close 1001 to every client, waits for their replies up to the drain timeout, then
    /// ends the workers and waits for them.
    pub fn stop(self) -> io::Result<()> {
        self.hub.drain();
        self.join()
    }

    /// Waits until every worker has ended, then stops the admin API and the broker (also
    /// when a worker failed).
    pub fn join(self) -> io::Result<()> {
        let joined = |thread: JoinHandle<io::Result<()>>| {
            thread
                .join()
                .map_err(|_| io::Error::other("server thread panicked"))?
        };
        let mut result = Ok(());
        for worker in self.workers {
            result = result.and(joined(worker));
        }
        if let Some((thread, control)) = self.admin {
            let _ = control.shutdown(std::net::Shutdown::Both);
            result = result.and(joined(thread));
        }
        if let (Some(thread), Some(link)) = (self.broker, &self.hub.broker) {
            link.request(BrokerRequest::Stop);
            let stopped = thread
                .join()
                .map_err(|_| io::Error::other("broker thread panicked"));
            result = result.and(stopped);
        }
        if let Some(hooks) = self.hooks {
            result = result.and(hooks.stop());
        }
        let (thread, stop) = self.presence;
        drop(stop);
        result.and(
            thread
                .join()
                .map_err(|_| io::Error::other("presence thread panicked")),
        )
    }

    /// Connections open now.
    pub fn connections(&self) -> u64 {
        self.hub.connections()
    }
}
