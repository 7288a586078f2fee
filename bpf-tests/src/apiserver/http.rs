//! The HTTP face of the test API server: Kubernetes' URL layout, list and watch (with
//! bookmarks, timeouts and 410 Gone as an ERROR event, as the real server sends it), get,
//! create, replace, patch, delete, the `/status` subresource, and TokenReview and
//! SubjectAccessReview ([`super::reviews`]).
use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Frame};
use serde_json::{Value, json};
use tokio::sync::{broadcast::error::RecvError, mpsc};

use super::{
    Shared, admission,
    resources::Resource,
    reviews,
    store::{ApiError, PatchKind, Selector},
};

type Body = BoxBody<Bytes, Infallible>;

/// What a URL names.
struct Target {
    res: &'static Resource,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            (Some((*ns).to_owned()), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, status) = match rest.as_slice() {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    let res = Resource::find(group, version, plural)?;
    if namespace.is_some() && !res.namespaced {
        return None;
    }
    if status && !res.status {
        return None;
    }
    Some(Target {
        res,
        version: version.to_owned(),
        namespace,
        name,
        status,
    })
}

fn full(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn error(e: &ApiError) -> Response<Body> {
    full(
        StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status(),
    )
}

fn not_found(path: &str) -> Response<Body> {
    error(&ApiError::NotFound(format!(
        "the server could not find the requested resource ({path})"
    )))
}

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    shared.log(format!(
        "{method} {}",
        req.uri().path_and_query().map_or("", |p| p.as_str())
    ));
    let param = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if method == Method::POST
        && matches!(
            path.trim_end_matches('/'),
            reviews::TOKEN_REVIEWS | reviews::ACCESS_REVIEWS
        )
    {
        let body = match req.into_body().collect().await {
            Ok(b) => serde_json::from_slice::<Value>(&b.to_bytes()).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        return Ok(match reviews::answer(&shared, &path, &body) {
            Some(answered) => full(StatusCode::CREATED, &answered),
            None => not_found(&path),
        });
    }
    let Some(t) = parse_path(&path) else {
        return Ok(not_found(&path));
    };
    let body: Value = if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        let bytes = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Ok(error(&ApiError::Invalid("cannot read the body".into()))),
        };
        match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return Ok(error(&ApiError::Invalid(format!("bad JSON: {e}")))),
        }
    } else {
        Value::Null
    };
    let ns = t.namespace.as_deref();
    let v = t.version.as_str();
    if t.status
        && t.res.kind == "Service"
        && let Some(name) = &t.name
        && matches!(method, Method::PUT | Method::PATCH)
    {
        shared.maybe_interfere(t.res, ns, name);
    }
    // Validating admission, before anything is stored.
    let admitted = match (&method, &t.name, t.status) {
        (&Method::POST, None, false) => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Some(("CREATE", name, Some(&body)))
        }
        (&Method::PUT, Some(name), false) => Some(("UPDATE", name.clone(), Some(&body))),
        (&Method::DELETE, Some(name), false) => Some(("DELETE", name.clone(), None)),
        _ => None,
    };
    let mut warnings = Vec::new();
    if let Some((operation, name, object)) = admitted {
        let old = shared.store().get(t.res, v, ns, &name).ok();
        match admission::admit(&shared, t.res, v, operation, ns, &name, object, old).await {
            Ok(w) => warnings = w,
            Err(e) => {
                shared.log(format!("  -> {} {method} {path}", e.code()));
                return Ok(error(&e));
            }
        }
    }
    let result = match (&method, &t.name) {
        (&Method::GET, None) => {
            let selector = match Selector::parse(param("labelSelector"), param("fieldSelector")) {
                Ok(s) => s,
                Err(e) => return Ok(error(&e)),
            };
            if param("watch").is_some_and(|w| w == "true" || w == "1") {
                return Ok(watch(shared, &t, selector, &query));
            }
            let (items, rv) = shared.store().list(t.res, v, ns, &selector);
            Ok((
                StatusCode::OK,
                json!({
                    "kind": format!("{}List", t.res.kind),
                    "apiVersion": t.res.api_version(v),
                    "metadata": {"resourceVersion": rv.to_string()},
                    "items": items,
                }),
            ))
        }
        (&Method::GET, Some(name)) => shared
            .store()
            .get(t.res, v, ns, name)
            .map(|o| (StatusCode::OK, o)),
        (&Method::POST, None) => shared
            .store()
            .create(t.res, v, ns, body)
            .map(|o| (StatusCode::CREATED, o)),
        (&Method::PUT, Some(name)) => shared
            .store()
            .replace(t.res, v, ns, name, body, t.status)
            .map(|o| (StatusCode::OK, o)),
        (&Method::PATCH, Some(name)) => {
            let kind = match content_type.split(';').next().unwrap_or("").trim() {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    PatchKind::Merge
                }
                "application/json-patch+json" => PatchKind::Json,
                other => {
                    return Ok(error(&ApiError::UnsupportedMediaType(format!(
                        "the body of the request was in an unknown format - accepted media \
                         types include: application/json-patch+json, \
                         application/merge-patch+json, application/strategic-merge-patch+json \
                         (got {other:?})"
                    ))));
                }
            };
            shared
                .store()
                .patch(t.res, v, ns, name, (kind, body), t.status)
                .map(|o| (StatusCode::OK, o))
        }
        (&Method::DELETE, Some(name)) => shared
            .store()
            .delete(t.res, v, ns, name)
            .map(|o| (StatusCode::OK, o)),
        _ => {
            return Ok(full(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "MethodNotAllowed", "code": 405,
                        "message": format!("{method} is not supported here")}),
            ));
        }
    };
    Ok(match result {
        Ok((code, obj)) => {
            let mut response = full(code, &obj);
            for w in warnings {
                // RFC 7234 warning, as the API server sends admission warnings.
                let text = format!("299 - {:?}", w);
                if let Ok(value) = hyper::header::HeaderValue::from_str(&text) {
                    response.headers_mut().append("warning", value);
                }
            }
            response
        }
        Err(e) => {
            // Named, since concurrent requests interleave in the log.
            shared.log(format!("  -> {} {method} {path}", e.code()));
            error(&e)
        }
    })
}

