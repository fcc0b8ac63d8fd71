//! Ports for child processes and extra servers that a test starts and that bind later.
//!
//! `bind("127.0.0.1:0")` then close hands out a port from the kernel's ephemeral range, and that
//! range is also where every outgoing connection of the test run takes its source port (tens of
//! thousands of them: Kafka, PostgreSQL, Redis, WebSockets). Between the check and the child's
//! bind, such a connection can take the port, and the child fails with "Address already in
//! use". These ports come from below the ephemeral range instead (20000–32767 here, which sits
//! under Linux's default 32768–60999), are checked free, and are never handed out twice by one
//! process.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::sync::Mutex;

const LOW: u16 = 20_000;
const HIGH: u16 = 32_768;

static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free loopback port outside the ephemeral range.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `count` consecutive free loopback ports outside the ephemeral range (for a
/// server that takes PORT, PORT+1, …).
pub fn free_ports(count: u16) -> u16 {
    assert!((1..100).contains(&count), "between 1 and 99 ports");
    let seed = RandomState::new();
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for attempt in 0u64..10_000 {
        let span = u64::from(HIGH - LOW - count);
        let first = LOW + (seed.hash_one(attempt) % span) as u16;
        let ports = first..first + count;
        let usable = ports
            .clone()
            .all(|port| !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok());
        if usable {
            given.extend(ports);
            return first;
        }
    }
    panic!("no {count} consecutive free ports between {LOW} and {HIGH}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_outside_the_ephemeral_range_and_never_repeated() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let port = free_port();
            assert!((LOW..HIGH).contains(&port), "{port}");
            assert!(seen.insert(port), "{port} handed out twice");
        }
        let first = free_ports(4);
        for port in first..first + 4 {
            assert!(seen.insert(port), "{port} handed out twice");
            TcpListener::bind(("127.0.0.1", port)).expect("free");
        }
    }
}
