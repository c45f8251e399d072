//! The worker ring's unsafe parts checked against plain sockets: bytes that pass through
//! the provided buffer ring (every buffer recycled many times over) and through batched
//! `sendmsg` come back exactly as a std socket sent them. CI also runs these under
//! AddressSanitizer.

#![allow(clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use stratus_uring::{Event, Ring, RingConfig, Wake};

const CONN: u64 = 7;
const LISTENER: u64 = 1;

/// Deterministic pseudo-random bytes (xorshift), so a failure is reproducible.
fn pattern(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Echoes one connection through `ring` until the peer's FIN; returns how many receive
/// events carried data.
fn echo_one(ring: &mut Ring, listener: &TcpListener) -> usize {
    ring.accept_multishot(listener.as_raw_fd(), LISTENER);
    let mut conn: Option<OwnedFd> = None;
    let mut received = BytesMut::new();
    let (mut data_events, mut sending, mut peer_done) = (0, false, false);
    let mut pending: Vec<Bytes> = Vec::new();
    loop {
        ring.submit_and_wait(Duration::from_secs(5)).expect("wait");
        while let Some(event) = ring.next_event() {
            match event {
                Event::Accepted { result, .. } => {
                    let fd = result.expect("accept");
                    ring.recv_multishot(fd.as_raw_fd(), CONN);
                    conn = Some(fd);
                }
                Event::Received {
                    token,
                    result,
                    more,
                } => {
                    assert_eq!(token, CONN);
                    let fd = conn.as_ref().expect("accepted").as_raw_fd();
                    match result {
                        Ok(0) => peer_done = true,
                        Ok(n) => {
                            received.extend_from_slice(ring.received());
                            assert_eq!(n, received.len(), "the event's length is what was read");
                            data_events += 1;
                            // Several frames per send: split what arrived in three.
                            let mut chunk = received.split().freeze();
                            let third = chunk.len() / 3;
                            pending.push(chunk.split_to(third));
                            pending.push(chunk.split_to(third));
                            pending.push(chunk);
                        }
                        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "{e}"),
                    }
                    if !more && !peer_done {
                        ring.recv_multishot(fd, CONN);
                    }
                }
                Event::Sent { result, frames, .. } => {
                    let written = result.expect("send");
                    sending = false;
                    let mut rest: Vec<Bytes> = Vec::new();
                    let mut skip = written;
                    for mut frame in frames {
                        if skip >= frame.len() {
                            skip -= frame.len();
                            continue;
                        }
                        rest.push(frame.split_off(skip));
                        skip = 0;
                    }
                    rest.append(&mut pending);
                    pending = rest;
                }
                Event::Woken => unreachable!("no wake-up armed"),
            }
        }
        if !sending && !pending.is_empty() {
            let fd = conn.as_ref().expect("accepted").as_raw_fd();
            ring.send(fd, CONN, std::mem::take(&mut pending));
            sending = true;
        }
        if peer_done && !sending && pending.is_empty() {
            return data_events;
        }
    }
}

#[test]
fn bytes_through_the_buffer_ring_and_sendmsg_come_back_unchanged() {
    // Tiny buffers: a 64 KiB write needs a thousand of them, so every buffer is recycled
    // many times (and a pool that runs dry, ENOBUFS, grows and is re-armed).
    let mut ring = Ring::new(RingConfig {
        entries: 64,
        recv_buffers: 512,
        recv_buffer_size: 64,
    })
    .expect("ring");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sent = pattern(1 << 20, 0x9E37_79B9_7F4A_7C15);
    let expected = sent.clone();
    let client = thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let reader = stream.try_clone().expect("clone");
        let echo = thread::spawn(move || {
            let mut back = Vec::new();
            let mut reader = reader;
            reader.read_to_end(&mut back).expect("read");
            back
        });
        let mut at = 0;
        for (i, size) in [1, 7, 64, 65, 4096, 65536].iter().cycle().enumerate() {
            if at == sent.len() {
                break;
            }
            let end = (at + size + i % 3).min(sent.len());
            stream.write_all(&sent[at..end]).expect("write");
            at = end;
        }
        stream.shutdown(std::net::Shutdown::Write).expect("fin");
        echo.join().expect("reader")
    });
    let events = echo_one(&mut ring, &listener);
    drop(ring);
    let back = client.join().expect("client");
    assert_eq!(back.len(), expected.len());
    assert!(back == expected, "echoed bytes differ from the bytes sent");
    assert!(
        events > 512,
        "every buffer was reused ({events} receive events)"
    );
}

