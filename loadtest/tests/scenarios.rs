//! Every scenario runs, briefly, against an in-process Stratus server and writes a JSON
//! result with the figures it promises.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;

use serde_json::Value;
use stratus_server::{App, Config, Server};

fn server(app: App) -> Server {
    Server::start(Config {
        app,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: (app == App::PubSub).then(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        workers: 2,
        ..Config::default()
    })
    .unwrap()
}

fn run(args: &[&str]) -> Value {
    let out = std::env::temp_dir().join(format!(
        "stratus-load-{}-{}.json",
        args[0],
        std::process::id()
    ));
    let status = Command::new(env!("CARGO_BIN_EXE_stratus-load"))
        .args(args)
        .args(["--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "{args:?}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    std::fs::remove_file(out).unwrap();
    assert!(report["scenario"].as_str().unwrap().starts_with(args[0]));
    report["results"].clone()
}

#[test]
fn echo_reports_rate_and_round_trips() {
    let s = server(App::Echo);
    let url = format!("ws://{}/", s.local_addr());
    let r = run(&[
        "echo", "--url", &url, "-c", "10", "-s", "100", "-p", "4", "-d", "1",
    ]);
    assert!(r["messages"].as_u64().unwrap() > 0);
    assert!(r["rtt"]["p99_us"].as_u64().unwrap() >= r["rtt"]["p50_us"].as_u64().unwrap());
    s.stop().unwrap();
}

#[test]
fn fanout_delivers_every_publish_to_every_subscriber() {
    let s = server(App::PubSub);
    let url = format!("ws://{}/ws", s.local_addr());
    let admin = s.admin_addr().unwrap().to_string();
    let r = run(&[
        "fanout", "--url", &url, "--admin", &admin, "-n", "50", "-r", "200", "-d", "1",
    ]);
    let published = r["published"].as_u64().unwrap();
    assert!(published > 0);
    assert_eq!(r["deliveries"].as_u64().unwrap(), published * 50);
    assert_eq!(r["missing"].as_u64().unwrap(), 0);
    s.stop().unwrap();
}

/// `--deflate`: the subscribers take permessage-deflate (the server's default, shared), and
/// what reaches them is smaller on the wire than the plain frames (64-byte messages: 66
/// bytes each without it); the probe sent before the window is not counted.
#[test]
fn fanout_with_deflate_subscribers_receives_compressed_frames() {
    let s = server(App::PubSub);
    let url = format!("ws://{}/ws", s.local_addr());
    let admin = s.admin_addr().unwrap().to_string();
    for deflate in [false, true] {
        let mut args = vec![
            "fanout", "--url", &url, "--admin", &admin, "-n", "20", "-s", "64", "-r", "50", "-d",
            "0.5",
        ];
        if deflate {
            args.push("--deflate");
        }
        let r = run(&args);
        assert_eq!(r["missing"].as_u64().unwrap(), 0, "deflate {deflate}");
        let wire = r["wire_bytes_per_delivery"].as_f64().unwrap();
        if deflate {
            assert!(wire < 60.0, "{wire} bytes per compressed delivery");
        } else {
            assert!((wire - 66.0).abs() < 0.5, "{wire} bytes per plain delivery");
        }
    }
    s.stop().unwrap();
}

/// `--topics`: the subscribers dealt over several topics and the publishers going round
/// them; every topic's publishes reach every one of its subscribers, counted per topic,
/// and the CPU of the processes `--cpu-of` names is reported.
#[test]
fn fanout_over_several_topics_delivers_each_topics_publishes_to_its_subscribers() {
    let s = server(App::PubSub);
    let url = format!("ws://{}/ws", s.local_addr());
    let admin = s.admin_addr().unwrap().to_string();
    let pid = std::process::id();
    let r = run(&[
        "fanout",
        "--url",
        &url,
        "--admin",
        &admin,
        "-n",
        "50",
        "--topics",
        "7",
        "-P",
        "2",
        "-r",
        "280",
        "-d",
        "1",
        "--cpu-of",
        &pid.to_string(),
    ]);
    let published: Vec<u64> = r["published_per_topic"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(published.len(), 7);
    assert!(published.iter().all(|&p| p > 0), "{published:?}");
    assert_eq!(
        published.iter().sum::<u64>(),
        r["published"].as_u64().unwrap()
    );
    // 50 subscribers over 7 topics: 8 on topic 0, 7 on each of the others.
    let expected: u64 = published
        .iter()
        .enumerate()
        .map(|(topic, p)| p * if topic == 0 { 8 } else { 7 })
        .sum();
    assert_eq!(r["deliveries"].as_u64().unwrap(), expected);
    assert_eq!(r["missing"].as_u64().unwrap(), 0);
    let processes = r["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 1);
    assert_eq!(processes[0]["pid"].as_u64().unwrap(), u64::from(pid));
    assert!(processes[0]["us_per_delivery"].as_f64().unwrap() >= 0.0);
    s.stop().unwrap();
}

/// The same fanout with Server-Sent Events subscribers (`GET /sse?topic=`): every event's
/// data counted as a message would be, and the server's and the generator's CPU per
/// delivery reported.
#[test]
fn fanout_over_server_sent_events_delivers_every_publish_to_every_subscriber() {
    let s = server(App::PubSub);
    let url = format!("http://{}/sse", s.local_addr());
    let admin = s.admin_addr().unwrap().to_string();
    let pid = std::process::id().to_string();
    let r = run(&[
        "fanout",
        "--transport",
        "sse",
        "--url",
        &url,
        "--admin",
        &admin,
        "-n",
        "50",
        "-r",
        "200",
        "-d",
        "1",
        "--server-pid",
        &pid,
    ]);
    let published = r["published"].as_u64().unwrap();
    assert!(published > 0);
    assert_eq!(r["deliveries"].as_u64().unwrap(), published * 50);
    assert_eq!(r["missing"].as_u64().unwrap(), 0);
    assert_eq!(r["subscribers_closed"].as_u64().unwrap(), 0);
    assert!(r["latency"]["p50_us"].as_u64().unwrap() > 0);
    assert!(r["server_cpu_us_per_delivery"].as_f64().unwrap() >= 0.0);
    assert!(r["client_cpu_us_per_delivery"].as_f64().unwrap() >= 0.0);
    s.stop().unwrap();
}

/// `--transport sse` with a WebSocket-only flag fails before connecting, saying why.
#[test]
fn fanout_over_sse_refuses_websocket_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_stratus-load"))
        .args(["fanout", "--transport", "sse", "--protocol", "v1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("drop --protocol"), "{stderr}");
}

/// Two nodes sharing topics through a real `redis-server` (`scripts/install-redis.sh`
/// installs it): subscribers and publishers spread over both, every publish reaches every
/// subscriber on both nodes.
#[test]
fn fanout_spreads_over_the_nodes_of_a_cluster() {
    let redis = stratus_testkit::Redis::start();
    let nodes: Vec<Server> = (0..2)
        .map(|_| {
            Server::start(Config {
                broker: Some(redis.url()),
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                workers: 1,
                ..Config::default()
            })
            .unwrap()
        })
        .collect();
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("ws://{}/ws", n.local_addr()))
        .collect();
    let admins: Vec<String> = nodes
        .iter()
        .map(|n| n.admin_addr().unwrap().to_string())
        .collect();
    let r = run(&[
        "fanout",
        "--url",
        &urls.join(","),
        "--admin",
        &admins.join(","),
        "-n",
        "40",
        "-P",
        "2",
        "-r",
        "200",
        "-d",
        "1",
    ]);
    let published = r["published"].as_u64().unwrap();
    assert!(published > 0);
    assert_eq!(r["deliveries"].as_u64().unwrap(), published * 40);
    assert_eq!(r["missing"].as_u64().unwrap(), 0);
    for node in nodes {
        node.stop().unwrap();
    }
    drop(redis);
}

#[test]
fn hostile_clients_leave_honest_subscribers_every_message_in_order() {
    let s = server(App::PubSub);
    let url = format!("ws://{}/ws", s.local_addr());
    let admin = s.admin_addr().unwrap().to_string();
    let pid = std::process::id().to_string();
    // A short, small run of every attack; `hostile` itself fails on a missing message.
    let r = run(&[
        "hostile",
        "--url",
        &url,
        "--admin",
        &admin,
        "--pid",
        &pid,
        "-n",
        "5",
        "-r",
        "100",
        "-d",
        "2",
        "--idle",
        "50",
        "--head-tricklers",
        "5",
        "--frame-tricklers",
        "5",
        "--ping-flooders",
        "2",
        "--churners",
        "2",
        "--admin-abusers",
        "2",
    ]);
    let published = r["published"].as_u64().unwrap();
    assert!(published > 0);
    assert_eq!(r["deliveries"].as_u64().unwrap(), published * 5);
    assert_eq!(r["out_of_order"].as_u64().unwrap(), 0);
    assert!(r["attack"]["connections"].as_u64().unwrap() >= 64);
    assert!(r["peak_rss"][0].as_u64().unwrap() > 0);
    s.stop().unwrap();
}

#[test]
fn connections_reports_handshake_rate_and_memory() {
    let s = server(App::PubSub);
    let url = format!("ws://{}/ws?topic=idle", s.local_addr());
    let pid = std::process::id().to_string();
    let r = run(&[
        "connections",
        "--url",
        &url,
        "-n",
        "200",
        "--hold",
        "0",
        "--pid",
        &pid,
    ]);
    assert_eq!(r["opened"].as_u64().unwrap(), 200);
    assert!(r["handshakes_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["server_rss_after"].as_u64().is_some());
    s.stop().unwrap();
}

/// Churning v1 connections beside held ones, on a server listing members with join/leave
/// events: every connection due churns, the held subscribers get the presence pushes,
/// and the server's CPU time is read (the server runs in this process).
#[test]
fn churn_cycles_connections_and_counts_presence_pushes() {
    let s = Server::start(Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: 1,
        presence: stratus_server::PresenceMode::Members,
        presence_events: true,
        presence_interval: std::time::Duration::from_millis(200),
        ..Config::default()
    })
    .unwrap();
    let url = format!("ws://{}/ws", s.local_addr());
    let pid = std::process::id().to_string();
    let r = run(&[
        "churn",
        "--url",
        &url,
        "-n",
        "10",
        "-r",
        "40",
        "-d",
        "1",
        "--hold",
        "0.5",
        "--settle",
        "0.3",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(r["churned"].as_u64().unwrap(), 40, "{r}");
    assert_eq!(r["failed"].as_u64().unwrap(), 0, "{r}");
    assert_eq!(r["held_closed_by_server"].as_u64().unwrap(), 0);
    assert!(r["held_presence_pushes"].as_u64().unwrap() > 0, "{r}");
    assert!(r["server_cpu_us_per_churned"].as_f64().is_some());
    s.stop().unwrap();
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts `stratus-load peer KIND` on a free port (and `extra` flags); returns the
/// process and its address.
fn peer_with(kind: &str, extra: &[&str]) -> (std::process::Child, SocketAddr) {
    let addr = free_addr();
    let child = Command::new(env!("CARGO_BIN_EXE_stratus-load"))
        .args(["peer", kind, "--listen", &addr.to_string()])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "peer {kind} did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, addr)
}

fn peer(kind: &str) -> (std::process::Child, SocketAddr) {
    peer_with(kind, &[])
}

#[test]
fn compare_runs_every_peer_in_rounds() {
    let s = server(App::Echo);
    let peers: Vec<_> = ["tungstenite", "fastwebsockets", "uring-tcp"]
        .map(peer)
        .into();
    let targets = [
        format!("stratus=ws://{}/", s.local_addr()),
        format!("tungstenite=ws://{}/", peers[0].1),
        format!("fastwebsockets=ws://{}/", peers[1].1),
        format!("uring-raw=tcp://{}/", peers[2].1),
    ];
    let mut args = vec!["compare", "--rounds", "2", "-c", "4", "-d", "0.5"];
    for t in &targets {
        args.extend(["--target", t.as_str()]);
    }
    let r = run(&args);
    for name in ["stratus", "tungstenite", "fastwebsockets", "uring-raw"] {
        assert_eq!(r[name]["msgs_per_s"].as_array().unwrap().len(), 2, "{name}");
        assert!(r[name]["mean"].as_f64().unwrap() > 0.0, "{name}");
    }
    assert_eq!(r["stratus"]["ratio_to_first"].as_f64().unwrap(), 1.0);
    for (mut child, _) in peers {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    s.stop().unwrap();
}

#[test]
fn fanout_drives_the_tungstenite_broadcast_peer_too() {
    let admin = free_addr().to_string();
    let (mut child, addr) = peer_with("tungstenite-broadcast", &["--admin", &admin]);
    let url = format!("ws://{addr}/ws");
    let r = run(&[
        "fanout", "--url", &url, "--admin", &admin, "-n", "20", "-r", "100", "-d", "0.5",
    ]);
    let published = r["published"].as_u64().unwrap();
    assert!(published > 0);
    assert_eq!(r["deliveries"].as_u64().unwrap(), published * 20);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn plot_renders_compare_results_as_svg() {
    let dir = std::env::temp_dir().join(format!("stratus-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("compare.json");
    std::fs::write(
        &input,
        r#"{"scenario":"compare echo","params":{"echo":{"connections":100,"size":20}},
            "results":{"stratus":{"mean":300000.0,"rtt_p50_us":[300],"rtt_p99_us":[400,420]},
                       "peer":{"mean":250000.0,"rtt_p50_us":[350],"rtt_p99_us":[500,520]}}}"#,
    )
    .unwrap();
    let fanout = dir.join("fanout.json");
    std::fs::write(
        &fanout,
        r#"{"scenario":"compare fanout","params":{"subscribers":10000,"size":64,"publishers":1,
                "rate":5.0,"deflate":"shared"},
            "results":{"stratus":{"mean":1500000.0,"latency_p50_us":[36000],"latency_p99_us":[110000],
                                  "server_cpu_us_per_delivery":[0.5]},
                       "peer":{"mean":180000.0,"latency_p50_us":[80000],"latency_p99_us":[130000],
                               "server_cpu_us_per_delivery":[4.0]}}}"#,
    )
    .unwrap();
    let prefix = dir.join("chart");
    let status = Command::new(env!("CARGO_BIN_EXE_stratus-load"))
        .args([
            "plot",
            input.to_str().unwrap(),
            fanout.to_str().unwrap(),
            "--out",
            prefix.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    for (scenario, label, kinds) in [
        (
            "echo",
            "100 connections x 20 B",
            &["throughput", "latency"][..],
        ),
        (
            "fanout",
            "10k subscribers x 64 B, deflate shared · 1 publisher, 5 publishes/s",
            &["throughput", "latency", "cpu"][..],
        ),
    ] {
        for kind in kinds {
            let name = format!("chart-{scenario}-{kind}.svg");
            let svg = std::fs::read_to_string(dir.join(&name)).unwrap();
            assert!(svg.starts_with("<svg"), "{name}");
            assert!(
                svg.contains("stratus") && svg.contains("peer") && svg.contains(label),
                "{name}"
            );
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
