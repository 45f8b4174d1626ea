//! A join's payload (`phx_join`, docs/protocol.md 5.1), read once into a typed [`JoinConfig`],
//! and the bounds it is checked against ([`Bounds`]).

use serde_json::{Map, Value};

use super::{replay, Refusal};
use crate::broadcast::Membership;
use crate::fanout::subscription::Requested;

/// What a `postgres_changes` entry may hold besides its filter (event, schema, table,
/// select), in bytes.
const ENTRY_OVERHEAD_BYTES: usize = 1024;

/// A join's payload, read once.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The channel token (`access_token`, or the older `user_token`), when the client sent one.
    pub token: Option<String>,
    /// `config.private`.
    pub private: bool,
    /// `config.postgres_changes` entries (null entries dropped; entries that are not objects
    /// kept as empty objects, which fail validation).
    pub changes: Vec<Requested>,
    /// `config.postgres_changes_options.wait`: hold the reply until the subscriptions are live,
    /// and refuse the join when they cannot be (docs/protocol.md 6.6).
    pub wait_for_changes: bool,
    /// `config.component`: the client's name for the part of the app that joined.
    pub component: Option<String>,
    /// Broadcast and presence settings (`config.broadcast`, `config.presence`).
    pub membership: Membership,
    /// `config.broadcast.replication_ready`: report when the change stream runs
    /// (docs/protocol.md 6.6).
    pub replication_ready: bool,
    /// `config.broadcast.replay`: stored messages to replay (docs/protocol.md 7.6).
    pub replay: replay::Replay,
}

impl JoinConfig {
    /// Reads a join payload. Booleans may be JSON booleans or strings, any case
    /// (docs/protocol.md 5.1); missing and null sections mean their defaults. The token and the
    /// `postgres_changes` entries are moved out of the payload, not copied.
    pub fn parse(mut payload: Value) -> JoinConfig {
        // `access_token` when present (a string or not), else the older `user_token`.
        let token_key = if payload.get("access_token").is_some() {
            "access_token"
        } else {
            "user_token"
        };
        let token = match payload.get_mut(token_key).map(Value::take) {
            Some(Value::String(t)) if !t.is_empty() => Some(t),
            _ => None,
        };
        let entries = payload
            .get_mut("config")
            .and_then(|c| c.get_mut("postgres_changes"))
            .map(Value::take);
        let changes: Vec<Requested> = match entries {
            Some(Value::Array(items)) => items
                .into_iter()
                .filter(|v| !v.is_null())
                .map(|v| match v {
                    Value::Object(raw) => Requested::new(raw),
                    _ => Requested::new(Map::new()),
                })
                .collect(),
            _ => Vec::new(),
        };
        let config = payload.get("config").and_then(Value::as_object);
        let wait_for_changes = config
            .and_then(|c| c.get("postgres_changes_options"))
            .and_then(|o| o.get("wait"))
            .is_some_and(truthy)
            && !changes.is_empty();
        JoinConfig {
            token,
            private: config.and_then(|c| c.get("private")).is_some_and(truthy),
            changes,
            wait_for_changes,
            component: config
                .and_then(|c| c.get("component"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            membership: membership(config),
            replication_ready: config
                .and_then(|c| c.get("broadcast"))
                .and_then(|b| b.get("replication_ready"))
                .is_some_and(truthy),
            replay: replay::Replay::parse(
                config
                    .and_then(|c| c.get("broadcast"))
                    .and_then(Value::as_object),
            ),
        }
    }

    /// The registry's `table_filters`: each entry's event, schema, table and filter as sent
    /// (`null` where missing), serialized straight from the entries.
    pub fn table_filters(&self) -> TableFilters<'_> {
        TableFilters(&self.changes)
    }
}

/// [`JoinConfig::table_filters`]: a list of `{"event", "filter", "schema", "table"}` objects,
/// written without copying the entries into a JSON tree first.
#[derive(Debug, Clone, Copy)]
pub struct TableFilters<'a>(&'a [Requested]);

impl serde::Serialize for TableFilters<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        /// Keys in the order a JSON object of this crate's `serde_json` writes them (sorted).
        const KEYS: [&str; 4] = ["event", "filter", "schema", "table"];
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for req in self.0 {
            seq.serialize_element(&Entry(req))?;
        }
        return seq.end();

        struct Entry<'a>(&'a Requested);
        impl serde::Serialize for Entry<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(KEYS.len()))?;
                for key in KEYS {
                    map.serialize_entry(key, self.0.raw.get(key).unwrap_or(&Value::Null))?;
                }
                map.end()
            }
        }
    }
}

/// The bounds a join is checked against (from the settings).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Longest topic, bytes.
    pub topic_bytes: usize,
    /// Most `postgres_changes` entries.
    pub changes: usize,
    /// Longest filter, bytes.
    pub filter_bytes: usize,
    /// Longest component name or presence key, bytes.
    pub name_bytes: usize,
}

impl Bounds {
    /// The bounds of `config`.
    pub fn of(config: &crate::config::Config) -> Bounds {
        Bounds {
            topic_bytes: config.max_topic_bytes,
            changes: config.max_changes_per_join,
            filter_bytes: config.max_filter_bytes,
            name_bytes: config.max_name_bytes,
        }
    }
}

