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
        GlobalCap => "global_cap",
        IpCap => "ip_cap",
        RateLimited => "rate_limited",
        LockedOut => "locked_out",
        ProxyHeader => "proxy_header",
        ShuttingDown => "shutting_down",
    }
);

label_enum!(
    /// SASL mechanism of an AUTH attempt.
    Mechanism {
        Plain => "plain",
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
        AuthRequired => "auth_required",
        SenderNotAllowed => "sender_not_allowed",
        FromNotAllowed => "from_not_allowed",
        TooManyRecipients => "too_many_recipients",
        TooLarge => "too_large",
        BareLineEnding => "bare_line_ending",
        LineTooLong => "line_too_long",
        RateLimited => "rate_limited",
        SignatureRequired => "signature_required",
        StoreUnavailable => "store_unavailable",
        Internal => "internal",
    }
);

label_enum!(
    /// Who a rate limit applies to.
    LimitScope {
        User => "user",
        Credential => "credential",
        Ip => "ip",
        Upstream => "upstream",
    }
);

label_enum!(
    /// What a rate limit counts.
    LimitKind {
        Messages => "messages",
        Recipients => "recipients",
        Sessions => "sessions",
        Connections => "connections",
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
    /// DKIM signing algorithm (RFC 6376, RFC 8463).
    DkimAlgorithm {
        RsaSha256 => "rsa-sha256",
        Ed25519Sha256 => "ed25519-sha256",
    }
);

label_enum!(
    /// Outcome of one DKIM signature.
    DkimResult {
        Signed => "signed",
        Failed => "failed",
    }
);

label_enum!(
    /// The store operation being timed (label `operation`).
    StoreOperation {
        Enqueue => "enqueue",
        Claim => "claim",
        RecordOutcome => "record_outcome",
        LoginLookup => "login_lookup",
        CredentialUsed => "credential_used",
        Limits => "limits",
        Dkim => "dkim",
        Admin => "admin",
        Health => "health",
        QueueStats => "queue_stats",
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
