//! How many WebSocket connections are open, in all and per client IP, and the [`Slot`] each
//! one holds until its session ends. The map keeps only IPs with open connections, so it is
//! never larger than the connection count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection gets no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The process holds `WS_MAX_CONNECTIONS`.
    Process,
    /// This IP holds `WS_MAX_CONNECTIONS_PER_IP`.
    Ip,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The open connections (0 as a cap: no cap).
#[derive(Debug)]
pub struct ConnectionSlots {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

impl ConnectionSlots {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            counts: Mutex::default(),
        })
    }

    /// A slot for a new connection of `ip` (a [`super::client_ip::limit_key`]), if both caps
    /// allow it.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        let mut counts = self.counts.lock().expect("slots lock");
        if self.max_total > 0 && counts.total >= self.max_total {
            return Err(Full::Process);
        }
        let of_ip = counts.per_ip.entry(ip).or_default();
        if self.max_per_ip > 0 && *of_ip >= self.max_per_ip {
            return Err(Full::Ip);
        }
        *of_ip += 1;
        counts.total += 1;
        Ok(Slot {
            slots: Arc::clone(self),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.counts.lock().expect("slots lock");
        counts.total -= 1;
        if let Some(of_ip) = counts.per_ip.get_mut(&ip) {
            *of_ip -= 1;
            if *of_ip == 0 {
                counts.per_ip.remove(&ip);
            }
        }
    }

    /// Open connections, in all and of `ip`.
    pub fn open(&self, ip: IpAddr) -> (usize, usize) {
        let counts = self.counts.lock().expect("slots lock");
        (
            counts.total,
            counts.per_ip.get(&ip).copied().unwrap_or_default(),
        )
    }

    /// Client IPs with open connections (the size of the per-IP map).
    pub fn ips(&self) -> usize {
        self.counts.lock().expect("slots lock").per_ip.len()
    }
}

/// One open connection's place; given back when dropped (its session ended).
#[derive(Debug)]
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn the_process_cap_refuses_past_it_and_a_closed_connection_frees_its_slot() {
        let slots = ConnectionSlots::new(3, 0);
        let mut held: Vec<Slot> = (1..=3).map(|i| slots.acquire(ip(i)).unwrap()).collect();
        assert_eq!(slots.acquire(ip(4)).unwrap_err(), Full::Process);
        held.pop();
        let again = slots.acquire(ip(4)).unwrap();
        assert_eq!(slots.open(ip(4)), (3, 1));
        drop(again);
        drop(held);
        assert_eq!(slots.open(ip(1)), (0, 0));
    }

    #[test]
    fn the_ip_cap_holds_one_ip_back_and_not_the_others() {
        let slots = ConnectionSlots::new(0, 2);
        let _a = slots.acquire(ip(1)).unwrap();
        let _b = slots.acquire(ip(1)).unwrap();
        assert_eq!(slots.acquire(ip(1)).unwrap_err(), Full::Ip);
        let _c = slots.acquire(ip(2)).unwrap();
        assert_eq!(slots.open(ip(1)), (3, 2));
    }

    #[test]
    fn ips_without_connections_leave_the_map() {
        let slots = ConnectionSlots::new(0, 0);
        let held: Vec<Slot> = (0..=255).map(|i| slots.acquire(ip(i)).unwrap()).collect();
        assert_eq!(slots.ips(), 256);
        drop(held);
        assert_eq!(slots.ips(), 0);
        // A refused connection leaves no entry behind either.
        let slots = ConnectionSlots::new(1, 0);
        let _held = slots.acquire(ip(1)).unwrap();
        assert_eq!(slots.acquire(ip(2)).unwrap_err(), Full::Process);
        assert_eq!(slots.ips(), 1);
    }
}
