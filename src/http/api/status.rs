//! PURE: the HTTP status of a typed refusal ([`Cause`]), so the API answers
//! what the SMTP session would have answered, in HTTP terms. The JSON body
//! keeps the SMTP reply code, enhanced status code (RFC 3463) and text
//! (`smtp/reply.rs` maps the same causes to those).

use hyper::StatusCode;

use crate::smtp::data::DataError;
use crate::smtp::ports::IntakeError;
use crate::submission::Cause;

/// The HTTP status for a refusal by `cause`:
///
/// | cause | HTTP |
/// | --- | --- |
/// | credentials missing or wrong | 401 |
/// | sender, header From or signature not permitted, signing refused | 403 |
/// | too large (declared, actual) | 413 |
/// | too many recipients, content (bare CR/LF, long line), malformed header | 422 |
/// | any limit (rate, quota, session cap, brute-force lock-out) | 429 |
/// | credential store, memory budget, signing or queue unavailable | 503 |
pub fn status_of(cause: &Cause) -> StatusCode {
    match cause {
        Cause::Credentials => StatusCode::UNAUTHORIZED,
        Cause::Sender
        | Cause::Intake(
            IntakeError::HeaderFromNotPermitted(_)
            | IntakeError::SignatureNotPermitted(_)
            | IntakeError::SigningRefused(_),
        ) => StatusCode::FORBIDDEN,
        Cause::TooLarge | Cause::Data(DataError::TooBig { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        Cause::TooManyRecipients
        | Cause::Data(DataError::BareLf | DataError::BareCr | DataError::LineTooLong { .. })
        | Cause::Intake(IntakeError::MalformedHeader(_)) => StatusCode::UNPROCESSABLE_ENTITY,
        Cause::Limit(..) => StatusCode::TOO_MANY_REQUESTS,
        Cause::CredentialsUnavailable
        | Cause::Data(DataError::MemoryBudget)
        | Cause::Intake(IntakeError::SigningUnavailable | IntakeError::QueueUnavailable(_)) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::ports::{LimitKind, LimitRefusal, LimitScope};
    use crate::smtp::reply::Reply;
    use std::time::Duration;

    /// Every cause: its HTTP status, its `rejected` event rule, and the
    /// SMTP reply the same refusal gets (byte for byte), side by side.
    #[test]
    fn every_refusal_has_its_status_rule_and_reply() {
        let limit = |scope, kind| LimitRefusal {
            scope,
            kind,
            retry_after: Duration::from_secs(3),
            reason: "message rate for user alice exceeded (1 per day)".into(),
        };
        let limited = |r: LimitRefusal| (Cause::Limit(r.scope, r.kind), Reply::message_limited(&r));
        let intake = |e: IntakeError| (Cause::Intake(e.clone()), Reply::from(&e));
        let data = |e: DataError| (Cause::Data(e.clone()), Reply::from(&e));
        type Row<'a> = ((Cause, Reply), u16, Option<&'a str>, &'a str);
        let table: Vec<Row> = vec![
            (
                (Cause::Credentials, Reply::auth_failed()),
                401,
                None,
                "535 5.7.8 authentication credentials invalid\r\n",
            ),
            (
                (Cause::CredentialsUnavailable, Reply::auth_unavailable()),
                503,
                None,
                "454 4.7.0 temporary authentication failure\r\n",
            ),
            (
                (Cause::TooLarge, Reply::too_big(10)),
                413,
                Some("size"),
                "552 5.3.4 message size exceeds fixed maximum message size of 10 octets\r\n",
            ),
            (
                (Cause::Sender, Reply::null_sender()),
                403,
                Some("sender"),
                "553 5.7.1 null sender <> not permitted for submission\r\n",
            ),
            (
                limited(limit(LimitScope::User, LimitKind::Messages)),
                429,
                Some("limit:user:messages"),
                "451 4.7.1 message rate for user alice exceeded (1 per day), try again in 3 s\r\n",
            ),
            (
                limited(limit(LimitScope::Credential, LimitKind::Recipients)),
                429,
                Some("limit:credential:recipients"),
                "451 4.7.1 message rate for user alice exceeded (1 per day), try again in 3 s\r\n",
            ),
            (
                (
                    Cause::Limit(LimitScope::Ip, LimitKind::AuthFailures),
                    Reply::auth_limited(&limit(LimitScope::Ip, LimitKind::AuthFailures)),
                ),
                429,
                Some("limit:ip:auth_failures"),
                "454 4.7.0 message rate for user alice exceeded (1 per day), try again in 3 s\r\n",
            ),
            (
                (
                    Cause::Limit(LimitScope::User, LimitKind::Sessions),
                    Reply::session_limited(&limit(LimitScope::User, LimitKind::Sessions)),
                ),
                429,
                Some("limit:user:sessions"),
                "421 4.7.0 message rate for user alice exceeded (1 per day), try again in 3 s\r\n",
            ),
            (
                (Cause::TooManyRecipients, Reply::too_many_recipients(2)),
                422,
                Some("max_recipients"),
                "452 4.5.3 too many recipients (at most 2 per message)\r\n",
            ),
            (
                data(DataError::TooBig { max: 10 }),
                413,
                Some("size"),
                "552 5.3.4 message size exceeds fixed maximum message size of 10 octets\r\n",
            ),
            (
                data(DataError::BareLf),
                422,
                Some("bare_line_ending"),
                "550 5.6.0 bare LF in message data refused; lines must end with CRLF (RFC 5321 §2.3.8)\r\n",
            ),
            (
                data(DataError::BareCr),
                422,
                Some("bare_line_ending"),
                "550 5.6.0 bare CR in message data refused; lines must end with CRLF (RFC 5321 §2.3.8)\r\n",
            ),
            (
                data(DataError::LineTooLong { max: 998 }),
                422,
                Some("line_too_long"),
                "550 5.6.0 text line longer than 998 octets (RFC 5322 §2.1.1)\r\n",
            ),
            (
                data(DataError::MemoryBudget),
                503,
                None,
                "452 4.3.1 insufficient system storage, try again later\r\n",
            ),
            (
                intake(IntakeError::HeaderFromNotPermitted("header From <x@evil.example> not permitted".into())),
                403,
                Some("header_from"),
                "550 5.7.1 header From <x@evil.example> not permitted\r\n",
            ),
            (
                intake(IntakeError::MalformedHeader("header section not terminated".into())),
                422,
                Some("malformed_header"),
                "550 5.6.0 header section not terminated\r\n",
            ),
            (
                intake(IntakeError::SignatureNotPermitted("From not permitted".into())),
                403,
                Some("signature_not_permitted"),
                "550 5.7.1 cannot sign (dkim.require_signature is on): From not permitted\r\n",
            ),
            (
                intake(IntakeError::SigningRefused("no DKIM key for example.org".into())),
                403,
                Some("signing_refused"),
                "550 5.7.1 no DKIM key for example.org\r\n",
            ),
            (
                intake(IntakeError::SigningUnavailable),
                503,
                None,
                "451 4.3.0 cannot sign the message now, try again later\r\n",
            ),
            (
                intake(IntakeError::QueueUnavailable("pool timed out".into())),
                503,
                None,
                "451 4.3.0 queue unavailable, try again later\r\n",
            ),
        ];
        for ((cause, reply), status, rule, wire) in &table {
            assert_eq!(status_of(cause).as_u16(), *status, "{cause:?}");
            assert_eq!(cause.rule().as_deref(), *rule, "{cause:?}");
            assert_eq!(reply.to_wire(), *wire, "{cause:?}");
            // A temporary SMTP refusal is a temporary HTTP one (retry).
            let temporary = reply.code < 500;
            assert_eq!(
                matches!(*status, 429 | 503) || (*status == 422 && reply.code == 452),
                temporary,
                "{cause:?}"
            );
        }
    }
}
