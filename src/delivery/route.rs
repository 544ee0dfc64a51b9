//! PURE: which upstreams a recipient goes through. Rules match the
//! recipient's domain, the envelope sender's domain and/or the
//! authenticated username; the first rule (in config order) whose every
//! condition holds wins, else the default route. A route is an ordered
//! list: index 0 first, later ones on fail-over. [`split`] groups the
//! recipients of one message by route, so that each route gets one
//! transaction.

/// A domain condition of a rule: `example.com` matches that domain only;
/// `.example.com` matches every subdomain of it (not `example.com` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainMatch {
    /// The domain itself (A-label form, lower case).
    Exact(String),
    /// Any subdomain: the stored suffix starts with a dot (`.example.com`).
    Subdomains(String),
}

impl DomainMatch {
    /// Parses a `sender_domain` / `recipient_domain` value. Refuses what
    /// is not a domain (empty, `@example.com`, an address, spaces) with a
    /// message saying how to write it.
    pub fn parse(value: &str) -> Result<Self, String> {
        let v = value.trim();
        if let Some(rest) = v.strip_prefix('@') {
            return Err(format!(
                "{value:?} is not a domain: write it without the @ ({:?} for the domain, \
                 {:?} for its subdomains)",
                rest,
                format!(".{rest}")
            ));
        }
        let (sub, name) = match v.strip_prefix('.') {
            Some(n) => (true, n),
            None => (false, v),
        };
        let name = name.trim_end_matches('.');
        let ok = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains("..")
            && !name
                .chars()
                .any(|c| c == '@' || c.is_whitespace() || c.is_control() || c == '<' || c == '>');
        if !ok {
            return Err(format!(
                "{value:?} is not a domain: write \"example.com\" for the domain, \
                 \".example.com\" for its subdomains"
            ));
        }
        let ascii = domain_key(name);
        Ok(if sub {
            DomainMatch::Subdomains(format!(".{ascii}"))
        } else {
            DomainMatch::Exact(ascii)
        })
    }

    /// Whether `domain` (already through [`domain_key`]) matches.
    fn matches(&self, domain: &str) -> bool {
        match self {
            DomainMatch::Exact(d) => domain == d,
            DomainMatch::Subdomains(suffix) => {
                domain.len() > suffix.len() && domain.ends_with(suffix.as_str())
            }
        }
    }
}

/// The form domains are compared in: A-labels (RFC 5890), lower case,
/// without a trailing dot, so an SMTPUTF8 address in U-labels matches a
/// rule written either way.
fn domain_key(domain: &str) -> String {
    crate::store::domain_to_ascii(domain.trim_end_matches('.'))
}

/// The domain of `address` in [`domain_key`] form; `None` for the null
/// sender or an address without `@`.
fn address_domain(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, d)| domain_key(d))
        .filter(|d| !d.is_empty())
}

/// One routing rule. At least one condition is set (a rule without any is
/// the default route, see [`Router::new`]); every condition set must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Compared with the envelope sender's domain.
    pub sender_domain: Option<DomainMatch>,
    /// Compared with the recipient's domain.
    pub recipient_domain: Option<DomainMatch>,
    /// Username compared (case-insensitively) with the authenticated user.
    pub user: Option<String>,
    /// Upstream names, in fail-over order; never empty.
    pub upstreams: Vec<String>,
}

/// The routing table.
#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<Rule>,
    default: Vec<String>,
}

/// The facts of one message that routing looks at, prepared once per
/// message by [`Router::message`].
#[derive(Debug, Clone)]
pub struct MessageFacts {
    sender_domain: Option<String>,
    user: Option<String>,
}

impl Router {
    /// A table from `rules` (checked in order) and the `default` route
    /// (non-empty; used when no rule matches).
    pub fn new(rules: Vec<Rule>, default: Vec<String>) -> Self {
        let rules = rules
            .into_iter()
            .map(|r| Rule {
                user: r.user.map(|u| u.to_lowercase()),
                ..r
            })
            .collect();
        Router { rules, default }
    }

    /// What routing needs of a message from `sender` (the address its
    /// route is chosen for; empty for the null sender) submitted by `user`.
    pub fn message(&self, sender: &str, user: Option<&str>) -> MessageFacts {
        MessageFacts {
            sender_domain: address_domain(sender),
            user: user.map(str::to_lowercase),
        }
    }

