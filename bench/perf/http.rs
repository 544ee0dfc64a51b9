//! The load of the `-http` cells (issue #17): each task keeps one HTTPS
//! connection (HTTP/1.1 keep-alive, the hyper client over tokio-rustls)
//! to the `[api]` listener and POSTs the same messages as the SMTP load to
//! `/v1/messages`, one at a time: JSON with `from`, `to` and the raw
//! message (Message-ID first), HTTP Basic with the bench user's password.
//! Latency: request sent to the whole `202 Accepted` answer read (after
//! the durable commit), the counterpart of SMTP's end of data to 250.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::{message_id, Accepted, Load, TaskOut, IO_TIMEOUT, PASSWORD};

/// One connection: TLS, then POSTs until the load stops or something fails.
#[allow(clippy::too_many_arguments)]
async fn connection(
    port: u16,
    tls: &tokio_rustls::TlsConnector,
    tag: &str,
    task: usize,
    seq: &mut u32,
    body: &Bytes,
    load: &Load,
    out: &mut TaskOut,
) -> Result<(), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").unwrap();
    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("bench:{PASSWORD}"))
    );
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    while !load.stop.load(Ordering::Relaxed) {
        *seq += 1;
        let message = format!("Message-ID: {}\r\n{text}", message_id(tag, task, *seq));
        let json = serde_json::json!({
            "from": "bench@example.com",
            "to": ["someone@example.net"],
            "message": message,
        });
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/messages")
            .header(HOST, "localhost")
            .header(AUTHORIZATION, auth.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&json).unwrap())))
            .map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let t = Instant::now();
        let answer = tokio::time::timeout(IO_TIMEOUT, async {
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        })
        .await
        .unwrap_or_else(|_| Err("answer timed out".into()));
        match answer {
            Ok((StatusCode::ACCEPTED, bytes)) => {
                let latency = t.elapsed();
                let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("id")?.as_str().map(Box::from))
                    .unwrap_or_default();
                load.accepted.fetch_add(1, Ordering::SeqCst);
                out.accepted.push(Accepted {
                    at: Instant::now(),
                    latency,
                    seq: *seq,
                    queue_id: id,
                });
            }
            Ok((status, bytes)) => {
                return Err(format!(
                    "POST /v1/messages -> {status} {}",
                    String::from_utf8_lossy(&bytes).trim()
                ))
            }
            Err(e) => {
                out.uncertain.push(*seq);
                return Err(e);
            }
        }
    }
    Ok(())
}

pub async fn task(
    port: u16,
    tls: tokio_rustls::TlsConnector,
    tag: Arc<str>,
    task: usize,
    body: Bytes,
    load: Arc<Load>,
) -> TaskOut {
    let mut out = TaskOut {
        accepted: Vec::new(),
        uncertain: Vec::new(),
    };
    let mut seq = 0u32;
    while !load.stop.load(Ordering::Relaxed) {
        if let Err(e) = connection(port, &tls, &tag, task, &mut seq, &body, &load, &mut out).await {
            if load.errors.fetch_add(1, Ordering::SeqCst) < 5 {
                eprintln!("perf: http connection {task}: {e}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out
}
