//! The requesters of active-active VIPs seen by the AF_PACKET responder: what the XDP program
//! keeps in its `clients` LRU map, kept here for interfaces without XDP, so that a node taking
//! over slots tells those clients too. Bounded like the map ([`MAX_CLIENTS`]): when full, the
//! least recently heard eighth goes; new or changed records come at most at the program's
//! rate ([`admit_client_record`]). Not pinned: these records do not survive a restart.
use std::collections::HashMap;

use lb_common::{ClientKey, ClientValue, MAX_CLIENTS, admit_client_record};

use super::maps::{Client, key_addr};

#[derive(Debug)]
pub struct Requesters {
    heard: HashMap<ClientKey, (ClientValue, u64)>,
    clock: u64,
    capacity: usize,
    budget: u64,
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
            budget: 0,
        }
    }

    /// Notes that `key` was heard at `now` (monotonic ns), from `value`; false when a new or
    /// changed record was over the rate and left out.
    pub fn record(&mut self, key: ClientKey, value: ClientValue, now: u64) -> bool {
        self.clock += 1;
        match self.heard.get_mut(&key) {
            Some((known, heard)) if *known == value => {
                *heard = self.clock;
                return true;
            }
            _ => match admit_client_record(self.budget, now) {
                Some(budget) => self.budget = budget,
                None => return false,
            },
        }
        self.heard.insert(key, (value, self.clock));
        if self.heard.len() > self.capacity {
            let mut ages: Vec<u64> = self.heard.values().map(|(_, t)| *t).collect();
            let cut = ages.len() / 8;
            let (_, oldest_kept, _) = ages.select_nth_unstable(cut);
            let oldest_kept = *oldest_kept;
            self.heard.retain(|_, (_, t)| *t >= oldest_kept);
        }
        true
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
    use lb_common::{CLIENT_RECORDS_BURST, CLIENT_RECORDS_PER_SEC, VipStatsKey};

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn key(client: u32) -> ClientKey {
        let b = client.to_be_bytes();
        ClientKey {
            vip: VipStatsKey::v4([192, 0, 2, 10]).addr,
            client: VipStatsKey::v4([10, b[1], b[2], b[3]]).addr,
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
        // One second apart: the rate never refuses here.
        let mut now = 0;
        let mut record = |r: &mut Requesters, c: u32, mac: u8| {
            now += SECOND;
            assert!(r.record(key(c), value(mac), now));
        };
        record(&mut r, 1, 1);
        record(&mut r, 1, 9);
        assert_eq!(r.len(), 1);
        assert_eq!(r.clients()[0].mac, [2, 0, 0, 0, 0, 9]);
        assert_eq!(r.clients()[0].addr.to_string(), "10.0.0.1");
        assert_eq!(r.clients()[0].vip.to_string(), "192.0.2.10");
        // 17 requesters in 16 places: the two heard longest ago go.
        for c in 2..=17 {
            record(&mut r, c, c as u8);
        }
        assert_eq!(r.len(), 15);
        assert!(!addrs(&r).contains(&"10.0.0.1".to_owned()));
        assert!(!addrs(&r).contains(&"10.0.0.2".to_owned()));
        assert!(addrs(&r).contains(&"10.0.0.17".to_owned()));
        // Hearing a requester again keeps it past older ones.
        record(&mut r, 3, 3);
        record(&mut r, 18, 18);
        record(&mut r, 19, 19);
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

    /// The review's eviction attack: random senders at line rate. Known clients asking again
    /// stay; the flood gets the burst and then the rate, and a forged change of a known
    /// client's MAC spends the same budget.
    #[test]
    fn a_flood_of_new_senders_is_held_to_the_rate_and_known_clients_stay() {
        let mut r = Requesters::with_capacity(1024);
        for c in 0..100 {
            assert!(r.record(key(c), value(1), c as u64 * SECOND / 100));
        }
        let start = 10 * SECOND;
        let mut admitted = 0;
        for i in 0..100_000u32 {
            let now = start + u64::from(i) * 10_000; // 100,000 in one second
            admitted += u64::from(r.record(key(1_000 + i), value(2), now));
            if i % 1_000 == 0 {
                for c in 0..100 {
                    assert!(r.record(key(c), value(1), now), "a known client refused");
                }
            }
        }
        assert!(
            (CLIENT_RECORDS_BURST..=CLIENT_RECORDS_BURST + CLIENT_RECORDS_PER_SEC + 1)
                .contains(&admitted),
            "{admitted}"
        );
        assert!(r.len() <= 1024);
        let kept = (0..100u32)
            .filter(|c| addrs(&r).contains(&format!("10.0.0.{c}")))
            .count();
        assert_eq!(kept, 100, "known clients were evicted");
        // The budget is spent: a forged MAC for a known client is refused too.
        assert!(!r.record(key(5), value(66), start + SECOND - 1));
        assert!(
            r.clients()
                .iter()
                .any(|c| c.addr.to_string() == "10.0.0.5" && c.mac == [2, 0, 0, 0, 0, 1])
        );
    }
}