    /// The upstream list for `recipient` of the message described by `m`:
    /// the first rule whose conditions all hold, else the default route.
    pub fn route_for(&self, m: &MessageFacts, recipient: &str) -> &[String] {
        let rcpt_domain = address_domain(recipient);
        let holds = |cond: &Option<DomainMatch>, domain: &Option<String>| match cond {
            Some(c) => domain.as_deref().is_some_and(|d| c.matches(d)),
            None => true,
        };
        self.rules
            .iter()
            .find(|r| {
                holds(&r.sender_domain, &m.sender_domain)
                    && holds(&r.recipient_domain, &rcpt_domain)
                    && match &r.user {
                        Some(u) => m.user.as_deref() == Some(u.as_str()),
                        None => true,
                    }
            })
            .map(|r| r.upstreams.as_slice())
            .unwrap_or(&self.default)
    }
}

/// Recipients of one message that go through the same route starting at
/// the same position: one transaction with one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group<'r, T> {
    /// The route (upstream names in fail-over order).
    pub route: &'r [String],
    /// The position in `route` to start at.
    pub start: usize,
    /// The recipients, in the order they were given.
    pub members: Vec<T>,
}

/// Splits the recipients of the message described by `m` into groups by
/// route and start position; `recipients` gives each recipient's item,
/// address and stored route index. Every recipient is in exactly one
/// group; routes with the same upstream list share a group. Groups come in
/// the order of their first recipient.
pub fn split<'r, T, A: AsRef<str>>(
    router: &'r Router,
    m: &MessageFacts,
    recipients: impl IntoIterator<Item = (T, A, u32)>,
) -> Vec<Group<'r, T>> {
    let mut groups: Vec<Group<'r, T>> = Vec::new();
    for (item, address, route_index) in recipients {
        let route = router.route_for(m, address.as_ref());
        let start = route_index as usize % route.len().max(1);
        match groups
            .iter_mut()
            .find(|g| g.start == start && g.route == route)
        {
            Some(g) => g.members.push(item),
            None => groups.push(Group {
                route,
                start,
                members: vec![item],
            }),
        }
    }
    groups
}

/// The position in a route of `len` upstreams to use for a recipient whose
/// stored `route_index` is given: the first from there on (wrapping) for
/// which `usable` holds, or `None` when none is.
pub fn pick(len: usize, route_index: u32, mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
    if len == 0 {
        return None;
    }
    let start = route_index as usize % len;
    (0..len).map(|k| (start + k) % len).find(|&i| usable(i))
}

