//! The opening handshake on both sides: the server's `RequestReader` (with fuzzer-chosen
//! limits) and the client's check of the 101, fed everything received so far after each
//! read, as the drivers do. Checks that the outcome does not depend on how the head was
//! split, that a head is never accepted past its limits, and that whenever the server
//! accepts a request, our own client accepts the 101 (and extension) the server answers.
//!
//! Input: one config byte, then the `Reads` layout. Config bit 0: parse a response
//! (else a request). For a request, bits 1-3 give the head limit (64 << n bytes) and
//! bits 4-7 the header limit. For a response, the client used the RFC 6455 sample nonce,
//! offered `client_offer()` if bit 1 is set and the subprotocols `chat, superchat` if
//! bit 2 is set.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use libfuzzer_sys::fuzz_target;
use stratus_deflate::{DeflateConfig, accept_response, client_offer, negotiate};
use stratus_fuzz::Reads;
use stratus_proto::handshake::{
    ClientHandshake, HandshakeError, HandshakeLimits, RequestReader, UpgradeRequest,
    UpgradeResponse,
};

/// The nonce of RFC 6455 §1.3's example (key `dGhlIHNhbXBsZSBub25jZQ==`).
const SAMPLE_NONCE: [u8; 16] = *b"the sample nonce";

/// Calls `read` with everything received after each read, until it decides.
fn incremental<'a, T>(
    reads: impl Iterator<Item = &'a [u8]>,
    mut read: impl FnMut(&[u8]) -> Result<Option<T>, HandshakeError>,
) -> Result<Option<T>, HandshakeError> {
    let mut received = Vec::new();
    for chunk in reads {
        received.extend_from_slice(chunk);
        if let Some(decided) = read(&received).transpose() {
            return decided.map(Some);
        }
    }
    Ok(None)
}

fn request(config: u8, reads: Reads<'_>) {
    let limits = HandshakeLimits {
        max_head: 64 << ((config >> 1) & 0b111),
        max_headers: usize::from(config >> 4) * 4 + 1,
    };
    let whole = RequestReader::new(limits).read(reads.body());
    let mut reader = RequestReader::new(limits);
    let split = incremental(reads.chunks(), |buf| reader.read(buf));
    assert_eq!(
        whole, split,
        "the result depends on how the request was split"
    );
    if let Ok(Some((request, head_len))) = whole {
        assert!(head_len <= limits.max_head, "head over the limit accepted");
        assert!(reads.body()[..head_len].ends_with(b"\r\n\r\n"));
        client_accepts_answer(&request);
    }
}

/// The server's 101 for `request` (with the extension it negotiates) passes our client.
fn client_accepts_answer(request: &UpgradeRequest) {
    let nonce: [u8; 16] = BASE64
        .decode(&request.key)
        .ok()
        .and_then(|raw| raw.try_into().ok())
        .expect("an accepted key is 16 bytes of base64");
    let agreed = negotiate(&request.extensions, &DeflateConfig::default());
    let extension = agreed.map(|a| format!("Sec-WebSocket-Extensions: {}\r\n", a.response()));
    let answer = request.accept(extension.as_deref().unwrap_or_default());
    let offer = agreed.map(|_| client_offer());
    let (mut client, _) =
        ClientHandshake::new(&request.host, &request.target, offer.as_deref(), &[], nonce);
    let (response, len) = match client.read(&answer) {
        Ok(Some(accepted)) => accepted,
        other => panic!("our client refused the server's answer: {other:?}"),
    };
    assert_eq!(len, answer.len());
    assert_eq!(response.protocol, None);
    let client_agreed = accept_response(&response.extensions).expect("valid extension answer");
    assert_eq!(
        client_agreed.map(|a| a.params),
        agreed.map(|a| a.params),
        "client and server disagree on the parameters"
    );
}

fn response(config: u8, reads: Reads<'_>) {
    let offer = (config & 0b10 != 0).then(client_offer);
    let protocols: &[&str] = if config & 0b100 != 0 {
        &["chat", "superchat"]
    } else {
        &[]
    };
    let client = || ClientHandshake::new("h", "/", offer.as_deref(), protocols, SAMPLE_NONCE).0;
    let whole = client().read(reads.body());
    let mut reader = client();
    let split = incremental(reads.chunks(), |buf| reader.read(buf));
    assert_eq!(
        whole, split,
        "the result depends on how the response was split"
    );
    if let Ok(Some((
        UpgradeResponse {
            extensions,
            protocol,
        },
        head_len,
    ))) = whole
    {
        assert!(head_len <= HandshakeLimits::default().max_head);
        assert!(
            offer.is_some() || extensions.is_empty(),
            "unsolicited extension"
        );
        assert!(protocol.is_none_or(|p| protocols.contains(&p.as_str())));
        let _ = accept_response(&extensions);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    let reads = Reads::parse(rest);
    if config & 1 == 0 {
        request(config, reads);
    } else {
        response(config, reads);
    }
});
