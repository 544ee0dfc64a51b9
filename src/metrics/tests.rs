//! Unit tests of the metric catalogue and the text exposition.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::*;

/// One sample line: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of the text exposition format 0.0.4 (the subset the
/// prometheus crate writes): HELP/TYPE comments, then samples whose names
/// belong to a declared family.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let err = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .ok_or_else(|| err("HELP without text"))?;
            if help.trim().is_empty() {
                return Err(err("empty help"));
            }
            helps.insert(name.to_string(), help.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| err("TYPE without type"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(err("unknown type"));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(err("family declared twice"));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| err("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| err("bad value"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| err("unclosed labels"))?;
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").ok_or_else(|| err("bad label"))?;
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(err("bad metric name"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            .unwrap_or(&name)
            .to_string();
        if !types.contains_key(&family) || !helps.contains_key(&family) {
            return Err(err("sample of an undeclared family"));
        }
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(samples)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn render(m: &Metrics) -> Vec<Sample> {
    parse_exposition(&m.render()).expect("render parses")
}

#[test]
fn catalogue_follows_the_naming_conventions() {
    let m = Metrics::new(&MetricsOptions::default());
    let cat = m.catalogue();
    assert!(cat.len() >= 25, "catalogue has {} entries", cat.len());
    let mut names = std::collections::HashSet::new();
    for info in cat {
        assert!(names.insert(info.name.clone()), "{} twice", info.name);
        assert!(info.name.starts_with("postgate_"), "{}", info.name);
        assert!(!info.help.is_empty(), "{} has no help", info.name);
        match info.kind {
            MetricKind::Counter => assert!(info.name.ends_with("_total"), "{}", info.name),
            _ => assert!(!info.name.ends_with("_total"), "{}", info.name),
        }
        if info.kind == MetricKind::Histogram {
            assert!(
                info.name.ends_with("_seconds") || info.name.ends_with("_bytes"),
                "{}",
                info.name
            );
        }
        for label in &info.labels {
            assert!(
                [
                    "listener",
                    "tls",
                    "reason",
                    "mechanism",
                    "result",
                    "scope",
                    "limit",
                    "upstream",
                    "cause",
                    "algorithm",
                    "operation",
                    "user",
                    "version",
                    "webhook"
                ]
                .contains(&label.as_str()),
                "{} has unexpected label {label}",
                info.name
            );
        }
    }
}

#[test]
fn fresh_render_parses_and_has_zeroed_series() {
    let m = Metrics::new(&MetricsOptions::default());
    let s = render(&m);
    assert_eq!(
        value(
            &s,
            "postgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_auth_attempts_total",
            &[("mechanism", "login"), ("result", "locked_out")]
        ),
        Some(0.0)
    );
    assert_eq!(value(&s, "postgate_messages_queued_total", &[]), Some(0.0));
    assert_eq!(value(&s, "postgate_queue_depth", &[]), Some(0.0));
}

#[test]
fn counters_move() {
    let m = Metrics::new(&MetricsOptions::default());
    let l = m.listener("submission", TlsMode::Starttls);
    l.connection_accepted();
    l.connection_accepted();
    l.connection_refused(ConnectionRefusal::IpCap);
    l.tls_handshake_failed();
    l.set_certificate_expiry(1_900_000_000);
    let guard = l.session_started();
    m.auth_attempt(Mechanism::Plain, AuthResult::Failed);
    m.auth_attempt(Mechanism::Plain, AuthResult::Failed);
    m.auth_attempt(Mechanism::Login, AuthResult::Success);
    m.message_received();
    m.message_rejected(RejectReason::TooLarge);
    m.message_queued(Some("alice"), 3, 2048);
    m.rate_limited(LimitScope::Ip, LimitKind::AuthFailures);
    m.set_queue_stats(7, Duration::from_secs(90));
    m.dkim_signature(DkimAlgorithm::Ed25519Sha256, DkimResult::Signed);
    m.store_operation(StoreOperation::Enqueue, Duration::from_millis(3), false);
    m.store_operation(StoreOperation::Claim, Duration::from_millis(3), true);
    let up = m.upstream("ses");
    up.attempts(DeliveryResult::Deferred, 2);
    up.transaction_duration(Duration::from_millis(300));
    up.set_circuit(CircuitState::Open);
    m.bounce_generated();

    let s = render(&m);
    let sub = [("listener", "submission")];
    assert_eq!(
        value(
            &s,
            "postgate_connections_total",
            &[("listener", "submission"), ("tls", "starttls")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_connections_refused_total",
            &[("listener", "submission"), ("reason", "ip_cap")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_connections_refused_total",
            &[("listener", "submission"), ("reason", "global_cap")]
        ),
        Some(0.0)
    );
    assert_eq!(value(&s, "postgate_sessions_active", &sub), Some(1.0));
    assert_eq!(
        value(&s, "postgate_tls_handshake_failures_total", &sub),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_tls_certificate_expiry_timestamp_seconds",
            &sub
        ),
        Some(1.9e9)
    );
    assert_eq!(
        value(
            &s,
            "postgate_auth_attempts_total",
            &[("mechanism", "plain"), ("result", "failed")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_auth_attempts_total",
            &[("mechanism", "login"), ("result", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "postgate_messages_received_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_messages_rejected_total",
            &[("reason", "too_large")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&s, "postgate_messages_queued_total", &[]), Some(1.0));
    assert_eq!(value(&s, "postgate_recipients_total", &[]), Some(3.0));
    assert_eq!(
        value(&s, "postgate_message_size_bytes_sum", &[]),
        Some(2048.0)
    );
    assert_eq!(
        value(&s, "postgate_message_size_bytes_bucket", &[("le", "4096")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "postgate_message_size_bytes_bucket", &[("le", "1024")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_rate_limit_rejections_total",
            &[("scope", "ip"), ("limit", "auth_failures")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&s, "postgate_queue_depth", &[]), Some(7.0));
    assert_eq!(
        value(&s, "postgate_queue_oldest_message_age_seconds", &[]),
        Some(90.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_dkim_signatures_total",
            &[("algorithm", "ed25519-sha256"), ("result", "signed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_store_operation_duration_seconds_count",
            &[("operation", "enqueue")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_store_errors_total",
            &[("operation", "enqueue")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "postgate_store_errors_total", &[("operation", "claim")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_delivery_attempts_total",
            &[("upstream", "ses"), ("result", "deferred")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_delivery_attempts_total",
            &[("upstream", "ses"), ("result", "delivered")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_delivery_duration_seconds_count",
            &[("upstream", "ses")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "postgate_upstream_circuit_state",
            &[("upstream", "ses")]
        ),
        Some(2.0)
    );
    assert_eq!(value(&s, "postgate_bounces_total", &[]), Some(1.0));
    // Per-user metrics are off by default: no user series at all.
    assert!(s.iter().all(|x| !x.name.starts_with("postgate_user_")));

    drop(guard);
    let s = render(&m);
    assert_eq!(value(&s, "postgate_sessions_active", &sub), Some(0.0));
}

#[test]
fn per_user_series_are_capped() {
    let m = Metrics::new(&MetricsOptions {
        per_user: true,
        per_user_cap: 2,
    });
    m.message_queued(Some("alice"), 1, 100);
    m.message_queued(Some("bob"), 2, 100);
    m.message_queued(Some("carol"), 4, 100);
    m.message_queued(Some("dave"), 8, 100);
    m.message_queued(Some("alice"), 1, 100);
    m.message_queued(None, 1, 100);
    let s = render(&m);
    let users: std::collections::BTreeSet<_> = s
        .iter()
        .filter(|x| x.name == "postgate_user_messages_total")
        .map(|x| x.labels["user"].clone())
        .collect();
    assert_eq!(
        users.into_iter().collect::<Vec<_>>(),
        vec!["_other", "alice", "bob"]
    );
    assert_eq!(
        value(&s, "postgate_user_messages_total", &[("user", "alice")]),
        Some(2.0)
    );
    assert_eq!(
        value(&s, "postgate_user_recipients_total", &[("user", "_other")]),
        Some(12.0)
    );
    assert_eq!(
        value(&s, "postgate_user_message_bytes_total", &[("user", "bob")]),
        Some(100.0)
    );
    assert_eq!(value(&s, "postgate_messages_queued_total", &[]), Some(6.0));
}

#[test]
fn the_parser_rejects_broken_exposition() {
    assert!(
        parse_exposition("postgate_x 1\n").is_err(),
        "undeclared family"
    );
    assert!(parse_exposition("# HELP a h\n# TYPE a counter\na{b=\"c\" 1\n").is_err());
    assert!(parse_exposition("# HELP a h\n# TYPE a counter\na one\n").is_err());
    assert!(parse_exposition("# HELP a h\n# TYPE a counter\na 1\n").is_ok());
}

#[test]
fn label_values_are_distinct_per_enum() {
    fn distinct(v: Vec<&'static str>) {
        let set: std::collections::HashSet<_> = v.iter().collect();
        assert_eq!(set.len(), v.len(), "{v:?}");
    }
    distinct(RejectReason::ALL.iter().map(|r| r.as_str()).collect());
    distinct(StoreOperation::ALL.iter().map(|r| r.as_str()).collect());
    distinct(ConnectionRefusal::ALL.iter().map(|r| r.as_str()).collect());
    distinct(LimitKind::ALL.iter().map(|r| r.as_str()).collect());
}