/// After a transient failure on position `used` of a route of `len`: the
/// route index for the next attempt, and whether that attempt may start at
/// once (fail-over to the next upstream) or must wait for the backoff
/// (the list wrapped around: every upstream was tried).
pub fn fail_over(len: usize, used: usize) -> (u32, bool) {
    let next = (used + 1) % len.max(1);
    (next as u32, next != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dm(s: &str) -> Option<DomainMatch> {
        Some(DomainMatch::parse(s).unwrap())
    }

    fn router() -> Router {
        Router::new(
            vec![
                Rule {
                    sender_domain: dm("Example.COM"),
                    recipient_domain: None,
                    user: Some("printer".into()),
                    upstreams: vec!["relay".into()],
                },
                Rule {
                    sender_domain: None,
                    recipient_domain: dm("partner.org"),
                    user: None,
                    upstreams: vec!["partner".into()],
                },
                Rule {
                    sender_domain: None,
                    recipient_domain: dm(".internal.example"),
                    user: None,
                    upstreams: vec!["internal".into()],
                },
                Rule {
                    sender_domain: dm("example.com"),
                    recipient_domain: None,
                    user: None,
                    upstreams: vec!["ses".into(), "sendgrid".into()],
                },
                Rule {
                    sender_domain: None,
                    recipient_domain: None,
                    user: Some("Marketing".into()),
                    upstreams: vec!["mailgun".into()],
                },
            ],
            vec!["default".into()],
        )
    }

    fn route<'a>(r: &'a Router, sender: &str, user: Option<&str>, rcpt: &str) -> &'a [String] {
        r.route_for(&r.message(sender, user), rcpt)
    }

    #[test]
    fn first_matching_rule_wins() {
        let r = router();
        let to = "x@else.net";
        assert_eq!(route(&r, "a@example.com", Some("PRINTER"), to), ["relay"]);
        assert_eq!(
            route(&r, "a@EXAMPLE.com", Some("bob"), to),
            ["ses", "sendgrid"]
        );
        assert_eq!(route(&r, "a@example.com", None, to), ["ses", "sendgrid"]);
        assert_eq!(route(&r, "a@other.org", Some("marketing"), to), ["mailgun"]);
        assert_eq!(route(&r, "a@other.org", Some("bob"), to), ["default"]);
        // DSNs have an empty sender and no user.
        assert_eq!(route(&r, "", None, to), ["default"]);
        // A subdomain is not the domain.
        assert_eq!(route(&r, "a@mail.example.com", None, to), ["default"]);
    }

    #[test]
    fn recipient_domain_exact_and_subdomains() {
        let r = router();
        // An earlier rule wins over a later recipient rule (config order).
        assert_eq!(
            route(&r, "a@example.com", Some("printer"), "p@partner.org"),
            ["relay"]
        );
        // A recipient rule before the sender rule wins over it.
        assert_eq!(
            route(&r, "a@example.com", None, "p@PARTNER.org."),
            ["partner"]
        );
        assert_eq!(
            route(&r, "a@example.com", None, "p@sub.partner.org"),
            ["ses", "sendgrid"]
        );
        assert_eq!(route(&r, "", None, "p@partner.org"), ["partner"]);
        // ".internal.example": subdomains only, at a label boundary.
        assert_eq!(route(&r, "", None, "p@a.internal.example"), ["internal"]);
        assert_eq!(route(&r, "", None, "p@b.a.internal.example"), ["internal"]);
        assert_eq!(route(&r, "", None, "p@internal.example"), ["default"]);
        assert_eq!(route(&r, "", None, "p@xinternal.example"), ["default"]);
        // No domain at all: only rules without a recipient condition.
        assert_eq!(route(&r, "", None, "postmaster"), ["default"]);
    }

    #[test]
    fn internationalized_domains_match_either_form() {
        let r = Router::new(
            vec![Rule {
                sender_domain: None,
                recipient_domain: dm("bücher.example"),
                user: None,
                upstreams: vec!["idn".into()],
            }],
            vec!["default".into()],
        );
        assert_eq!(route(&r, "", None, "a@xn--bcher-kva.example"), ["idn"]);
        assert_eq!(route(&r, "", None, "a@BÜCHER.example"), ["idn"]);
    }

    #[test]
    fn domain_values_are_checked() {
        let e = DomainMatch::parse("@example.com").unwrap_err();
        assert!(e.contains("without the @"), "{e}");
        assert!(e.contains("\"example.com\""), "{e}");
        assert!(e.contains("\".example.com\""), "{e}");
        for bad in ["", ".", "a@b.c", "exa mple.com", "..example.com", "a..b"] {
            assert!(DomainMatch::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            DomainMatch::parse("Example.COM.").unwrap(),
            DomainMatch::Exact("example.com".into())
        );
        assert_eq!(
            DomainMatch::parse(".Example.com").unwrap(),
            DomainMatch::Subdomains(".example.com".into())
        );
    }

    #[test]
    fn split_puts_each_recipient_in_one_group_per_route_and_start() {
        let r = router();
        let m = r.message("a@example.com", None);
        let rcpts = [
            (1, "x@partner.org", 0),
            (2, "y@else.net", 0),
            (3, "z@partner.org", 0),
            (4, "w@else.net", 1),
            (5, "v@else.net", 3),
            (6, "u@a.internal.example", 7),
        ];
        let groups = split(&r, &m, rcpts);
        let shape: Vec<(&[String], usize, Vec<i32>)> = groups
            .iter()
            .map(|g| (g.route, g.start, g.members.clone()))
            .collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (partner, ses, internal) = (s(&["partner"]), s(&["ses", "sendgrid"]), s(&["internal"]));
        assert_eq!(
            shape,
            vec![
                (&partner[..], 0, vec![1, 3]),
                (&ses[..], 0, vec![2]),
                (&ses[..], 1, vec![4, 5]),
                (&internal[..], 0, vec![6]),
            ]
        );
    }

    #[test]
    fn split_merges_rules_with_the_same_upstreams() {
        let r = Router::new(
            vec![
                Rule {
                    sender_domain: None,
                    recipient_domain: dm("a.example"),
                    user: None,
                    upstreams: vec!["x".into()],
                },
                Rule {
                    sender_domain: None,
                    recipient_domain: dm("b.example"),
                    user: None,
                    upstreams: vec!["x".into()],
                },
            ],
            vec!["x".into()],
        );
        let m = r.message("s@c.example", None);
        let groups = split(
            &r,
            &m,
            [
                (1, "p@a.example", 0),
                (2, "q@b.example", 0),
                (3, "r@c.example", 0),
            ],
        );
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].members, [1, 2, 3]);
    }

    #[test]
    fn pick_skips_unusable_and_wraps() {
        assert_eq!(pick(3, 0, |_| true), Some(0));
        assert_eq!(pick(3, 1, |_| true), Some(1));
        assert_eq!(pick(3, 4, |_| true), Some(1));
        assert_eq!(pick(3, 2, |i| i != 2), Some(0));
        assert_eq!(pick(3, 0, |_| false), None);
        assert_eq!(pick(0, 0, |_| true), None);
    }

    #[test]
    fn fail_over_moves_on_then_waits() {
        assert_eq!(fail_over(2, 0), (1, true));
        assert_eq!(fail_over(2, 1), (0, false));
        assert_eq!(fail_over(1, 0), (0, false));
    }
}
