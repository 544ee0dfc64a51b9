//! Sender permissions. PURE.
//!
//! A user may send as the envelope (and header From) addresses matching one
//! of their patterns: an exact address (`alice@example.com`) or a whole
//! domain (`@example.com`). Matching is case-insensitive (RFC 5321 §2.4
//! lets local parts be case-sensitive, but no organisation issues
//! `Alice@` and `alice@` to different people). Domains are compared as
//! A-labels, so `@bücher.example` and `@xn--bcher-kva.example` are one rule
//! and match SMTPUTF8 addresses (RFC 6531) in either form.

/// A validated, lower-cased sender pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderPattern(String);

/// Why a pattern was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid sender pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

impl SenderPattern {
    /// Parses `alice@example.com` or `@example.com`.
    pub fn parse(input: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            pattern: input.to_string(),
            reason,
        };
        let lower = input.trim().to_lowercase();
        let Some((local, domain)) = lower.rsplit_once('@') else {
            return Err(err("expected user@domain or @domain"));
        };
        let domain = domain_to_ascii(domain);
        let p = format!("{local}@{domain}");
        if p.len() > 254 {
            return Err(err("longer than 254 octets"));
        }
        if local.contains('*') {
            // A common mistake: `*@example.com` would be stored as one
            // literal address and match nothing anyone sends.
            return Err(err(
                "`*` is not a wildcard here: write @domain (e.g. @example.com) for any address at a domain",
            ));
        }
        if local.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '@' | ',' | '"')
        }) {
            return Err(err("local part has a character not allowed here"));
        }
        if !is_domain(&domain) {
            return Err(err("domain is not a valid host name"));
        }
        Ok(SenderPattern(p))
    }

    /// The pattern as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `address` (an envelope or header address) matches.
    pub fn matches(&self, address: &str) -> bool {
        let a = address.to_lowercase();
        let Some((local, d)) = a.rsplit_once('@') else {
            return false;
        };
        let Some((p_local, p_domain)) = self.0.rsplit_once('@') else {
            return false;
        };
        // Rules stored before domains were kept as A-labels may hold U-labels.
        let same_domain = domain_to_ascii(d) == domain_to_ascii(p_domain);
        if p_local.is_empty() {
            !local.is_empty() && same_domain
        } else {
            local == p_local && same_domain
        }
    }
}

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// A domain name in lower-case ASCII: U-labels become A-labels (IDNA,
/// UTS #46); a name IDNA rejects is only lower-cased, for the caller's own
/// syntax check to refuse.
pub fn domain_to_ascii(domain: &str) -> String {
    if domain.is_ascii() {
        return domain.to_ascii_lowercase();
    }
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_ascii_lowercase())
}

/// The first of `patterns` (as stored) that permits `address`, if any; the
/// caller names it in logs, or says "no rule permits" in the 553 reply.
pub fn permitted_by<'a>(patterns: &'a [String], address: &str) -> Option<&'a str> {
    patterns
        .iter()
        .find(|p| SenderPattern(p.to_string()).matches(address))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_and_domain_patterns() {
        assert_eq!(
            SenderPattern::parse("Alice@Example.com").unwrap().as_str(),
            "alice@example.com"
        );
        assert_eq!(
            SenderPattern::parse("@example.com").unwrap().as_str(),
            "@example.com"
        );
        for bad in [
            "",
            "alice",
            "alice@",
            "@",
            "a b@x.com",
            "@-x.com",
            "@x..com",
            "<a@x.com>",
        ] {
            assert!(SenderPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_is_exact_or_whole_domain() {
        let exact = SenderPattern::parse("alice@example.com").unwrap();
        assert!(exact.matches("ALICE@example.COM"));
        assert!(!exact.matches("bob@example.com"));
        let dom = SenderPattern::parse("@example.com").unwrap();
        assert!(dom.matches("bob@example.com"));
        assert!(!dom.matches("bob@sub.example.com"));
        assert!(!dom.matches("bob@evilexample.com"));
        assert!(!dom.matches("@example.com"));
    }

    #[test]
    fn internationalized_domains_match_in_either_form() {
        let dom = SenderPattern::parse("@Bücher.example").unwrap();
        assert_eq!(dom.as_str(), "@xn--bcher-kva.example");
        assert!(dom.matches("jörg@bücher.example"));
        assert!(dom.matches("jorg@XN--BCHER-KVA.example"));
        assert!(!dom.matches("jorg@bucher.example"));
        let exact = SenderPattern::parse("Jörg@xn--bcher-kva.example").unwrap();
        assert!(exact.matches("JÖRG@Bücher.example"));
        assert!(!exact.matches("jorg@bücher.example"));
        assert_eq!(
            permitted_by(&["@bücher.example".to_string()], "a@xn--bcher-kva.example"),
            Some("@bücher.example")
        );
    }

    #[test]
    fn permitted_by_names_the_rule() {
        let rules = vec!["@corp.example".to_string(), "ceo@example.com".to_string()];
        assert_eq!(
            permitted_by(&rules, "x@corp.example"),
            Some("@corp.example")
        );
        assert_eq!(
            permitted_by(&rules, "ceo@example.com"),
            Some("ceo@example.com")
        );
        assert_eq!(permitted_by(&rules, "cfo@example.com"), None);
    }
}