impl JoinConfig {
    /// Checks the join against `bounds`, before any of it is kept, resolved or recorded.
    ///
    /// # Errors
    /// The first bound the join is over.
    pub fn check(&self, bounds: Bounds) -> Result<(), Refusal> {
        if self.changes.len() > bounds.changes {
            return Err(Refusal::TooManyChanges {
                limit: bounds.changes,
            });
        }
        let too_long = |what, limit| Err(Refusal::TooLong { what, limit });
        let filter_len = |r: &Requested| {
            r.raw
                .get("filter")
                .and_then(Value::as_str)
                .map_or(0, str::len)
        };
        if self
            .changes
            .iter()
            .any(|r| filter_len(r) > bounds.filter_bytes)
        {
            return too_long("filter", bounds.filter_bytes);
        }
        // Every entry is kept for the channel's life (and echoed): bounded whole, whatever its
        // fields hold.
        let entry_bytes = bounds.filter_bytes + ENTRY_OVERHEAD_BYTES;
        let entry_len = |r: &Requested| json_len(&r.raw);
        if self.changes.iter().any(|r| entry_len(r) > entry_bytes) {
            return too_long("postgres_changes entry", entry_bytes);
        }
        if self
            .component
            .as_ref()
            .is_some_and(|c| c.len() > bounds.name_bytes)
        {
            return too_long("component", bounds.name_bytes);
        }
        if self.membership.presence_key.len() > bounds.name_bytes {
            return too_long("presence key", bounds.name_bytes);
        }
        Ok(())
    }
}

/// The length of `value`'s JSON text, counted as it is written, never kept.
fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // A map of JSON values always serializes, and this writer never fails.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Reads `config.broadcast` and `config.presence`.
fn membership(config: Option<&Map<String, Value>>) -> Membership {
    let section = |name: &str| config.and_then(|c| c.get(name)).and_then(Value::as_object);
    let flag = |section: Option<&Map<String, Value>>, name: &str| {
        section.and_then(|s| s.get(name)).is_some_and(truthy)
    };
    let broadcast = section("broadcast");
    let presence = section("presence");
    let presence_key = match presence.and_then(|p| p.get("key")) {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => uuid::Uuid::new_v4().to_string(),
    };
    Membership {
        self_broadcast: flag(broadcast, "self"),
        ack: flag(broadcast, "ack"),
        presence_key,
        presence_enabled: flag(presence, "enabled"),
    }
}

/// Booleans may arrive as JSON booleans or as strings, any case (docs/protocol.md 5.1).
fn truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(payload: Value) -> JoinConfig {
        JoinConfig::parse(payload)
    }

    #[test]
    fn join_config_flags_accept_booleans_and_strings() {
        let c = parse(
            json!({"config": {"broadcast": {"self": true, "ack": "TRUE"},
                                        "presence": {"key": "u1", "enabled": "true"},
                                        "private": "True"}}),
        );
        let m = &c.membership;
        assert!(m.self_broadcast && m.ack && m.presence_enabled && c.private);
        assert_eq!(m.presence_key, "u1");
        let c = parse(json!({"config": {"broadcast": {"self": "false", "ack": 1}}}));
        let m = &c.membership;
        assert!(!m.self_broadcast && !m.ack && !m.presence_enabled && !c.private);
    }

    /// realtime-py sends `"broadcast": null`; a missing or empty key gets a random one per join.
    #[test]
    fn missing_or_null_sections_mean_defaults() {
        for payload in [
            json!({}),
            json!({"config": null}),
            json!({"config": {"broadcast": null, "presence": null}}),
            json!({"config": {"presence": {"key": ""}}}),
        ] {
            let c = parse(payload.clone());
            assert_ne!(
                c.membership.presence_key,
                parse(payload).membership.presence_key
            );
            assert!(!c.membership.self_broadcast && !c.membership.presence_enabled);
            assert!(uuid::Uuid::parse_str(&c.membership.presence_key).is_ok());
            assert!(c.changes.is_empty() && !c.wait_for_changes);
        }
        let c = parse(json!({"config": {"presence": {"key": 42}}}));
        assert_eq!(c.membership.presence_key, "42");
    }

    #[test]
    fn changes_drop_nulls_and_keep_non_objects_for_validation() {
        let c = parse(json!({"config": {
            "postgres_changes": [null, {"event": "*", "schema": "public"}, 3],
            "postgres_changes_options": {"wait": "true"}}}));
        assert_eq!(c.changes.len(), 2);
        assert!(c.changes[1].raw.is_empty());
        assert!(c.wait_for_changes);
        let expected = json!([{"event": "*", "schema": "public", "table": null, "filter": null},
                              {"event": null, "schema": null, "table": null, "filter": null}]);
        assert_eq!(serde_json::to_value(c.table_filters()).unwrap(), expected);
        // The same text as the JSON tree's (its keys sorted).
        assert_eq!(
            serde_json::to_string(&c.table_filters()).unwrap(),
            expected.to_string()
        );
    }

    #[test]
    fn an_entrys_length_is_its_json_texts() {
        for v in [
            json!({}),
            json!({"event": "*", "filter": "note=eq.\"é\"\n", "n": [1.5, null, {"x": true}]}),
        ] {
            let map = v.as_object().unwrap();
            assert_eq!(json_len(map), v.to_string().len(), "{v}");
        }
    }

    #[test]
    fn tokens_come_from_access_token_or_user_token() {
        assert_eq!(
            parse(json!({"access_token": "a", "user_token": "b"}))
                .token
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            parse(json!({"user_token": "b"})).token.as_deref(),
            Some("b")
        );
        assert_eq!(parse(json!({"access_token": ""})).token, None);
        // An `access_token` that is there, even empty or not a string, is the one read.
        for present in [json!(""), json!(5), json!(null)] {
            let payload = json!({"access_token": present, "user_token": "b"});
            assert_eq!(parse(payload).token, None);
        }
        assert_eq!(parse(json!(["access_token", "a"])).token, None);
    }
}
