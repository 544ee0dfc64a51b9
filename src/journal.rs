//! Journaling copies (issue #17 item 4): `[journal]` / `[[journal]]` name
//! an archive address, optionally only for some users or sender domains.
//! Intake adds the copy of each accepted message to the same store
//! transaction as the message itself ([`NewMessage::journal`]), so one is
//! never queued without the other.
//!
//! The copy is the stored message (after fixups and DKIM signing, byte for
//! byte) below a few `X-Postgate-Journal-*` header lines that record the
//! envelope. It has the null reverse-path (RFC 5321 §4.5.5: it never
//! bounces and no DSN is ever sent about it), no user (it is not counted
//! against anyone's rates or quotas) and no events; delivery retries it
//! like any message and counts its failures
//! (`postgate_journal_failures_total`).

use serde::{Deserialize, Deserializer, Serialize};

use crate::store::{new_queue_id, NewMessage, NewRecipient};

/// One `[journal]` entry: copies go to `address` for the messages of
/// `users` (any when empty) whose envelope sender is at one of
/// `sender_domains` (any when empty).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JournalRule {
    /// The archive mailbox.
    pub address: String,
    /// Only messages submitted by these users (default: any).
    #[serde(default)]
    pub users: Vec<String>,
    /// Only messages whose envelope sender is at one of these domains
    /// (exact domain, any case; default: any).
    #[serde(default)]
    pub sender_domains: Vec<String>,
}

impl JournalRule {
    /// Whether a message of `username` from `sender` is journaled here.
    pub fn matches(&self, username: &str, sender: &str) -> bool {
        let user_ok = self.users.is_empty() || self.users.iter().any(|u| u == username);
        let domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
        let domain_ok = self.sender_domains.is_empty()
            || self
                .sender_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain));
        user_ok && domain_ok
    }
}

/// `journal` in the config file: a single `[journal]` table or a list of
/// `[[journal]]` tables.
pub fn deserialize_rules<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<JournalRule>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(JournalRule),
        Many(Vec<JournalRule>),
    }
    match OneOrMany::deserialize(de) {
        Ok(OneOrMany::One(r)) => Ok(vec![r]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(
            "expected [journal] or [[journal]] with `address` and optional `users`, \
             `sender_domains` (lists of strings)",
        )),
    }
}

/// Checks every entry; the error names the key (`journal.KEY`) and entry.
pub fn validate(rules: &[JournalRule]) -> Result<(), (String, String)> {
    for (i, r) in rules.iter().enumerate() {
        let at = |key: &str| format!("journal[{i}].{key}");
        if let Err(why) = check_address(&r.address) {
            return Err((at("address"), format!("{:?}: {why}", r.address)));
        }
        if let Some(u) = r.users.iter().find(|u| u.trim().is_empty()) {
            return Err((at("users"), format!("{u:?} is not a user name")));
        }
        if let Some(d) = r.sender_domains.iter().find(|d| {
            d.is_empty() || d.contains('@') || d.chars().any(|c| c.is_whitespace() || c == '<')
        }) {
            return Err((
                at("sender_domains"),
                format!("{d:?} is not a domain (write example.com, not a@example.com)"),
            ));
        }
    }
    Ok(())
}

/// A mailbox `local@domain` that fits one header line and one SMTP path.
fn check_address(a: &str) -> Result<(), &'static str> {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return Err("must be a mailbox such as archive@example.com");
    };
    if local.is_empty() || domain.is_empty() || domain.starts_with('.') || domain.ends_with('.') {
        return Err("must be a mailbox such as archive@example.com");
    }
    if a.len() > 254 {
        return Err("longer than 254 octets (RFC 5321 §4.5.3.1.3)");
    }
    if a.chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | ',' | ';'))
    {
        return Err("write the bare address, without spaces, brackets or separators");
    }
    Ok(())
}

/// The journal of a running node: the configured rules.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    rules: Vec<JournalRule>,
}

impl Journal {
    /// `None` when no rule is configured (journaling off).
    pub fn new(rules: &[JournalRule]) -> Option<Journal> {
        (!rules.is_empty()).then(|| Journal {
            rules: rules.to_vec(),
        })
    }

    /// The distinct archive addresses for a message of `username` from
    /// `sender`, in configuration order.
    pub fn addresses(&self, username: &str, sender: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in self.rules.iter().filter(|r| r.matches(username, sender)) {
            if !out.iter().any(|a| a.eq_ignore_ascii_case(&r.address)) {
                out.push(&r.address);
            }
        }
        out
    }

