//! Message and recipient rates and quotas of a login, at the SMTP commands
//! they belong to (issue 12): the message counters are checked at MAIL,
//! the recipient counter at each RCPT, and both are charged only once the
//! message is committed to the queue, so a refused message costs nothing.

use super::gcra::{self, Rate};
use super::keys::{self, kind};
use super::snapshot::human_period;
use super::{
    refusal, Account, Check, LimitKind, LimitRefusal, LimitScope, Limiter, DAY_MS, HOUR_MS,
    MINUTE_MS,
};
use crate::store::GcraOutcome;

impl Limiter {
    /// The counters a message of `messages` (0 or 1) messages and
    /// `recipients` recipients touches: the user's rates (overrides, else
    /// config) and, for each field the credential overrides, the
    /// credential's own counter too. Longest windows first. Counters with
    /// a cost of 0 are left out.
    fn message_checks(&self, account: &Account<'_>, messages: u32, recipients: u32) -> Vec<Check> {
        let c = &self.config;
        let u = account.user_limits;
        let mut checks = Vec::new();
        let user_who = format!("user {}", account.username);
        let cred_who = format!(
            "credential {} of user {}",
            account.credential_label, account.username
        );
        let scopes = [
            (
                LimitScope::User,
                keys::uid_subject(account.user_id),
                &user_who,
                [
                    Some(u.messages_per_minute.unwrap_or(c.messages_per_minute)),
                    Some(u.messages_per_hour.unwrap_or(c.messages_per_hour)),
                    Some(u.messages_per_day.unwrap_or(c.messages_per_day)),
                    Some(u.recipients_per_day.unwrap_or(c.recipients_per_day)),
                ],
            ),
            (
                LimitScope::Credential,
                keys::cred_subject(account.credential_id),
                &cred_who,
                [
                    account.credential_limits.messages_per_minute,
                    account.credential_limits.messages_per_hour,
                    account.credential_limits.messages_per_day,
                    account.credential_limits.recipients_per_day,
                ],
            ),
        ];
        for (scope, subject, who, values) in &scopes {
            let specs = [
                (kind::MESSAGES, MINUTE_MS, messages, "message rate"),
                (kind::MESSAGES, HOUR_MS, messages, "message rate"),
                (kind::MESSAGES, DAY_MS, messages, "message quota"),
                (kind::RECIPIENTS, DAY_MS, recipients, "recipient quota"),
            ];
            // Longest windows first: an exhausted daily quota refuses before
            // any shorter counter is touched.
            for (value, (k, period, cost, what)) in values.iter().zip(specs).rev() {
                let Some(n) = value.filter(|n| *n > 0) else {
                    continue;
                };
                if cost == 0 {
                    continue;
                }
                let rate = Rate::new(n, period);
                checks.push(Check {
                    key: keys::rate_key(subject, k, rate),
                    rate,
                    cost,
                    labels: (
                        *scope,
                        if k == kind::RECIPIENTS {
                            LimitKind::Recipients
                        } else {
                            LimitKind::Messages
                        },
                    ),
                    reason: format!(
                        "{what} for {who} exceeded ({n} per {})",
                        human_period(period)
                    ),
                });
            }
        }
        checks
    }

    /// Checks and charges one message with `recipients` recipients at once.
    /// All or nothing: when one counter refuses, the others are given back.
    /// Shared backends: one round trip per counter (4 with the default
    /// config, plus one per credential override), more only on refusal.
    /// `Err`: the refusal (its Display adds "try again in N s"). The SMTP
    /// session uses [`Limiter::mail_check`], [`Limiter::rcpt_check`] and
    /// [`Limiter::message_charge`] instead.
    pub async fn message(
        &self,
        account: &Account<'_>,
        recipients: u32,
    ) -> Result<(), LimitRefusal> {
        let now = self.now();
        self.run_checks(self.message_checks(account, 1, recipients), now)
            .await
    }

    /// At MAIL: would one more message fit the message rates and quotas of
    /// the login now? Charges nothing. Shared backends: one round trip.
    /// When the store cannot be reached the check passes (logged).
    pub async fn mail_check(&self, account: &Account<'_>) -> Result<(), LimitRefusal> {
        self.peek(self.message_checks(account, 1, 0)).await
    }

    /// At RCPT: would `recipients` recipients (the transaction's, this one
    /// included) fit the recipient quotas of the login now? Charges
    /// nothing. Shared backends: one round trip.
    pub async fn rcpt_check(
        &self,
        account: &Account<'_>,
        recipients: u32,
    ) -> Result<(), LimitRefusal> {
        self.peek(self.message_checks(account, 0, recipients)).await
    }

    /// The message was committed to the queue: charges one message and
    /// `recipients` recipients. Never refuses: a committed message always
    /// counts, also when sessions that passed their checks concurrently take
    /// a counter past its limit (later messages then wait that much longer).
    /// Store errors are logged, not returned.
    pub async fn message_charge(&self, account: &Account<'_>, recipients: u32) {
        let now = self.now();
        for check in self.message_checks(account, 1, recipients) {
            let mut step = check.rate.step(now, check.cost);
            // A window reaching the end of time: the step always applies
            // (`now + window` stays exactly `i64::MAX`, no overflow in SQL).
            step.window = i64::MAX - step.now.max(0);
            if let Err(e) = self.counters.check(&check.key, &step, now).await {
                tracing::warn!(error = %e, key = %check.key, "limit store unavailable: message not charged");
            }
        }
    }

    /// Whether every check would pass now, without changing any counter.
    async fn peek(&self, checks: Vec<Check>) -> Result<(), LimitRefusal> {
        if checks.is_empty() {
            return Ok(());
        }
        let now = self.now();
        let wanted: Vec<String> = checks.iter().map(|c| c.key.clone()).collect();
        let rows = match self.counters.get(&wanted).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "limit store unavailable: check skipped");
                return Ok(());
            }
        };
        for check in &checks {
            let stored = rows.iter().find(|r| r.key == check.key).map(|r| r.tat);
            let step = check.rate.step(now, check.cost);
            if let GcraOutcome::Refused { .. } = gcra::apply(&step, stored) {
                let wait = check.rate.retry_after_ms(stored, now, check.cost);
                return Err(refusal(check.labels, wait, check.reason.clone()));
            }
        }
        Ok(())
    }
}