#[test]
fn a_wake_from_another_thread_ends_the_wait() {
    let mut ring = Ring::new(RingConfig::default()).expect("ring");
    let wake = Arc::new(Wake::new().expect("eventfd"));
    ring.arm_wake(wake.as_raw_fd());
    let waker = wake.clone();
    let thread = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        waker.wake();
        waker.wake();
    });
    let mut woken = false;
    for _ in 0..100 {
        ring.submit_and_wait(Duration::from_secs(5)).expect("wait");
        if let Some(event) = ring.next_event() {
            assert!(matches!(event, Event::Woken), "{event:?}");
            woken = true;
            break;
        }
    }
    thread.join().expect("waker");
    assert!(woken, "the wake-up arrived");
}

/// A connected pair of TCP sockets: ours (for the ring) and the peer's.
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ours = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (peer, _) = listener.accept().expect("accept");
    (ours, peer)
}

/// Sends `count` small frames through `ring`, submitting `chunk` at a time and reaping
/// between chunks when asked; every send's completion comes back.
fn send_many(ring: &mut Ring, fd: i32, count: usize, chunk: usize, reap: bool) -> usize {
    let mut sent = 0;
    for i in 0..count {
        ring.send(fd, i as u64, vec![Bytes::from_static(b"x")]);
        if (i + 1) % chunk == 0 {
            ring.submit().expect("submit");
            if reap {
                ring.reap();
            }
        }
    }
    while sent < count {
        ring.submit_and_wait(Duration::from_secs(5)).expect("wait");
        while let Some(event) = ring.next_event() {
            match event {
                Event::Sent { result, .. } => {
                    assert_eq!(result.expect("send"), 1);
                    sent += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(ring.in_flight(), 0);
    sent
}

#[test]
fn a_burst_past_the_completion_queue_is_reaped_between_chunks_and_nothing_is_lost() {
    let config = RingConfig {
        entries: 8,
        recv_buffers: 1,
        recv_buffer_size: 64,
    };
    let (ours, peer) = pair();
    let fd = ours.as_raw_fd();
    // 200 completions through a queue of 32: taken out a chunk at a time, it never fills.
    let mut ring = Ring::new(config).expect("ring");
    assert_eq!(ring.completion_capacity(), 32);
    assert_eq!(send_many(&mut ring, fd, 200, 8, true), 200);
    assert_eq!(ring.overflows(), 0);
    // Without reaping, the kernel keeps the excess: an overflow, counted, nothing lost.
    let mut unreaped = Ring::new(config).expect("ring");
    assert_eq!(send_many(&mut unreaped, fd, 200, 8, false), 200);
    assert!(unreaped.overflows() > 0, "the queue overflowed");
    assert_eq!(unreaped.lost_completions(), 0);
    let mut got = vec![0u8; 400];
    let mut peer = peer;
    peer.read_exact(&mut got).expect("read");
    assert!(got.iter().all(|&b| b == b'x'));
}

#[test]
fn dropping_a_ring_cancels_what_is_in_flight_and_waits_for_it() {
    let (ours, peer) = pair();
    let fd = ours.as_raw_fd();
    // The peer reads nothing: after the kernel's buffers fill, a send waits.
    let big = Bytes::from(vec![7u8; 16 << 20]);
    let mut ring = Ring::new(RingConfig::default()).expect("ring");
    ring.recv_multishot(fd, 1);
    ring.send(fd, 2, vec![big]);
    let wake = Wake::new().expect("eventfd");
    ring.arm_wake(wake.as_raw_fd());
    ring.submit().expect("submit");
    assert_eq!(ring.in_flight(), 3);
    assert!(
        ring.shutdown(),
        "every operation completed after the cancel"
    );
    // What the receive would have read (into buffers now freed) stays with the socket,
    // and memory allocated since is untouched.
    let canary = vec![0xAAu8; 1 << 20];
    let mut peer = peer;
    peer.write_all(&pattern(4096, 1)).expect("write");
    let mut ours = ours;
    ours.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut back = vec![0u8; 4096];
    ours.read_exact(&mut back)
        .expect("the bytes are still the socket's");
    assert_eq!(back, pattern(4096, 1));
    assert!(canary.iter().all(|&b| b == 0xAA));
}