    /// The journal copy of `original` (final body, envelope, queue id), or
    /// `None` when no rule matches it. One copy for all matching archive
    /// addresses: each receives it once.
    pub fn copy_of(&self, original: &NewMessage) -> Option<NewMessage> {
        let username = original.username.as_deref().unwrap_or("");
        let addresses = self.addresses(username, &original.sender);
        if addresses.is_empty() {
            return None;
        }
        let recipients: Vec<&str> = original
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        let mut head = envelope_headers(&original.id, username, &original.sender, &recipients);
        head.extend_from_slice(&original.body);
        Some(NewMessage {
            id: new_queue_id(),
            sender: String::new(),
            recipients: addresses
                .into_iter()
                .map(|a| NewRecipient {
                    address: a.to_string(),
                    notify: Some("NEVER".into()),
                    orcpt: None,
                })
                .collect(),
            user_id: None,
            username: None,
            credential: None,
            body: head.into(),
            envid: None,
            dsn_ret: None,
            is_dsn: false,
            smtputf8: original.smtputf8,
            received_at: original.received_at,
            expires_at: original.expires_at,
            journal: None,
        })
    }
}

/// Whether a queued message is a journal copy: the null reverse-path on a
/// message postgate did not generate as a DSN (submissions never have it).
pub fn is_copy(sender: &str, is_dsn: bool) -> bool {
    sender.is_empty() && !is_dsn
}

/// Counts the recipients of a journal copy that `outcomes` did not deliver.
pub fn count_failures(
    metrics: &crate::metrics::JournalMetrics,
    outcomes: &[crate::store::RecipientOutcome],
) {
    use crate::metrics::JournalFailure;
    use crate::store::OutcomeKind;
    let (mut deferred, mut failed, mut expired) = (0, 0, 0);
    for o in outcomes {
        match o.kind {
            OutcomeKind::Delivered => {}
            // A release without an attempt (shutdown) is no failure.
            OutcomeKind::Deferred { .. } if !o.log => {}
            OutcomeKind::Deferred { .. } => deferred += 1,
            OutcomeKind::Failed => failed += 1,
            OutcomeKind::Expired => expired += 1,
        }
    }
    metrics.failed(JournalFailure::Deferred, deferred);
    metrics.failed(JournalFailure::Failed, failed);
    metrics.failed(JournalFailure::Expired, expired);
}

