//! Outbox maintenance: capture triggers kept in step with the publication, and old rows
//! pruned. Run by the listener task between reads (one task per node owns the outbox side).

use std::time::Duration;

use sqlx::PgPool;

/// Makes the capture triggers match the `supabase_realtime` publication. Bounded by a lock
/// timeout: a table busy with long transactions is retried on a later tick rather than
/// making its writers queue behind our `CREATE TRIGGER`.
pub(super) async fn reconcile(pool: &PgPool) {
    let result: Result<serde_json::Value, sqlx::Error> = async {
        let mut tx = pool.begin().await?;
        sqlx::query("set local lock_timeout = '2s'")
            .execute(&mut *tx)
            .await?;
        let summary = sqlx::query_scalar("select realtime.sync_capture(false)")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(summary)
    }
    .await;
    match result {
        Ok(summary) => {
            let changed = ["created", "dropped", "failed"].iter().any(|k| {
                summary
                    .get(k)
                    .and_then(serde_json::Value::as_array)
                    .is_some_and(|a| !a.is_empty())
            });
            if changed {
                tracing::info!(%summary, "capture triggers reconciled with the publication");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot reconcile capture triggers"),
    }
}

/// Deletes outbox rows older than `retention`.
pub(super) async fn prune(pool: &PgPool, retention: Duration) {
    let secs = retention.as_secs_f64();
    let result: Result<i64, sqlx::Error> =
        sqlx::query_scalar("select realtime.prune_changes(make_interval(secs => $1))")
            .bind(secs)
            .fetch_one(pool)
            .await;
    match result {
        Ok(n) if n > 0 => tracing::debug!(rows = n, "outbox pruned"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot prune the outbox"),
    }
}
