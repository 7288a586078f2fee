//! The listeners of `/metrics`, `/healthz` and `/readyz`, for the controller and the agent.
//!
//! Two ways, as MetalLB 0.16 serves them:
//! - plain HTTP ([`serve`]), open to whoever reaches the address (bind it to localhost to keep
//!   it to the node);
//! - HTTPS ([`secure::serve`]), where `/metrics` answers only a bearer token that the API
//!   server authenticates (TokenReview) and authorizes for `get` on the non-resource URL
//!   `/metrics` (SubjectAccessReview). The probes stay open on both.
//!
//! - [`access`]: the bearer token and the remembered verdicts, no I/O.
//! - [`secure`]: TLS, the reviews against the API server, the certificate files.
//! - here: the request routing and the bounded accept loop both share.
pub mod access;
pub mod secure;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};

/// What the metrics listener serves: the exposition text and the readiness.
pub trait Exporter: Send + Sync + 'static {
    fn render(&self) -> String;
    fn ready(&self) -> bool;
}

/// Connections served at once; further ones wait in the kernel's accept queue. Prometheus
/// needs one, a probe or two more.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send a request's headers (and to send the next request on a
/// kept-alive connection, and to finish a TLS handshake): a slow or idle client gives its
/// place back after this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection is kept, whatever it does.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// The largest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST_BUFFER: usize = 16 * 1024;
/// The pause after a failed accept (EMFILE leaves the listener readable: without it, the
/// loop would spin).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `/metrics`, `/healthz` and `/readyz` over plain HTTP on `listener` until the task is
/// dropped.
///
/// The listener faces whatever can reach the node, so it is bounded: [`MAX_CONNECTIONS`] at
/// once, [`HEADER_TIMEOUT`] to send a request, [`CONNECTION_LIFETIME`] in all, a small read
/// buffer, and a pause after accept errors.
pub async fn serve<E: Exporter>(listener: tokio::net::TcpListener, metrics: Arc<E>) {
    accept_loop(listener, move |stream| {
        connection(hyper_util::rt::TokioIo::new(stream), metrics.clone(), None)
    })
    .await;
}

/// Binds `addr` (port 0 picks a free one); returns the listener and its actual address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Accepts up to [`MAX_CONNECTIONS`] at once and runs `each` on every connection for at most
/// [`CONNECTION_LIFETIME`].
async fn accept_loop<F, Fut>(listener: tokio::net::TcpListener, mut each: F)
where
    F: FnMut(tokio::net::TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
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
        let served = each(stream);
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, served).await;
        });
    }
}

/// One connection's requests; `/metrics` goes through `gate` when there is one.
async fn connection<IO, E>(io: IO, metrics: Arc<E>, gate: Option<Arc<secure::Gate>>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: Exporter,
{
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let (metrics, gate) = (metrics.clone(), gate.clone());
        async move {
            let (status, body) = respond(&req, metrics, gate.as_deref()).await;
            Response::builder()
                .status(status)
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(body)))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BUFFER)
        .serve_connection(io, service)
        .await;
}

async fn respond<B, E: Exporter>(
    req: &Request<B>,
    metrics: Arc<E>,
    gate: Option<&secure::Gate>,
) -> (u16, String) {
    match req.uri().path() {
        "/metrics" => {
            if let Some(gate) = gate {
                let header = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                if let Err((status, why)) = gate.check(header).await {
                    return (status, why);
                }
            }
            // Off the runtime's workers: an agent's render waits for the data path's
            // snapshot, and the workers also drive its heartbeats.
            match tokio::task::spawn_blocking(move || metrics.render()).await {
                Ok(text) => (200, text),
                Err(_) => (500, "rendering failed\n".to_owned()),
            }
        }
        "/healthz" => (200, "ok\n".to_owned()),
        "/readyz" if metrics.ready() => (200, "ok\n".to_owned()),
        "/readyz" => (503, "not ready\n".to_owned()),
        _ => (404, "not found\n".to_owned()),
    }
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
