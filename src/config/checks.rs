//! Value checks serde cannot make (issue #14): values that parse but cannot
//! work, each named by its key path, and the line of a key path in the
//! file, so value errors point at a line like syntax errors do.

use std::time::Duration;

use crate::delivery::config::TlsMode;

use super::{Config, ConfigError};

/// A value that cannot work: `(key path, message)`, e.g.
/// `("upstream[1].rate", "must be ...")`.
pub type ValueError = (String, String);

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Whether `host` is a loopback name or address.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The checks of values that serde accepted but that cannot work.
pub fn check_values(c: &Config) -> Result<(), ValueError> {
    for (i, u) in c.upstreams.iter().enumerate() {
        let key = |k: &str| format!("upstream[{i}].{k}");
        if let Some(rate) = u.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err((
                    key("rate"),
                    format!("{rate} is not a rate: give a positive number of messages per second, or remove the key for no limit"),
                ));
            }
        }
        if u.burst == 0 {
            return Err((
                key("burst"),
                "must be at least 1 (a burst of 0 would never send)".into(),
            ));
        }
        // Credentials in clear text over the network: refused unless the
        // operator says so (RFC 4954 §4: PLAIN/LOGIN need a protected channel).
        if u.tls == TlsMode::None
            && (u.username.is_some() || u.password.is_some())
            && !is_loopback(&u.host)
            && !u.allow_plaintext_auth
        {
            return Err((
                key("tls"),
                format!(
                    "tls = \"none\" would send the AUTH password in clear text to {} (not a loopback address): use \"starttls\" or \"implicit\", or set allow_plaintext_auth = true on this upstream",
                    u.host
                ),
            ));
        }
    }
    let q = &c.queue;
    if q.retry_initial > q.retry_max {
        return Err((
            "queue.retry_initial".into(),
            format!(
                "{} is longer than queue.retry_max ({}): the first retry would wait longer than any later one",
                human(q.retry_initial),
                human(q.retry_max)
            ),
        ));
    }
    if q.lifetime < q.retry_initial {
        return Err((
            "queue.lifetime".into(),
            format!(
                "{} is shorter than the first retry (queue.retry_initial = {}): a deferred message would expire before it is tried again",
                human(q.lifetime),
                human(q.retry_initial)
            ),
        ));
    }
    Ok(())
}

impl ConfigError {
    /// The same error with the line of its key in `text` (the file's
    /// contents) when it has none yet and the key is found there: value
    /// errors then read `file:line:column: key: message` like syntax errors.
    pub fn located(self, text: &str) -> ConfigError {
        match self {
            ConfigError::Invalid { file, key, message } => match key_line(text, &key) {
                Some(line) => ConfigError::Parse {
                    file,
                    line,
                    column: 1,
                    key,
                    message,
                },
                None => ConfigError::Invalid { file, key, message },
            },
            other => other,
        }
    }
}

/// The 1-based line of key path `key` (`table.key`, `table[i].key`,
/// `a.b.key`) in TOML `text`: the line setting the key inside its table,
/// else the table's header line (the key took its default), else `None`.
pub fn key_line(text: &str, key: &str) -> Option<usize> {
    let (table, leaf) = key.rsplit_once('.')?;
    let (name, index) = match table.split_once('[') {
        Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (table, None),
    };
    let mut seen = 0usize;
    let mut header_line = None;
    let mut inside = false;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let array = t.starts_with("[[");
            let header = t
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            inside = false;
            if header == name {
                match (array, index) {
                    (true, Some(i)) => {
                        if seen == i {
                            inside = true;
                        }
                        seen += 1;
                    }
                    (false, None) => inside = true,
                    _ => {}
                }
                if inside {
                    header_line = Some(n + 1);
                }
            }
            continue;
        }
        if inside {
            if let Some(rest) = t.strip_prefix(leaf) {
                if rest.trim_start().starts_with('=') {
                    return Some(n + 1);
                }
            }
        }
    }
    header_line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<Config, String> {
        Config::parse(text, "t.toml").map_err(|e| e.to_string())
    }

    const UP: &str = "[[upstream]]\nname = \"a\"\nhost = \"smtp.example.net\"\n";

    #[test]
    fn keys_are_found_in_tables_and_arrays_of_tables() {
        let text = "[queue]\nretry_max = \"1m\"\n\n[[upstream]]\nname = \"a\"\n\n[[upstream]]\nname = \"b\"\nrate = 0.0\n";
        assert_eq!(key_line(text, "queue.retry_max"), Some(2));
        assert_eq!(
            key_line(text, "queue.lifetime"),
            Some(1),
            "the header when defaulted"
        );
        assert_eq!(key_line(text, "upstream[1].rate"), Some(9));
        assert_eq!(key_line(text, "upstream[0].rate"), Some(4));
        assert_eq!(key_line(text, "limits.backend"), None);
    }

    #[test]
    fn rates_and_bursts_must_be_positive() {
        for rate in ["0.0", "-1.0", "nan"] {
            let err = config(&format!("{UP}rate = {rate}\n")).unwrap_err();
            assert!(
                err.starts_with("t.toml:4:1: upstream[0].rate: "),
                "{rate}: {err}"
            );
        }
        let err = config(&format!("{UP}burst = 0\n")).unwrap_err();
        assert_eq!(
            err,
            "t.toml:4:1: upstream[0].burst: must be at least 1 (a burst of 0 would never send)"
        );
        let err = config(&format!("{UP}burst = -2\n")).unwrap_err();
        assert!(
            err.starts_with("t.toml:4:"),
            "serde refuses a negative count: {err}"
        );
        assert!(config(&format!("{UP}rate = 0.5\nburst = 3\n")).is_ok());
    }

    #[test]
    fn retry_schedule_must_make_sense() {
        let err = config("[queue]\nretry_initial = \"2h\"\nretry_max = \"1h\"\n").unwrap_err();
        assert!(
            err.starts_with(
                "t.toml:2:1: queue.retry_initial: 2h is longer than queue.retry_max (1h)"
            ),
            "{err}"
        );
        let err = config("[queue]\nretry_initial = \"10m\"\nlifetime = \"5m\"\n").unwrap_err();
        assert!(
            err.starts_with("t.toml:3:1: queue.lifetime: 5m is shorter than the first retry"),
            "{err}"
        );
        assert!(
            config("[queue]\nretry_initial = \"1m\"\nretry_max = \"1m\"\nlifetime = \"1m\"\n")
                .is_ok()
        );
    }

    #[test]
    fn clear_text_credentials_only_to_loopback_or_when_allowed() {
        let creds = "tls = \"none\"\nusername = \"u\"\npassword = \"p\"\n";
        let err = config(&format!("{UP}{creds}")).unwrap_err();
        assert!(err.starts_with("t.toml:4:1: upstream[0].tls: "), "{err}");
        assert!(err.contains("allow_plaintext_auth"), "{err}");
        assert!(!err.contains("\"p\""), "no secret in the error: {err}");
        assert!(config(&format!("{UP}{creds}allow_plaintext_auth = true\n")).is_ok());
        for host in ["127.0.0.1", "localhost", "::1"] {
            let text = format!("[[upstream]]\nname = \"a\"\nhost = \"{host}\"\n{creds}");
            assert!(config(&text).is_ok(), "{host}");
        }
        // Without credentials, tls = "none" to anywhere stays allowed.
        assert!(config(&format!("{UP}tls = \"none\"\n")).is_ok());
    }
}
