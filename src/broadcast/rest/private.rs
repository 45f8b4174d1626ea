//! REST messages to private channels (docs/protocol.md 7.3, 7.5): before anything of a request
//! is sent, the caller's token must be allowed to send broadcasts on each private topic it
//! names, by the insert policies on `realtime.messages` ([`crate::auth::channel`]). A refusal
//! refuses the whole request (403, or 503 when the policies cannot be evaluated), is counted in
//! `gateway_broadcast_private_refused_total{cause}` and audited as `private_refused`.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::json;

use super::RestState;
use crate::auth::channel::{self, Want};
use crate::auth::Claims;
use crate::broadcast::Error;

/// Checks that `claims` may send to every topic of `private_topics`.
///
/// # Errors
/// [`Error::Forbidden`] naming the first topic refused (or whose policies raised),
/// [`Error::AuthorizationUnavailable`] when the database did not answer.
pub(super) async fn authorize<'a>(
    state: &RestState,
    claims: &Claims,
    addr: SocketAddr,
    private_topics: impl IntoIterator<Item = &'a str>,
) -> Result<(), Error> {
    let topics: BTreeSet<&str> = private_topics.into_iter().collect();
    for topic in topics {
        let checked = state
            .authorizer
            .check(topic, claims, Want::SendBroadcast)
            .await;
        let (cause, error, detail) = match checked {
            Ok(rights) if rights.write_broadcast => continue,
            Ok(_) => ("denied", Error::Forbidden(topic.to_owned()), None),
            Err(e @ channel::Error::Policy(_)) => (
                "policy_error",
                Error::Forbidden(topic.to_owned()),
                Some(e.detail()),
            ),
            Err(e @ channel::Error::Unavailable(_)) => (
                "unavailable",
                Error::AuthorizationUnavailable,
                Some(e.detail()),
            ),
        };
        if let Some(detail) = &detail {
            tracing::warn!(channel = %topic, error = %detail, "cannot authorize a private channel");
        }
        metrics::counter!("gateway_broadcast_private_refused_total", "cause" => cause).increment(1);
        state.registry.audit(
            "private_refused",
            claims.user_id(),
            Some(addr),
            json!({"kind": "rest", "cause": cause, "channel": topic,
                   "role": claims.db_role(), "error": detail}),
        );
        return Err(error);
    }
    Ok(())
}
