//! A worker's connections, looked up by [`ConnId`] (a stale id finds nothing), and the
//! ones this turn changed. Marking happens here, on access: every way to change a
//! connection ([`Conns::get`], [`Conns::update_all`]) queues it for the end-of-turn
//! settle, so no call site can forget to.
//!
//! Each connection is boxed on its own, and its box is most of what an idle connection
//! costs: the size test below holds it to mimalloc's 224-byte size class (the README's
//! "Memory per idle connection" counts on it).

use slab::Slab;

use crate::connection::{Client, Conn};
use crate::model::conn_id::ConnId;
use crate::worker::pubsub::Clients;

/// One worker's connections.
#[derive(Default)]
pub(crate) struct Conns {
    /// Boxed: the slab grows by doubling, and a doubled array of whole connections
    /// leaves the old one behind in the allocator (measured: about 450 B per connection
    /// of resident memory after a burst of connects); an array of pointers leaves 16 B.
    slab: Slab<Box<Conn>>,
    /// Connections changed this turn, settled at its end.
    dirty: Vec<ConnId>,
    /// Counts the connections ever made, for their ids.
    generation: u64,
}

impl Conns {
    /// The id the next connection inserted gets.
    pub(crate) fn next_id(&mut self) -> ConnId {
        self.generation += 1;
        ConnId::new(self.slab.vacant_key(), self.generation)
    }

    /// Adds `conn`, made with the id [`Conns::next_id`] gave, and queues it for the
    /// settle (which arms its receive).
    pub(crate) fn insert(&mut self, conn: Conn) {
        let id = conn.id();
        debug_assert_eq!(id.slot(), self.slab.vacant_key());
        let mut conn = Box::new(conn);
        conn.queue_settle();
        self.slab.insert(conn);
        self.dirty.push(id);
    }

    /// Connection `id`, queued for the settle.
    pub(crate) fn get(&mut self, id: ConnId) -> Option<&mut Conn> {
        let conn = self.slab.get_mut(id.slot()).filter(|c| c.id() == id)?;
        if conn.queue_settle() {
            self.dirty.push(id);
        }
        Some(conn)
    }

    /// Connection `id`, to look at.
    pub(crate) fn peek(&self, id: ConnId) -> Option<&Conn> {
        self.slab
            .get(id.slot())
            .map(|c| &**c)
            .filter(|c| c.id() == id)
    }

    /// Connection `id`, being settled: no longer queued (a change from here on queues it
    /// again, through [`Conns::get`]).
    pub(crate) fn settling(&mut self, id: ConnId) -> Option<&mut Conn> {
        let conn = self.slab.get_mut(id.slot()).filter(|c| c.id() == id)?;
        conn.unqueue_settle();
        Some(conn)
    }

    /// Runs `update` over every connection; those it returns `true` for (it changed them)
    /// are queued for the settle.
    pub(crate) fn update_all(&mut self, mut update: impl FnMut(&mut Conn) -> bool) {
        for (_, conn) in self.slab.iter_mut() {
            if update(conn) && conn.queue_settle() {
                self.dirty.push(conn.id());
            }
        }
    }

    /// Takes connection `id` out of the table.
    pub(crate) fn remove(&mut self, id: ConnId) -> Option<Conn> {
        self.peek(id)?;
        Some(*self.slab.remove(id.slot()))
    }

    /// The ids of every connection.
    pub(crate) fn ids(&self) -> Vec<ConnId> {
        self.slab.iter().map(|(_, c)| c.id()).collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Whether connections wait to be settled.
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The connections to settle, in the order they were changed; give the vector back
    /// with [`Conns::reuse_dirty`] (its allocation is kept).
    pub(crate) fn take_dirty(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.dirty)
    }

    /// Gives back the vector [`Conns::take_dirty`] returned, settled; kept if no
    /// connection was queued meanwhile.
    pub(crate) fn reuse_dirty(&mut self, mut settled: Vec<ConnId>) {
        if self.dirty.is_empty() {
            settled.clear();
            self.dirty = settled;
        }
    }
}

impl Clients for Conns {
    /// A connection shut down (its slot not yet freed) takes nothing more.
    fn client(&mut self, id: ConnId) -> Option<&mut Client> {
        self.get(id).filter(|c| !c.is_dead()).map(Conn::client_mut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::loopback_conn;

    #[test]
    fn a_change_marks_once_and_a_stale_or_dead_connection_takes_nothing() {
        let mut conns = Conns::default();
        let id = conns.next_id();
        let (conn, _peer) = loopback_conn(id);
        conns.insert(conn);
        assert_eq!(
            conns.take_dirty(),
            [id],
            "a new connection is settled (its receive armed)"
        );
        assert!(conns.settling(id).is_some());
        assert!(conns.client(id).is_some());
        assert!(conns.get(id).is_some());
        assert_eq!(
            conns.take_dirty(),
            [id],
            "marked once however often it is reached"
        );
        let stale = ConnId::new(id.slot(), 999);
        assert!(conns.client(stale).is_none() && conns.peek(stale).is_none());
        assert!(!conns.has_dirty(), "a stale id marks nothing");
        conns.settling(id).map(Conn::kill);
        assert!(
            conns.client(id).is_none(),
            "shut down: no more broadcasts or replies"
        );
        assert!(conns.remove(stale).is_none());
        assert!(conns.remove(id).is_some() && conns.is_empty());
    }

    /// An idle connection is its box plus its subscriptions: keep the box in mimalloc's
    /// 224-byte size class (the next is 256; it was 512), which the README's memory per
    /// idle connection counts on. Cold state goes behind a pointer, not in here.
    #[test]
    fn a_connection_fits_in_the_224_byte_size_class() {
        assert!(
            size_of::<Conn>() <= 224,
            "a connection is {} bytes",
            size_of::<Conn>()
        );
    }
}
