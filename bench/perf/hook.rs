//! The webhook receiver of the `-events` cells (issue #17): a plain HTTP/1.1
//! hyper server on loopback that checks every POST's
//! `X-Postgate-Signature: t=TIMESTAMP,v1=HEX` (HMAC-SHA256 of
//! `TIMESTAMP.BODY`, computed here with the `hmac` crate, not postgate's
//! code), answers 401 to a bad one and 204 to a good one, and counts the
//! events of every accepted POST by kind and queue id.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;

/// The webhook's signing secret in the cells' configuration.
pub const SECRET: &str = "bench-webhook-secret-0123456789";

/// What the receiver saw since the last reset.
#[derive(Default)]
pub struct Seen {
    /// `delivered` events per queue id.
    pub delivered: HashMap<Box<str>, u32>,
    /// `accepted` events per queue id.
    pub accepted: HashMap<Box<str>, u32>,
    /// Events of any other kind (deferred, bounced, ...).
    pub other: u64,
    /// POSTs answered 204.
    pub posts: u64,
    /// POSTs refused: signature missing, wrong or too old, or a body that is not the documented JSON.
    pub bad: u64,
}

pub struct Hook {
    pub port: u16,
    pub seen: Arc<Mutex<Seen>>,
}

impl Hook {
    pub fn reset(&self) {
        *self.seen.lock().unwrap() = Seen::default();
    }
    /// Distinct queue ids with a `delivered` event.
    pub fn delivered(&self) -> usize {
        self.seen.lock().unwrap().delivered.len()
    }
}

pub async fn start() -> Hook {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let s = s.clone();
                    async move { Ok::<_, Infallible>(answer(req, &s).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Hook { port, seen }
}

async fn answer(req: Request<hyper::body::Incoming>, seen: &Mutex<Seen>) -> Response<Full<Bytes>> {
    let sig = req
        .headers()
        .get("x-postgate-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST),
    };
    let events = match sig.as_deref().map(|s| verify(s, &body)) {
        Some(true) => parse(&body),
        _ => None,
    };
    let mut seen = seen.lock().unwrap();
    let Some(events) = events else {
        seen.bad += 1;
        return reply(StatusCode::UNAUTHORIZED);
    };
    seen.posts += 1;
    for (kind, id) in events {
        let map = match kind.as_str() {
            "delivered" => &mut seen.delivered,
            "accepted" => &mut seen.accepted,
            _ => {
                seen.other += 1;
                continue;
            }
        };
        *map.entry(id.into()).or_insert(0) += 1;
    }
    reply(StatusCode::NO_CONTENT)
}

fn reply(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// `t=TIMESTAMP,v1=HEX`: HEX is HMAC-SHA256(SECRET, "TIMESTAMP." + body),
/// and TIMESTAMP within 5 minutes of this clock.
fn verify(header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if (now - t).abs() > 300 || v1.len() != 64 {
        return false;
    }
    let Ok(want) = (0..32)
        .map(|i| u8::from_str_radix(&v1[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&want).is_ok()
}

/// (kind, queue id) of each event of `{"webhook": ..., "events": [...]}`.
fn parse(body: &[u8]) -> Option<Vec<(String, String)>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("events")?
        .as_array()?
        .iter()
        .map(|e| {
            Some((
                e.get("kind")?.as_str()?.to_string(),
                // null for `rejected` (nothing was queued)
                e.get("message_id")?.as_str().unwrap_or("").to_string(),
            ))
        })
        .collect()
}
