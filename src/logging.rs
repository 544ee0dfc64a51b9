//! Log output: `tracing` events written to stderr by tracing-subscriber, as
//! human-readable lines or one JSON object per line.
//!
//! The filter comes from `[log] filter` (default `info`), and `RUST_LOG`
//! overrides it when set. Colours are used only when stderr is a terminal.
//!
//! # Field conventions
//!
//! Operators search logs by these fields; every module uses the same names
//! and meanings, so one query finds a message across its whole path.
//!
//! | field        | where                                   | value |
//! | ---          | ---                                     | --- |
//! | `session`    | span `session` around a whole SMTP session | the session id (hex), unique per connection |
//! | `queue_id`   | recorded on the session span once queued, and on delivery spans | the queue id (32 hex digits) |
//! | `peer`       | connect event                           | client `ip:port` (after PROXY header) |
//! | `listener`   | connect event                           | the listener's configured name |
//! | `helo`       | `ehlo` / `helo` events                  | the client's EHLO/HELO argument (escaped like every client string) |
//! | `tls`        | TLS event                               | protocol version and cipher suite |
//! | `mechanism`  | auth events                             | `plain` or `login` |
//! | `user`       | auth and queued events                  | the authenticated username (lower-case) |
//! | `credential` | auth and queued events                  | the credential label (never a password or hash) |
//! | `sender`     | queued, bounced                         | envelope MAIL FROM |
//! | `rcpts`      | queued, delivery events                 | number of recipients (never the list at `info`) |
//! | `size`       | queued                                  | message size in bytes as stored |
//! | `upstream`   | delivery events                         | the upstream's configured name |
//! | `reply`      | rejections and delivery events          | the SMTP reply, code, enhanced code and text |
//! | `error`      | any failure                             | the error's display text (secrets already redacted) |
//!
//! One `info` line per lifecycle event, whose message is the event name:
//! `connect`, `tls`, `auth ok`, `auth failed`, `queued`, `delivered`,
//! `deferred`, `failed`, `bounced`, `disconnect`. For example:
//!
//! ```ignore
//! let span = tracing::info_span!("session", session = %id, queue_id = tracing::field::Empty);
//! // ... inside the span:
//! tracing::info!(user = %user, credential = %label, mechanism = "plain", "auth ok");
//! span.record("queue_id", tracing::field::display(&queue_id));
//! tracing::info!(sender = %from, rcpts = n, size = bytes, "queued");
//! ```
//!
//! Secrets (passwords, AUTH payloads, upstream credentials, key material,
//! database URLs with passwords) are never logged, at any level.
//!
//! Client-supplied strings (AUTH usernames, HELO, addresses, replies) can
//! never forge a line: in the human format every field value with a space,
//! quote, backslash, `=` or control character is quoted and escaped (CR,
//! LF, ESC become `\r`, `\n`, `\u{1b}`), in JSON the string escaping
//! does it; in both, every value is capped at [`MAX_FIELD_CHARS`]
//! characters (see `safe.rs`).

mod safe;

use std::io::IsTerminal;

pub use safe::MAX_FIELD_CHARS;

use serde::{Deserialize, Serialize};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-11-23T16:00:00Z  INFO session{session=…}: postgate: queued sender=…`
    #[default]
    Human,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's
    /// fields (flattened, with `message`), `span` (the innermost span's
    /// fields) and `spans` (every enclosing span, outermost first), so
    /// `session` and `queue_id` are found even inside nested spans.
    Json,
}

/// The `[log]` section of the config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` (default) or `json`.
    pub format: LogFormat,
    /// An `EnvFilter` directive list, e.g. `info` (default) or
    /// `info,postgate::delivery=debug`. `RUST_LOG` replaces it when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            filter: "info".to_string(),
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter directives do not parse; names where they came from.
    #[error("invalid log filter {directives:?} (from {source_name}): {reason}")]
    Filter {
        directives: String,
        source_name: &'static str,
        reason: String,
    },
    /// A global subscriber was installed already.
    #[error("logging is already initialised")]
    AlreadyInitialised,
}

/// Builds the filter: `rust_log` (the value of `RUST_LOG`) when set and not
/// empty, else `config.filter`. Invalid directives are an error, not ignored.
pub fn filter(config: &LogConfig, rust_log: Option<&str>) -> Result<EnvFilter, LoggingError> {
    let (directives, source_name) = match rust_log {
        Some(v) if !v.trim().is_empty() => (v, "RUST_LOG"),
        _ => (config.filter.as_str(), "[log] filter"),
    };
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| LoggingError::Filter {
            directives: directives.to_string(),
            source_name,
            reason: e.to_string(),
        })
}

/// Installs the global subscriber writing to stderr. Call once, early in
/// `main`. Returns an error when the filter is invalid or a subscriber exists.
pub fn init(config: &LogConfig) -> Result<(), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(config, rust_log.as_deref())?;
    let ansi = std::io::stderr().is_terminal();
    let dispatch = dispatch(config.format, filter, std::io::stderr, ansi);
    tracing::dispatcher::set_global_default(dispatch).map_err(|_| LoggingError::AlreadyInitialised)
}

