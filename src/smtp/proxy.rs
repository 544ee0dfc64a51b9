//! PROXY protocol v1 and v2 headers (HAProxy, "The PROXY protocol"). PURE.
//!
//! The server reads exactly the octets [`parse`] asks for, so nothing after
//! the header (a TLS ClientHello on implicit TLS) is consumed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 headers are at most 107 octets including CRLF.
const V1_MAX: usize = 107;
/// The shortest header is `PROXY UNKNOWN\r\n`.
pub const MIN_HEADER: usize = 15;

/// Why a PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

/// Progress of parsing a header from the octets read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Read until `buf` holds this many octets, then parse again.
    Need(usize),
    /// The header is complete. `source`: the real client, or `None` when
    /// the proxy reports none (LOCAL, UNKNOWN: use the peer address).
    Done { source: Option<SocketAddr> },
}

/// Parses a PROXY v1 or v2 header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() < MIN_HEADER {
        return Ok(Parsed::Need(MIN_HEADER));
    }
    if buf.starts_with(b"PROXY ") {
        return v1(buf);
    }
    if buf[..12.min(buf.len())] == V2_SIGNATURE[..12.min(buf.len())] {
        return v2(buf);
    }
    Err(ProxyError::NotProxy)
}

fn v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::Malformed("v1 header longer than 107 octets"));
        }
        return Ok(Parsed::Need(buf.len() + 1));
    };
    let line = buf[..lf]
        .strip_suffix(b"\r")
        .ok_or(ProxyError::Malformed("v1 header must end with CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Parsed::Done { source: None }),
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("bad source address"))?;
            if (*proto == "TCP4") != ip.is_ipv4() {
                return Err(ProxyError::Malformed("address family mismatch"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| ProxyError::Malformed("bad source port"))?;
            Ok(Parsed::Done {
                source: Some(SocketAddr::new(ip, port)),
            })
        }
        _ => Err(ProxyError::Malformed("v1 header fields")),
    }
}

fn v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() < 16 {
        return Ok(Parsed::Need(16));
    }
    if &buf[..12] != V2_SIGNATURE {
        return Err(ProxyError::NotProxy);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version"));
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if buf.len() < 16 + len {
        return Ok(Parsed::Need(16 + len));
    }
    let addr = &buf[16..16 + len];
    match ver_cmd & 0x0f {
        0 => return Ok(Parsed::Done { source: None }), // LOCAL: health check
        1 => {}
        _ => return Err(ProxyError::Malformed("v2 command")),
    }
    let source = match buf[13] {
        0x11 if len >= 12 => {
            let ip = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([addr[8], addr[9]]),
            ))
        }
        0x21 if len >= 36 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&addr[..16]);
            let ip = Ipv6Addr::from(o);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([addr[32], addr[33]]),
            ))
        }
        0x11 | 0x21 => return Err(ProxyError::Malformed("v2 address block too short")),
        _ => None,
    };
    Ok(Parsed::Done { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds octets the way the server does: only as many as asked for.
    fn drive(input: &[u8]) -> (Result<Parsed, ProxyError>, usize) {
        let mut have = 0;
        loop {
            match parse(&input[..have]) {
                Ok(Parsed::Need(n)) if n <= input.len() => have = n,
                Ok(Parsed::Need(_)) => return (Ok(Parsed::Need(0)), have),
                other => return (other, have),
            }
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = b"PROXY TCP4 192.0.2.9 198.51.100.1 56324 587\r\nEHLO x\r\n";
        let (r, used) = drive(h);
        assert_eq!(
            r,
            Ok(Parsed::Done {
                source: Some("192.0.2.9:56324".parse().unwrap())
            })
        );
        assert_eq!(
            &h[used..],
            b"EHLO x\r\n",
            "nothing after the header consumed"
        );
        let (r, _) = drive(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 465\r\n");
        assert_eq!(
            r,
            Ok(Parsed::Done {
                source: Some("[2001:db8::1]:4000".parse().unwrap())
            })
        );
        assert_eq!(
            drive(b"PROXY UNKNOWN\r\n").0,
            Ok(Parsed::Done { source: None })
        );
        assert!(drive(b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n").0.is_err());
        assert!(drive(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n").0.is_err());
        assert!(drive(&[b'P'; 200]).0.is_err());
        assert_eq!(
            drive(b"EHLO client.example\r\n").0,
            Err(ProxyError::NotProxy)
        );
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 150));
        assert!(drive(&long).0.is_err());
    }

    #[test]
    fn v2_proxy_and_local() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 203, 0, 113, 5, 10, 0, 0, 1, 0x1f, 0x90, 0x02, 0x4b,
        ]);
        h.extend_from_slice(b"\x16\x03\x01");
        let (r, used) = drive(&h);
        assert_eq!(
            r,
            Ok(Parsed::Done {
                source: Some("203.0.113.5:8080".parse().unwrap())
            })
        );
        assert_eq!(&h[used..], b"\x16\x03\x01");
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(drive(&local).0, Ok(Parsed::Done { source: None }));
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 0]);
        assert!(drive(&bad).0.is_err());
    }
}
