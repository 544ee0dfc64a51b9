//! Counter keys: `SUBJECT/KIND` (lockouts) or `SUBJECT/KIND/COUNT/PERIOD_MS`
//! (GCRA counters, whose TAT units depend on the rate). Subjects are
//! `ip:ADDR` (IPv6 masked to the configured prefix), `user:NAME` (as typed
//! at AUTH, lower-cased), `uid:ID`, `cred:ID`, `name:NAME` (throttles); `%` and `/` and control
//! characters in a subject are %-escaped so that `SUBJECT/` is a safe prefix.

use std::net::IpAddr;

use super::gcra::Rate;

/// Kinds of counters, as they appear in keys and in `limits show`.
pub mod kind {
    /// New connections per IP per minute.
    pub const CONNECTIONS: &str = "connections";
    /// Failed AUTH per IP or username per window.
    pub const AUTH_FAILURES: &str = "auth-failures";
    /// A lockout in force (its TAT is its end).
    pub const LOCKOUT: &str = "lockout";
    /// Messages per minute, hour or day.
    pub const MESSAGES: &str = "messages";
    /// Recipients per day.
    pub const RECIPIENTS: &str = "recipients";
    /// A named throttle ([`crate::limits::Limiter::throttle`]).
    pub const THROTTLE: &str = "throttle";
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '%' || c == '/' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`escape`] (lossy on malformed input).
pub fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `ip:ADDR`, IPv6 masked to `/v6_prefix`, IPv4-mapped IPv6 as IPv4.
pub fn ip_subject(ip: IpAddr, v6_prefix: u8) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return format!("ip:{v4}");
            }
            let bits = u128::from(v6);
            let prefix = u32::from(v6_prefix.min(128));
            let masked = if prefix == 0 {
                0
            } else {
                bits & (u128::MAX << (128 - prefix))
            };
            if prefix >= 128 {
                format!("ip:{}", std::net::Ipv6Addr::from(masked))
            } else {
                format!("ip:{}/{prefix}", std::net::Ipv6Addr::from(masked)).replace('/', "%2F")
            }
        }
    }
}

/// `user:NAME` for a username as typed (trimmed, lower-cased, at most 255 bytes).
pub fn user_subject(username: &str) -> String {
    let mut lower = username.trim().to_lowercase();
    if lower.len() > 255 {
        let mut cut = 255;
        while !lower.is_char_boundary(cut) {
            cut -= 1;
        }
        lower.truncate(cut);
    }
    format!("user:{}", escape(&lower))
}

/// `uid:ID`.
pub fn uid_subject(user_id: i64) -> String {
    format!("uid:{user_id}")
}

/// `cred:ID`.
pub fn cred_subject(credential_id: i64) -> String {
    format!("cred:{credential_id}")
}

/// `name:NAME` for [`super::Limiter::throttle`].
pub fn name_subject(name: &str) -> String {
    format!("name:{}", escape(name))
}

/// Key of a GCRA counter.
pub fn rate_key(subject: &str, kind: &str, rate: Rate) -> String {
    format!("{subject}/{kind}/{}/{}", rate.count, rate.period_ms)
}

/// Key of a lockout (its "TAT" is the end of the lockout, Unix ms).
pub fn lockout_key(subject: &str) -> String {
    format!("{subject}/{}", kind::LOCKOUT)
}

/// A key split back into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    /// The subject with escapes undone, e.g. `user:alice`, `ip:2001:db8::/64`.
    pub subject: String,
    /// One of [`kind`].
    pub kind: String,
    /// `None` for lockouts.
    pub rate: Option<Rate>,
}

/// Parses a key made by [`rate_key`] or [`lockout_key`].
pub fn parse(key: &str) -> Option<ParsedKey> {
    let mut parts = key.split('/');
    let subject = unescape(parts.next()?);
    let kind = parts.next()?.to_string();
    let rate = match (parts.next(), parts.next()) {
        (Some(c), Some(p)) => Some(Rate::new(c.parse().ok()?, p.parse().ok()?)),
        (None, None) => None,
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(ParsedKey {
        subject,
        kind,
        rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_cannot_forge_prefixes() {
        let s = user_subject(" Ev/il%\u{0}X ");
        assert_eq!(s, "user:ev%2Fil%25%00x");
        let k = rate_key(&s, kind::AUTH_FAILURES, Rate::new(10, 900_000));
        let p = parse(&k).unwrap();
        assert_eq!(p.subject, "user:ev/il%\u{0}x");
        assert_eq!(p.kind, "auth-failures");
        assert_eq!(p.rate, Some(Rate::new(10, 900_000)));
        let l = parse(&lockout_key(&s)).unwrap();
        assert_eq!((l.kind.as_str(), l.rate), ("lockout", None));
    }

    #[test]
    fn ipv6_is_counted_per_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_subject(a, 64), ip_subject(b, 64));
        assert_ne!(ip_subject(a, 64), ip_subject(c, 64));
        assert_eq!(ip_subject(a, 64), "ip:2001:db8:1:2::%2F64");
        assert_eq!(ip_subject(a, 128), "ip:2001:db8:1:2:aaaa::1");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_subject(mapped, 64), "ip:192.0.2.7");
        assert_eq!(
            parse(&lockout_key(&ip_subject(a, 64))).unwrap().subject,
            "ip:2001:db8:1:2::/64"
        );
    }
}
