//! Strict RFC 5322 §3.4 mailbox-list and mailbox parsing for the header
//! From and Sender policy. PURE.
//!
//! A header From is what a mail reader shows as the author, so it must be
//! exactly a `mailbox-list` (RFC 5322 §3.6.2), and a Sender exactly one
//! `mailbox`. Lenient parsers (and the readers built on them) disagree on
//! anything else: `From: ceo@example.com <alice@example.com>` shows
//! `ceo@example.com` in common readers while a "last angle address" parser
//! checks `alice@example.com`. So everything outside the grammar is refused
//! with the rule it breaks: text before `<...>` that is not a phrase,
//! several angle addresses in one mailbox, group syntax, trailing text.
//!
//! Accepted: the RFC 5322 grammar with its obsolete forms (§4.4: `.` in
//! phrases, CFWS around dots, empty list elements, source routes),
//! comments and folding anywhere CFWS may be, encoded words in display
//! names (they are atoms), and UTF-8 in atoms, quoted strings and comments
//! (RFC 6532 §3.2).

/// One mailbox of a From or Sender field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The display name as written (words joined by one space; quoted
    /// strings keep their quotes), `None` for a bare addr-spec or `<...>`.
    pub display: Option<String>,
    /// `local@domain`: quoted local parts keep their quotes, folding
    /// whitespace and comments are dropped, a source route is dropped.
    pub address: String,
}

/// Which rule of RFC 5322 §3.4 a value breaks. The Display text is sent to
/// the client in the 550 reply, so it names the rule and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    /// Nothing but whitespace, commas or comments.
    #[error("it holds no mailbox")]
    Empty,
    /// A control character, a lone `\`, an unclosed quote, comment,
    /// domain literal or angle bracket.
    #[error("it is not well-formed ({0})")]
    Malformed(&'static str),
    /// `name: a@x, b@y;`: RFC 6854 groups are not accepted where the
    /// author must be identified.
    #[error("group syntax (\"name: ...;\") is not allowed here; list mailboxes only")]
    Group,
    /// More than one `<...>` in one mailbox.
    #[error("a mailbox has more than one <address>")]
    SeveralAngleAddrs,
    /// What precedes `<...>` is not a phrase of words (atoms and quoted
    /// strings): e.g. an address or a `<`. Such a name must be quoted.
    #[error("the text before <address> is not a valid display name (put it in double quotes)")]
    BadDisplayName,
    /// Text after the closing `>` of a mailbox.
    #[error("text follows the closing '>' of a mailbox")]
    TrailingText,
    /// Not `local-part@domain`.
    #[error("{0:?} is not an address of the form local-part@domain")]
    BadAddress(String),
    /// A Sender with several mailboxes (RFC 5322 §3.6.2: exactly one).
    #[error("it must hold exactly one mailbox")]
    NotSingle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A run of atext (RFC 5322 §3.2.3) and UTF-8 (RFC 6532 §3.2).
    Atom(String),
    /// A quoted string with its quotes, quoted pairs kept as written.
    Quoted(String),
    /// `[...]` with its brackets.
    Literal(String),
    /// One of `< > @ , ; : .`.
    Special(char),
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_wsp(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits `value` into tokens; comments and folding whitespace (CFWS)
/// are checked and dropped.
fn tokenize(value: &str) -> Result<Vec<Token>, MailboxError> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if is_wsp(c) => {}
            '(' => {
                let mut depth = 1;
                while depth > 0 {
                    match chars.next() {
                        None => return Err(MailboxError::Malformed("unclosed comment")),
                        Some('(') => depth += 1,
                        Some(')') => depth -= 1,
                        Some('\\') => {
                            chars
                                .next()
                                .ok_or(MailboxError::Malformed("lone backslash"))?;
                        }
                        Some(c) if c.is_control() && !is_wsp(c) => {
                            return Err(MailboxError::Malformed("control character"))
                        }
                        Some(_) => {}
                    }
                }
            }
            '"' => {
                let mut s = String::from('"');
                loop {
                    match chars.next() {
                        None => return Err(MailboxError::Malformed("unclosed quoted string")),
                        Some('"') => break,
                        Some('\\') => {
                            let q = chars
                                .next()
                                .ok_or(MailboxError::Malformed("lone backslash"))?;
                            if q.is_control() && q != '\t' {
                                return Err(MailboxError::Malformed("control character"));
                            }
                            s.push('\\');
                            s.push(q);
                        }
                        // Folding inside a quoted string (RFC 5322 §3.2.4).
                        Some('\r' | '\n') => {}
                        Some(c) if c.is_control() && c != '\t' => {
                            return Err(MailboxError::Malformed("control character"))
                        }
                        Some(c) => s.push(c),
                    }
                }
                s.push('"');
                out.push(Token::Quoted(s));
            }
            '[' => {
                let mut s = String::from('[');
                loop {
                    match chars.next() {
                        None => return Err(MailboxError::Malformed("unclosed domain literal")),
                        Some(']') => break,
                        Some('[' | '\\') => {
                            return Err(MailboxError::Malformed("bad domain literal"))
                        }
                        Some(c) if is_wsp(c) => {}
                        Some(c) if c.is_control() => {
                            return Err(MailboxError::Malformed("control character"))
                        }
                        Some(c) => s.push(c),
                    }
                }
                s.push(']');
                out.push(Token::Literal(s));
            }
            '<' | '>' | '@' | ',' | ';' | ':' | '.' => out.push(Token::Special(c)),
            c if is_atext(c) => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if !is_atext(n) {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push(Token::Atom(s));
            }
            ')' => return Err(MailboxError::Malformed("unbalanced ')'")),
            ']' => return Err(MailboxError::Malformed("unbalanced ']'")),
            '\\' => return Err(MailboxError::Malformed("backslash outside quotes")),
            _ => return Err(MailboxError::Malformed("control character")),
        }
    }
    Ok(out)
}

