//! How a worker names a connection: [`ConnId`], its slot in the worker's table and that
//! slot's generation. A ring operation carries it, the topic table and the subscribe
//! replies waiting for the broker key on it, and a history read carries it to the broker
//! and back; a stale id (its connection gone, the slot reused) finds nothing.

/// Names a connection in its worker: its slot and the slot's generation. Fits the 56
/// bits a ring operation carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnId(u64);

impl ConnId {
    /// A placeholder where no connection is meant (a read answered to its caller).
    pub(crate) const NONE: Self = Self(0);

    /// The id of slot `slot` in its `generation`.
    pub(crate) fn new(slot: usize, generation: u64) -> Self {
        Self((generation & 0xFF_FFFF) << 32 | slot as u64)
    }

    /// The id a ring operation carried.
    pub(crate) fn from_token(token: u64) -> Self {
        Self(token)
    }

    /// As a ring operation's token.
    pub(crate) fn token(self) -> u64 {
        self.0
    }

    /// The slot in the worker's table.
    pub(crate) fn slot(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_keeps_its_slot_and_generation() {
        let id = ConnId::new(7, 3);
        assert_eq!(id.slot(), 7);
        assert_eq!(ConnId::from_token(id.token()), id);
        assert_ne!(
            ConnId::new(7, 4),
            id,
            "the slot reused is another connection"
        );
    }
}
