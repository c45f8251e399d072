//! The event-stream parser: the WHATWG "interpreting an event stream" rules, sans-IO, the
//! way `stratus_proto::Session` decodes frames. Bytes go in as they arrive, cut anywhere
//! (a line, a CRLF, the byte-order mark split over two reads); whole events come out.
//!
//! - Lines end with CRLF, LF or CR; a CR at the end of one read and an LF at the start of
//!   the next are one line end, not two.
//! - `field: value` (one space after the colon dropped), `field` alone (empty value),
//!   `: comment` (heartbeats) ignored; fields `event`, `data`, `id` (ignored when it
//!   holds NUL) and `retry` (ignored: nothing here reconnects); unknown fields ignored.
//! - A blank line dispatches the event: its `data:` lines joined with `\n`, its type from
//!   `event:` (`message` without one), the last `id:` seen on the stream so far. A blank
//!   line with no `data:` since the last dispatch dispatches nothing.
//! - A line, or an event's data, longer than the limit is an error: what a peer can make
//!   the parser hold is bounded.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

/// The UTF-8 byte-order mark, skipped once at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The type of an event without an `event:` field.
const MESSAGE: &[u8] = b"message";

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// Its type: the `event:` field, or `message`.
    pub(crate) kind: Bytes,
    /// The stream's last event id when it was dispatched (empty before any `id:`).
    pub(crate) id: Bytes,
    /// Its `data:` lines joined with `\n`.
    pub(crate) data: Bytes,
}

