//! PURE: the body and signature of a webhook POST.
//!
//! The signature header is `X-Postgate-Signature: t=TIMESTAMP,v1=HEX`:
//! TIMESTAMP is Unix seconds when the POST was made, HEX the lower-case
//! HMAC-SHA256, keyed with the webhook's secret, of `TIMESTAMP.BODY` (the
//! decimal timestamp, a dot, the exact body bytes). A receiver recomputes
//! it, compares in constant time, and refuses a timestamp too far from its
//! clock (replays).

use aws_lc_rs::hmac;

use crate::store::DeliveryEvent;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "x-postgate-signature";

/// The header value for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// One event as JSON: its `id`, `kind`, `at` (RFC 3339) and the fields
/// that apply (absent ones are `null`). `postgate events list --json`
/// prints this; a webhook's [`body`] adds `at_ms`.
pub fn event_json(e: &DeliveryEvent) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "kind": e.kind,
        "at": crate::time::rfc3339(e.at),
        "message_id": e.message_id,
        "recipient": e.recipient,
        "sender": e.sender,
        "username": e.username,
        "upstream": e.upstream,
        "attempt": e.attempt,
        "reply": e.reply,
        "rule": e.rule,
    })
}

/// The JSON body of one POST: `{"webhook": NAME, "events": [...]}`, each
/// event its [`event_json`] plus `at_ms` (the same time in Unix ms).
pub fn body(webhook: &str, events: &[DeliveryEvent]) -> Vec<u8> {
    let events: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            let mut json = event_json(e);
            json["at_ms"] = e.at.into();
            json
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "webhook": webhook, "events": events }))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently with Python:
        // hmac.new(b"whsec_test_secret_123", b"1700000000.{}", sha256).hexdigest()
        let s = signature(b"whsec_test_secret_123", 1_700_000_000, b"{}");
        assert_eq!(
            s,
            "t=1700000000,v1=c61da39a83078801eed36e027527ac71718ca621c86556f5c44b6213bd6952cd"
        );
    }

    #[test]
    fn a_body_carries_each_event_as_listed_plus_at_ms() {
        let e = DeliveryEvent {
            id: 7,
            tx: 3,
            at: 1_700_000_000_123,
            kind: "deferred".into(),
            message_id: Some("m1".into()),
            recipient: Some("r@example.org".into()),
            sender: Some("s@example.com".into()),
            username: None,
            upstream: Some("relay".into()),
            attempt: 2,
            reply: Some("451 4.7.1 later".into()),
            rule: None,
        };
        let listed = event_json(&e);
        assert_eq!(listed["at"], "2023-11-14T22:13:20Z");
        assert_eq!(listed["attempt"], 2);
        assert!(listed.get("at_ms").is_none() && listed.get("tx").is_none());
        let sent: serde_json::Value = serde_json::from_slice(&body("hook", &[e])).unwrap();
        assert_eq!(sent["webhook"], "hook");
        let mut expected = listed;
        expected["at_ms"] = 1_700_000_000_123i64.into();
        assert_eq!(sent["events"], serde_json::json!([expected]));
    }
}
