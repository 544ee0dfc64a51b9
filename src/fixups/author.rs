//! The header From / Sender policy: who a mail reader shows as the author
//! must be someone the login may send as. PURE.
//!
//! Two readings of the same fields must agree before the check passes:
//! the strict RFC 5322 grammar ([`super::mailbox`]) and the maintained
//! `mail-parser` crate (what mail readers built on lenient parsers show).
//! Every address either reading finds must be permitted; a field the
//! grammar refuses is refused whatever a reader would make of it.

use mail_parser::{Address, MessageParser};

use super::mailbox::{parse_mailbox, parse_mailbox_list};
use super::{Field, FixupError, FromPolicyError, HeaderBlock};

/// At most this many characters of a refused field are quoted back.
const SHOWN_CHARS: usize = 200;

fn bad(field: &'static str, f: &Field, reason: super::MailboxError) -> FixupError {
    let value = String::from_utf8_lossy(f.value);
    FixupError::BadAuthor {
        field,
        expected: if field == "Sender" {
            "mailbox"
        } else {
            "mailbox-list"
        },
        value: value.trim().chars().take(SHOWN_CHARS).collect(),
        reason,
    }
}

/// The addresses of the header From, which must be exactly one field
/// holding exactly an RFC 5322 §3.4 `mailbox-list` (display names,
/// comments, quoted strings, folding and the obsolete syntax of §4.4
/// allowed; groups, unquoted non-phrase names, several `<...>` per
/// mailbox and trailing text refused).
pub fn header_from_addresses(message: &[u8]) -> Result<Vec<String>, FixupError> {
    let block = HeaderBlock::parse(message)?;
    let froms: Vec<&Field> = block.all("From").collect();
    let field = match froms.as_slice() {
        [] => return Err(FixupError::NoFrom),
        [one] => one,
        many => return Err(FixupError::MultipleFrom { count: many.len() }),
    };
    let value = String::from_utf8_lossy(field.value);
    let list = parse_mailbox_list(&value).map_err(|e| bad("From", field, e))?;
    Ok(list.into_iter().map(|m| m.address).collect())
}

/// The header Sender's address, if there is a Sender field: at most one
/// field, holding exactly one RFC 5322 `mailbox` (RFC 5322 §3.6.2).
fn header_sender_address(block: &HeaderBlock) -> Result<Option<String>, FixupError> {
    let senders: Vec<&Field> = block.all("Sender").collect();
    let field = match senders.as_slice() {
        [] => return Ok(None),
        [one] => one,
        many => return Err(FixupError::MultipleSender { count: many.len() }),
    };
    let value = String::from_utf8_lossy(field.value);
    let mailbox = parse_mailbox(&value).map_err(|e| bad("Sender", field, e))?;
    Ok(Some(mailbox.address))
}

/// The addresses a mail reader shows for `address` (mail-parser's
/// reading): `Err` with what it shows when an entry has no address.
fn reader_addresses(address: Option<&Address>) -> Result<Vec<String>, String> {
    let Some(address) = address else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for a in address.iter() {
        match &a.address {
            Some(x) => out.push(x.to_string()),
            None => return Err(a.name.as_deref().unwrap_or("").to_string()),
        }
    }
    Ok(out)
}

/// The header From policy: the From (exactly a mailbox-list) and the Sender
/// if any (exactly one mailbox) must each name only addresses that one of
/// `senders` (the login's sender patterns, as for MAIL FROM) permits, as
/// read by the RFC 5322 grammar and as read by a mail reader. Returns each
/// From address with the rule that permits it, for logs.
pub fn check_header_from(
    message: &[u8],
    senders: &[String],
) -> Result<Vec<(String, String)>, FromPolicyError> {
    let from = header_from_addresses(message)?;
    let block = HeaderBlock::parse(message)?;
    let sender = header_sender_address(&block)?;
    let permitted = |a: &str| crate::policy::permitted_by(senders, a).map(str::to_string);

    // What a reader shows: mail-parser on the header block only.
    let head = &message[..block.body_start.min(message.len())];
    let parsed = MessageParser::new().parse_headers(head);
    let shown_from = reader_addresses(parsed.as_ref().and_then(|m| m.from())).map_err(|s| {
        FixupError::ReaderMismatch {
            field: "From",
            shown: s,
        }
    })?;
    let shown_sender = reader_addresses(parsed.as_ref().and_then(|m| m.sender())).map_err(|s| {
        FixupError::ReaderMismatch {
            field: "Sender",
            shown: s,
        }
    })?;
    if shown_from.len() != from.len() {
        return Err(FixupError::ReaderMismatch {
            field: "From",
            shown: shown_from.join(", "),
        }
        .into());
    }
    if shown_sender.len() != usize::from(sender.is_some()) {
        return Err(FixupError::ReaderMismatch {
            field: "Sender",
            shown: shown_sender.join(", "),
        }
        .into());
    }

    // What the grammar read, then what a reader shows in its place: a
    // reader showing another, unpermitted string is a mismatch (the check
    // would not be about what the recipient sees).
    let mismatch = |field, shown: &str| FixupError::ReaderMismatch {
        field,
        shown: shown.chars().take(SHOWN_CHARS).collect(),
    };
    let mut out = Vec::with_capacity(from.len());
    for (address, shown) in from.into_iter().zip(shown_from) {
        let Some(rule) = permitted(&address) else {
            return Err(FromPolicyError::NotPermitted { address });
        };
        if permitted(&shown).is_none() {
            return Err(mismatch("From", &shown).into());
        }
        out.push((address, rule));
    }
    for (address, shown) in sender.into_iter().zip(shown_sender) {
        if permitted(&address).is_none() {
            return Err(FromPolicyError::SenderNotPermitted { address });
        }
        if permitted(&shown).is_none() {
            return Err(mismatch("Sender", &shown).into());
        }
    }
    Ok(out)
}
