//! RFC 5322 §3.4 address lists, as far as the header From policy needs:
//! the addr-specs, without display names, comments or group names. PURE.

/// The addresses of an address list (`From`, `To`, ...), in order, as
/// written (quoted local parts keep their quotes; folding whitespace and
/// comments are dropped). Groups (`name: a@x, b@y;`, RFC 6854) yield their
/// members. `None` if a mailbox is not `local@domain` or quoting/brackets
/// are unbalanced.
pub fn parse_address_list(value: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    // The current mailbox: outside angle brackets (display name or bare
    // addr-spec, whitespace dropped outside quotes) and inside them.
    let mut bare = String::new();
    let mut angle: Option<String> = None;
    let mut in_angle = false;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        let buf = if in_angle {
            angle.get_or_insert_with(String::new)
        } else {
            &mut bare
        };
        match c {
            '(' => skip_comment(&mut chars)?,
            '"' => {
                buf.push('"');
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => {
                            buf.push('\\');
                            buf.push(chars.next()?);
                        }
                        '\r' | '\n' => {}
                        other => buf.push(other),
                    }
                }
                buf.push('"');
            }
            '\\' => {
                buf.push(c);
                buf.push(chars.next()?);
            }
            '<' if !in_angle => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' if in_angle => in_angle = false,
            // A group's display name ends here (RFC 5322 §3.4).
            ':' if !in_angle => bare.clear(),
            ',' | ';' if !in_angle => finish(&mut bare, &mut angle, &mut out)?,
            c if c.is_whitespace() => {}
            c => buf.push(c),
        }
    }
    if in_angle {
        return None;
    }
    finish(&mut bare, &mut angle, &mut out)?;
    Some(out)
}

fn skip_comment(chars: &mut std::iter::Peekable<std::str::Chars>) -> Option<()> {
    let mut depth = 1;
    while depth > 0 {
        match chars.next()? {
            '(' => depth += 1,
            ')' => depth -= 1,
            '\\' => {
                chars.next()?;
            }
            _ => {}
        }
    }
    Some(())
}

fn finish(bare: &mut String, angle: &mut Option<String>, out: &mut Vec<String>) -> Option<()> {
    let addr = match angle.take() {
        // Obsolete source route `<@a,@b:user@host>` (RFC 5322 §4.4).
        Some(a) => match a.rsplit_once(':') {
            Some((route, rest)) if route.starts_with('@') => rest.to_string(),
            _ => a,
        },
        None => std::mem::take(bare),
    };
    bare.clear();
    if addr.is_empty() {
        // Empty group or a stray comma.
        return Some(());
    }
    let (local, domain) = addr.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains('"') {
        return None;
    }
    out.push(addr);
    Some(())
}