/// Parses a `mailbox-list` (RFC 5322 §3.4, with `obs-mbox-list`): at
/// least one mailbox; no groups.
pub fn parse_mailbox_list(value: &str) -> Result<Vec<Mailbox>, MailboxError> {
    let tokens = tokenize(value)?;
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Special('<') => depth += 1,
            Token::Special('>') => depth = depth.saturating_sub(1),
            Token::Special(',') if depth == 0 => {
                element(&tokens[start..i], &mut out)?;
                start = i + 1;
            }
            _ => {}
        }
    }
    element(&tokens[start..], &mut out)?;
    if out.is_empty() {
        return Err(MailboxError::Empty);
    }
    Ok(out)
}

/// Parses exactly one `mailbox` (the Sender field, RFC 5322 §3.6.2).
pub fn parse_mailbox(value: &str) -> Result<Mailbox, MailboxError> {
    let mut list = parse_mailbox_list(value)?;
    if list.len() != 1 {
        return Err(MailboxError::NotSingle);
    }
    Ok(list.remove(0))
}

/// One element of the list: empty (obs-mbox-list allows it) or a mailbox.
fn element(tokens: &[Token], out: &mut Vec<Mailbox>) -> Result<(), MailboxError> {
    if tokens.is_empty() {
        return Ok(());
    }
    // A ':' or ';' outside <...> (inside, ':' ends a source route) is group
    // syntax (RFC 5322 §3.4 `group`).
    let mut depth = 0usize;
    for t in tokens {
        match t {
            Token::Special('<') => depth += 1,
            Token::Special('>') => depth = depth.saturating_sub(1),
            Token::Special(':' | ';') if depth == 0 => return Err(MailboxError::Group),
            _ => {}
        }
    }
    let opens = tokens.iter().filter(|t| **t == Token::Special('<')).count();
    let closes = tokens.iter().filter(|t| **t == Token::Special('>')).count();
    match (opens, closes) {
        (0, 0) => {
            out.push(Mailbox {
                display: None,
                address: addr_spec(tokens)?,
            });
            Ok(())
        }
        (1, 1) => {
            let open = tokens.iter().position(|t| *t == Token::Special('<'));
            let close = tokens.iter().position(|t| *t == Token::Special('>'));
            let (Some(open), Some(close)) = (open, close) else {
                return Err(MailboxError::Malformed("unbalanced angle brackets"));
            };
            if close < open {
                return Err(MailboxError::Malformed("unbalanced angle brackets"));
            }
            if close + 1 != tokens.len() {
                return Err(MailboxError::TrailingText);
            }
            let display = phrase(&tokens[..open])?;
            let inner = strip_route(&tokens[open + 1..close])?;
            out.push(Mailbox {
                display,
                address: addr_spec(inner)?,
            });
            Ok(())
        }
        (o, c) if o > 1 && o == c => Err(MailboxError::SeveralAngleAddrs),
        _ => Err(MailboxError::Malformed("unbalanced angle brackets")),
    }
}

