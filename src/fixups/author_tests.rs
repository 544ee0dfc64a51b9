//! The header From / Sender policy against a table of From variants: the
//! issue 12 bypasses, valid and obsolete syntax, encoded words, groups,
//! comments, multiple fields. The login may send as `alice@example.com`
//! and anything `@example.org`.

use super::*;

fn rules() -> Vec<String> {
    vec!["alice@example.com".into(), "@example.org".into()]
}

#[derive(Debug)]
enum Want {
    /// Accepted, with these From addresses (as checked).
    Ok(&'static [&'static str]),
    /// Refused; the error text contains this.
    Refused(&'static str),
}
use Want::{Ok as Pass, Refused};

const NOT_PERMITTED: &str = "is not permitted for this login";
const NAME: &str = "not a valid display name";
const GROUP: &str = "group syntax";
const TWO_ANGLES: &str = "more than one <address>";
const READER: &str = "read differently by mail readers";
const TRAILING: &str = "text follows the closing '>'";

/// (From field value, expected outcome).
const TABLE: &[(&str, Want)] = &[
    // --- the four bypasses of issue 12: readers show ceo@example.com.
    ("<ceo@example.com> <alice@example.com>", Refused(TWO_ANGLES)),
    ("ceo@example.com <alice@example.com>", Refused(NAME)),
    ("ceo@example.com: alice@example.com;", Refused(GROUP)),
    ("<alice@example.com> evil@x", Refused(TRAILING)),
    // --- variants of the same ideas.
    (
        "<ceo@example.com>, <alice@example.com>",
        Refused(NOT_PERMITTED),
    ),
    ("alice@example.com, ceo@example.com", Refused(NOT_PERMITTED)),
    (
        "Alice <alice@example.com> <ceo@example.com>",
        Refused(TWO_ANGLES),
    ),
    ("<alice@example.com> (comment) x", Refused(TRAILING)),
    (
        "alice@example.com ceo@example.com",
        Refused("is not an address"),
    ),
    ("<<ceo@example.com>> alice@example.com", Refused("")),
    ("Team: alice@example.com;", Refused(GROUP)),
    ("undisclosed-recipients:;", Refused(GROUP)),
    ("Alice <alice@example.com>;", Refused(GROUP)),
    (
        "\"Alice\" <alice@example.com",
        Refused("unbalanced angle brackets"),
    ),
    ("alice@example.com>", Refused("unbalanced angle brackets")),
    ("Alice <alice@example.com> ;ceo@example.com", Refused(GROUP)),
    (
        "ceo@example.com\\ <alice@example.com>",
        Refused("backslash"),
    ),
    // Valid obs-phrase once the comment is dropped: shown as a name.
    (
        "ceo(at)example.com <alice@example.com>",
        Pass(&["alice@example.com"]),
    ),
    (
        "\"Alice\" <alice@example.com>\r\nFrom: ceo@example.com",
        Refused(""),
    ),
    // --- refused because not an address at all.
    ("", Refused("holds no mailbox")),
    (" , ,", Refused("holds no mailbox")),
    ("nobody", Refused("is not an address")),
    ("alice@", Refused("is not an address")),
    ("@example.com", Refused("is not an address")),
    ("\"open@example.com", Refused("unclosed quoted string")),
    ("(open alice@example.com", Refused("unclosed comment")),
    (
        "Alice\u{1b}[2J <alice@example.com>",
        Refused("control character"),
    ),
    // --- valid: plain forms.
    ("alice@example.com", Pass(&["alice@example.com"])),
    ("<alice@example.com>", Pass(&["alice@example.com"])),
    ("Alice <alice@example.com>", Pass(&["alice@example.com"])),
    (
        "Alice Liddell <ALICE@Example.COM>",
        Pass(&["ALICE@Example.COM"]),
    ),
    (
        "\"Liddell, Alice\" <alice@example.com>",
        Pass(&["alice@example.com"]),
    ),
    // A quoted display name may contain anything, even an address: it is
    // shown as a name, which is what the grammar says it is.
    (
        "\"ceo@example.com\" <alice@example.com>",
        Pass(&["alice@example.com"]),
    ),
    (
        "\"Alice \\\"the boss\\\"\" <alice@example.com>",
        Pass(&["alice@example.com"]),
    ),
    (
        "alice@example.com, Bob <bob@example.org>",
        Pass(&["alice@example.com", "bob@example.org"]),
    ),
    // --- comments and folding.
    (
        "Alice (sales) <alice@example.com> (work)",
        Pass(&["alice@example.com"]),
    ),
    (
        "(comment <ceo@example.com>) alice@example.com",
        Pass(&["alice@example.com"]),
    ),
    ("alice@example.com (Alice)", Pass(&["alice@example.com"])),
    (
        "\"Alice\r\n Liddell\"\r\n <alice@example.com>",
        Pass(&["alice@example.com"]),
    ),
    (
        "Alice (nested (comment)) <alice@example.com>",
        Pass(&["alice@example.com"]),
    ),
    // --- obsolete syntax (RFC 5322 §4.4).
    (
        "Alice B. Liddell <alice@example.com>",
        Pass(&["alice@example.com"]),
    ),
    // Valid RFC 5322, but readers show other strings than the grammar's
    // address (mail-parser keeps the spaces and the route): refused.
    ("alice @ example . com", Refused(READER)),
    ("<@relay.example.net:alice@example.com>", Refused(READER)),
    ("<@a.example,@b.example:alice@example.com>", Refused(READER)),
    (
        ", alice@example.com,, bob@example.org,",
        Pass(&["alice@example.com", "bob@example.org"]),
    ),
    // --- encoded words (RFC 2047) and UTF-8 (RFC 6532).
    (
        "=?UTF-8?B?QWxpY2Ugw6k=?= <alice@example.com>",
        Pass(&["alice@example.com"]),
    ),
    (
        "=?ISO-8859-1?Q?J=F6rg?= <joerg@example.org>",
        Pass(&["joerg@example.org"]),
    ),
    ("Jörg <jörg@example.org>", Pass(&["jörg@example.org"])),
    (
        "\"Jörg Müller\" <jörg@example.org>",
        Pass(&["jörg@example.org"]),
    ),
    ("Bob <bob@bücher.example.org>", Refused(NOT_PERMITTED)),
    // --- quoted local parts and domain literals.
    // Quoted local parts are compared as written: refused, never widened.
    ("\"alice\"@example.com", Refused(NOT_PERMITTED)),
    // mail-parser shows this as the name "john doe" and the address
    // "@example.org": readers disagree with the grammar, so refused.
    ("\"john doe\"@example.org", Refused(READER)),
    ("Bob <bob@[192.0.2.1]>", Refused(NOT_PERMITTED)),
    // --- not permitted, whatever the form.
    ("ceo@example.com", Refused(NOT_PERMITTED)),
    ("Alice <ceo@example.com>", Refused(NOT_PERMITTED)),
    (
        "\"alice@example.com\" <ceo@example.com>",
        Refused(NOT_PERMITTED),
    ),
];

