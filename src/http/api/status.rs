//! PURE: the HTTP status of an SMTP refusal, so the API answers what the
//! SMTP session would have answered, in HTTP terms. The JSON body keeps
//! the SMTP reply code, enhanced status code (RFC 3463) and text.

use hyper::StatusCode;

use crate::smtp::reply::Reply;

/// The HTTP status for an SMTP refusal `reply`:
///
/// | SMTP | HTTP |
/// | --- | --- |
/// | `535 5.7.8`, `530 5.7.0` (credentials) | 401 |
/// | `5xx 5.7.1` (sender or header From not permitted, signature required) | 403 |
/// | `552 5.3.4` (too large) | 413 |
/// | `4xx 4.7.x` (rate, quota, brute-force lock-out, session cap) | 429 |
/// | `452 4.5.3` (too many recipients) and other 5xx about the message | 422 |
/// | `5xx 5.5.x` / `5.1.x` (syntax) | 400 |
/// | other 4xx (store unavailable, memory, signing failed) | 503 |
pub fn status_of(reply: &Reply) -> StatusCode {
    let e = reply.enhanced.as_str();
    match (reply.code, e) {
        (535, _) | (530, _) => StatusCode::UNAUTHORIZED,
        (552, _) if e == "5.3.4" => StatusCode::PAYLOAD_TOO_LARGE,
        (500..=599, _) if e == "5.7.1" => StatusCode::FORBIDDEN,
        (400..=499, _) if e.starts_with("4.7.") => StatusCode::TOO_MANY_REQUESTS,
        (452, "4.5.3") => StatusCode::UNPROCESSABLE_ENTITY,
        (500..=599, _) if e.starts_with("5.5.") || e.starts_with("5.1.") => StatusCode::BAD_REQUEST,
        (500..=599, _) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::ports::LimitRefusal;
    use std::time::Duration;

    #[test]
    fn every_submission_refusal_has_its_status() {
        let limit = LimitRefusal {
            scope: crate::smtp::ports::LimitScope::User,
            kind: crate::smtp::ports::LimitKind::Messages,
            retry_after: Duration::from_secs(3),
            reason: "x".into(),
        };
        let cases = [
            (Reply::auth_failed(), 401),
            (Reply::auth_required(), 401),
            (Reply::sender_not_permitted("a@x", "u", &[]), 403),
            (Reply::null_sender(), 403),
            (Reply::new(550, "5.7.1", "header From not permitted"), 403),
            (Reply::too_big(10), 413),
            (Reply::message_limited(&limit), 429),
            (Reply::auth_limited(&limit), 429),
            (Reply::session_limited(&limit), 429),
            (Reply::too_many_recipients(2), 422),
            (Reply::new(550, "5.6.0", "bad header"), 422),
            (Reply::new(554, "5.6.0", "bare LF"), 422),
            (Reply::utf8_required(), 422),
            (Reply::no_recipients(), 400),
            (Reply::new(451, "4.3.0", "store"), 503),
            (Reply::insufficient_storage(), 503),
        ];
        for (reply, want) in cases {
            assert_eq!(status_of(&reply).as_u16(), want, "{reply:?}");
        }
    }
}