/// A watch stream: one JSON event per line, until the timeout, the client leaving, or the test
/// breaking every watch.
fn watch(
    shared: Arc<Shared>,
    t: &Target,
    selector: Selector,
    query: &[(String, String)],
) -> Response<Body> {
    let param = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let from = param("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| v.parse::<u64>().unwrap_or(0));
    let bookmarks = param("allowWatchBookmarks") == Some("true");
    let timeout = param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let (res, version, namespace) = (t.res, t.version.clone(), t.namespace.clone());
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let line = |v: Value| Bytes::from(format!("{v}\n"));
    let mut kill = shared.kill.subscribe();
    let mut held = shared.hold.subscribe();
    tokio::spawn(async move {
        // A test holding watches back decides what happens before any watch (re)opens.
        if held.wait_for(|h| !*h).await.is_err() {
            return;
        }
        let opened = {
            let store = shared.store();
            store
                .watch(res, &version, namespace.as_deref(), from)
                .map(|(replay, feed)| (replay, feed, store.resource_version()))
        };
        match opened {
            Err(e) => {
                shared.log(format!("  -> watch ERROR {}", e.code()));
                let _ = tx
                    .send(line(json!({"type": "ERROR", "object": e.status()})))
                    .await;
            }
            Ok((replay, mut feed, rv_now)) => {
                let every = shared.bookmark_every;
                let mut seen = from
                    .unwrap_or(rv_now)
                    .max(replay.last().map_or(0, |c| c.rv));
                for c in replay {
                    if selector.matches(&c.object)
                        && tx
                            .send(line(json!({"type": c.kind, "object": c.object})))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                let deadline = tokio::time::Instant::now() + timeout;
                let mut ticker = tokio::time::interval(every);
                ticker.tick().await;
                loop {
                    tokio::select! {
                        // A broken watch sends nothing more, not even what is already queued:
                        // the client must resume from what it has.
                        biased;
                        _ = kill.changed() => return,
                        got = feed.recv() => match got {
                            Ok(c) => {
                                if c.rv <= seen {
                                    continue;
                                }
                                seen = c.rv;
                                let mine = c.group == res.group
                                    && c.plural == res.plural
                                    && namespace.as_deref().is_none_or(|ns| c.namespace == ns)
                                    && selector.matches(&c.object);
                                if mine {
                                    let mut object = c.object.clone();
                                    object["apiVersion"] = json!(res.api_version(&version));
                                    if tx.send(line(json!({"type": c.kind, "object": object}))).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            // A slow client misses events: end the stream; it resumes or relists.
                            Err(RecvError::Lagged(_) | RecvError::Closed) => return,
                        },
                        _ = ticker.tick(), if bookmarks => {
                            let bm = json!({"type": "BOOKMARK", "object": {
                                "kind": res.kind,
                                "apiVersion": res.api_version(&version),
                                "metadata": {"resourceVersion": seen.to_string()},
                            }});
                            if tx.send(line(bm)).await.is_err() {
                                return;
                            }
                        }
                        _ = tokio::time::sleep_until(deadline) => return,
                        _ = tx.closed() => return,
                    }
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}
