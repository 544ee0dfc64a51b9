//! The node's [`Admin`] implementation: the HTTP `/admin` endpoints over
//! the queue (same functions as `postgate queue ...`) and the limiter (same
//! as `postgate limits ...`, and the only way to reach in-process counters
//! of the `local` limits backend).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::delivery::admin as queue;
use crate::http::{Admin, AdminError, QueueQuery};
use crate::limits::{operator, Limiter, LimitsError};
use crate::store::Store;

/// Admin operations of one node.
pub struct NodeAdmin {
    pub store: Arc<dyn Store>,
    pub limiter: Arc<Limiter>,
}

fn limits_err(e: LimitsError) -> AdminError {
    match e {
        LimitsError::Store(s) => s.into(),
        LimitsError::Config(m) | LimitsError::Invalid(m) => AdminError::Invalid(m),
    }
}

#[async_trait]
impl Admin for NodeAdmin {
    async fn queue_list(&self, query: &QueueQuery) -> Result<Value, AdminError> {
        let entries = queue::list(&*self.store, query.limit).await?;
        Ok(json!({ "messages": entries }))
    }

    async fn queue_show(&self, id: &str) -> Result<Value, AdminError> {
        Ok(serde_json::to_value(queue::show(&*self.store, id).await?).unwrap_or(Value::Null))
    }

    async fn queue_retry(&self, id: &str) -> Result<Value, AdminError> {
        let n = queue::retry(&*self.store, id).await?;
        Ok(json!({ "id": id, "recipients_due_now": n }))
    }

    async fn queue_delete(&self, id: &str) -> Result<Value, AdminError> {
        queue::delete(&*self.store, id).await?;
        Ok(json!({ "id": id, "deleted": true }))
    }

    async fn limits_show(&self, subject: Option<&str>) -> Result<Value, AdminError> {
        let snap = operator::show(&self.limiter).await.map_err(limits_err)?;
        let counters: Vec<Value> = snap
            .counters
            .iter()
            .filter(|c| {
                subject.is_none_or(|s| c.subject == s || c.subject.ends_with(&format!(":{s}")))
            })
            .map(|c| {
                json!({
                    "subject": c.subject,
                    "kind": c.kind,
                    "used": c.used,
                    "limit": c.limit.map(|r| json!({ "count": r.count, "period_ms": r.period_ms })),
                    "clear_in_ms": (c.until_ms - snap.now_ms).max(0),
                })
            })
            .collect();
        Ok(json!({
            "counters": counters,
            "text": snap.to_string(),
        }))
    }

    async fn limits_reset(&self, subject: &str) -> Result<Value, AdminError> {
        let removed = operator::reset(&self.limiter, &*self.store, subject)
            .await
            .map_err(limits_err)?;
        Ok(json!({ "subject": subject, "removed": removed }))
    }
}
