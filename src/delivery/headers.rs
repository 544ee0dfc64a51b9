//! PURE: per-upstream header additions (`[[upstream]] add_headers`), e.g.
//! the `X-SES-CONFIGURATION-SET` a provider reads. The fields are put
//! above the stored message, DKIM signatures included: a field added on
//! top never changes what a signature covers (RFC 6376 §5.4.2: verifiers
//! take signed fields from the bottom up), and fields that signers cover
//! or that carry the message's identity or trace are refused.

use std::collections::BTreeMap;

use bytes::Bytes;

/// RFC 5322 §2.1.1: a line is at most 998 characters.
const MAX_LINE: usize = 998;

/// Fields that cannot be added: the ones postgate's DKIM signer covers
/// ([`crate::dkim::SIGNED_HEADERS`]), trace fields (RFC 5321 §4.4) and
/// signature/authentication fields, which only their authors may write.
const REFUSED: &[&str] = &[
    "received",
    "return-path",
    "dkim-signature",
    "arc-seal",
    "arc-message-signature",
    "arc-authentication-results",
    "authentication-results",
];

/// Checks one field to add: `name` is a field name (RFC 5322 §3.6.8:
/// printable ASCII except `:`), not one of the refused fields; `value`
/// is printable ASCII, spaces and tabs only (no CR or LF: one field can
/// never become two or end the header), and the line fits in 998
/// characters. The error says what is wrong, never more than the name.
pub fn check(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(format!(
            "{name:?} is not a header field name (printable ASCII without spaces or ':')"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if REFUSED.contains(&lower.as_str())
        || crate::dkim::SIGNED_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    {
        return Err(format!(
            "{name:?} may not be added: it is a field of the message itself, a trace or \
             signature field, or one that DKIM signs (add provider fields such as \
             X-SES-CONFIGURATION-SET)"
        ));
    }
    if value.contains(['\r', '\n']) {
        return Err(format!("value of {name:?} contains CR or LF"));
    }
    if !value.bytes().all(|b| b == b'\t' || (32..=126).contains(&b)) {
        return Err(format!(
            "value of {name:?} must be printable ASCII (no control characters, no 8-bit)"
        ));
    }
    if value.trim().is_empty() {
        return Err(format!("value of {name:?} is empty"));
    }
    if name.len() + 2 + value.len() > MAX_LINE {
        return Err(format!(
            "{name:?}: the field is longer than {MAX_LINE} characters (RFC 5322 §2.1.1)"
        ));
    }
    Ok(())
}

/// Checks every field of `fields` ([`check`]) and that no name is given
/// twice in different case.
pub fn check_all(fields: &BTreeMap<String, String>) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (name, value) in fields {
        check(name, value)?;
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(format!("{name:?} is given twice"));
        }
    }
    Ok(())
}

/// The fields as header lines (`Name: value` CRLF each), in name order;
/// empty for none. Call after [`check_all`].
pub fn render(fields: &BTreeMap<String, String>) -> Bytes {
    let mut out = String::new();
    for (name, value) in fields {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value.trim());
        out.push_str("\r\n");
    }
    Bytes::from(out)
}

/// `prefix` put above `message`; `message` itself when `prefix` is empty
/// (no copy).
pub fn prepend(prefix: &Bytes, message: &Bytes) -> Bytes {
    if prefix.is_empty() {
        return message.clone();
    }
    let mut out = Vec::with_capacity(prefix.len() + message.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(message);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn good_fields_render_above_the_message() {
        let f = map(&[("X-SES-CONFIGURATION-SET", "marketing"), ("X-Tag", " a b ")]);
        check_all(&f).unwrap();
        let prefix = render(&f);
        assert_eq!(
            &prefix[..],
            b"X-SES-CONFIGURATION-SET: marketing\r\nX-Tag: a b\r\n"
        );
        let msg = Bytes::from_static(b"From: a@b.c\r\n\r\nhi\r\n");
        assert_eq!(
            &prepend(&prefix, &msg)[..],
            b"X-SES-CONFIGURATION-SET: marketing\r\nX-Tag: a b\r\nFrom: a@b.c\r\n\r\nhi\r\n"
        );
        let none = render(&BTreeMap::new());
        assert!(none.is_empty());
        assert_eq!(prepend(&none, &msg), msg);
    }

    #[test]
    fn bad_fields_are_refused_with_the_reason() {
        let cases: &[(&str, &str, &str)] = &[
            ("X-A", "x\r\nBcc: evil@example.com", "CR or LF"),
            ("X-A", "x\ny", "CR or LF"),
            ("X-A", "caf\u{e9}", "printable ASCII"),
            ("X-A", "a\u{7}b", "printable ASCII"),
            ("X-A", "  ", "empty"),
            ("X A", "v", "not a header field name"),
            ("X:A", "v", "not a header field name"),
            ("", "v", "not a header field name"),
            ("From", "a@b.c", "may not be added"),
            ("subject", "hi", "may not be added"),
            ("Received", "x", "may not be added"),
            ("DKIM-Signature", "x", "may not be added"),
        ];
        for (name, value, want) in cases {
            let e = check(name, value).unwrap_err();
            assert!(e.contains(want), "{name:?}={value:?}: {e}");
        }
        let long = "v".repeat(991);
        check("X-Long", &long[1..]).unwrap();
        assert!(check("X-Long", &long).unwrap_err().contains("998"));
        let e = check_all(&map(&[("X-Tag", "a"), ("x-tag", "b")])).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }
}
