//! Admission control: who the client is (its IP, through trusted proxies only) and how many connections it and everyone may hold.
//!
//! A flood of connections must not take the process down (file descriptors,
//! memory), and one address must not crowd everyone else out. Each accepted
//! WebSocket holds a `Permit` for its whole life; dropping it frees the slot.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds `--max-connections` already.
    ServerFull,
    /// This address holds `--max-connections-per-ip` already.
    TooManyFromAddress,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted connection; frees its slot when dropped.
pub struct Permit {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl Admission {
    /// `0` means no limit, for either number.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Admission {
            max_total,
            max_per_ip,
            counts: Arc::default(),
        }
    }

    pub fn try_admit(&self, ip: IpAddr) -> Result<Permit, Refusal> {
        let mut counts = lock(&self.counts);
        if self.max_total > 0 && counts.total >= self.max_total {
            return Err(Refusal::ServerFull);
        }
        let held = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if self.max_per_ip > 0 && held >= self.max_per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        counts.total += 1;
        counts.per_ip.insert(ip, held + 1);
        Ok(Permit {
            ip,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.per_ip.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

fn lock(counts: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    // Each critical section is a couple of integer updates; a poisoned lock
    // still holds consistent counts.
    counts.lock().unwrap_or_else(|e| e.into_inner())
}

/// The client's address. `X-Forwarded-For` is believed only when the TCP
/// peer is a trusted proxy (anyone else could write anything there); then
/// the client is the rightmost address in the header that is not itself a
/// trusted proxy, since each proxy appends the address it received from.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|part| part.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .collect();
    forwarded
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(forwarded.first())
        .copied()
        .unwrap_or(peer)
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) is the same client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", xff.parse().unwrap());
        headers
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn forwarded_for_is_ignored_from_an_untrusted_peer() {
        let trusted: Vec<IpNet> = vec!["10.0.0.1/32".parse().unwrap()];
        let ip = client_ip(peer("203.0.113.9"), &headers("198.51.100.7"), &trusted);
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_for_names_the_client_behind_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let forged_then_real = headers("1.2.3.4, 198.51.100.7, 10.0.0.2");
        let ip = client_ip(peer("10.0.0.1"), &forged_then_real, &trusted);
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_trusted_peer_without_the_header_is_the_client() {
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let ip = client_ip(peer("127.0.0.1"), &HeaderMap::new(), &trusted);
        assert_eq!(ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn permits_count_per_address_and_in_total() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = admission.try_admit(a).unwrap();
        let _second = admission.try_admit(a).unwrap();
        assert_eq!(
            admission.try_admit(a).err(),
            Some(Refusal::TooManyFromAddress)
        );
        let _third = admission.try_admit(b).unwrap();
        assert_eq!(admission.try_admit(b).err(), Some(Refusal::ServerFull));
        drop(first);
        assert!(admission.try_admit(a).is_ok());
    }
}