/// A dispatcher in `format` writing to `writer` (stderr in production, a
/// buffer in tests).
pub fn dispatch<W>(format: LogFormat, filter: EnvFilter, writer: W, ansi: bool) -> tracing::Dispatch
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => tracing::Dispatch::new(
            builder
                .fmt_fields(safe::SafeFields)
                .with_writer(writer)
                .finish(),
        ),
        LogFormat::Json => tracing::Dispatch::new(
            builder
                .with_writer(safe::CappedJson(writer))
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn session_events() {
        let span = tracing::info_span!(
            "session",
            session = "9f1c",
            queue_id = tracing::field::Empty
        );
        let _enter = span.enter();
        tracing::debug!("hidden at info");
        tracing::info!(user = "alice", credential = "laptop", "auth ok");
        span.record("queue_id", "0191aa");
        tracing::info!(sender = "a@example.com", rcpts = 2, size = 1234, "queued");
    }

    #[test]
    fn rust_log_overrides_the_config_filter() {
        let config = LogConfig {
            filter: "warn".into(),
            ..LogConfig::default()
        };
        assert_eq!(filter(&config, None).unwrap().to_string(), "warn");
        assert_eq!(filter(&config, Some("  ")).unwrap().to_string(), "warn");
        assert_eq!(
            filter(&config, Some("postgate=debug")).unwrap().to_string(),
            "postgate=debug"
        );
    }

    #[test]
    fn invalid_filters_name_their_source() {
        let config = LogConfig {
            filter: "info,[".into(),
            ..LogConfig::default()
        };
        let err = filter(&config, None).unwrap_err().to_string();
        assert!(err.contains("[log] filter"), "{err}");
        let err = filter(&LogConfig::default(), Some("=bad=")).unwrap_err();
        assert!(err.to_string().contains("RUST_LOG"), "{err}");
    }

    #[test]
    fn json_lines_carry_session_and_queue_id() {
        let buf = Buffer::default();
        let d = dispatch(LogFormat::Json, EnvFilter::new("info"), buf.clone(), false);
        tracing::dispatcher::with_default(&d, session_events);
        let text = buf.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "auth ok");
        assert_eq!(lines[0]["user"], "alice");
        assert_eq!(lines[0]["span"]["session"], "9f1c");
        assert_eq!(lines[1]["message"], "queued");
        assert_eq!(lines[1]["rcpts"], 2);
        assert_eq!(lines[1]["span"]["queue_id"], "0191aa");
        assert_eq!(lines[1]["span"]["session"], "9f1c");
        assert_eq!(lines[1]["spans"][0]["name"], "session");
        assert_eq!(lines[1]["spans"][0]["queue_id"], "0191aa");
    }

    #[test]
    fn human_lines_are_plain_text_with_the_fields() {
        let buf = Buffer::default();
        let d = dispatch(LogFormat::Human, EnvFilter::new("info"), buf.clone(), false);
        tracing::dispatcher::with_default(&d, session_events);
        let text = buf.text();
        assert!(!text.contains('\u{1b}'), "no ANSI escapes: {text:?}");
        assert!(!text.contains("hidden at info"));
        let queued = text.lines().find(|l| l.contains("queued")).unwrap();
        assert!(queued.contains("session=\"9f1c\""), "{queued}");
        assert!(queued.contains("queue_id=\"0191aa\""), "{queued}");
        assert!(queued.contains("size=1234"), "{queued}");
    }

    /// Client input with CR, LF, ESC, quotes and `key=value` text, logged
    /// as Display (`%`), Debug-free string and message argument.
    fn hostile_events() {
        let user = "bob\r\n2026-12-06T00:00:00Z  INFO postgate: auth ok user=admin\u{1b}[2J";
        let helo = "x\" forged=\"1";
        let span = tracing::info_span!("session", session = "s1");
        let _enter = span.enter();
        tracing::info!(username = %user, helo = %helo, plain = %"alice", "auth failed");
        tracing::info!(reply = user, "upstream said");
        tracing::info!("message with {user}");
        tracing::info!(long = %"x".repeat(5000), "long");
    }

    #[test]
    fn human_lines_cannot_be_forged_by_field_values() {
        let buf = Buffer::default();
        let d = dispatch(LogFormat::Human, EnvFilter::new("info"), buf.clone(), false);
        tracing::dispatcher::with_default(&d, hostile_events);
        let text = buf.text();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
        let first = text.lines().next().unwrap();
        assert!(
            first.contains(
                r#"username="bob\r\n2026-12-06T00:00:00Z  INFO postgate: auth ok user=admin\u{1b}[2J""#
            ),
            "{first}"
        );
        assert!(first.contains(r#"helo="x\" forged=\"1""#), "{first}");
        assert!(first.contains(" plain=alice"), "{first}");
        let long = text.lines().nth(3).unwrap();
        assert!(long.contains("…[+3976 chars]"), "{long}");
        assert!(long.len() < 1200, "{}", long.len());
    }

    #[test]
    fn json_lines_are_escaped_and_capped() {
        let buf = Buffer::default();
        let d = dispatch(LogFormat::Json, EnvFilter::new("info"), buf.clone(), false);
        tracing::dispatcher::with_default(&d, hostile_events);
        let text = buf.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
        assert!(lines[0]["username"]
            .as_str()
            .unwrap()
            .starts_with("bob\r\n"));
        assert_eq!(lines[0]["span"]["session"], "s1");
        let long = lines[3]["long"].as_str().unwrap();
        assert!(long.ends_with("…[+3976 chars]"), "{long}");
    }

    #[test]
    fn config_section_rejects_unknown_keys() {
        let c: LogConfig = toml::from_str("format = \"json\"\nfilter = \"debug\"").unwrap();
        assert_eq!(c.format, LogFormat::Json);
        assert_eq!(c.filter, "debug");
        let c: LogConfig = toml::from_str("").unwrap();
        assert_eq!(c.format, LogFormat::Human);
        assert_eq!(c.filter, "info");
        assert!(toml::from_str::<LogConfig>("level = \"info\"").is_err());
        assert!(toml::from_str::<LogConfig>("format = \"xml\"").is_err());
    }
}