/// The header lines recording the original envelope, one recipient per
/// line (so no line nears the 998-octet limit of RFC 5322 §2.1.1).
pub fn envelope_headers(
    queue_id: &str,
    username: &str,
    sender: &str,
    recipients: &[&str],
) -> Vec<u8> {
    let mut h = String::new();
    let mut line = |name: &str, value: &str| {
        h.push_str("X-Postgate-Journal-");
        h.push_str(name);
        h.push_str(": ");
        // Addresses come from parsed SMTP paths or validated JSON; a
        // control character can still never start a new header line.
        h.extend(value.chars().map(|c| if c.is_control() { '?' } else { c }));
        h.push_str("\r\n");
    };
    line("Queue-Id", queue_id);
    line("User", username);
    line("Sender", &format!("<{sender}>"));
    for r in recipients {
        line("Recipient", &format!("<{r}>"));
    }
    h.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "t.toml").map_err(|e| e.to_string())
    }

    fn message(user: &str, sender: &str, rcpts: &[&str]) -> NewMessage {
        NewMessage {
            id: "q1".into(),
            sender: sender.into(),
            recipients: rcpts
                .iter()
                .map(|a| NewRecipient {
                    address: a.to_string(),
                    notify: None,
                    orcpt: None,
                })
                .collect(),
            user_id: Some(7),
            username: Some(user.into()),
            credential: Some("c".into()),
            body: bytes::Bytes::from_static(b"From: a@x.org\r\nSubject: s\r\n\r\nbody\r\n"),
            envid: Some("e".into()),
            dsn_ret: Some("FULL".into()),
            is_dsn: false,
            smtputf8: false,
            received_at: 1000,
            expires_at: 2000,
            journal: None,
        }
    }

    #[test]
    fn one_table_or_a_list_of_tables() {
        let c = parse("[journal]\naddress = \"archive@corp.example\"\n").unwrap();
        assert_eq!(c.journal.len(), 1);
        assert!(c.journal[0].users.is_empty());
        let c = parse(
            "[[journal]]\naddress = \"a@corp.example\"\nusers = [\"alice\"]\n\
             [[journal]]\naddress = \"b@corp.example\"\nsender_domains = [\"x.org\"]\n",
        )
        .unwrap();
        assert_eq!(c.journal.len(), 2);
        assert_eq!(c.journal[1].sender_domains, ["x.org"]);
        assert!(parse("").unwrap().journal.is_empty());
    }

    #[test]
    fn bad_entries_are_refused_naming_the_key() {
        let cases = [
            ("[journal]\naddress = \"archive\"\n", "journal[0].address"),
            ("[journal]\naddress = \"a b@x.org\"\n", "journal[0].address"),
            ("[journal]\naddress = \"<a@x.org>\"\n", "journal[0].address"),
            ("[journal]\naddress = \"a@\"\n", "journal[0].address"),
            (
                "[[journal]]\naddress = \"a@x.org\"\n[[journal]]\naddress = \"b@x.org\"\nsender_domains = [\"u@x.org\"]\n",
                "journal[1].sender_domains",
            ),
            (
                "[journal]\naddress = \"a@x.org\"\nusers = [\"\"]\n",
                "journal[0].users",
            ),
            ("[journal]\naddres = \"a@x.org\"\n", "journal"),
            ("[journal]\naddress = \"a@x.org\"\nusers = \"alice\"\n", "journal"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn scoping_by_user_and_sender_domain() {
        let j = Journal::new(&[
            JournalRule {
                address: "all@arch.example".into(),
                users: vec![],
                sender_domains: vec![],
            },
            JournalRule {
                address: "legal@arch.example".into(),
                users: vec!["alice".into()],
                sender_domains: vec!["X.org".into()],
            },
            JournalRule {
                address: "ALL@arch.example".into(),
                users: vec!["bob".into()],
                sender_domains: vec![],
            },
        ])
        .unwrap();
        assert_eq!(
            j.addresses("alice", "a@x.org"),
            ["all@arch.example", "legal@arch.example"]
        );
        assert_eq!(j.addresses("alice", "a@y.org"), ["all@arch.example"]);
        assert_eq!(j.addresses("bob", "b@x.org"), ["all@arch.example"]);
        assert!(Journal::new(&[]).is_none());
    }

    #[test]
    fn the_copy_is_the_original_below_its_envelope() {
        let j = Journal::new(&[JournalRule {
            address: "arch@arch.example".into(),
            users: vec![],
            sender_domains: vec!["x.org".into()],
        }])
        .unwrap();
        let m = message("alice", "a@x.org", &["b@y.org", "c@z.org"]);
        let c = j.copy_of(&m).unwrap();
        assert_eq!(
            std::str::from_utf8(&c.body).unwrap(),
            "X-Postgate-Journal-Queue-Id: q1\r\n\
             X-Postgate-Journal-User: alice\r\n\
             X-Postgate-Journal-Sender: <a@x.org>\r\n\
             X-Postgate-Journal-Recipient: <b@y.org>\r\n\
             X-Postgate-Journal-Recipient: <c@z.org>\r\n\
             From: a@x.org\r\nSubject: s\r\n\r\nbody\r\n"
        );
        assert!(c.sender.is_empty() && !c.is_dsn && c.journal.is_none());
        assert!(is_copy(&c.sender, c.is_dsn));
        assert_ne!(c.id, m.id);
        assert_eq!((c.user_id, c.username.as_deref()), (None, None));
        assert_eq!(c.recipients.len(), 1);
        assert_eq!(c.recipients[0].address, "arch@arch.example");
        assert_eq!(c.recipients[0].notify.as_deref(), Some("NEVER"));
        assert_eq!((c.received_at, c.expires_at), (1000, 2000));
        assert!(j
            .copy_of(&message("alice", "a@other.org", &["b@y.org"]))
            .is_none());
    }

    #[test]
    fn failures_are_counted_by_result_and_releases_are_not() {
        use crate::store::{OutcomeKind, RecipientOutcome};
        let o = |kind: OutcomeKind, log: bool| RecipientOutcome {
            recipient_id: 1,
            kind,
            upstream: None,
            reply: None,
            log,
        };
        let later = |count_attempt| OutcomeKind::Deferred {
            next_attempt_at: 5,
            route_index: 0,
            count_attempt,
        };
        let m = crate::metrics::Metrics::detached();
        count_failures(
            m.journal(),
            &[
                o(OutcomeKind::Delivered, true),
                o(later(true), true),
                o(later(false), false),
                o(OutcomeKind::Failed, true),
                o(OutcomeKind::Expired, true),
                o(OutcomeKind::Expired, true),
            ],
        );
        let text = m.render();
        for line in [
            "postgate_journal_failures_total{result=\"deferred\"} 1",
            "postgate_journal_failures_total{result=\"failed\"} 1",
            "postgate_journal_failures_total{result=\"expired\"} 2",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }

    #[test]
    fn control_characters_never_make_a_header_line() {
        let h = envelope_headers("q", "u\r\nBcc: x", "s@x.org", &["r@y.org\n"]);
        let text = String::from_utf8(h).unwrap();
        assert_eq!(text.matches("\r\n").count(), 4, "{text}");
        assert!(!text.contains("\nBcc"));
    }
}
