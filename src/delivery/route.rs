//! PURE: which upstreams a message goes through. Rules match the envelope
//! sender's domain and/or the authenticated username; the first matching
//! rule (in config order) wins, else the default route. A route is an
//! ordered list: index 0 first, later ones on fail-over.

/// One routing rule. At least one of `sender_domain`, `user` is set (a rule
/// with neither is the default route, see [`Router::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Lower-case domain compared with the sender's domain (exact match).
    pub sender_domain: Option<String>,
    /// Lower-case username compared with the authenticated user.
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

impl Router {
    /// A table from `rules` (checked in order) and the `default` route
    /// (non-empty; used when no rule matches, e.g. for DSNs with sender `<>`).
    pub fn new(rules: Vec<Rule>, default: Vec<String>) -> Self {
        let rules = rules
            .into_iter()
            .map(|r| Rule {
                sender_domain: r.sender_domain.map(|d| d.to_ascii_lowercase()),
                user: r.user.map(|u| u.to_lowercase()),
                upstreams: r.upstreams,
            })
            .collect();
        Router { rules, default }
    }

    /// The upstream list for a message from `sender` submitted by `user`.
    pub fn upstreams_for(&self, sender: &str, user: Option<&str>) -> &[String] {
        let domain = sender
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
        let user = user.map(str::to_lowercase);
        self.rules
            .iter()
            .find(|r| {
                let domain_ok = match &r.sender_domain {
                    Some(d) => domain.as_deref() == Some(d.as_str()),
                    None => true,
                };
                let user_ok = match &r.user {
                    Some(u) => user.as_deref() == Some(u.as_str()),
                    None => true,
                };
                domain_ok && user_ok
            })
            .map(|r| r.upstreams.as_slice())
            .unwrap_or(&self.default)
    }
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

    fn router() -> Router {
        Router::new(
            vec![
                Rule {
                    sender_domain: Some("Example.COM".into()),
                    user: Some("printer".into()),
                    upstreams: vec!["relay".into()],
                },
                Rule {
                    sender_domain: Some("example.com".into()),
                    user: None,
                    upstreams: vec!["ses".into(), "sendgrid".into()],
                },
                Rule {
                    sender_domain: None,
                    user: Some("Marketing".into()),
                    upstreams: vec!["mailgun".into()],
                },
            ],
            vec!["default".into()],
        )
    }

    #[test]
    fn first_matching_rule_wins() {
        let r = router();
        assert_eq!(r.upstreams_for("a@example.com", Some("PRINTER")), ["relay"]);
        assert_eq!(
            r.upstreams_for("a@EXAMPLE.com", Some("bob")),
            ["ses", "sendgrid"]
        );
        assert_eq!(r.upstreams_for("a@example.com", None), ["ses", "sendgrid"]);
        assert_eq!(
            r.upstreams_for("a@other.org", Some("marketing")),
            ["mailgun"]
        );
        assert_eq!(r.upstreams_for("a@other.org", Some("bob")), ["default"]);
        // DSNs have an empty sender and no user.
        assert_eq!(r.upstreams_for("", None), ["default"]);
        // A subdomain is not the domain.
        assert_eq!(r.upstreams_for("a@mail.example.com", None), ["default"]);
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
