//! The protocol core as a driver uses it: received bytes go into a `Session` in reads of
//! fuzzer-chosen sizes, each message is answered (data echoed, as the echo app does) and
//! the transmit queue drained. Checks that the messages, the error and every byte sent
//! are the same whether the input arrives in one read or in many, and that what the
//! session hands out respects RFC 6455 and the limits.
//!
//! Input: two config bytes, then the `Reads` layout. Config byte 0: bits 0-1 choose
//! compression (0/3 none, 1 shared = libdeflate inflates, 2 dedicated = zlib with
//! context takeover inflates), bit 2 the client role (else server), bits 3-7 the
//! fragment limit. Config byte 1: the frame limit (low nibble) and message limit (high
//! bits) as powers of two.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stratus_deflate::{DeflateConfig, Mode, Negotiated, negotiate};
use stratus_fuzz::Reads;
use stratus_proto::{Limits, Message, ProtocolError, Role, Session};

/// Everything observable from one run.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Result<Message, ProtocolError>>,
    sent: Vec<u8>,
    closed: bool,
}

struct Config {
    compression: Option<Mode>,
    role: Role,
    limits: Limits,
}

impl Config {
    fn parse([c0, c1]: [u8; 2]) -> Self {
        let max_frame = 16usize << (c1 & 0x0f);
        Self {
            compression: match c0 & 0b11 {
                1 => Some(Mode::Shared),
                2 => Some(Mode::Dedicated),
                _ => None,
            },
            role: if c0 & 0b100 != 0 {
                Role::Client
            } else {
                Role::Server
            },
            limits: Limits {
                max_frame,
                max_message: max_frame << ((c1 >> 4) & 0b11),
                max_fragments: usize::from(c0 >> 3) * 8 + 1,
            },
        }
    }

    fn session(&self) -> Session {
        let mut session = match self.role {
            Role::Server => Session::server(self.limits),
            Role::Client => Session::client(self.limits, [7; 32]),
        };
        if let Some(mode) = self.compression {
            let offer = ["permessage-deflate".to_owned()];
            let agreed = negotiate(&offer, &DeflateConfig { mode, threshold: 0 })
                .expect("a bare offer is accepted");
            let agreed = Negotiated {
                role: self.role,
                ..agreed
            };
            session.set_compression(Box::new(agreed.compression(0)));
        }
        session
    }
}

/// Feeds `reads` to a fresh session, answering and draining after every message.
fn run<'a>(config: &Config, reads: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let mut session = config.session();
    let mut buf = BytesMut::new();
    let mut out = Outcome {
        events: Vec::new(),
        sent: Vec::new(),
        closed: false,
    };
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match session.handle_read(&mut buf) {
                Ok(Some(message)) => {
                    check_message(config, &message);
                    if message.is_data() {
                        // Refused once closing, which the outcome shows through `sent`.
                        let _ = session.send(&message);
                    }
                    out.events.push(Ok(message));
                }
                Ok(None) => break,
                Err(err) => {
                    assert!(session.failed() && session.close_sent(), "{err}: no Close");
                    out.events.push(Err(err));
                    break;
                }
            }
            drain(&mut session, &mut out.sent);
        }
        drain(&mut session, &mut out.sent);
    }
    out.closed = session.is_closed();
    out
}

fn drain(session: &mut Session, sent: &mut Vec<u8>) {
    while let Some(bytes) = session.poll_transmit() {
        sent.extend_from_slice(&bytes);
    }
}

fn check_message(config: &Config, message: &Message) {
    match message {
        Message::Text(p) => {
            assert!(std::str::from_utf8(p).is_ok(), "text is not UTF-8");
            assert!(p.len() <= config.limits.max_message);
        }
        Message::Binary(p) => assert!(p.len() <= config.limits.max_message),
        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
        Message::Close(Some(frame)) => assert!(frame.code().is_valid_on_wire()),
        Message::Close(None) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((config, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let config = Config::parse(*config);
    let reads = Reads::parse(rest);
    let whole = run(&config, std::iter::once(reads.body()));
    let split = run(&config, reads.chunks());
    assert_eq!(
        whole, split,
        "the result depends on how the bytes were split"
    );
});
