//! Backend hooks against a real HTTP backend over loopback (a small server each test
//! starts and scripts): the connect hook's grant, refusal, timeout, outage and malformed
//! answer, cookies passed through, frames sent with the upgrade kept while it waits, a
//! slow backend not holding up other connections on the same worker, an event stream
//! judged by the connect hook, the subscribe and publish hooks, and the counts in /metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Peer, admin, frame};
use serde_json::{Value, json};
use stratus_proto::Message;
use stratus_server::{Auth, AuthAlgorithm, Config, Hooks, Server};

/// What the scripted backend answers a request with.
enum Answer {
    /// This status and body.
    Json(u16, String),
    /// This status and body, after sleeping.
    Late(Duration, u16, String),
}

fn json_answer(value: Value) -> Answer {
    Answer::Json(200, value.to_string())
}

/// A backend on loopback: every request's JSON body, in arrival order, and how many it
/// has answered.
struct Backend {
    url: String,
    requests: Arc<Mutex<Vec<Value>>>,
    answered: Arc<Mutex<usize>>,
}

impl Backend {
    /// Starts a backend answering each request (path, JSON body) with `script`.
    fn start(script: impl Fn(&str, &Value) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(Mutex::new(0));
        let script = Arc::new(script);
        let (seen, done) = (requests.clone(), answered.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (script, seen, done) = (script.clone(), seen.clone(), done.clone());
                std::thread::spawn(move || {
                    if let Some((path, body)) = read_request(&stream) {
                        seen.lock().unwrap().push(body.clone());
                        let answer = script(&path, &body);
                        let (status, text) = match answer {
                            Answer::Json(status, text) => (status, text),
                            Answer::Late(delay, status, text) => {
                                std::thread::sleep(delay);
                                (status, text)
                            }
                        };
                        let response = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                            text.len()
                        );
                        let _ = (&stream).write_all(response.as_bytes());
                        *done.lock().unwrap() += 1;
                    }
                });
            }
        });
        Self {
            url: format!("http://{addr}"),
            requests,
            answered,
        }
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    fn answered(&self) -> usize {
        *self.answered.lock().unwrap()
    }
}

/// A backend that answers `grant` to a request with the cookie `session=good`, and
/// refuses any other with 401 "log in first".
fn session_backend(grant: Value) -> Backend {
    Backend::start(move |_, request| {
        let cookie = request["headers"]["cookie"].as_str().unwrap_or("");
        if cookie.contains("session=good") {
            json_answer(grant.clone())
        } else {
            json_answer(json!({"refuse": {"status": 401, "reason": "log in first"}}))
        }
    })
}

/// A backend that lets `user` in after 1.5 s (past the tests' hook timeouts).
fn slow_backend(user: &str) -> Backend {
    let answer = json!({"user": user}).to_string();
    Backend::start(move |_, _| Answer::Late(Duration::from_millis(1500), 200, answer.clone()))
}

/// Reads one HTTP request: its path and JSON body.
fn read_request(stream: &TcpStream) -> Option<(String, Value)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, serde_json::from_slice(&body).ok()?))
}

/// A push server on loopback with one worker (so every connection shares it) and `hooks`.
fn start(hooks: Hooks, edit: impl FnOnce(&mut Config)) -> Server {
    common::start_with(|c| {
        *c = Config {
            listen: c.listen,
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            workers: 1,
            handshake_timeout: Duration::from_secs(5),
            close_timeout: c.close_timeout,
            drain_timeout: c.drain_timeout,
            hooks,
            ..Config::default()
        };
        edit(c);
    })
}

fn connect_hook(url: &str, timeout: Duration) -> Hooks {
    Hooks {
        connect: Some(format!("{url}/connect")),
        timeout,
        ..Hooks::default()
    }
}

/// Sends an upgrade to `path` with `headers` (and `extra` bytes in the same write);
/// returns the peer and the response head.
fn upgrade(server: &Server, path: &str, headers: &str, extra: &[u8]) -> (Peer, String) {
    let mut peer = Peer::connect(server.local_addr());
    peer.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = common::upgrade_request_with(path, headers).into_bytes();
    request.extend_from_slice(extra);
    peer.send(&request);
    let head = peer.read_head();
    (peer, head)
}

