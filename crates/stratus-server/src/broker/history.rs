//! Reading a topic's history from Redis, a page at a time (the page is cut as
//! `model::history` cuts every history's pages).

use redis::aio::MultiplexedConnection;

use crate::broker::wire;
use crate::messages::{HistoryPage, HistoryRead};
use crate::model::history::Extent;
use crate::model::offset::{Offset, Since};
use crate::model::publication::Publication;

/// A stream entry as Redis sends it: the id, and the fields and values (`m`, payload).
type RawEntry = (String, Vec<Vec<u8>>);

/// One page of `topic`'s history for `read`. Redis trims the oldest entries first, so
/// while the entry at the read's offset (or any older one) is still there nothing after
/// it was trimmed; once none is, some may have been (Redis does not say how far it
/// trimmed).
pub(crate) async fn fetch_history(
    conn: &mut MultiplexedConnection,
    keys: wire::Keyspace,
    topic: &str,
    read: HistoryRead,
) -> redis::RedisResult<HistoryPage> {
    let key = keys.key(topic);
    let mut pipe = redis::pipe();
    if let Since::After(after) = read.from {
        pipe.cmd("XRANGE")
            .arg(&key)
            .arg(after.to_string())
            .arg("+")
            .arg("COUNT")
            .arg(read.wanted() + 1);
    }
    pipe.cmd("XREVRANGE")
        .arg(&key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1);
    let mut replies: Vec<Vec<RawEntry>> = pipe.query_async(conn).await?;
    let newest = replies
        .pop()
        .and_then(|newest| newest.first().and_then(|(id, _)| Offset::parse(id)));
    let entries: Vec<(Offset, Publication)> = replies
        .pop()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(id, fields)| Some((Offset::parse(&id)?, wire::publication(fields.get(1)?)?)))
        .collect();
    // The read's own entry gone (or never one: an event stream's shared resume point):
    // an entry kept at or before it says nothing after it was trimmed. A second round
    // trip, only then.
    let mut oldest = None;
    if let Since::After(after) = read.from
        && entries.first().is_none_or(|(first, _)| *first != after)
    {
        let before: Vec<RawEntry> = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg(after.to_string())
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        oldest = before.first().and_then(|(id, _)| Offset::parse(id));
    }
    let extent = Extent {
        newest,
        removed_up_to: None,
        oldest,
    };
    Ok(HistoryPage::cut(&read, entries, extent))
}
