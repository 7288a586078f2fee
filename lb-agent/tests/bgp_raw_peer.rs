//! The BGP speaker against a raw peer on loopback that misbehaves on purpose: what a buggy or
//! hostile router can do to the agent's memory (review finding 3).
//!
//! Alone in its test binary: the bound is on this process's resident memory, which other
//! tests running beside it would disturb.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use lb_agent::bfd::service::BfdMetrics;
use lb_agent::bgp::message::{self, Capability, Family, Message, Open};
use lb_agent::bgp::policy::{PeerPlan, Plan};
use lb_agent::bgp::rib_out::{RouteAttrs, Routes};
use lb_agent::bgp::session::{PeerAs, Settings, Stop};
use lb_agent::bgp::speaker::{BgpMetrics, Speaker};
use lb_agent::bgp::update::{self, AsSegment, Attributes, Codec, Origin, Update};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn wire(m: &Message) -> BytesMut {
    let mut out = BytesMut::new();
    message::encode(m, &mut out).unwrap_or_else(|e| panic!("{e}"));
    out
}

/// A plan for one peer at `port` on loopback, advertising `n` /32s.
fn plan(port: u16, n: u32) -> Plan {
    let routes: Routes = (0..n)
        .map(|i| {
            let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 32);
            (net.unwrap_or_default(), RouteAttrs::default())
        })
        .collect();
    let peer = PeerPlan {
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        interface: None,
        scope: 0,
        port,
        source: None,
        password: None,
        multihop: true,
        ttl_security: None,
        settings: Settings {
            local_as: 64512,
            peer_as: PeerAs::Fixed(65001),
            router_id: Ipv4Addr::new(10, 0, 0, 5),
            hold_time: 90,
            keepalive: None,
            connect_time: Duration::from_secs(30),
            passive: false,
            ipv4: true,
            ipv6: false,
            graceful_restart: None,
            extended_next_hop: false,
        },
        node_v4: Some(Ipv4Addr::LOCALHOST),
        node_v6: None,
        bfd: None,
        routes: Arc::new(routes),
    };
    [("test/raw".to_owned(), peer)].into()
}

/// Accepts the agent's connection, completes OPEN and KEEPALIVE, and hands over the
/// stream with the agent's initial table still unread.
async fn handshake(listener: &TcpListener) -> TcpStream {
    let (mut s, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
    let open = Message::Open(Open {
        my_as: 65001,
        hold_time: 90,
        router_id: u32::from(Ipv4Addr::new(10, 0, 0, 1)),
        capabilities: vec![
            Capability::Multiprotocol(Family::IPV4_UNICAST),
            Capability::FourOctetAs(65001),
            Capability::RouteRefresh,
        ],
    });
    s.write_all(&wire(&open))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.write_all(&wire(&Message::Keepalive))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The agent's OPEN and KEEPALIVE (then its UPDATEs, which stay unread).
    let mut buf = BytesMut::new();
    let mut seen = 0;
    while seen < 2 {
        s.read_buf(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        while let Ok(Some((_, n))) = message::decode(&buf) {
            let _ = buf.split_to(n);
            seen += 1;
        }
    }
    s
}

fn listen() -> TcpListener {
    // A small receive buffer on the accepted socket: the peer "stops reading" sooner.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .unwrap_or_else(|e| panic!("{e}"));
    sock.set_recv_buffer_size(4096)
        .unwrap_or_else(|e| panic!("{e}"));
    sock.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
    sock.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap_or_else(|e| panic!("{e}"));
    sock.listen(4).unwrap_or_else(|e| panic!("{e}"));
    TcpListener::from_std(sock.into()).unwrap_or_else(|e| panic!("{e}"))
}

fn speaker(port: u16, routes: u32) -> Speaker {
    let s = Speaker::spawn(
        BgpMetrics::default(),
        BfdMetrics::default(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    );
    s.apply(plan(port, routes));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_floods_route_refresh_and_never_reads_cannot_grow_the_agent() {
    let listener = listen();
    let port = listener.local_addr().map_or(0, |a| a.port());
    let s = speaker(port, 10_000);
    let mut peer = handshake(&listener).await;
    let refresh = wire(&Message::RouteRefresh {
        family: Family::IPV4_UNICAST,
        subtype: 0,
    });
    let before = rss_bytes();
    // 3,000 requests: once 3,000 copies of the 50 KB table (150 MB) queued for a peer
    // that does not read.
    for _ in 0..3_000 {
        if peer.write_all(&refresh).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 32 << 20, "the agent grew by {grown} bytes");
    s.stop(Stop::Shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_streaming_updates_faster_than_they_decode_is_slowed_by_tcp() {
    let listener = listen();
    let port = listener.local_addr().map_or(0, |a| a.port());
    let s = speaker(port, 1);
    let mut peer = handshake(&listener).await;
    let full = Update {
        attributes: Attributes {
            origin: Some(Origin::Igp),
            as_path: vec![AsSegment::Sequence(vec![65001])],
            next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
            ..Attributes::default()
        },
        nlri: (0..800u32)
            .map(|i| ipnet::Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + i), 32).unwrap_or_default())
            .collect(),
        ..Update::default()
    };
    let mut body = BytesMut::new();
    update::encode(
        &full,
        Codec {
            four_octet_as: true,
        },
        &mut body,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let one = wire(&Message::Update(body.to_vec()));
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 64).collect();
    let before = rss_bytes();
    let start = Instant::now();
    let mut sent = 0usize;
    // Each write waits while the agent's receive window is closed.
    while start.elapsed() < Duration::from_secs(2) && peer.write_all(&batch).await.is_ok() {
        sent += batch.len();
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(sent > 0, "{sent} {grown}");
    assert!(
        grown < 32 << 20,
        "{sent} bytes sent, the agent grew by {grown}"
    );
    s.stop(Stop::Shutdown).await;
}