fn recv_json(peer: &mut Peer) -> Value {
    match peer.recv() {
        Some(Message::Text(text)) => serde_json::from_slice(&text).unwrap(),
        other => panic!("expected JSON text, got {other:?}"),
    }
}

fn metrics(server: &Server) -> String {
    let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    admin(server.admin_addr().unwrap(), request).1
}

fn hook_count(page: &str, hook: &str, outcome: &str) -> u64 {
    common::sample(
        page,
        &format!("stratus_hook_requests_total{{hook=\"{hook}\",outcome=\"{outcome}\"}}"),
    )
}

#[test]
fn the_connect_hook_grants_the_user_its_topics_and_initial_subscriptions_from_cookies() {
    let backend = session_backend(json!({
        "user": "ann", "topics": ["chat.*"], "info": {"name": "Ann"},
        "subscribe": ["chat.lobby"]
    }));
    let server = start(connect_hook(&backend.url, Duration::from_secs(2)), |_| {});
    let headers =
        "Cookie: session=good\r\nCookie: theme=dark\r\nSec-WebSocket-Protocol: stratus.v1\r\n";
    // A ping in the same write as the upgrade: kept while the hook is asked, then answered.
    let ping = frame(true, 0, 0x9, b"early");
    let (mut peer, head) = upgrade(&server, "/ws?topic=chat.a", headers, &ping);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("stratus.v1"), "{head}");
    assert_eq!(peer.recv(), Some(Message::Pong("early".into())));

    let asked = backend.requests();
    assert_eq!(asked.len(), 1);
    let request = &asked[0];
    assert_eq!(request["headers"]["cookie"], "session=good; theme=dark");
    assert_eq!(request["headers"]["host"], "localhost");
    assert_eq!(request["path"], "/ws");
    assert_eq!(request["query"], "topic=chat.a");
    assert_eq!(request["remote_addr"], "127.0.0.1");
    assert_eq!(request["subprotocol"], "stratus.v1");

    // The backend's initial subscription and the URL's topic are both live.
    for topic in ["chat.lobby", "chat.a"] {
        server.publish_json(topic, r#"{"hi":1}"#, None).unwrap();
        let push = recv_json(&mut peer);
        assert_eq!(
            (push["topic"].as_str(), &push["data"]),
            (Some(topic), &json!({"hi": 1}))
        );
    }
    // The grant's topics bound what it may subscribe to.
    peer.send(&frame(
        true,
        0,
        0x1,
        br#"{"id":1,"op":"subscribe","topic":"news"}"#,
    ));
    let refused = recv_json(&mut peer);
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );

    // Without the cookie: the backend's refusal, status and reason.
    let (mut other, head) = upgrade(&server, "/ws", "", b"");
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    assert!(other.read_to_end().contains("log in first"));
    let page = metrics(&server);
    assert_eq!(hook_count(&page, "connect", "allowed"), 1);
    assert_eq!(hook_count(&page, "connect", "refused"), 1);
    assert!(
        page.contains("stratus_hook_latency_seconds_count{hook=\"connect\"} 2"),
        "{page}"
    );
}

