//! The controller's metrics, with MetalLB's names so existing dashboards keep working, served on
//! `/metrics` beside `/healthz` and `/readyz` (MetalLB's port, 7472, by default).
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::ipam::allocator::PoolUsage;

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

/// MetalLB's `metallb_k8s_client_*` metrics: how configuration updates went. Both binaries
/// export them.
#[derive(Clone, Debug, Default)]
pub struct ConfigMetrics {
    pub loaded: Gauge,
    pub stale: Gauge,
    pub updates: Counter,
    pub update_errors: Counter,
}

impl ConfigMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "metallb_k8s_client_config_loaded_bool",
            "1 if a valid configuration has been loaded",
            self.loaded.clone(),
        );
        registry.register(
            "metallb_k8s_client_config_stale_bool",
            "1 if the latest configuration was rejected and an older one is in force",
            self.stale.clone(),
        );
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "metallb_k8s_client_updates",
            "Number of configuration updates processed",
            self.updates.clone(),
        );
        registry.register(
            "metallb_k8s_client_update_errors",
            "Number of configuration updates that failed (the last good configuration stays)",
            self.update_errors.clone(),
        );
    }

    /// A configuration was accepted.
    pub fn applied(&self) {
        self.updates.inc();
        self.loaded.set(1);
        self.stale.set(0);
    }

    /// A configuration was rejected: if one was loaded before, it is now stale.
    pub fn rejected(&self) {
        self.updates.inc();
        self.update_errors.inc();
        self.stale.set(self.loaded.get());
    }
}

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    /// What `/readyz` answers: the in-cluster controller is ready once its caches are filled.
    pub ready: AtomicBool,
    pub addresses_total: Family<PoolLabel, Gauge>,
    pub addresses_in_use: Family<PoolLabel, Gauge>,
    pub services_allocated: Family<PoolLabel, Gauge>,
    pub ipv4_addresses_total: Family<PoolLabel, Gauge>,
    pub ipv4_addresses_in_use: Family<PoolLabel, Gauge>,
    pub ipv6_addresses_total: Family<PoolLabel, Gauge>,
    pub ipv6_addresses_in_use: Family<PoolLabel, Gauge>,
    pub config: ConfigMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            addresses_total: Family::default(),
            addresses_in_use: Family::default(),
            services_allocated: Family::default(),
            ipv4_addresses_total: Family::default(),
            ipv4_addresses_in_use: Family::default(),
            ipv6_addresses_total: Family::default(),
            ipv6_addresses_in_use: Family::default(),
            config: ConfigMetrics::default(),
            registry: Registry::default(),
            ready: AtomicBool::new(true),
        };
        // prometheus-client appends `_total` to counters itself, so those are registered
        // without it; the gauges carry MetalLB's full names.
        registry.register(
            "metallb_allocator_addresses_total",
            "Number of usable IP addresses, per pool",
            m.addresses_total.clone(),
        );
        registry.register(
            "metallb_allocator_addresses_in_use_total",
            "Number of IP addresses in use, per pool",
            m.addresses_in_use.clone(),
        );
        for (name, help, family) in [
            (
                "metallb_allocator_ipv4_addresses_total",
                "Number of usable IPv4 addresses, per pool",
                &m.ipv4_addresses_total,
            ),
            (
                "metallb_allocator_ipv4_addresses_in_use_total",
                "Number of IPv4 addresses in use, per pool",
                &m.ipv4_addresses_in_use,
            ),
            (
                "metallb_allocator_ipv6_addresses_total",
                "Number of usable IPv6 addresses, per pool",
                &m.ipv6_addresses_total,
            ),
            (
                "metallb_allocator_ipv6_addresses_in_use_total",
                "Number of IPv6 addresses in use, per pool",
                &m.ipv6_addresses_in_use,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "metallb_allocator_services_allocated_total",
            "Number of Services with addresses, per pool",
            m.services_allocated.clone(),
        );
        m.config.register(&mut registry);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// A configuration was accepted.
    pub fn config_applied(&self) {
        self.config.applied();
    }

    /// A configuration was rejected: if one was loaded before, it is now stale.
    pub fn config_rejected(&self) {
        self.config.rejected();
    }

    /// The per-pool gauges after a plan.
    pub fn record_usage(&self, usage: &std::collections::BTreeMap<String, PoolUsage>) {
        for family in [
            &self.addresses_total,
            &self.addresses_in_use,
            &self.services_allocated,
            &self.ipv4_addresses_total,
            &self.ipv4_addresses_in_use,
            &self.ipv6_addresses_total,
            &self.ipv6_addresses_in_use,
        ] {
            family.clear();
        }
        // MetalLB reports pools of 2^63 addresses and more as the largest gauge value.
        let gauge = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
        for (pool, u) in usage {
            let label = PoolLabel { pool: pool.clone() };
            self.addresses_total
                .get_or_create(&label)
                .set(gauge(u.capacity));
            self.addresses_in_use
                .get_or_create(&label)
                .set(gauge(u.in_use));
            self.services_allocated
                .get_or_create(&label)
                .set(gauge(u.services as u128));
            for (family, n) in [
                (&self.ipv4_addresses_total, u.ipv4_capacity),
                (&self.ipv4_addresses_in_use, u.ipv4_in_use),
                (&self.ipv6_addresses_total, u.ipv6_capacity),
                (&self.ipv6_addresses_in_use, u.ipv6_in_use),
            ] {
                family.get_or_create(&label).set(gauge(n));
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What the metrics listener serves: the exposition text and the readiness.
pub trait Exporter: Send + Sync + 'static {
    fn render(&self) -> String;
    fn ready(&self) -> bool;
}

impl Exporter for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Connections served at once; further ones wait in the kernel's accept queue. Prometheus
/// needs one, a probe or two more.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send a request's headers (and to send the next request on a
/// kept-alive connection): a slow or idle client gives its place back after this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection is kept, whatever it does.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// The largest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST_BUFFER: usize = 16 * 1024;
/// The pause after a failed accept (EMFILE leaves the listener readable: without it, the
/// loop would spin).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
///
/// The listener faces whatever can reach the node, so it is bounded: [`MAX_CONNECTIONS`] at
/// once, [`HEADER_TIMEOUT`] to send a request, [`CONNECTION_LIFETIME`] in all, a small read
/// buffer, and a pause after accept errors.
pub async fn serve<E: Exporter>(listener: tokio::net::TcpListener, metrics: Arc<E>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        // Off the runtime's workers: an agent's render waits for the data
                        // path's snapshot, and the workers also drive its heartbeats.
                        "/metrics" => {
                            match tokio::task::spawn_blocking(move || metrics.render()).await {
                                Ok(text) => (200, text),
                                Err(_) => (500, "rendering failed\n".to_owned()),
                            }
                        }
                        "/healthz" => (200, "ok\n".to_owned()),
                        "/readyz" if metrics.ready() => (200, "ok\n".to_owned()),
                        "/readyz" => (503, "not ready\n".to_owned()),
                        _ => (404, "not found\n".to_owned()),
                    };
                    Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BUFFER)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
}

/// Binds `addr` (port 0 picks a free one); returns the listener and its actual address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    struct Fixed;

    impl Exporter for Fixed {
        fn render(&self) -> String {
            "up 1\n".into()
        }

        fn ready(&self) -> bool {
            true
        }
    }

    async fn get(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    /// Whether the server closed `s` (read returns end of file or an error) within `within`.
    async fn closed(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 512];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn slow_idle_and_oversized_clients_give_their_place_back() {
        let (listener, addr) = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        tokio::spawn(serve(listener, Arc::new(Fixed)));
        // Every place taken: half by clients that connect and say nothing, half by clients
        // that send half a request (slowloris).
        let mut hogs = Vec::new();
        for i in 0..MAX_CONNECTIONS {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            if i % 2 == 1 {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .expect("write");
            }
            hogs.push(s);
        }
        let start = Instant::now();
        // A scrape waits for a place, and gets one once the hogs time out.
        let answer = tokio::time::timeout(HEADER_TIMEOUT * 3, get(addr)).await;
        assert!(
            answer.as_deref().is_ok_and(|a| a.contains("up 1")),
            "{answer:?}"
        );
        assert!(
            start.elapsed() >= HEADER_TIMEOUT / 2,
            "the hogs held every place"
        );
        for s in &mut hogs {
            assert!(
                closed(s, Duration::from_secs(2)).await,
                "a hog kept its connection"
            );
        }
        // A request head larger than the buffer is refused, not buffered.
        let mut big = TcpStream::connect(addr).await.expect("connect");
        let head = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(64 * 1024));
        let _ = big.write_all(head.as_bytes()).await;
        assert!(closed(&mut big, Duration::from_secs(2)).await);
    }
}
