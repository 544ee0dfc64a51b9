//! The closed label sets of postgate's metrics: callers pick a variant,
//! never a string, so every label has a bounded number of values.

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var),+ }
        impl $name {
            /// Every value, in declaration order (used to pre-create series at zero).
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            /// The label value exported to Prometheus.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
        }
    };
}

label_enum!(
    /// How a listener speaks TLS (label `tls` of `postgate_connections_total`).
    TlsMode {
        /// Submission, RFC 6409: plain TCP upgraded with STARTTLS.
        Starttls => "starttls",
        /// Submissions, RFC 8314: TLS from the first byte.
        ImplicitTls => "implicit",
        /// Loopback test listener without TLS.
        Plain => "none",
    }
);

label_enum!(
    /// Why a connection was refused at accept (421 4.7.0).
    ConnectionRefusal {
        /// `smtp.max_connections` reached.
        GlobalCap => "global_cap",
        /// `smtp.max_connections_per_ip` or a per-IP concurrency limit reached.
        IpCap => "ip_cap",
        /// Per-IP connection rate exceeded.
        RateLimited => "rate_limited",
        /// The IP is locked out after failed logins.
        LockedOut => "locked_out",
        /// Missing, malformed or untrusted PROXY header.
        ProxyHeader => "proxy_header",
        /// Accepted while draining, answered 421 4.3.2.
        ShuttingDown => "shutting_down",
    }
);

label_enum!(
    /// SASL mechanism of an AUTH attempt.
    Mechanism {
        /// RFC 4616.
        Plain => "plain",
        /// The LOGIN mechanism (draft-murchison-sasl-login).
        Login => "login",
    }
);

label_enum!(
    /// Outcome of an AUTH attempt.
    AuthResult {
        /// 235: credentials verified.
        Success => "success",
        /// 535 5.7.8: wrong user or password (indistinguishable on purpose).
        Failed => "failed",
        /// Refused because the IP or username is locked out (brute force).
        LockedOut => "locked_out",
        /// Temporary failure (store unavailable, cancelled exchange, bad base64).
        Error => "error",
    }
);

label_enum!(
    /// Why a message (or a transaction) was refused. A closed list: add a
    /// variant here rather than inventing label values at the call site.
    RejectReason {
        /// MAIL without AUTH (530 5.7.0).
        AuthRequired => "auth_required",
        /// MAIL FROM not among the user's permissions (553 5.7.1).
        SenderNotAllowed => "sender_not_allowed",
        /// Header From not permitted (5xx at end of data).
        FromNotAllowed => "from_not_allowed",
        /// Past the recipients cap (452 4.5.3).
        TooManyRecipients => "too_many_recipients",
        /// SIZE or data over the limit (552 5.3.4).
        TooLarge => "too_large",
        /// Bare CR or LF in DATA (refused by default).
        BareLineEnding => "bare_line_ending",
        /// A text line over 998 octets.
        LineTooLong => "line_too_long",
        /// A message or recipient quota (451 4.7.1).
        RateLimited => "rate_limited",
        /// No DKIM key for the From domain and `require_signature` set.
        SignatureRequired => "signature_required",
        /// The queue commit failed (451 4.3.0).
        StoreUnavailable => "store_unavailable",
        /// Any other failure on our side.
        Internal => "internal",
        /// The node's memory budget for message content is spent (452 4.3.1).
        MemoryBudget => "memory_budget",
    }
);

label_enum!(
    /// Who a rate limit applies to.
    LimitScope {
        /// Per user.
        User => "user",
        /// Per credential of a user.
        Credential => "credential",
        /// Per client IP (or IPv6 prefix).
        Ip => "ip",
        /// A provider throttle of an upstream.
        Upstream => "upstream",
    }
);

label_enum!(
    /// What a rate limit counts.
    LimitKind {
        /// Messages per minute, hour or day.
        Messages => "messages",
        /// Recipients per day.
        Recipients => "recipients",
        /// Concurrent sessions.
        Sessions => "sessions",
        /// Connections per minute or concurrent connections.
        Connections => "connections",
        /// Failed logins in a window (tarpit or lockout).
        AuthFailures => "auth_failures",
    }
);

label_enum!(
    /// Outcome of one delivery attempt for one recipient.
    DeliveryResult {
        /// 2xx from the upstream.
        Delivered => "delivered",
        /// Transient failure (4xx, timeout, TLS or connect error): retried later.
        Deferred => "deferred",
        /// Permanent failure (5xx or expired): a DSN follows.
        Failed => "failed",
    }
);

label_enum!(
    /// Why recipients bound for an upstream were held back by its throttle.
    ThrottleCause {
        /// Its configured `rate` had no slot within `max_throttle_wait`: no
        /// attempt was made.
        Rate => "rate",
        /// It answered with a throttling reply (e.g. SES `454 Throttling
        /// failure`): it is paused, no attempt is used up.
        Reply => "reply",
        /// Every connection to it stayed busy for `max_pool_wait`: the
        /// message went back to the queue, no attempt was used up.
        Pool => "pool",
    }
);

label_enum!(
    /// DKIM signing algorithm (RFC 6376, RFC 8463).
    DkimAlgorithm {
        /// RFC 6376.
        RsaSha256 => "rsa-sha256",
        /// RFC 8463.
        Ed25519Sha256 => "ed25519-sha256",
    }
);

label_enum!(
    /// Outcome of one DKIM signature.
    DkimResult {
        /// A signature was added.
        Signed => "signed",
        /// Signing failed (the message is relayed or refused per policy).
        Failed => "failed",
    }
);

label_enum!(
    /// The store operation being timed (label `operation`).
    StoreOperation {
        /// `QueueStore::enqueue`, on the path to 250.
        Enqueue => "enqueue",
        /// Claiming due recipients with a lease.
        Claim => "claim",
        /// Recording delivery outcomes.
        RecordOutcome => "record_outcome",
        /// The heartbeat renewing the leases of claims in progress.
        RenewLeases => "renew_leases",
        /// `AccountStore::login_lookup` at AUTH.
        LoginLookup => "login_lookup",
        /// `AccountStore::credential_used` after a login.
        CredentialUsed => "credential_used",
        /// Shared limit counters.
        Limits => "limits",
        /// Loading DKIM keys.
        Dkim => "dkim",
        /// Admin requests over HTTP.
        Admin => "admin",
        /// `HealthStore::check_ready` (`/readyz`).
        Health => "health",
        /// The queue sampler.
        QueueStats => "queue_stats",
        /// Expiring leases, old log rows and counters.
        Cleanup => "cleanup",
    }
);

/// State of an upstream's circuit breaker; the gauge holds the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// 0: the upstream is used normally.
    Closed = 0,
    /// 1: probing the upstream again after it was opened.
    HalfOpen = 1,
    /// 2: the upstream is not used (it kept failing).
    Open = 2,
}
