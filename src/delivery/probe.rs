//! `postgate upstream test`: one real session with an upstream, step by
//! step (connect, TLS and its verification, EHLO, the OAuth token, AUTH,
//! MAIL, RCPT, then RSET and QUIT: no message is sent), reporting each
//! step and the upstream's reply, and naming the step that failed.

use super::upstream::{SendError, Upstream};

/// Receives the steps of a session as they happen.
pub trait Steps {
    /// `step` starts (`connect`, `TLS`, `greeting`, `EHLO`, `STARTTLS`,
    /// `token`, `AUTH`, `MAIL`, `RCPT`, `RSET`, `QUIT`).
    fn begin(&mut self, step: &'static str);
    /// The step that began last succeeded; `detail` is the reply or what
    /// was established (never a credential or token).
    fn done(&mut self, detail: &str);
}

/// Steps nobody watches (delivery).
pub struct Quiet;

impl Steps for Quiet {
    fn begin(&mut self, _: &'static str) {}
    fn done(&mut self, _: &str) {}
}

/// A probe failed at `step`.
#[derive(Debug, thiserror::Error)]
#[error("{step} failed: {error}")]
pub struct ProbeFailure {
    /// The step that failed.
    pub step: &'static str,
    /// Why.
    pub error: String,
}

/// Records the steps and prints them through `print` as they finish.
struct Printer<'a> {
    current: &'static str,
    print: &'a mut (dyn FnMut(&str, &str) + Send),
}

impl Steps for Printer<'_> {
    fn begin(&mut self, step: &'static str) {
        self.current = step;
    }
    fn done(&mut self, detail: &str) {
        (self.print)(self.current, detail);
    }
}

/// Runs the probe against `upstream` as `from` to `to`, calling `print`
/// with (step, detail) after each step that succeeded.
pub async fn run(
    upstream: &Upstream,
    from: &str,
    to: &str,
    print: &mut (dyn FnMut(&str, &str) + Send),
) -> Result<(), ProbeFailure> {
    let mut p = Printer {
        current: "connect",
        print,
    };
    let fail = |step: &'static str, e: SendError| ProbeFailure {
        step,
        error: e.to_string(),
    };
    let mut conn = match upstream.connect_observed(from, &mut p).await {
        Ok(c) => c,
        Err(e) => return Err(fail(p.current, e)),
    };
    for (step, line) in [
        ("MAIL", format!("MAIL FROM:<{from}>\r\n")),
        ("RCPT", format!("RCPT TO:<{to}>\r\n")),
        ("RSET", "RSET\r\n".to_string()),
    ] {
        p.begin(step);
        let reply = conn
            .command(line.as_bytes(), step)
            .await
            .map_err(|e| fail(step, e))?;
        if !reply.is_positive() {
            return Err(ProbeFailure {
                step,
                error: format!("refused: {reply}"),
            });
        }
        p.done(&reply.text);
    }
    p.begin("QUIT");
    let reply = conn
        .command(b"QUIT\r\n", "QUIT")
        .await
        .map_err(|e| fail("QUIT", e))?;
    p.done(&reply.text);
    Ok(())
}
