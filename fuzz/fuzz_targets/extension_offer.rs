//! The Sec-WebSocket-Extensions grammar and permessage-deflate negotiation on both
//! sides. The body is taken as text and cut into header values at the read boundaries.
//! Checks that several header values parse as their comma-joined list, that parameters
//! render back to what they parsed from, that our client accepts every answer our server
//! negotiates (in both modes) with the same parameters, and that two sides agreeing on
//! any parameters, the server's answer or an arbitrary accepted response, can exchange
//! messages both ways (each header value doubles as a message).
//!
//! Input: one config byte (bit 0: the server's mode is dedicated, else shared), then the
//! `Reads` layout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stratus_deflate::{DeflateConfig, DeflateParams, Mode, Negotiated, accept_response, negotiate};
use stratus_fuzz::Reads;
use stratus_proto::{MessageCompression, Role, extensions};

/// Whether no quoted string spans the end of `value`: then joining values with commas
/// cannot change how they split.
fn quotes_balanced(value: &str) -> bool {
    !value.contains('\\') && value.matches('"').count().is_multiple_of(2)
}

fn check_grammar(values: &[String]) {
    let parsed = extensions::parse(values);
    if values.iter().all(|v| quotes_balanced(v)) {
        assert_eq!(
            parsed,
            extensions::parse(&[values.join(", ")]),
            "join changes it"
        );
    }
    for ext in parsed.iter().flatten() {
        assert!(!ext.name.is_empty());
        assert!(ext.params.iter().all(|(k, _)| *k == k.to_ascii_lowercase()));
        if let Ok(params) = DeflateParams::parse(ext, true) {
            let rendered = extensions::parse(&[params.to_string()]);
            let [Ok(again)] = rendered.as_slice() else {
                panic!("{params} does not parse back: {rendered:?}");
            };
            assert_eq!(DeflateParams::parse(again, true), Ok(params));
        }
    }
}

/// Sends every message from `sender` to `receiver`; each arrives as it was sent.
fn exchange(
    sender: &mut dyn MessageCompression,
    receiver: &mut dyn MessageCompression,
    messages: &[String],
) {
    for message in messages {
        let Some(compressed) = sender.compress(message.as_bytes()) else {
            continue;
        };
        let inflated = receiver.decompress(&compressed, message.len());
        assert_eq!(
            inflated.as_deref(),
            Ok(message.as_bytes()),
            "{sender:?} -> {receiver:?}"
        );
    }
}

/// The server and the client, both holding `params`, talk both ways.
fn talk(params: DeflateParams, messages: &[String]) {
    let side = |role| Negotiated { params, role }.compression(0);
    let (mut server, mut client) = (side(Role::Server), side(Role::Client));
    exchange(&mut server, &mut client, messages);
    exchange(&mut client, &mut server, messages);
}

fn check_negotiation(values: &[String], mode: Mode) {
    let config = DeflateConfig { mode, threshold: 0 };
    if let Some(agreed) = negotiate(values, &config) {
        assert_eq!(agreed.role, Role::Server);
        if mode == Mode::Shared {
            let p = agreed.params;
            assert!(p.server_no_context_takeover && p.client_no_context_takeover);
        }
        let answer = [agreed.response()];
        let accepted = accept_response(&answer).map(|a| a.map(|a| a.params));
        assert_eq!(
            accepted,
            Ok(Some(agreed.params)),
            "client refuses {answer:?}"
        );
        talk(agreed.params, values);
    }
    if let Ok(Some(accepted)) = accept_response(values) {
        assert_eq!(accepted.role, Role::Client);
        talk(accepted.params, values);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    let reads = Reads::parse(rest);
    let values: Vec<String> = reads
        .chunks()
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect();
    check_grammar(&values);
    let mode = if config & 1 == 0 {
        Mode::Shared
    } else {
        Mode::Dedicated
    };
    check_negotiation(&values, mode);
});