/// `display-name` = phrase (RFC 5322 §3.2.5, `obs-phrase` allows `.` after
/// the first word). Empty means no display name.
fn phrase(tokens: &[Token]) -> Result<Option<String>, MailboxError> {
    let Some(first) = tokens.first() else {
        return Ok(None);
    };
    if !matches!(first, Token::Atom(_) | Token::Quoted(_)) {
        return Err(MailboxError::BadDisplayName);
    }
    let mut words = Vec::new();
    for t in tokens {
        match t {
            Token::Atom(s) | Token::Quoted(s) => words.push(s.as_str()),
            Token::Special('.') => words.push("."),
            _ => return Err(MailboxError::BadDisplayName),
        }
    }
    Ok(Some(words.join(" ")))
}

/// Drops an obsolete source route `@a,@b:` (RFC 5322 §4.4 obs-route).
fn strip_route(tokens: &[Token]) -> Result<&[Token], MailboxError> {
    if tokens.first() != Some(&Token::Special('@')) {
        return Ok(tokens);
    }
    let colon = tokens
        .iter()
        .position(|t| *t == Token::Special(':'))
        .ok_or(MailboxError::Malformed("bad source route"))?;
    let mut expect_at = true;
    for t in &tokens[..colon] {
        match t {
            Token::Special('@') if expect_at => expect_at = false,
            Token::Atom(_) | Token::Literal(_) | Token::Special('.') if !expect_at => {}
            Token::Special(',') if !expect_at => expect_at = true,
            // obs-domain-list allows empty elements.
            Token::Special(',') => {}
            _ => return Err(MailboxError::Malformed("bad source route")),
        }
    }
    Ok(&tokens[colon + 1..])
}

/// `addr-spec` = local-part "@" domain (with `obs-local-part` and
/// `obs-domain`: CFWS around dots).
fn addr_spec(tokens: &[Token]) -> Result<String, MailboxError> {
    let shown = || MailboxError::BadAddress(render(tokens));
    let at = tokens
        .iter()
        .rposition(|t| *t == Token::Special('@'))
        .ok_or_else(shown)?;
    let (local, domain) = (&tokens[..at], &tokens[at + 1..]);
    let local =
        dotted(local, |t| matches!(t, Token::Atom(_) | Token::Quoted(_))).ok_or_else(shown)?;
    let domain = match domain {
        [Token::Literal(l)] => l.clone(),
        _ => dotted(domain, |t| matches!(t, Token::Atom(_))).ok_or_else(shown)?,
    };
    Ok(format!("{local}@{domain}"))
}

/// `word *("." word)` joined with dots, each word accepted by `ok`.
fn dotted(tokens: &[Token], ok: impl Fn(&Token) -> bool) -> Option<String> {
    let mut s = String::new();
    for (i, t) in tokens.iter().enumerate() {
        if i % 2 == 1 {
            if *t != Token::Special('.') {
                return None;
            }
            s.push('.');
        } else {
            if !ok(t) {
                return None;
            }
            match t {
                Token::Atom(w) | Token::Quoted(w) => s.push_str(w),
                _ => return None,
            }
        }
    }
    (!s.is_empty() && tokens.len() % 2 == 1).then_some(s)
}

fn render(tokens: &[Token]) -> String {
    let s: String = tokens
        .iter()
        .map(|t| match t {
            Token::Atom(s) | Token::Quoted(s) | Token::Literal(s) => s.clone(),
            Token::Special(c) => c.to_string(),
        })
        .collect();
    s.chars().take(200).collect()
}
