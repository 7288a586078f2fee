//! Reading an agent's `/metrics` from inside its network namespace, and picking samples out of
//! the Prometheus text format.
use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper::{Request, body::Bytes};

use crate::harness::netns::NetNs;

/// `GET path` on `addr` from inside `ns`: the status and the body.
pub fn get(ns: &NetNs, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let path = path.to_owned();
    ns.within(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let fetch = async {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                let io = hyper_util::rt::TokioIo::new(stream);
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let req = Request::get(&path)
                    .header("host", addr.to_string())
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok((status, String::from_utf8_lossy(&body).into_owned()))
            };
            tokio::time::timeout(Duration::from_secs(5), fetch)
                .await
                .map_err(|_| format!("GET {addr}{path}: timed out"))?
        })
    })
}

/// The value of the sample `name{labels}` where every `key="value"` in `labels` is present
/// (other labels may be too); `None` when there is no such sample.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            if !all {
                return None;
            }
            value.parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let text =
            "# TYPE a counter\na_total{reason=\"auth\"} 3\na_total{reason=\"replay\"} 5\nb 7\n";
        assert_eq!(sample(text, "a_total", &[("reason", "replay")]), Some(5.0));
        assert_eq!(sample(text, "b", &[]), Some(7.0));
        assert_eq!(sample(text, "a_total", &[("reason", "malformed")]), None);
        assert_eq!(sample(text, "a", &[]), None);
    }
}
