//! The client side of `postgate health`: one GET to the node's own
//! operations HTTP address, for container health checks (the image carries
//! no curl) and scripts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Why a probe got no HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("HTTP exchange with {0}: {1}")]
    Http(SocketAddr, hyper::Error),
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("bad request path {0:?}")]
    Path(String),
}

/// Where to reach a server listening on `listen`: an unspecified address
/// (`0.0.0.0`, `::`) is reached on the loopback address of its family.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// GETs `path` from `address` over plain HTTP/1.1 and returns the status
/// code; the whole exchange (connect included) is bounded by `timeout`.
pub async fn get_status(
    address: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<u16, ProbeError> {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(ProbeError::Path(path.to_string()));
    }
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| ProbeError::Connect(address, e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProbeError::Http(address, e))?;
        tokio::spawn(conn);
        let request = Request::get(path)
            .header(hyper::header::HOST, address.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|_| ProbeError::Path(path.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ProbeError::Http(address, e))?;
        Ok(response.status().as_u16())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout(address, timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_probed_on_loopback() {
        assert_eq!(
            target("0.0.0.0:9587".parse().unwrap()),
            "127.0.0.1:9587".parse().unwrap()
        );
        assert_eq!(
            target("[::]:9587".parse().unwrap()),
            "[::1]:9587".parse().unwrap()
        );
        assert_eq!(
            target("10.1.2.3:80".parse().unwrap()),
            "10.1.2.3:80".parse().unwrap()
        );
    }

    #[tokio::test]
    async fn a_path_with_spaces_or_controls_is_refused_before_connecting() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for p in ["healthz", "/a b", "/a\r\nX: y"] {
            assert!(matches!(
                get_status(addr, p, Duration::from_secs(1)).await,
                Err(ProbeError::Path(_))
            ));
        }
    }
}
