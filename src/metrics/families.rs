//! The metric families of [`Metrics`](super::Metrics), declared by subsystem
//! in catalogue order (each group's `declare` registers its families and
//! starts closed label sets at zero).

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

use super::{
    AuthResult, Declarer, DkimAlgorithm, DkimResult, Mechanism, RejectReason, StoreOperation,
    DELIVERY_BUCKETS, SIZE_BUCKETS, STORE_BUCKETS,
};

/// SMTP connections, sessions, TLS and AUTH.
pub(super) struct SmtpFamilies {
    pub(super) connections: IntCounterVec,
    pub(super) connections_refused: IntCounterVec,
    pub(super) sessions_active: IntGaugeVec,
    pub(super) tls_handshake_failures: IntCounterVec,
    pub(super) tls_certificate_expiry: GaugeVec,
    pub(super) auth_attempts: IntCounterVec,
}

impl SmtpFamilies {
    pub(super) fn declare(d: &mut Declarer) -> Self {
        let f = SmtpFamilies {
            connections: d.counter_vec(
                "postgate_connections_total",
                "TCP connections accepted, by listener and the listener's TLS mode (starttls, implicit, none).",
                &["listener", "tls"],
            ),
            connections_refused: d.counter_vec(
                "postgate_connections_refused_total",
                "Connections refused at accept with 421, by listener and reason.",
                &["listener", "reason"],
            ),
            sessions_active: d.gauge_vec(
                "postgate_sessions_active",
                "SMTP sessions currently open, by listener.",
                &["listener"],
            ),
            tls_handshake_failures: d.counter_vec(
                "postgate_tls_handshake_failures_total",
                "Inbound TLS handshakes (implicit or STARTTLS) that failed, by listener.",
                &["listener"],
            ),
            tls_certificate_expiry: d.float_gauge_vec(
                "postgate_tls_certificate_expiry_timestamp_seconds",
                "Unix time at which the certificate served by the listener expires (notAfter).",
                &["listener"],
            ),
            auth_attempts: d.counter_vec(
                "postgate_auth_attempts_total",
                "SMTP AUTH attempts, by SASL mechanism and result (success, failed, locked_out, error).",
                &["mechanism", "result"],
            ),
        };
        // Closed label sets start at zero, so rate() and alert rules see
        // them before the first event.
        for m in Mechanism::ALL {
            for r in AuthResult::ALL {
                f.auth_attempts.with_label_values(&[m.as_str(), r.as_str()]);
            }
        }
        f
    }
}

/// Messages received, refused and queued.
pub(super) struct MessageFamilies {
    pub(super) messages_received: IntCounter,
    pub(super) messages_rejected: IntCounterVec,
    pub(super) messages_queued: IntCounter,
    pub(super) recipients: IntCounter,
    pub(super) message_size: Histogram,
    pub(super) rate_limited: IntCounterVec,
    pub(super) message_memory: IntGauge,
}

impl MessageFamilies {
    pub(super) fn declare(d: &mut Declarer) -> Self {
        let f = MessageFamilies {
            messages_received: d.counter(
                "postgate_messages_received_total",
                "Messages whose data was fully received (end of DATA or last BDAT), before checks and commit.",
            ),
            messages_rejected: d.counter_vec(
                "postgate_messages_rejected_total",
                "Transactions refused by postgate, by reason (a fixed list).",
                &["reason"],
            ),
            messages_queued: d.counter(
                "postgate_messages_queued_total",
                "Messages committed to the queue (each answered 250).",
            ),
            recipients: d.counter(
                "postgate_recipients_total",
                "Recipients of the messages committed to the queue.",
            ),
            message_size: d.histogram(
                "postgate_message_size_bytes",
                "Size of the messages committed to the queue, after fixups and signing.",
                SIZE_BUCKETS,
            ),
            rate_limited: d.counter_vec(
                "postgate_rate_limit_rejections_total",
                "Requests refused by a rate limit, by scope (user, credential, ip, upstream) and limit.",
                &["scope", "limit"],
            ),
            message_memory: d.gauge(
                "postgate_smtp_message_memory_bytes",
                "Message bytes SMTP sessions hold in memory while receiving, leased from smtp.message_memory_budget (452 4.3.1 when it is spent).",
            ),
        };
        // Closed label sets start at zero, so rate() and alert rules see
        // them before the first event.
        for r in RejectReason::ALL {
            f.messages_rejected.with_label_values(&[r.as_str()]);
        }
        f
    }
}

/// The queue and delivery to upstreams.
pub(super) struct DeliveryFamilies {
    pub(super) queue_depth: IntGauge,
    pub(super) queue_oldest_age: Gauge,
    pub(super) delivery_attempts: IntCounterVec,
    pub(super) delivery_duration: HistogramVec,
    pub(super) upstream_circuit: IntGaugeVec,
    pub(super) upstream_throttled: IntCounterVec,
    pub(super) oauth_token_requests: IntCounterVec,
    pub(super) oauth_token_expiry: GaugeVec,
    pub(super) bounces: IntCounter,
}