fn message(from: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: bob@example.net\r\nSubject: t\r\n\r\nbody\r\n").into_bytes()
}

#[test]
fn from_variants_table() {
    assert!(TABLE.len() >= 40, "{} variants", TABLE.len());
    let mut failures = Vec::new();
    for (from, want) in TABLE {
        let got = check_header_from(&message(from), &rules());
        let ok = match (want, &got) {
            (Pass(addrs), Ok(v)) => v.iter().map(|(a, _)| a.as_str()).eq(addrs.iter().copied()),
            (Refused(text), Err(e)) => e.to_string().contains(text),
            _ => false,
        };
        if !ok {
            failures.push(format!("{from:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn several_from_or_sender_fields_are_refused() {
    let two_from = b"From: alice@example.com\r\nFrom: ceo@example.com\r\n\r\nx";
    let err = check_header_from(two_from, &rules()).unwrap_err();
    assert!(err.to_string().contains("2 From header fields"), "{err}");
    let two_sender =
        b"From: alice@example.com\r\nSender: alice@example.com\r\nSender: x@example.org\r\n\r\nx";
    let err = check_header_from(two_sender, &rules()).unwrap_err();
    assert!(err.to_string().contains("2 Sender header fields"), "{err}");
}

#[test]
fn sender_is_one_permitted_mailbox() {
    let msg = |sender: &str| {
        format!("From: alice@example.com, bob@example.org\r\nSender: {sender}\r\n\r\nx")
            .into_bytes()
    };
    assert!(check_header_from(&msg("Bob <bob@example.org>"), &rules()).is_ok());
    for (sender, why) in [
        (
            "ceo@example.com",
            "header Sender <ceo@example.com> is not permitted",
        ),
        ("a@example.org, b@example.org", "exactly one mailbox"),
        ("ceo@example.com <bob@example.org>", NAME),
        ("Staff: bob@example.org;", GROUP),
    ] {
        let err = check_header_from(&msg(sender), &rules()).unwrap_err();
        assert!(err.to_string().contains(why), "{sender:?}: {err}");
    }
}

#[test]
fn refusals_name_the_rule_and_quote_the_field() {
    let err = check_header_from(&message("ceo@example.com <alice@example.com>"), &rules())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "the header From \"ceo@example.com <alice@example.com>\" is not a valid RFC 5322 \
         mailbox-list: the text before <address> is not a valid display name (put it in \
         double quotes)"
    );
}
