//! Reading a topic's history from Redis, a page at a time: what came after an offset, at
//! most what the reader's send queue has room for, with the gap (if any) named.

use redis::aio::MultiplexedConnection;
use stratus_proto::Message;

use crate::broker::wire;
use crate::messages::{HistoryPage, HistoryRead};
use crate::model::offset::Offset;

/// A stream entry as Redis sends it: the id, and the fields and values (`m`, payload).
type RawEntry = (String, Vec<Vec<u8>>);

/// Most entries read for one page (a page is also cut to the reader's send-queue budget).
const PAGE: usize = 512;
/// Entries read for a recovery's first page, before their sizes are known.
const FIRST_PAGE: usize = 16;
/// What a replayed entry costs in the reader's send queue beyond its payload: its frame
/// header and offset notice, and two queue entries.
const REPLAY_ENTRY_COST: usize = 128 + 2 * stratus_uring::ENTRY_OVERHEAD;

/// One page of what came after `read.after` in `topic`'s history: at most [`PAGE`]
/// entries, and no more bytes than `read.budget` (but at least one entry), and at most
/// `limit` entries over the whole recovery. Redis trims the oldest entries first, so
/// while the entry at `after` is still there nothing after it was trimmed; once it is
/// gone, some may have been.
pub(crate) async fn fetch_history(
    conn: &mut MultiplexedConnection,
    topic: &str,
    read: HistoryRead,
    limit: usize,
) -> redis::RedisResult<HistoryPage> {
    let after = read.after;
    let key = wire::key(topic);
    // Sized so that what Redis sends is about the budget: a first page of a few entries,
    // then as many as the budget holds at the average seen.
    let wanted = match read.average {
        0 => FIRST_PAGE,
        average => read.budget / (average + REPLAY_ENTRY_COST),
    };
    let count = wanted
        .min(PAGE)
        .min(limit.saturating_sub(read.fetched))
        .max(1);
    let (entries, newest): (Vec<RawEntry>, Vec<RawEntry>) = redis::pipe()
        .cmd("XRANGE")
        .arg(&key)
        .arg(after.to_string())
        .arg("+")
        .arg("COUNT")
        .arg(count + 1)
        .cmd("XREVRANGE")
        .arg(&key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let mut entries: Vec<(Offset, Message)> = entries
        .into_iter()
        .filter_map(|(id, fields)| {
            let offset = Offset::parse(&id)?;
            let (&kind, body) = fields.get(1)?.split_first()?;
            Some((offset, wire::message(kind, body)?))
        })
        .collect();
    let Some(newest) = newest.first().and_then(|(id, _)| Offset::parse(id)) else {
        return Ok(HistoryPage::unavailable(
            "no history is kept for this topic any more",
        ));
    };
    if after > newest {
        return Ok(HistoryPage {
            entries: Vec::new(),
            gap: Some("the offset is newer than anything in the topic's history"),
            floor: newest,
            more: false,
        });
    }
    let mut gap = match entries.first() {
        Some((first, _)) if *first == after => {
            entries.remove(0);
            None
        }
        _ if read.fetched > 0 => Some("the history was trimmed while it was being replayed"),
        _ => Some("the history no longer reaches back to this offset"),
    };
    entries.truncate(count);
    let mut bytes = 0;
    let within_budget = entries
        .iter()
        .take_while(|(_, m)| {
            bytes += m.payload_len() + REPLAY_ENTRY_COST;
            bytes <= read.budget
        })
        .count();
    entries.truncate(within_budget.max(1));
    let mut more = entries.last().is_some_and(|(last, _)| *last < newest);
    if more && read.fetched + entries.len() >= limit {
        more = false;
        gap = Some("the history holds more than this node fetches (a larger --history elsewhere)");
    }
    Ok(HistoryPage {
        entries,
        gap,
        floor: after,
        more,
    })
}
