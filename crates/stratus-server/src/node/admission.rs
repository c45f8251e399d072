//! The caps on open WebSocket connections, overall and per client address: counted when
//! an upgrade is accepted, released when the connection goes. Shared by every worker (a
//! client's connections may land on any of them), so behind a lock, taken once per
//! connection, never per message.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Why an upgrade was refused for the connection caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverCap {
    /// The HTTP status: 503 for the overall cap, 429 for the address's.
    pub(crate) status: u16,
    /// Why, for the response and the log.
    pub(crate) reason: &'static str,
}

/// The address a per-address cap counts by: an IPv4 address, or an IPv6 address's /64
/// (one host, or one subscriber's network, may hold a whole /64).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// Open WebSocket connections per address (the count over all workers is the caller's:
/// the server's public counters hold it).
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Per address (kept only with a per-address cap).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    /// Counts a new WebSocket connection from `ip` against the caps (`max` over all
    /// workers, counted in `open`; `per_ip` for one address; 0 is no limit), or says
    /// which one it passes.
    pub(crate) fn admit(
        &self,
        open: &AtomicU64,
        ip: IpAddr,
        max: usize,
        per_ip: usize,
    ) -> Result<(), OverCap> {
        let count = open.fetch_add(1, Ordering::AcqRel) + 1;
        if max > 0 && count > max as u64 {
            open.fetch_sub(1, Ordering::AcqRel);
            return Err(OverCap {
                status: 503,
                reason: "the server is at its connection limit",
            });
        }
        if per_ip > 0 {
            let mut counts = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = counts.entry(address_key(ip)).or_insert(0);
            if *count >= per_ip {
                drop(counts);
                open.fetch_sub(1, Ordering::AcqRel);
                return Err(OverCap {
                    status: 429,
                    reason: "too many connections from this address",
                });
            }
            *count += 1;
        }
        Ok(())
    }

    /// Releases what [`Admission::admit`] counted.
    pub(crate) fn release(&self, open: &AtomicU64, ip: IpAddr, per_ip: usize) {
        open.fetch_sub(1, Ordering::AcqRel);
        if per_ip > 0 {
            let mut counts = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let key = address_key(ip);
            if let Some(count) = counts.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overall_and_the_per_address_caps() {
        let (admission, open) = (Admission::default(), AtomicU64::new(0));
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let admit = |ip| admission.admit(&open, ip, 3, 2).map_err(|e| e.status);
        assert!(admit(a).is_ok() && admit(a).is_ok());
        assert_eq!(admit(a), Err(429));
        assert!(admit(b).is_ok());
        assert_eq!(admit(b), Err(503));
        admission.release(&open, a, 2);
        assert!(admit(b).is_ok());
        assert_eq!(open.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn an_ipv6_64_counts_as_one_address() {
        let host = |low: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, low]);
        assert_eq!(address_key(host(1)), address_key(host(2)));
        assert_ne!(
            address_key(host(1)),
            address_key(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]))
        );
        let mapped = IpAddr::from(std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(address_key(mapped), IpAddr::from([10, 0, 0, 1]));
    }
}