/// Why a stream cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum ParseError {
    /// A line ran past the limit without ending.
    LineTooLong {
        /// The limit, in bytes.
        limit: usize,
    },
    /// An event's data ran past the limit before the blank line that ends it.
    EventTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::LineTooLong { limit } => {
                write!(f, "an event-stream line longer than {limit} bytes")
            }
            ParseError::EventTooLarge { limit } => {
                write!(f, "an event's data longer than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// An event stream's parser state between reads.
#[derive(Debug)]
pub(crate) struct EventParser {
    /// Most bytes in a line, and in an event's data.
    limit: usize,
    /// The byte-order mark check is done.
    started: bool,
    /// The last line ended with CR: an LF next belongs to it.
    after_cr: bool,
    /// Bytes at the front of the buffer already searched for a line end.
    scanned: usize,
    /// The `event:` of the event being read.
    kind: Option<Bytes>,
    /// The last event type seen, reused while the stream repeats it (one topic).
    kind_seen: Bytes,
    /// The data lines so far, each followed by `\n`.
    data: BytesMut,
    /// A `data:` line was seen since the last dispatch.
    has_data: bool,
    /// The stream's last event id.
    last_id: Bytes,
}

impl EventParser {
    /// A parser for a new stream, holding at most `limit` bytes of a line or an event.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            started: false,
            after_cr: false,
            scanned: 0,
            kind: None,
            kind_seen: Bytes::new(),
            data: BytesMut::new(),
            has_data: false,
            last_id: Bytes::new(),
        }
    }

    /// Consumes whole lines from the front of `buf` (what has arrived and not been
    /// consumed yet) until an event is complete, and returns it; `Ok(None)` when `buf` holds
    /// no more whole lines (append what arrives next, and call again). Call until `Ok(None)`:
    /// one read may carry many events.
    pub(crate) fn handle_read(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ParseError> {
        loop {
            if !self.started {
                if buf.len() < BOM.len() && BOM.starts_with(buf) {
                    return Ok(None);
                }
                if buf.starts_with(BOM) {
                    buf.advance(BOM.len());
                }
                self.started = true;
            }
            if self.after_cr && !buf.is_empty() {
                if buf[0] == b'\n' {
                    buf.advance(1);
                }
                self.after_cr = false;
            }
            let from = self.scanned.min(buf.len());
            let Some(at) = buf[from..].iter().position(|&b| b == b'\n' || b == b'\r') else {
                if buf.len() > self.limit {
                    return Err(ParseError::LineTooLong { limit: self.limit });
                }
                self.scanned = buf.len();
                return Ok(None);
            };
            let end = from + at;
            if end > self.limit {
                return Err(ParseError::LineTooLong { limit: self.limit });
            }
            self.scanned = 0;
            self.after_cr = buf[end] == b'\r';
            let event = self.line(&buf[..end])?;
            buf.advance(end + 1);
            if event.is_some() {
                return Ok(event);
            }
        }
    }

    /// One line, without its line end; the event it completes, if any.
    fn line(&mut self, line: &[u8]) -> Result<Option<Event>, ParseError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return Ok(None), // a comment
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                if *value != *self.kind_seen {
                    self.kind_seen = Bytes::copy_from_slice(value);
                }
                self.kind = Some(self.kind_seen.clone());
            }
            b"data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(ParseError::EventTooLarge { limit: self.limit });
                }
                self.data.extend_from_slice(value);
                self.data.extend_from_slice(b"\n");
                self.has_data = true;
            }
            // An id with NUL is ignored; the same id again is kept without a copy.
            b"id" if !value.contains(&0) && *value != *self.last_id => {
                self.last_id = Bytes::copy_from_slice(value);
            }
            _ => {} // `retry`, and fields this parser does not know
        }
        Ok(None)
    }

    /// The blank line: the event read so far, if it had data; the event type is reset
    /// either way.
    fn dispatch(&mut self) -> Option<Event> {
        let kind = self.kind.take();
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        // Every data line was followed by `\n`: the last one goes.
        self.data.truncate(self.data.len().saturating_sub(1));
        Some(Event {
            kind: kind.unwrap_or_else(|| Bytes::from_static(MESSAGE)),
            id: self.last_id.clone(),
            data: self.data.split().freeze(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const LIMIT: usize = 1024;

    /// Feeds `chunks` one after another, as reads; every event, then the unconsumed rest.
    fn parse(chunks: &[&[u8]]) -> Result<(Vec<Event>, BytesMut), ParseError> {
        let mut parser = EventParser::new(LIMIT);
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(event) = parser.handle_read(&mut buf)? {
                events.push(event);
            }
        }
        Ok((events, buf))
    }

    fn event(kind: &str, id: &str, data: &str) -> Event {
        Event {
            kind: Bytes::copy_from_slice(kind.as_bytes()),
            id: Bytes::copy_from_slice(id.as_bytes()),
            data: Bytes::copy_from_slice(data.as_bytes()),
        }
    }

    /// A stream with every rule in it: the byte-order mark, all three line ends, comments,
    /// several data lines, ids that persist, no space after a colon, two spaces, a field
    /// without a colon, an event with no data, unknown fields.
    const STREAM: &[u8] = b"\xEF\xBB\xBF: heartbeat\n\n\
        event: news\nid: 1-0\ndata: {\"ts\":1,\"pad\":\"x\"}\n\n\
        event: news\r\ndata: one\r\ndata: two\r\n\r\n\
        data:no space\rdata:  two spaces\r\r\
        event: lone\n\n\
        data\nretry: 10\nfoo: bar\nid: 2-0\n\n\
        event: gap\nid: bad\0id\ndata: {}\n\n\
        data: tail without its blank line\n";

    fn expected() -> Vec<Event> {
        vec![
            event("news", "1-0", "{\"ts\":1,\"pad\":\"x\"}"),
            event("news", "1-0", "one\ntwo"),
            event("message", "1-0", "no space\n two spaces"),
            event("message", "2-0", ""),
            event("gap", "2-0", "{}"),
        ]
    }

    #[test]
    fn a_whole_stream_parses_to_its_events() {
        let (events, rest) = parse(&[STREAM]).unwrap();
        assert_eq!(events, expected());
        assert!(rest.is_empty(), "the unfinished event's line was consumed");
    }

    #[test]
    fn the_stream_cut_at_any_two_places_parses_the_same() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let (events, _) = parse(&[&STREAM[..i], &STREAM[i..j], &STREAM[j..]]).unwrap();
                assert_eq!(events, expected(), "cut at {i} and {j}");
            }
        }
    }

    #[test]
    fn the_stream_a_byte_at_a_time_parses_the_same() {
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse(&bytes).unwrap().0, expected());
    }

    #[test]
    fn crlf_split_over_two_reads_is_one_line_end() {
        let (events, _) = parse(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]).unwrap();
        assert_eq!(events, vec![event("message", "", "a\nb")]);
    }

    #[test]
    fn heartbeats_and_blank_lines_alone_dispatch_nothing() {
        let (events, rest) = parse(&[b": heartbeat\n\n: heartbeat\n\n\n\n"]).unwrap();
        assert!(events.is_empty());
        assert!(rest.is_empty());
    }

    #[test]
    fn the_event_type_resets_after_each_event() {
        let (events, _) =
            parse(&[b"event: t\ndata: 1\n\ndata: 2\n\nevent: t\n\ndata: 3\n\n"]).unwrap();
        let kinds: Vec<&[u8]> = events.iter().map(|e| &e.kind[..]).collect();
        assert_eq!(kinds, [&b"t"[..], b"message", b"message"]);
    }

    #[test]
    fn a_line_start_without_its_end_waits_for_more() {
        let mut parser = EventParser::new(LIMIT);
        let mut buf = BytesMut::from(&b"event: t\ndata: hal"[..]);
        assert_eq!(parser.handle_read(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"data: hal", "only whole lines are consumed");
        buf.extend_from_slice(b"f\n\n");
        assert_eq!(
            parser.handle_read(&mut buf),
            Ok(Some(event("t", "", "half")))
        );
    }

    #[test]
    fn a_line_past_the_limit_is_an_error_before_it_ends() {
        let mut parser = EventParser::new(16);
        let mut buf = BytesMut::from(&b"data: 0123456789"[..]);
        assert_eq!(
            parser.handle_read(&mut buf),
            Ok(None),
            "16 bytes: at the limit"
        );
        buf.extend_from_slice(b"a");
        assert_eq!(
            parser.handle_read(&mut buf),
            Err(ParseError::LineTooLong { limit: 16 })
        );
        let mut ended = BytesMut::from(&b"data: 0123456789abc\n\n"[..]);
        assert_eq!(
            EventParser::new(16).handle_read(&mut ended),
            Err(ParseError::LineTooLong { limit: 16 }),
            "a whole line past the limit, too"
        );
    }

    #[test]
    fn data_past_the_limit_over_many_lines_is_an_error() {
        let mut parser = EventParser::new(16);
        let mut buf = BytesMut::from(&b"data: 12345\ndata: 12345\ndata: 12345\n"[..]);
        assert_eq!(
            parser.handle_read(&mut buf),
            Err(ParseError::EventTooLarge { limit: 16 })
        );
    }
}