impl DeliveryFamilies {
    pub(super) fn declare(d: &mut Declarer) -> Self {
        DeliveryFamilies {
            queue_depth: d.gauge(
                "postgate_queue_depth",
                "Messages in the queue with at least one recipient not yet delivered or failed (sampled; the same value on every node sharing a store).",
            ),
            queue_oldest_age: d.float_gauge(
                "postgate_queue_oldest_message_age_seconds",
                "Age of the oldest message still in the queue, 0 when empty (sampled).",
            ),
            delivery_attempts: d.counter_vec(
                "postgate_delivery_attempts_total",
                "Delivery attempts, one per recipient per attempt, by upstream and result (delivered, deferred, failed).",
                &["upstream", "result"],
            ),
            delivery_duration: d.histogram_vec(
                "postgate_delivery_duration_seconds",
                "Duration of one SMTP transaction with an upstream, from connection checkout to the final reply.",
                &["upstream"],
                DELIVERY_BUCKETS,
            ),
            upstream_circuit: d.gauge_vec(
                "postgate_upstream_circuit_state",
                "Circuit breaker of each upstream: 0 closed (in use), 1 half-open (probing), 2 open (not used).",
                &["upstream"],
            ),
            upstream_throttled: d.counter_vec(
                "postgate_upstream_throttled_total",
                "Recipients held back by an upstream's throttle, by upstream and cause: rate (its configured rate had no slot in time; no attempt made) reply (it answered with a throttling reply and is paused; no attempt used up) or pool (every connection stayed busy for max_pool_wait; given back to the queue, no attempt used up).",
                &["upstream", "cause"],
            ),
            oauth_token_requests: d.counter_vec(
                "postgate_upstream_oauth_token_requests_total",
                "OAuth token requests of an auth = \"xoauth2\" upstream, by upstream and result: ok, refused (the endpoint refused the client: RFC 6749 error), unavailable (connect, TLS, timeout, HTTP 5xx) or invalid (an unusable answer: garbage, no expiry, a redirect).",
                &["upstream", "result"],
            ),
            oauth_token_expiry: d.float_gauge_vec(
                "postgate_upstream_oauth_token_expiry_timestamp_seconds",
                "Unix time at which the OAuth token last obtained for an upstream expires (minus time(): seconds until it expires).",
                &["upstream"],
            ),
            bounces: d.counter(
                "postgate_bounces_total",
                "Delivery status notifications (RFC 3464) generated for failed or expired recipients.",
            ),
        }
    }
}

/// DKIM signing.
pub(super) struct DkimFamilies {
    pub(super) dkim_signatures: IntCounterVec,
    pub(super) dkim_unsigned: IntCounter,
    pub(super) dkim_not_permitted: IntCounter,
}

impl DkimFamilies {
    pub(super) fn declare(d: &mut Declarer) -> Self {
        let f = DkimFamilies {
            dkim_signatures: d.counter_vec(
                "postgate_dkim_signatures_total",
                "DKIM signatures made at acceptance, by algorithm and result.",
                &["algorithm", "result"],
            ),
            dkim_unsigned: d.counter(
                "postgate_dkim_unsigned_total",
                "Messages relayed without a signature because the From domain has no active key.",
            ),
            dkim_not_permitted: d.counter(
                "postgate_dkim_unsigned_not_permitted_total",
                "Messages relayed without a signature because their header From is not a sender the login may use (signing follows the login, whatever dkim.header_from says).",
            ),
        };
        // Closed label sets start at zero, so rate() and alert rules see
        // them before the first event.
        for a in DkimAlgorithm::ALL {
            for r in DkimResult::ALL {
                f.dkim_signatures
                    .with_label_values(&[a.as_str(), r.as_str()]);
            }
        }
        f
    }
}

/// Store operations.
pub(super) struct StoreFamilies {
    pub(super) store_errors: IntCounterVec,
    pub(super) store_duration: HistogramVec,
}

impl StoreFamilies {
    pub(super) fn declare(d: &mut Declarer) -> Self {
        let f = StoreFamilies {
            store_errors: d.counter_vec(
                "postgate_store_errors_total",
                "Store operations that failed, by operation.",
                &["operation"],
            ),
            store_duration: d.histogram_vec(
                "postgate_store_operation_duration_seconds",
                "Duration of store operations (one transaction each), by operation.",
                &["operation"],
                STORE_BUCKETS,
            ),
        };
        // Closed label sets start at zero, so rate() and alert rules see
        // them before the first event.
        for op in StoreOperation::ALL {
            f.store_errors.with_label_values(&[op.as_str()]);
        }
        f
    }
}

/// Per-user series (only when per-user metrics are enabled).
pub(super) struct UserFamilies {
    pub(super) user_messages: IntCounterVec,
    pub(super) user_recipients: IntCounterVec,
    pub(super) user_bytes: IntCounterVec,
}

impl UserFamilies {
    pub(super) fn declare(d: &mut Declarer) -> Self {
        UserFamilies {
            user_messages: d.counter_vec(
                "postgate_user_messages_total",
                "Messages queued per user (only when per-user metrics are enabled; users past the cap count as _other).",
                &["user"],
            ),
            user_recipients: d.counter_vec(
                "postgate_user_recipients_total",
                "Recipients queued per user (only when per-user metrics are enabled; users past the cap count as _other).",
                &["user"],
            ),
            user_bytes: d.counter_vec(
                "postgate_user_message_bytes_total",
                "Bytes queued per user (only when per-user metrics are enabled; users past the cap count as _other).",
                &["user"],
            ),
        }
    }
}
