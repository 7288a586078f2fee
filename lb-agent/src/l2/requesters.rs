//! The requesters of active-active VIPs seen by the AF_PACKET responder: what the XDP program
//! keeps in its `clients` LRU map, kept here for interfaces without XDP, so that a node taking
//! over slots tells those clients too. Bounded like the map ([`MAX_CLIENTS`]): when full, the
//! least recently heard eighth goes. Not pinned: these records do not survive a restart.
use std::collections::HashMap;

use lb_common::{ClientKey, ClientValue, MAX_CLIENTS};

use super::maps::{Client, key_addr};

#[derive(Debug)]
pub struct Requesters {
    heard: HashMap<ClientKey, (ClientValue, u64)>,
    clock: u64,
    capacity: usize,
}

impl Default for Requesters {
    fn default() -> Self {
        Self::with_capacity(MAX_CLIENTS as usize)
    }
}

impl Requesters {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            heard: HashMap::new(),
            clock: 0,
            capacity: capacity.max(8),
        }
    }

    /// Notes that `key` was heard just now, from `value`.
    pub fn record(&mut self, key: ClientKey, value: ClientValue) {
        self.clock += 1;
        self.heard.insert(key, (value, self.clock));
        if self.heard.len() > self.capacity {
            let mut ages: Vec<u64> = self.heard.values().map(|(_, t)| *t).collect();
            let cut = ages.len() / 8;
            let (_, oldest_kept, _) = ages.select_nth_unstable(cut);
            let oldest_kept = *oldest_kept;
            self.heard.retain(|_, (_, t)| *t >= oldest_kept);
        }
    }

    pub fn len(&self) -> usize {
        self.heard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heard.is_empty()
    }

    /// Every recorded requester, as the XDP map's are listed.
    pub fn clients(&self) -> Vec<Client> {
        self.heard
            .iter()
            .map(|(k, (v, _))| Client {
                vip: key_addr(&k.vip),
                addr: key_addr(&k.client),
                mac: v.mac,
                ifindex: v.ifindex,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use lb_common::VipStatsKey;

    use super::*;

    fn key(client: u8) -> ClientKey {
        ClientKey {
            vip: VipStatsKey::v4([192, 0, 2, 10]).addr,
            client: VipStatsKey::v4([10, 0, 0, client]).addr,
        }
    }

    fn value(mac: u8) -> ClientValue {
        ClientValue {
            mac: [2, 0, 0, 0, 0, mac],
            _pad: [0; 2],
            ifindex: 3,
        }
    }

    fn addrs(r: &Requesters) -> Vec<String> {
        r.clients().iter().map(|c| c.addr.to_string()).collect()
    }

    #[test]
    fn the_latest_source_of_a_requester_wins_and_the_oldest_go_when_full() {
        let mut r = Requesters::with_capacity(16);
        r.record(key(1), value(1));
        r.record(key(1), value(9));
        assert_eq!(r.len(), 1);
        assert_eq!(r.clients()[0].mac, [2, 0, 0, 0, 0, 9]);
        assert_eq!(r.clients()[0].addr.to_string(), "10.0.0.1");
        assert_eq!(r.clients()[0].vip.to_string(), "192.0.2.10");
        // 17 requesters in 16 places: the two heard longest ago go.
        for c in 2..=17 {
            r.record(key(c), value(c));
        }
        assert_eq!(r.len(), 15);
        assert!(!addrs(&r).contains(&"10.0.0.1".to_owned()));
        assert!(!addrs(&r).contains(&"10.0.0.2".to_owned()));
        assert!(addrs(&r).contains(&"10.0.0.17".to_owned()));
        // Hearing a requester again keeps it past older ones.
        r.record(key(3), value(3));
        r.record(key(18), value(18));
        r.record(key(19), value(19));
        assert!(
            addrs(&r).contains(&"10.0.0.3".to_owned()),
            "{:?}",
            addrs(&r)
        );
        assert!(
            !addrs(&r).contains(&"10.0.0.4".to_owned()),
            "{:?}",
            addrs(&r)
        );
        assert!(r.len() <= 16);
    }
}
