//! `GET /admin/api/channels`: the busiest channels. By subscribers, across the cluster, from
//! the active registry rows; by messages, on the node that answers, from what its hub and
//! change router relayed since each channel became active there.

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::types::Json as SqlJson;
use utoipa::{IntoParams, ToSchema};

use super::{database, ApiQuery, Error, ErrorBody};
use crate::broadcast::channel_name;
use crate::state::AppState;

/// Default length of each list.
const DEFAULT_LIMIT: usize = 20;
/// Longest list.
const MAX_LIMIT: usize = 500;

/// How many channels to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopQuery {
    /// Channels in each list, 1 to 500 (default 20).
    pub limit: Option<usize>,
}

/// The busiest channels.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopChannels {
    /// The node that counted `by_messages`.
    pub node_id: String,
    /// Channels with the most joins open, on every node.
    pub by_subscribers: Vec<ChannelSubscribers>,
    /// Channels that relayed the most messages on this node.
    pub by_messages: Vec<ChannelMessages>,
}

/// A channel's open joins across the cluster.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChannelSubscribers {
    /// The channel name.
    pub channel: String,
    /// Joins open (active registry rows).
    pub subscriptions: i64,
    /// Distinct connections.
    pub connections: i64,
    /// Distinct users (channel tokens' `sub`).
    pub users: i64,
}

/// What a channel relayed on this node.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelMessages {
    /// The channel name.
    pub channel: String,
    /// Whether it is the private channel of the name.
    pub private: bool,
    /// Messages relayed: broadcasts, presence diffs and changes queued.
    pub messages: u64,
    /// Broadcasts fanned out to its members.
    pub broadcasts: u64,
    /// Presence diffs fanned out.
    pub presence_diffs: u64,
    /// Change frames queued to its subscribers.
    pub changes: u64,
    /// Broadcast and presence frames refused by full queues.
    pub dropped: u64,
    /// Members (broadcast and presence) on this node.
    pub members: usize,
}

/// The busiest channels, by subscribers (cluster) and by messages (this node).
#[utoipa::path(
    get,
    path = "/admin/api/channels",
    operation_id = "top_channels",
    tag = "channels",
    security(("bearer" = [])),
    params(TopQuery),
    responses(
        (status = 200, description = "The busiest channels", body = TopChannels),
        (status = 400, description = "A limit that cannot be used", body = ErrorBody),
        (status = 401, description = "No credential, or one that is not accepted", body = ErrorBody),
        (status = 403, description = "A valid token whose role is not service_role", body = ErrorBody),
        (status = 503, description = "The database did not answer", body = ErrorBody),
    )
)]
pub async fn top(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<TopQuery>,
) -> Result<Json<TopChannels>, Error> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let request = sqlx::query_scalar::<_, SqlJson<Vec<ChannelSubscribers>>>(
        "select coalesce(json_agg(t order by t.subscriptions desc, t.channel), '[]'::json) \
           from (select channel_name as channel, count(*) as subscriptions, \
                        count(distinct connection_id) as connections, \
                        count(distinct claimed_user_id) as users \
                   from public.realtime_subscription_registry where is_active \
                  group by channel_name order by count(*) desc, channel_name limit $1) t",
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_one(&state.pool);
    let SqlJson(by_subscribers) = database(request).await?;
    Ok(Json(TopChannels {
        node_id: state.config.node_id.clone(),
        by_subscribers,
        by_messages: by_messages(&state, limit),
    }))
}

/// This node's channels by messages relayed: the hub's totals per channel, plus the change
/// frames queued to each topic's channels.
fn by_messages(state: &AppState, limit: usize) -> Vec<ChannelMessages> {
    let services = &state.session;
    let mut changes: HashMap<String, u64> = HashMap::new();
    services.router.for_each_channel(|topic, delivered| {
        let name = crate::protocol::channel_name(topic);
        *changes.entry(name.to_owned()).or_default() += delivered;
    });
    let mut out: Vec<ChannelMessages> = services
        .hub
        .channel_totals()
        .into_iter()
        .map(|(key, members, totals)| {
            let name = channel_name(&key).to_owned();
            let private = *key != *name && crate::broadcast::channel_key(&name, true) == *key;
            ChannelMessages {
                changes: if private {
                    0
                } else {
                    changes.remove(&name).unwrap_or(0)
                },
                channel: name,
                private,
                messages: 0,
                broadcasts: totals.broadcasts,
                presence_diffs: totals.presence_diffs,
                dropped: totals.dropped,
                members,
            }
        })
        .collect();
    out.extend(
        changes
            .into_iter()
            .map(|(channel, changes)| ChannelMessages {
                channel,
                private: false,
                messages: 0,
                broadcasts: 0,
                presence_diffs: 0,
                changes,
                dropped: 0,
                members: 0,
            }),
    );
    for c in &mut out {
        c.messages = c.broadcasts + c.presence_diffs + c.changes;
    }
    out.sort_by(|a, b| {
        b.messages
            .cmp(&a.messages)
            .then_with(|| a.channel.cmp(&b.channel))
    });
    out.truncate(limit);
    out
}
