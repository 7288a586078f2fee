//! Many clients on the lab's segment, each a namespace of its own with its own neighbour
//! table: what active-active Layer 2 spreads over the nodes, seen the way a client sees it
//! (the kernel's resolution of the VIP, not a test tool's).
use std::{
    io::{BufRead, BufReader},
    net::IpAddr,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_agent::{election::slots::SlotTable, l2::maps::addr_key};
use lb_common::requester_slot;

use crate::harness::lab::{Host, Lab};

/// The last octet (IPv4) / last group (IPv6, hex) of the first client.
pub const FIRST: u8 = 160;

pub struct Fleet {
    pub hosts: Vec<Host>,
}

/// The `lladdr` of `addr` in `ip neigh show` output, when the entry has one.
fn lladdr(out: &str, addr: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        if words.next()? != addr {
            return None;
        }
        let mut rest = words.skip_while(|w| *w != "lladdr");
        rest.next()?;
        rest.next().map(str::to_lowercase)
    })
}

/// Seconds since midnight (UTC) of an `ip -ts` stamp: `[2026-12-02T21:03:00.517823]`.
fn stamp_seconds(line: &str) -> Option<f64> {
    let stamp = line.strip_prefix('[')?.split(']').next()?;
    let time = stamp.split('T').nth(1)?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn seconds_of_day(t: SystemTime) -> f64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

impl Fleet {
    /// `n` clients (at most 90) at 10.210.0.160.. and fd00:210::a0.., on bridge ports p100...
    pub fn attach(lab: &Lab, tag: &str, n: usize) -> Self {
        assert!(n <= 90, "the lab's /24 has room for 90 clients");
        let hosts = (0..n)
            .map(|i| lab.attach(&format!("{tag}c{i}"), 100 + i, FIRST + i as u8))
            .collect();
        Self { hosts }
    }

    /// The node each client's requests for `vip` belong to, by the agents' slot table over
    /// `nodes` and the XDP program's requester hash: where active-active must send it.
    pub fn owners(&self, vip: &str, nodes: &[&str]) -> Vec<String> {
        let table = SlotTable::new(nodes);
        let vip: IpAddr = vip.parse().expect("a VIP address");
        self.hosts
            .iter()
            .map(|h| {
                let client: IpAddr = if vip.is_ipv4() { &h.ipv4 } else { &h.ipv6 }
                    .parse()
                    .expect("a client address");
                let slot = requester_slot(&addr_key(vip).addr, &addr_key(client).addr);
                table.owner(slot).expect("a node for every slot").to_owned()
            })
            .collect()
    }

    /// Client `i` pings `vip` once (its kernel resolves it first); returns the MAC its
    /// neighbour table then holds for the VIP.
    pub fn resolve(&self, i: usize, vip: &str) -> Option<String> {
        let family = if vip.contains(':') { "-6" } else { "-4" };
        let _ = self.hosts[i]
            .ns
            .exec("ping")
            .args([family, "-c", "1", "-W", "1", vip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.neighbor(i, vip)
    }

    /// The MAC client `i`'s neighbour table holds for `addr`, if any.
    pub fn neighbor(&self, i: usize, addr: &str) -> Option<String> {
        let family = if addr.contains(':') { "-6" } else { "-4" };
        let out = self.hosts[i]
            .ns
            .exec("ip")
            .args([family, "neigh", "show", "to", addr])
            .output()
            .ok()?;
        lladdr(&String::from_utf8_lossy(&out.stdout), addr)
    }

    /// Starts recording the neighbour-table changes of the `clients` (`ip -ts monitor
    /// neigh`, stamped by the kernel event's arrival, not by a poll); returns once every
    /// monitor has seen a marker entry, so none can miss what follows.
    pub fn watch(&self, clients: &[usize]) -> Watch {
        let mut watched = Vec::new();
        for &i in clients {
            let mut child = self.hosts[i]
                .ns
                .enter("ip")
                .args(["-ts", "monitor", "neigh"])
                .env("TZ", "UTC")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start ip monitor");
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            let stdout = child.stdout.take().expect("piped stdout");
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(mut l) = sink.lock() {
                        l.push(line);
                    }
                }
            });
            watched.push(Watched {
                client: i,
                child,
                reader: Some(reader),
                lines,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for round in 0u8.. {
            // A new MAC each round: rewriting the same entry is no event.
            let mac = format!("02:00:00:00:00:{round:02x}");
            for w in &watched {
                self.hosts[w.client].ns.ip(&[
                    "neigh", "replace", MARKER, "lladdr", &mac, "dev", "eth0", "nud", "stale",
                ]);
            }
            std::thread::sleep(Duration::from_millis(50));
            let seen = |w: &Watched| {
                w.lines
                    .lock()
                    .map(|l| l.iter().any(|x| x.contains(MARKER)))
                    .unwrap_or(false)
            };
            if watched.iter().all(seen) {
                break;
            }
            assert!(Instant::now() < deadline, "ip monitor did not start");
        }
        Watch { watched }
    }
}

/// A neighbour entry written only to see that a monitor runs.
const MARKER: &str = "10.210.0.254";

struct Watched {
    client: usize,
    child: Child,
    reader: Option<std::thread::JoinHandle<()>>,
    lines: Arc<Mutex<Vec<String>>>,
}

/// Running `ip monitor neigh` processes, one per watched client.
pub struct Watch {
    watched: Vec<Watched>,
}

impl Watch {
    /// Stops the monitors; returns each watched client's lines.
    pub fn stop(mut self) -> Vec<(usize, Vec<String>)> {
        std::mem::take(&mut self.watched)
            .into_iter()
            .map(|mut w| {
                let _ = w.child.kill();
                let _ = w.child.wait();
                if let Some(r) = w.reader.take() {
                    let _ = r.join();
                }
                let lines = w.lines.lock().map(|l| l.clone()).unwrap_or_default();
                (w.client, lines)
            })
            .collect()
    }
}

/// The MACs a watched client's entry for `addr` took, in order, each with how long after
/// `since` it did.
pub fn changes(lines: &[String], addr: &str, since: SystemTime) -> Vec<(Duration, String)> {
    let start = seconds_of_day(since);
    lines
        .iter()
        .filter_map(|l| {
            let mac = lladdr(l.split("] ").nth(1)?, addr)?;
            // Midnight in between: the difference wraps.
            let d = (stamp_seconds(l)? - start).rem_euclid(86_400.0);
            Some((Duration::from_secs_f64(d), mac))
        })
        .collect()
}

impl Drop for Watch {
    fn drop(&mut self) {
        for w in &mut self.watched {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_lines_and_stamps_parse() {
        let out =
            "10.210.0.200 dev eth0 lladdr 02:AA:00:00:00:01 REACHABLE\nfd00::1 dev eth0 FAILED\n";
        assert_eq!(
            lladdr(out, "10.210.0.200").as_deref(),
            Some("02:aa:00:00:00:01")
        );
        assert_eq!(lladdr(out, "fd00::1"), None);
        assert_eq!(lladdr(out, "10.210.0.2"), None);
        let t =
            stamp_seconds("[2026-12-02T21:03:00.517823] 0.0.0.0 dev lo lladdr 02:00:00:00:00:01");
        assert!((t.unwrap_or(0.0) - 75_780.517_823).abs() < 1e-6);
    }
}
