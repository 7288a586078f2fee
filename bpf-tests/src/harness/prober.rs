//! A client-side ARP prober for failover measurements: one who-has for the VIP every
//! `interval` from the client's own MAC and address, and every reply addressed to it recorded
//! with its arrival time and the replying MAC. Two threads, so sending keeps its pace whatever
//! arrives.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use etherparse::ArpOperation;
use lb_agent::l2::{afpacket::PacketSocket, iface::Interface};

use crate::harness::netns::NetNs;

/// One reply: when it arrived and who sent it.
pub type Reply = (Instant, [u8; 6]);

pub struct Prober {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<()>>,
    receiver: Option<JoinHandle<Vec<Reply>>>,
}

impl Prober {
    pub fn start(
        ns: &NetNs,
        iface: &str,
        client_ip: [u8; 4],
        vip: [u8; 4],
        interval: Duration,
    ) -> Self {
        let name = iface.to_owned();
        let (iface, tx, rx) = ns.within(move || {
            let iface = Interface::lookup(&name).unwrap_or_else(|e| panic!("{e}"));
            let tx = PacketSocket::open(&iface, false).unwrap_or_else(|e| panic!("{e}"));
            let rx = PacketSocket::open(&iface, true).unwrap_or_else(|e| panic!("{e}"));
            (iface, tx, rx)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let request = crate::datapath::frames::arp(
            false,
            iface.mac,
            [0xff; 6],
            ArpOperation::REQUEST,
            iface.mac,
            client_ip,
            [0; 6],
            vip,
        );
        let s = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let _ = tx.send(&request);
                next += interval;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        let s = stop.clone();
        let me = iface.mac;
        let receiver = std::thread::spawn(move || {
            let mut replies = Vec::new();
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok(Some(n)) = rx.recv(&mut buf) else {
                    continue;
                };
                let f = &buf[..n];
                // Ethernet ARP reply (op 2) from the VIP to us.
                let is_reply = f.get(12..14) == Some(&[0x08, 0x06])
                    && f.get(20..22) == Some(&[0, 2])
                    && f.get(28..32) == Some(&vip)
                    && f.get(32..38) == Some(&me);
                if let (true, Some(sha)) = (is_reply, f.get(22..28)) {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(sha);
                    replies.push((Instant::now(), mac));
                }
            }
            replies
        });
        Self {
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
        }
    }

    /// Stops probing; every reply received.
    pub fn finish(mut self) -> Vec<Reply> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sender.take() {
            let _ = s.join();
        }
        self.receiver
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The time from `from` to the first reply after it from a MAC other than `old`.
pub fn takeover(replies: &[Reply], from: Instant, old: [u8; 6]) -> Option<Duration> {
    replies
        .iter()
        .find(|(at, mac)| *at >= from && *mac != old)
        .map(|(at, _)| *at - from)
}

/// The p-th percentile (0..=100) of `samples`, nearest rank.
pub fn percentile(samples: &[Duration], p: u32) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return None;
    }
    let rank = (usize::try_from(p).unwrap_or(100) * sorted.len()).div_ceil(100);
    sorted.get(rank.saturating_sub(1)).copied()
}
