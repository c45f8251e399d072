//! Sockets that have not finished the WebSocket upgrade: reading their request (or their
//! TLS handshake), or answered and closing. None of them is counted by the connection
//! caps, which apply from the upgrade on, yet each holds a descriptor: idle sockets by
//! the thousand could take every descriptor the process has, and real clients' accepts
//! would fail. So each worker counts its own, caps them overall and per client address,
//! and sheds the oldest when a new one comes past the overall cap (the oldest are the
//! likeliest to be idle: a real client finishes its upgrade in a round trip or two). A
//! new socket from an address past its own cap is closed at once instead.
//!
//! A plain value: the worker tells it what arrives and what finishes, and it says which
//! socket to shed; the worker does the closing.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use crate::model::conn_id::ConnId;
use crate::node::admission::address_key;

/// One worker's sockets that have not finished the upgrade.
#[derive(Debug)]
pub(crate) struct Unupgraded {
    /// Sockets in arrival order; some may have finished since (skipped when shedding,
    /// dropped when the queue is compacted).
    order: VecDeque<ConnId>,
    per_ip: HashMap<IpAddr, u32>,
    live: usize,
    cap: usize,
    per_ip_cap: u32,
}

/// A new socket from an address that already has its share of sockets mid-upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverIpCap;

impl Unupgraded {
    /// At most `cap` sockets mid-upgrade, `per_ip_cap` from one address (0: no limit).
    pub(crate) fn new(cap: usize, per_ip_cap: usize) -> Self {
        Self {
            order: VecDeque::new(),
            per_ip: HashMap::new(),
            live: 0,
            cap: if cap == 0 { usize::MAX } else { cap },
            per_ip_cap: if per_ip_cap == 0 {
                u32::MAX
            } else {
                u32::try_from(per_ip_cap).unwrap_or(u32::MAX)
            },
        }
    }

    /// Counts socket `conn` from `ip`, or refuses it for its address's cap.
    pub(crate) fn admit(&mut self, conn: ConnId, ip: IpAddr) -> Result<(), OverIpCap> {
        let count = self.per_ip.entry(address_key(ip)).or_insert(0);
        if *count >= self.per_ip_cap {
            return Err(OverIpCap);
        }
        *count += 1;
        self.live += 1;
        self.order.push_back(conn);
        Ok(())
    }

    /// A socket from `ip` finished its upgrade, or closed, or was shed.
    pub(crate) fn finished(&mut self, ip: IpAddr) {
        self.live = self.live.saturating_sub(1);
        let key = address_key(ip);
        if let Some(count) = self.per_ip.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&key);
            }
        }
    }

    /// The oldest socket to shed while more than the cap are mid-upgrade: the first of
    /// the arrival order that `is_live` still says is mid-upgrade. The caller closes it
    /// and reports it [`finished`](Self::finished).
    pub(crate) fn shed(&mut self, mut is_live: impl FnMut(ConnId) -> bool) -> Option<ConnId> {
        if self.live <= self.cap {
            return None;
        }
        while let Some(conn) = self.order.pop_front() {
            if is_live(conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Drops finished sockets from the arrival order once they outnumber the live ones,
    /// so the order stays proportionate to what is mid-upgrade.
    pub(crate) fn compact(&mut self, mut is_live: impl FnMut(ConnId) -> bool) {
        if self.order.len() > 2 * self.live + 1024 {
            self.order.retain(|&t| is_live(t));
        }
    }

    /// Sockets mid-upgrade now.
    pub(crate) fn len(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn c(n: u64) -> ConnId {
        ConnId::from_token(n)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn an_address_past_its_cap_is_refused_and_others_are_not() {
        let mut un = Unupgraded::new(0, 2);
        assert!(un.admit(c(1), ip(1)).is_ok() && un.admit(c(2), ip(1)).is_ok());
        assert_eq!(un.admit(c(3), ip(1)), Err(OverIpCap));
        assert!(un.admit(c(4), ip(2)).is_ok());
        un.finished(ip(1));
        assert!(
            un.admit(c(5), ip(1)).is_ok(),
            "room again once one finishes"
        );
        assert_eq!(un.len(), 3);
    }

    #[test]
    fn an_ipv6_64_counts_as_one_address() {
        let mut un = Unupgraded::new(0, 2);
        let host = |low: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, low]);
        assert!(un.admit(c(1), host(1)).is_ok() && un.admit(c(2), host(2)).is_ok());
        assert_eq!(un.admit(c(3), host(3)), Err(OverIpCap), "the same /64");
        assert!(
            un.admit(c(4), IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]))
                .is_ok()
        );
        un.finished(host(2));
        assert!(un.admit(c(5), host(5)).is_ok());
    }

    #[test]
    fn past_the_cap_the_oldest_still_mid_upgrade_is_shed() {
        let mut un = Unupgraded::new(3, 0);
        let mut live: HashSet<ConnId> = HashSet::new();
        for token in 1..=3 {
            un.admit(c(token), ip(1)).unwrap();
            live.insert(c(token));
        }
        assert_eq!(
            un.shed(|t| live.contains(&t)),
            None,
            "at the cap, not past it"
        );
        // The oldest upgraded meanwhile: it is not shed; the next oldest is.
        live.remove(&c(1));
        un.finished(ip(1));
        un.admit(c(4), ip(1)).unwrap();
        live.insert(c(4));
        un.admit(c(5), ip(1)).unwrap();
        live.insert(c(5));
        let shed = un.shed(|t| live.contains(&t));
        assert_eq!(shed, Some(c(2)));
        live.remove(&c(2));
        un.finished(ip(1));
        assert_eq!(un.shed(|t| live.contains(&t)), None);
        assert_eq!(un.len(), 3);
    }

    #[test]
    fn the_arrival_order_is_compacted_as_sockets_finish() {
        let mut un = Unupgraded::new(0, 0);
        for token in 0..5000 {
            un.admit(c(token), ip(1)).unwrap();
            un.finished(ip(1));
        }
        un.admit(c(5000), ip(1)).unwrap();
        un.compact(|t| t == c(5000));
        assert_eq!(un.order.len(), 1);
        assert!(un.per_ip.len() == 1 && un.len() == 1);
    }
}
