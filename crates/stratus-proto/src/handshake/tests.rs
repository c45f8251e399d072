//! Handshake behaviour, named after the "Opening handshake" and "Client" rows of
//! TESTPLAN.md.

use super::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn request(lines: &[&str]) -> Vec<u8> {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn good() -> Vec<&'static str> {
    vec![
        "GET /chat?topic=a HTTP/1.1",
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
}

fn read(bytes: &[u8]) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
    RequestReader::new(HandshakeLimits::default()).read(bytes)
}

fn status_of(lines: &[&str]) -> u16 {
    read(&request(lines)).unwrap_err().status()
}

fn without(prefix: &str) -> Vec<&'static str> {
    good()
        .into_iter()
        .filter(|l| !l.starts_with(prefix))
        .collect()
}

#[test]
fn accept_key_matches_rfc_example() {
    assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn valid_request_is_accepted_with_101() {
    let bytes = request(&good());
    let (req, n) = read(&bytes).unwrap().unwrap();
    assert_eq!(n, bytes.len());
    assert_eq!(req.target, "/chat?topic=a");
    assert_eq!(req.host, "example.com");
    let response = String::from_utf8(req.accept("")).unwrap();
    assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(response.ends_with("\r\n\r\n"));
}

#[test]
fn missing_upgrade_or_connection_is_426_with_version_header() {
    assert_eq!(status_of(&without("Upgrade")), 426);
    assert_eq!(status_of(&without("Connection")), 426);
    let err = read(&request(&without("Upgrade"))).unwrap_err();
    let response = String::from_utf8(err.response()).unwrap();
    assert!(response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
    assert!(response.contains("Sec-WebSocket-Version: 13\r\n"));
}

#[test]
fn version_not_13_is_426() {
    let mut lines = without("Sec-WebSocket-Version");
    lines.push("Sec-WebSocket-Version: 8");
    assert_eq!(status_of(&lines), 426);
    assert_eq!(status_of(&without("Sec-WebSocket-Version")), 426);
}

#[test]
fn post_is_405() {
    let mut lines = good();
    lines[0] = "POST /chat HTTP/1.1";
    assert_eq!(status_of(&lines), 405);
    let response = read(&request(&lines)).unwrap_err().response();
    assert!(
        String::from_utf8(response)
            .unwrap()
            .contains("Allow: GET\r\n")
    );
}

#[test]
fn http_1_0_is_400() {
    let mut lines = good();
    lines[0] = "GET /chat HTTP/1.0";
    assert_eq!(status_of(&lines), 400);
}

#[test]
fn missing_malformed_or_duplicate_key_is_400() {
    assert_eq!(status_of(&without("Sec-WebSocket-Key")), 400);
    let mut short = without("Sec-WebSocket-Key");
    short.push("Sec-WebSocket-Key: c2hvcnQ=");
    assert_eq!(status_of(&short), 400);
    let mut junk = without("Sec-WebSocket-Key");
    junk.push("Sec-WebSocket-Key: !!!not-base64!!!");
    assert_eq!(status_of(&junk), 400);
    let mut twice = good();
    twice.push("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(
        read(&request(&twice)).unwrap_err(),
        HandshakeError::DuplicateKey
    );
    assert_eq!(status_of(&twice), 400);
}

#[test]
fn missing_host_is_400() {
    assert_eq!(status_of(&without("Host")), 400);
}

#[test]
fn malformed_http_is_400() {
    assert_eq!(read(b"GARBAGE\x01\r\n\r\n").unwrap_err().status(), 400);
}

#[test]
fn header_tokens_are_case_insensitive_and_comma_lists_work() {
    let mut lines = without("Upgrade");
    lines.retain(|l| !l.starts_with("Connection"));
    lines.push("upgrade: WebSocket");
    lines.push("connection: keep-alive, Upgrade");
    assert!(read(&request(&lines)).unwrap().is_some());
}

#[test]
fn headers_over_the_size_limit_are_431_as_soon_as_crossed() {
    let limits = HandshakeLimits::default();
    let mut reader = RequestReader::new(limits);
    let mut buf = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
    // One byte per read: no error until the limit is reached, then 431 at once.
    loop {
        buf.push(b'a');
        match reader.read(&buf) {
            Ok(None) => assert!(buf.len() < limits.max_head),
            Err(e) => {
                assert_eq!(e.status(), 431);
                assert_eq!(buf.len(), limits.max_head);
                break;
            }
            Ok(Some(_)) => panic!("no head end was sent"),
        }
    }
}

#[test]
fn a_head_sent_one_byte_per_read_is_scanned_in_linear_time() {
    // Each read resumes where the last one stopped (3 bytes back, for a blank line split
    // across reads): an 8 KiB head sent a byte at a time costs O(n) byte comparisons,
    // not O(n^2) rescans.
    let mut head = request(&good());
    let padding = "x".repeat(8000 - head.len());
    head.splice(
        head.len() - 2..head.len() - 2,
        format!("X-Pad: {padding}\r\n").bytes(),
    );
    let mut scanner = HeadScanner::new(HandshakeLimits::default());
    let mut examined = 0;
    for n in 1..=head.len() {
        examined += n - scanner.searched.saturating_sub(3);
        match scanner.scan(&head[..n]).unwrap() {
            None => assert_eq!(scanner.searched, n),
            Some(end) => assert_eq!((end, n), (head.len(), head.len())),
        }
    }
    assert!(
        examined <= 4 * head.len(),
        "{examined} bytes examined for a {}-byte head",
        head.len()
    );
}

#[test]
fn too_many_headers_is_431() {
    let mut lines = good();
    let filler: Vec<String> = (0..100).map(|i| format!("X-{i}: v")).collect();
    lines.extend(filler.iter().map(String::as_str));
    assert_eq!(status_of(&lines), 431);
}

#[test]
fn request_split_at_every_byte_parses_the_same() {
    let bytes = request(&good());
    let whole = read(&bytes).unwrap().unwrap();
    let mut reader = RequestReader::new(HandshakeLimits::default());
    for end in 1..bytes.len() {
        assert_eq!(reader.read(&bytes[..end]).unwrap(), None, "at {end}");
    }
    assert_eq!(reader.read(&bytes).unwrap().unwrap(), whole);
}

#[test]
fn bytes_after_the_head_are_left_for_the_codec() {
    let mut bytes = request(&good());
    let head_len = bytes.len();
    bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
    let (_, n) = read(&bytes).unwrap().unwrap();
    assert_eq!(n, head_len);
    assert_eq!(&bytes[n..], &[0x81, 0x80, 1, 2, 3, 4]);
}

#[test]
fn protocols_and_extensions_are_collected() {
    let mut lines = good();
    lines.push("Sec-WebSocket-Protocol: chat, superchat");
    lines.push("Sec-WebSocket-Extensions: permessage-deflate");
    lines.push("Sec-WebSocket-Extensions: x-other; a=1");
    lines.push("Origin: https://example.com");
    let (req, _) = read(&request(&lines)).unwrap().unwrap();
    assert_eq!(req.protocols, vec!["chat", "superchat"]);
    assert_eq!(req.extensions, vec!["permessage-deflate", "x-other; a=1"]);
    assert_eq!(req.origin.as_deref(), Some("https://example.com"));
}

fn read_any(lines: &[&str]) -> Result<Request, HandshakeError> {
    let bytes = request(lines);
    let (req, n) = RequestReader::new(HandshakeLimits::default())
        .read_request(&bytes)?
        .unwrap();
    assert_eq!(n, bytes.len());
    Ok(req)
}

#[test]
fn get_and_head_without_upgrade_headers_are_plain_requests() {
    let plain = |head| {
        Request::Plain(PlainRequest {
            target: "/index.html?x=1".into(),
            head,
            host: (!head).then(|| "example.com".into()),
            ..PlainRequest::default()
        })
    };
    let browser = ["Host: example.com", "Connection: keep-alive", "Accept: */*"];
    let mut get = vec!["GET /index.html?x=1 HTTP/1.1"];
    get.extend(browser);
    assert_eq!(read_any(&get), Ok(plain(false)));
    let mut head = vec!["HEAD /index.html?x=1 HTTP/1.1"];
    head.extend(browser);
    assert_eq!(read_any(&head), Ok(plain(true)));
    // An upgrade-only reader refuses them as before: 426 for GET, 405 for HEAD.
    assert_eq!(status_of(&get), 426);
    assert_eq!(status_of(&head), 405);
}

#[test]
fn a_broken_upgrade_is_never_taken_for_a_plain_request() {
    for header in [
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
    ] {
        let lines = without(header);
        assert!(
            matches!(read_any(&lines), Err(e) if e.status() >= 400),
            "without {header}"
        );
    }
    let mut head = good();
    head[0] = "HEAD /chat HTTP/1.1";
    assert_eq!(read_any(&head), Err(HandshakeError::MethodNotAllowed));
    assert_eq!(
        read_any(&["HEAD / HTTP/1.0", "Host: x"]),
        Err(HandshakeError::MethodNotAllowed)
    );
    assert_eq!(
        read_any(&["GET / HTTP/1.0", "Host: x"]),
        Err(HandshakeError::UnsupportedHttpVersion)
    );
    assert_eq!(
        read_any(&["GET / HTTP/1.1", "Host: x", "sec-websocket-extensions: x"]),
        Err(HandshakeError::MissingUpgrade)
    );
}

fn client_request() -> (ClientHandshake, String) {
    client_request_with([9; 16])
}

fn client_request_with(nonce: [u8; 16]) -> (ClientHandshake, String) {
    let (hs, bytes) = ClientHandshake::new("localhost:9001", "/ws", None, &[], nonce);
    (hs, String::from_utf8(bytes).unwrap())
}

fn key_of(request: &str) -> String {
    request
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap()
        .to_owned()
}

#[test]
fn client_request_is_accepted_by_the_server_reader() {
    let (_, request) = client_request();
    let (req, _) = read(request.as_bytes()).unwrap().unwrap();
    assert_eq!(req.target, "/ws");
    assert_eq!(req.key, key_of(&request));
    // the key is the nonce in base64
    assert_ne!(key_of(&client_request_with([10; 16]).1), req.key);
}

#[test]
fn client_accepts_a_valid_101_and_keeps_trailing_bytes() {
    let (mut hs, request) = client_request();
    let (req, _) = read(request.as_bytes()).unwrap().unwrap();
    let mut response = req.accept("");
    let head = response.len();
    response.extend_from_slice(&[0x81, 0x00]);
    let (res, n) = hs.read(&response).unwrap().unwrap();
    assert_eq!(n, head);
    assert!(res.extensions.is_empty());
}

fn response_with(hs_request: &str, edit: impl Fn(String) -> String) -> Vec<u8> {
    let (req, _) = read(hs_request.as_bytes()).unwrap().unwrap();
    edit(String::from_utf8(req.accept("")).unwrap()).into_bytes()
}

type Edit = Box<dyn Fn(String) -> String>;

#[test]
fn bad_101_fails_before_any_frame() {
    let cases: Vec<(Edit, HandshakeError)> = vec![
        (
            Box::new(|r| r.replace("101 Switching Protocols", "200 OK")),
            HandshakeError::UnexpectedStatus(200),
        ),
        (
            Box::new(|r| r.replace("Upgrade: websocket\r\n", "")),
            HandshakeError::MissingUpgrade,
        ),
        (
            Box::new(|r| r.replace("Connection: Upgrade\r\n", "")),
            HandshakeError::MissingConnectionUpgrade,
        ),
        (
            Box::new(|r| r.replace("Sec-WebSocket-Accept: ", "Sec-WebSocket-Accept: x")),
            HandshakeError::AcceptMismatch,
        ),
        (
            Box::new(|r| {
                r.replace(
                    "\r\n\r\n",
                    "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
                )
            }),
            HandshakeError::UnsolicitedExtension,
        ),
        (
            Box::new(|r| r.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat\r\n\r\n")),
            HandshakeError::UnsolicitedProtocol,
        ),
    ];
    for (edit, expected) in cases {
        let (mut hs, request) = client_request();
        let response = response_with(&request, edit);
        assert_eq!(hs.read(&response).unwrap_err(), expected);
    }
}

#[test]
fn a_plain_get_carries_the_headers_an_event_stream_needs() {
    let lines = [
        "GET /sse?topic=a HTTP/1.1",
        "Host: push.example",
        "Origin: https://push.example",
        "Authorization: Bearer abc",
        "Last-Event-ID:  5-1 ",
    ];
    let Ok(Request::Plain(plain)) = read_any(&lines) else {
        panic!("not a plain request");
    };
    assert_eq!(plain.host.as_deref(), Some("push.example"));
    assert_eq!(plain.origin.as_deref(), Some("https://push.example"));
    assert_eq!(plain.authorization.as_deref(), Some("Bearer abc"));
    assert_eq!(plain.last_event_id.as_deref(), Some("5-1"));
    let bad = request(&["GET /sse HTTP/1.1", "Host: h", "Last-Event-ID: \u{e9}"]);
    let mut bytes = bad;
    // Not UTF-8: refused as malformed, as an upgrade's headers are.
    let at = bytes.iter().position(|&b| b == 0xc3).unwrap();
    bytes[at] = 0xff;
    assert!(matches!(
        RequestReader::new(HandshakeLimits::default()).read_request(&bytes),
        Err(HandshakeError::Malformed(_))
    ));
}