#[test]
fn the_connect_hooks_own_subscriptions_need_no_grant_for_them() {
    // No `topics`: the grant allows no subscribe, yet the backend's choice is live.
    let backend =
        Backend::start(|_, _| json_answer(json!({"user": "ann", "subscribe": ["user.ann"]})));
    let server = start(connect_hook(&backend.url, Duration::from_secs(2)), |_| {});
    let headers = "Sec-WebSocket-Protocol: stratus.v1\r\n";
    let (mut peer, head) = upgrade(&server, "/ws", headers, b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    server
        .publish_json("user.ann", r#"{"hi":1}"#, None)
        .unwrap();
    let push = recv_json(&mut peer);
    assert_eq!(
        (push["topic"].as_str(), &push["data"]),
        (Some("user.ann"), &json!({"hi": 1}))
    );
    // The client's own subscribes still need the grant.
    peer.send(&frame(
        true,
        0,
        0x1,
        br#"{"id":1,"op":"subscribe","topic":"user.bob"}"#,
    ));
    let refused = recv_json(&mut peer);
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
}

#[test]
fn a_connect_hook_that_times_out_is_504_and_one_that_is_down_is_503() {
    let backend = slow_backend("late");
    let server = start(
        connect_hook(&backend.url, Duration::from_millis(300)),
        |_| {},
    );
    let (mut peer, head) = upgrade(&server, "/ws", "", b"");
    assert!(head.starts_with("HTTP/1.1 504 "), "{head}");
    assert!(
        peer.read_to_end()
            .contains("the backend did not answer in time")
    );
    assert_eq!(hook_count(&metrics(&server), "connect", "timeout"), 1);

    // Nothing listening: connection refused.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = start(
        connect_hook(&format!("http://{closed}"), Duration::from_secs(2)),
        |_| {},
    );
    let (mut peer, head) = upgrade(&down, "/ws", "", b"");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(head.contains("Retry-After"), "{head}");
    let body = peer.read_to_end();
    assert!(body.contains("the backend is unavailable"), "{body}");
    // Not the connection error, which names the backend's address.
    assert!(!body.contains(&closed.to_string()), "{body}");
    assert_eq!(hook_count(&metrics(&down), "connect", "unavailable"), 1);

    // A backend answering 500 is an outage too.
    let failing = Backend::start(|_, _| Answer::Json(500, "{}".into()));
    let server = start(connect_hook(&failing.url, Duration::from_secs(2)), |_| {});
    let (_, head) = upgrade(&server, "/ws", "", b"");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
}

#[test]
fn a_malformed_connect_answer_is_502() {
    let backend = Backend::start(|_, request| match request["query"].as_str() {
        Some("case=text") => Answer::Json(200, "not json".into()),
        // A redirect is not followed.
        Some("case=redirect") => Answer::Json(302, json!({"user": "a"}).to_string()),
        _ => json_answer(json!({"user": "a", "refuse": {}})),
    });
    let server = start(connect_hook(&backend.url, Duration::from_secs(2)), |_| {});
    for case in ["case=text", "case=redirect", "case=both"] {
        let (mut peer, head) = upgrade(&server, &format!("/ws?{case}"), "", b"");
        assert!(head.starts_with("HTTP/1.1 502 "), "{case}: {head}");
        let body = peer.read_to_end();
        assert!(
            body.contains("the backend's answer was not understood"),
            "{case}: {body}"
        );
        // The backend's answer is not quoted to the client.
        assert!(
            !body.contains("not json") && !body.contains("expected"),
            "{case}: {body}"
        );
    }
    assert_eq!(hook_count(&metrics(&server), "connect", "malformed"), 3);
}

#[test]
fn a_slow_connect_hook_does_not_hold_up_other_connections_on_the_worker() {
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    let backend = slow_backend("slow");
    let server = start(connect_hook(&backend.url, Duration::from_secs(3)), |c| {
        c.auth = Some(Auth::new(AuthAlgorithm::Hs256, SECRET, None, None).unwrap());
    });
    // One connection waits for the hook (no token)...
    let mut waiting = Peer::connect(server.local_addr());
    waiting.send(common::upgrade_request_with("/ws", "").as_bytes());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while backend.requests().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the hook was never asked"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // ...while one with a token (judged by the token, the hook not asked) is served on the
    // same worker, and gets what is published to it, before the backend has answered.
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = json!({"sub": "fast", "exp": exp, "topics": ["*"]});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let (mut fast, head) = upgrade(&server, &format!("/ws?topic=t&token={token}"), "", b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    server.publish_json("t", "1", None).unwrap();
    assert_eq!(fast.recv(), Some(Message::Text("1".into())));
    assert_eq!(backend.answered(), 0, "served while the hook still hung");
    assert_eq!(
        backend.requests().len(),
        1,
        "a token is not sent to the hook"
    );
    let head = waiting.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

#[test]
fn the_subscribe_hook_allows_or_refuses_each_subscribe_in_its_namespaces() {
    let backend = Backend::start(|path, request| match path {
        "/connect" => json_answer(json!({"user": "ann", "topics": ["*"], "info": {"n": 1}})),
        _ if request["topic"] == "room.open" => json_answer(json!({"allow": true})),
        _ if request["topic"] == "room.slow" => Answer::Late(
            Duration::from_millis(1500),
            200,
            json!({"allow": true}).to_string(),
        ),
        _ if request["topic"] == "room.bad" => Answer::Json(200, "[]".into()),
        _ => json_answer(json!({"allow": false, "reason": "members only"})),
    });
    let hooks = Hooks {
        subscribe: Some(format!("{}/subscribe", backend.url)),
        timeout: Duration::from_millis(400),
        ..connect_hook(&backend.url, Duration::from_millis(400))
    };
    let server = start(hooks, |c| {
        c.namespaces = vec![stratus_server::Namespace {
            prefix: "free.".into(),
            options: stratus_server::NamespaceOptions {
                subscribe_hook: Some(false),
                ..Default::default()
            },
        }];
    });
    let (mut peer, head) = upgrade(
        &server,
        "/ws",
        "Sec-WebSocket-Protocol: stratus.v1\r\n",
        b"",
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut ask = |id: u32, topic: &str| {
        let command = json!({"id": id, "op": "subscribe", "topic": topic}).to_string();
        peer.send(&frame(true, 0, 0x1, command.as_bytes()));
        recv_json(&mut peer)
    };
    let allowed = ask(1, "room.open");
    assert_eq!(
        (
            allowed["type"].as_str(),
            allowed["op"].as_str(),
            allowed["id"].as_u64()
        ),
        (Some("reply"), Some("subscribe"), Some(1)),
        "{allowed}"
    );
    let refused = ask(2, "room.secret");
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(refused["message"], "members only", "{refused}");
    let late = ask(3, "room.slow");
    assert_eq!(late["code"], "hook_timeout", "{late}");
    assert_eq!(late["message"], "the backend did not answer in time");
    let bad = ask(4, "room.bad");
    assert_eq!(bad["code"], "hook_error", "{bad}");
    assert_eq!(
        bad["message"], "the backend's answer was not understood",
        "a fixed text: what was malformed is for the log"
    );
    let free = ask(5, "free.x");
    assert_eq!(
        free["type"], "reply",
        "a namespace without the hook: {free}"
    );
    let subscribes: Vec<Value> = backend
        .requests()
        .into_iter()
        .filter(|r| r.get("topic").is_some())
        .collect();
    assert_eq!(subscribes.len(), 4, "free.x did not ask");
    assert_eq!(subscribes[0]["user"], "ann");
    assert_eq!(subscribes[0]["info"], json!({"n": 1}));
    assert!(
        subscribes[0]["client"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    // Only the allowed topic is live.
    server.publish_json("room.secret", "0", None).unwrap();
    server.publish_json("room.open", "1", None).unwrap();
    let push = recv_json(&mut peer);
    assert_eq!(push["topic"], "room.open", "{push}");
    let page = metrics(&server);
    assert_eq!(hook_count(&page, "subscribe", "allowed"), 1);
    assert_eq!(hook_count(&page, "subscribe", "refused"), 1);
    assert_eq!(hook_count(&page, "subscribe", "timeout"), 1);
    assert_eq!(hook_count(&page, "subscribe", "malformed"), 1);
}

#[test]
fn the_publish_hook_allows_refuses_or_replaces_the_data() {
    let backend = Backend::start(|path, request| match path {
        "/connect" => json_answer(json!({"user": "ann", "topics": ["*"], "publish": ["*"]})),
        _ => match request["data"]["text"].as_str() {
            Some("fine") => json_answer(json!({"allow": true})),
            Some("rude") => json_answer(json!({"data": {"text": "***"}})),
            _ => json_answer(json!({"allow": false, "reason": "spam"})),
        },
    });
    let hooks = Hooks {
        publish: Some(format!("{}/publish", backend.url)),
        ..connect_hook(&backend.url, Duration::from_secs(2))
    };
    let server = start(hooks, |c| {
        c.client_publish = stratus_server::ClientPublish::Claim
    });
    let v1 = "Sec-WebSocket-Protocol: stratus.v1\r\n";
    let (mut reader, head) = upgrade(&server, "/ws?topic=chat", v1, b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let (mut writer, head) = upgrade(&server, "/ws", v1, b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut publish = |id: u32, text: &str| {
        let command =
            json!({"id": id, "op": "publish", "topic": "chat", "data": {"text": text}}).to_string();
        writer.send(&frame(true, 0, 0x1, command.as_bytes()));
        recv_json(&mut writer)
    };
    assert_eq!(publish(1, "fine")["op"], "publish");
    assert_eq!(recv_json(&mut reader)["data"], json!({"text": "fine"}));
    assert_eq!(publish(2, "rude")["op"], "publish");
    assert_eq!(
        recv_json(&mut reader)["data"],
        json!({"text": "***"}),
        "replaced"
    );
    let refused = publish(3, "buy now");
    assert_eq!(
        (refused["code"].as_str(), refused["message"].as_str()),
        (Some("forbidden"), Some("spam"))
    );
    let asked: Vec<Value> = backend
        .requests()
        .into_iter()
        .filter(|r| r.get("data").is_some())
        .collect();
    assert_eq!(asked.len(), 3);
    assert_eq!(
        (asked[0]["user"].as_str(), asked[0]["topic"].as_str()),
        (Some("ann"), Some("chat"))
    );
    let page = metrics(&server);
    assert_eq!(hook_count(&page, "publish", "allowed"), 2);
    assert_eq!(hook_count(&page, "publish", "refused"), 1);
}

#[test]
fn upgrade_url_topics_and_raw_subscribes_ask_the_subscribe_hook() {
    let backend = Backend::start(|_, request| {
        if request["topic"]
            .as_str()
            .is_some_and(|t| t.starts_with("ok."))
        {
            json_answer(json!({"allow": true}))
        } else {
            json_answer(json!({"allow": false, "reason": "not yours"}))
        }
    });
    let hooks = Hooks {
        subscribe: Some(format!("{}/subscribe", backend.url)),
        ..Hooks::default()
    };
    let server = start(hooks, |_| {});
    // A URL topic the backend allows: subscribed once it has answered.
    let (mut peer, head) = upgrade(&server, "/ws?topic=ok.a", "", b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.topic_count() == 0 {
        assert!(std::time::Instant::now() < deadline, "never subscribed");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.publish_json("ok.a", "1", None).unwrap();
    assert_eq!(peer.recv(), Some(Message::Text("1".into())));
    assert_eq!(
        backend.requests()[0]["user"],
        Value::Null,
        "no grant, no user"
    );
    // Raw-mode commands ask too, and get raw replies.
    let mut ask = |command: Value| {
        peer.send(&frame(true, 0, 0x1, command.to_string().as_bytes()));
        recv_json(&mut peer)
    };
    let ok = ask(json!({"op": "subscribe", "topic": "ok.b"}));
    assert_eq!(ok, json!({"op": "subscribe", "topic": "ok.b", "ok": true}));
    let no = ask(json!({"op": "subscribe", "topic": "secret"}));
    assert_eq!(
        (no["ok"].as_bool(), no["error"].as_str()),
        (Some(false), Some("not yours"))
    );
    // A URL topic the backend refuses closes the connection, naming it (1008).
    let (mut refused, head) = upgrade(&server, "/ws?topic=secret", "", b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    match refused.recv() {
        Some(Message::Close(Some(close))) => {
            assert_eq!(close.code(), stratus_proto::CloseCode::POLICY);
            assert!(close.reason().contains("secret"), "{}", close.reason());
        }
        other => panic!("expected Close 1008, got {other:?}"),
    }
}

#[test]
fn the_stratus_binary_takes_the_hook_flags_and_passes_cookies_through() {
    let backend = Backend::start(|_, request| {
        if request["headers"]["cookie"] == "sid=abc" {
            json_answer(json!({"user": "ann", "topics": ["*"]}))
        } else {
            json_answer(json!({"refuse": {"status": 403, "reason": "who are you"}}))
        }
    });
    let url = format!("{}/connect", backend.url);
    let (mut child, ws, admin_addr) = common::spawn_server(&[
        "--connect-hook",
        &url,
        "--hook-timeout",
        "1.5",
        "--hook-concurrency",
        "4",
    ]);
    let mut peer = Peer::connect(ws);
    peer.send(common::upgrade_request_with("/ws", "Cookie: sid=abc\r\n").as_bytes());
    let head = peer.read_head();
    let mut stranger = Peer::connect(ws);
    stranger.send(common::upgrade_request_with("/ws", "").as_bytes());
    let refused = stranger.read_head();
    let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let page = admin(admin_addr, request).1;
    let _ = child.kill();
    let _ = child.wait();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(refused.starts_with("HTTP/1.1 403 "), "{refused}");
    assert_eq!(hook_count(&page, "connect", "allowed"), 1);
    assert_eq!(hook_count(&page, "connect", "refused"), 1);
    assert_eq!(common::sample(&page, "stratus_hook_in_flight"), 0);
}

#[test]
fn past_the_hook_concurrency_and_its_line_upgrades_are_refused_at_once() {
    let backend = slow_backend("u");
    // One request in flight, four in line (4 x 1), maybe one more taken off the line and
    // waiting for the slot: of eight upgrades at once, some are refused without waiting.
    let hooks = Hooks {
        concurrency: 1,
        ..connect_hook(&backend.url, Duration::from_secs(1))
    };
    let server = start(hooks, |_| {});
    let mut peers: Vec<Peer> = (0..8)
        .map(|_| {
            let mut peer = Peer::connect(server.local_addr());
            peer.stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            peer.send(common::upgrade_request_with("/ws", "").as_bytes());
            peer
        })
        .collect();
    let heads: Vec<String> = peers.iter_mut().map(Peer::read_head).collect();
    let busy = heads
        .iter()
        .filter(|h| h.starts_with("HTTP/1.1 503 "))
        .count();
    let timed_out = heads
        .iter()
        .filter(|h| h.starts_with("HTTP/1.1 504 "))
        .count();
    assert!(busy >= 2, "{heads:?}");
    assert_eq!(busy + timed_out, 8, "{heads:?}");
    assert!(
        backend.requests().len() <= 2,
        "at most one at a time reached the backend"
    );
    let page = metrics(&server);
    assert_eq!(hook_count(&page, "connect", "busy") as usize, busy);
}

#[test]
fn an_event_stream_is_judged_by_the_connect_hook_from_its_cookies() {
    let backend = session_backend(json!({
        "user": "ann", "topics": ["chat.*"], "subscribe": ["chat.lobby"]
    }));
    let server = start(connect_hook(&backend.url, Duration::from_secs(2)), |_| {});
    let addr = server.local_addr();
    let open = |target: &str, headers: &str| {
        let mut peer = Peer::connect(addr);
        peer.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        peer.send(format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n").as_bytes());
        let head = peer.read_head();
        (peer, head)
    };
    let next_event = |peer: &mut Peer| loop {
        let block = peer.read_through(b"\n\n").expect("an event");
        if !block.starts_with(':') {
            return block;
        }
    };

    let (mut stream, head) = open("/sse?topic=chat.a", "Cookie: session=good\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"),
        "{head}"
    );
    let asked = backend.requests();
    assert_eq!(asked.len(), 1);
    let request = &asked[0];
    assert_eq!(request["transport"], "sse");
    assert_eq!(request["path"], "/sse");
    assert_eq!(request["query"], "topic=chat.a");
    assert_eq!(request["headers"]["cookie"], "session=good");
    assert_eq!(request["subprotocol"], Value::Null);
    // The backend's initial subscription and the URL's topic are both on the stream.
    for topic in ["chat.lobby", "chat.a"] {
        server.publish_json(topic, r#"{"hi":1}"#, None).unwrap();
        assert_eq!(
            next_event(&mut stream),
            format!("event: {topic}\ndata: {{\"hi\":1}}\n\n")
        );
    }
    // No topic in the URL: the backend's own subscription is enough.
    let (mut own, head) = open("/sse", "Cookie: session=good\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    server
        .publish_json("chat.lobby", r#"{"hi":2}"#, None)
        .unwrap();
    assert_eq!(
        next_event(&mut own),
        "event: chat.lobby\ndata: {\"hi\":2}\n\n"
    );
    // A URL topic outside the grant is refused.
    let (_, head) = open("/sse?topic=news", "Cookie: session=good\r\n");
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    // Without the cookie: the backend's refusal, status and reason.
    let (mut refused, head) = open("/sse?topic=chat.a", "");
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    assert!(refused.read_to_end().contains("log in first"));
    let page = metrics(&server);
    assert_eq!(hook_count(&page, "connect", "allowed"), 3);
    assert_eq!(hook_count(&page, "connect", "refused"), 1);
}
