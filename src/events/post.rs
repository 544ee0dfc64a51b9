//! One webhook POST over HTTP/1.1: verified TLS for `https://` (the same
//! client configuration as delivery's, `delivery/tls_client.rs`), plain
//! `http://` only to loopback or when the webhook allows it, no redirect
//! followed, the answer read up to [`MAX_ANSWER`] bytes, everything within
//! the webhook's timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The most of an answer's body that is read (and then ignored).
pub const MAX_ANSWER: usize = 64 * 1024;

/// A parsed webhook URL.
#[derive(Debug, Clone)]
pub struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    /// Parses `url`: `https://`, or `http://` to 127.0.0.1, ::1 or
    /// localhost (or anywhere with `allow_http`).
    pub fn parse(url: &str, allow_http: bool) -> Result<Target, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?} must start with https://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let loopback = ["127.0.0.1", "::1", "localhost"].contains(&host.as_str());
        if !https && !loopback && !allow_http {
            return Err(format!(
                "{url:?}: plain http only to loopback (or set allow_http = true); use https://"
            ));
        }
        Ok(Target {
            https,
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            host,
        })
    }

    /// POSTs `body` with the signature header; `Ok(status)` for any HTTP
    /// answer, `Err` when none came within `timeout`.
    pub async fn post(
        &self,
        tls: &TlsConnector,
        body: Vec<u8>,
        signature: &str,
        timeout: Duration,
    ) -> Result<u16, String> {
        tokio::time::timeout(timeout, self.exchange(tls, body, signature))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    async fn exchange(
        &self,
        tls: &TlsConnector,
        body: Vec<u8>,
        signature: &str,
    ) -> Result<u16, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        let request = hyper::Request::post(self.path.as_str())
            .header(header::HOST, format!("{}:{}", self.host, self.port))
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("postgate/", env!("CARGO_PKG_VERSION")),
            )
            .header(super::sign::SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        if self.https {
            let name = ServerName::try_from(self.host.clone())
                .map_err(|e| format!("bad TLS name {}: {e}", self.host))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {}:{}: {e}", self.host, self.port))?;
            send(stream, request).await
        } else {
            send(tcp, request).await
        }
    }
}

async fn send<S>(stream: S, request: hyper::Request<Full<Bytes>>) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(conn);
    let result = async {
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status().as_u16();
        // Read (a bounded part of) the answer so the exchange completes.
        let _ = Limited::new(resp.into_body(), MAX_ANSWER).collect().await;
        Ok(status)
    }
    .await;
    driver.abort();
    result
}
