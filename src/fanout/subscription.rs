//! Postgres Changes subscriptions: what a join asks for (`config.postgres_changes`), its stable
//! id, and its validation against the published tables (docs/protocol.md sections 5.2, 6.1, 6.5).

use serde_json::{Map, Value};

use super::filter::{BoundFilter, Column, Filter};
use crate::change::{ChangeEvent, Op};
use crate::pg::catalog::Catalog;

/// Which operations a subscription wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Events(u8);

impl Events {
    /// Every operation (`*`, and anything unrecognised).
    pub const ALL: Events = Events(0b111);

    /// Parses `event` case-insensitively; anything but INSERT/UPDATE/DELETE means all.
    pub fn parse(event: Option<&str>) -> Events {
        match event.map(str::to_ascii_uppercase).as_deref() {
            Some("INSERT") => Events(0b001),
            Some("UPDATE") => Events(0b010),
            Some("DELETE") => Events(0b100),
            _ => Events::ALL,
        }
    }

    /// Whether `op` is wanted.
    pub fn contains(self, op: Op) -> bool {
        let bit = match op {
            Op::Insert => 0b001,
            Op::Update => 0b010,
            Op::Delete => 0b100,
        };
        self.0 & bit != 0
    }
}

/// One entry of `config.postgres_changes` as the client sent it.
#[derive(Debug, Clone)]
pub struct Requested {
    /// The object as sent; echoed back with `id` in the join reply.
    pub raw: Map<String, Value>,
    /// Stable id of this object.
    pub id: u32,
}

impl Requested {
    /// The entry `raw`, with its stable id.
    pub fn new(raw: Map<String, Value>) -> Requested {
        let id = stable_id(&raw);
        Requested { raw, id }
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.raw.get(key).and_then(Value::as_str).map(str::trim)
    }

    /// The reply entry as a JSON tree: the object as sent plus `id`. The reply itself is written
    /// by [`Echoes`] without building it; tests compare the two.
    #[cfg(test)]
    pub(crate) fn echo(&self) -> Value {
        let mut obj = self.raw.clone();
        obj.insert("id".into(), Value::from(self.id));
        Value::Object(obj)
    }

    fn describe(&self) -> String {
        let select = match self.raw.get("select") {
            Some(Value::Array(cols)) => cols
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        format!(
            "[event: {}, schema: {}, table: {}, filters: {}, select: [{}]]",
            self.text("event").unwrap_or("*"),
            self.text("schema").unwrap_or(""),
            self.text("table").unwrap_or(""),
            self.text("filter").unwrap_or(""),
            select
        )
    }
}

/// The join reply's `postgres_changes`: each entry as sent with its id, serialized straight
/// from the entries (the same text, `id` among the keys in their sorted place) without copying
/// them into a JSON tree first.
#[derive(Debug, Clone, Copy)]
pub struct Echoes<'a>(pub &'a [Requested]);

impl serde::Serialize for Echoes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct Echo<'a>(&'a Requested);
        impl serde::Serialize for Echo<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let raw = &self.0.raw;
                let len = raw.len() + usize::from(!raw.contains_key("id"));
                let mut map = serializer.serialize_map(Some(len))?;
                let mut id_written = false;
                // `raw` iterates its keys in order; `id` takes its place among them, in place
                // of one the client sent.
                for (key, value) in raw {
                    if !id_written && key.as_str() >= "id" {
                        map.serialize_entry("id", &self.0.id)?;
                        id_written = true;
                    }
                    if key != "id" {
                        map.serialize_entry(key, value)?;
                    }
                }
                if !id_written {
                    map.serialize_entry("id", &self.0.id)?;
                }
                map.end()
            }
        }
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for req in self.0 {
            seq.serialize_element(&Echo(req))?;
        }
        seq.end()
    }
}

/// A stable, non-zero id below 2^31 for a subscription object: identical objects get identical
/// ids (FNV-1a over the object's canonical JSON, whose keys are sorted).
pub fn stable_id(raw: &Map<String, Value>) -> u32 {
    /// FNV-1a over the bytes written to it: the text is hashed as it is written, never kept.
    struct Fnv(u32);
    impl std::io::Write for Fnv {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            for &byte in buf {
                self.0 ^= u32::from(byte);
                self.0 = self.0.wrapping_mul(0x0100_0193);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut fnv = Fnv(0x811c_9dc5);
    // A map of JSON values always serializes, and this writer never fails.
    let _ = serde_json::to_writer(&mut fnv, raw);
    fnv.0 % 0x7fff_fffe + 1
}

/// What a subscription gets of one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: another table or event, or the filter does not match.
    Skip,
    /// The change.
    Deliver,
    /// An error entry for the change: records empty, `errors` saying why.
    Error,
}

/// A validated subscription, as the router evaluates it.
#[derive(Debug, Clone)]
pub struct PgSub {
    /// Id echoed in the join reply and listed in `ids`.
    pub id: u32,
    /// Wanted operations.
    pub events: Events,
    /// Schema, or `*`.
    pub schema: String,
    /// Table, or `*`.
    pub table: String,
    /// Filter bound to the table's column types.
    pub filter: Option<BoundFilter>,
    /// The filter as the client wrote it (delivery diagnostics show it).
    pub filter_text: Option<String>,
    /// Selected columns (primary key always added on delivery).
    pub select: Option<Vec<String>>,
}

impl PgSub {
    /// The index key this subscription is found under.
    pub fn table_key(&self) -> (String, String) {
        (self.schema.clone(), self.table.clone())
    }

    /// Whether this subscription is about `change`'s table and operation, whatever its filter
    /// says.
    pub fn covers(&self, change: &ChangeEvent) -> bool {
        self.events.contains(change.op)
            && (self.schema == "*" || self.schema == change.table.schema)
            && (self.table == "*" || self.table == change.table.name)
    }

    /// Whether `change` is delivered to this subscription.
    pub fn matches(&self, change: &ChangeEvent) -> bool {
        self.verdict(change) == Verdict::Deliver
    }

    /// What this subscription gets of `change`: the change, an error entry in its place (the
    /// change cannot be delivered, or its filter cannot be evaluated on it), or nothing.
    pub fn verdict(&self, change: &ChangeEvent) -> Verdict {
        if !self.events.contains(change.op)
            || (self.schema != "*" && self.schema != change.table.schema)
            || (self.table != "*" && self.table != change.table.name)
        {
            return Verdict::Skip;
        }
        if change.undeliverable.is_some() || (change.filter_gap && self.filter.is_some()) {
            return Verdict::Error;
        }
        match (&self.filter, change.filter_row()) {
            (Some(f), Some(row)) if !f.matches(row) => Verdict::Skip,
            _ => Verdict::Deliver,
        }
    }
}

/// Validates requested subscriptions against the catalog. All or nothing: the first invalid
/// entry yields the `system` error message docs/protocol.md 6.5 gives for it.
///
/// # Errors
/// The message to push; [`Resolve::Database`] when the catalog cannot be read.
pub async fn resolve(requested: &[Requested], catalog: &Catalog) -> Result<Vec<PgSub>, Resolve> {
    let mut subs = Vec::with_capacity(requested.len());
    for req in requested {
        subs.push(resolve_one(req, catalog).await?);
    }
    Ok(subs)
}

/// Why subscriptions could not be created.
#[derive(Debug, thiserror::Error)]
pub enum Resolve {
    /// The request is invalid; the text is the client-facing message.
    #[error("{0}")]
    Invalid(String),
    /// The request names no published table (or a filter on a wildcard); the text is the
    /// client-facing message.
    #[error("{0}")]
    NotEnabled(String),
    /// The database could not be asked.
    #[error("catalog unavailable")]
    Database(#[from] crate::pg::Error),
}

async fn resolve_one(req: &Requested, catalog: &Catalog) -> Result<PgSub, Resolve> {
    let events = Events::parse(req.text("event"));
    let schema = req.text("schema").filter(|s| !s.is_empty());
    let table = req.text("table").filter(|s| !s.is_empty());
    let (schema, table) = match (schema, table) {
        (None, None) => {
            return Err(Resolve::Invalid(format!(
                "No subscription params provided. Please provide at least a `schema` or `table` \
                 to subscribe to: {}",
                Value::Object(req.raw.clone())
            )))
        }
        (None, Some(t)) => ("public".to_owned(), t.to_owned()),
        (Some(s), None) => (s.to_owned(), "*".to_owned()),
        (Some(s), Some(t)) => (s.to_owned(), t.to_owned()),
    };
    let select: Option<Vec<String>> = match req.raw.get("select") {
        Some(Value::Array(cols)) => Some(
            cols.iter()
                .filter_map(Value::as_str)
                .map(|c| c.trim().to_owned())
                .collect(),
        ),
        Some(Value::String(s)) if !s.trim().is_empty() => {
            Some(s.split(',').map(|c| c.trim().to_owned()).collect())
        }
        _ => None,
    };
    let wildcard = schema == "*" || table == "*";
    if wildcard && select.is_some() {
        return Err(Resolve::Invalid(
            "Column selection is not supported for wildcard subscriptions. Provide an explicit \
             schema and table name."
                .to_owned(),
        ));
    }
    let filter_text = req.text("filter").unwrap_or("");
    let filter = Filter::parse(filter_text).map_err(|e| Resolve::Invalid(e.to_string()))?;
    let unable = || {
        Resolve::NotEnabled(format!(
            "Unable to subscribe to changes with given parameters. Please check Realtime is \
             enabled for the given connect parameters: {}",
            req.describe()
        ))
    };
    let is_published = |set: &std::collections::HashSet<(String, String)>| {
        set.iter()
            .any(|(s, t)| (schema == "*" || *s == schema) && (table == "*" || *t == table))
    };
    let published = catalog.published(false).await?;
    if !is_published(&published) && !is_published(&*catalog.published(true).await?) {
        return Err(unable());
    }
    if wildcard {
        if !filter.is_empty() {
            return Err(unable());
        }
        return Ok(PgSub {
            id: req.id,
            events,
            schema,
            table,
            filter: None,
            filter_text: None,
            select: None,
        });
    }
    // The cached description first (a join storm must not cost catalog queries per join);
    // if it does not validate, a fresh one decides, so a column added a moment ago is found.
    let mut bound = Err(unable());
    for fresh in [false, true] {
        bound = match catalog.table_by_name(&schema, &table, fresh).await? {
            Some(info) => bind_to_table(req, &info, select.as_deref(), &filter),
            None => Err(unable()),
        };
        if bound.is_ok() {
            break;
        }
    }
    let bound = bound?;
    Ok(PgSub {
        id: req.id,
        events,
        schema,
        table,
        filter_text: bound.as_ref().map(|_| filter_text.to_owned()),
        filter: bound,
        select,
    })
}

/// Checks a subscription's column selection and binds its filter to `info`'s columns.
fn bind_to_table(
    req: &Requested,
    info: &crate::pg::catalog::TableInfo,
    select: Option<&[String]>,
    filter: &Filter,
) -> Result<Option<BoundFilter>, Resolve> {
    let columns: Vec<Column> = info
        .columns
        .iter()
        .map(|c| Column::new(c.name.clone(), c.type_name.clone()))
        .collect();
    if let Some(cols) = select {
        if let Some(missing) = cols.iter().find(|c| info.column(c).is_none()) {
            return Err(Resolve::Invalid(format!(
                "Unable to subscribe to changes with given parameters. An exception happened so \
                 please check your connect parameters: {}. Exception: invalid column for select \
                 {missing}",
                req.describe()
            )));
        }
    }
    if filter.is_empty() {
        return Ok(None);
    }
    filter.bind(&columns).map(Some).map_err(|e| {
        Resolve::Invalid(format!(
            "Unable to subscribe to changes with given parameters. An exception happened so \
             please check your connect parameters: {}. Exception: {e}",
            req.describe()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_stable_non_zero_and_below_2_31() {
        let a = json!({"event":"INSERT","schema":"public","table":"todos"});
        let b = json!({"table":"todos","schema":"public","event":"INSERT"});
        let ra: Vec<Requested> = [a, b, json!({"event":"*","schema":"public"})]
            .into_iter()
            .map(|v| Requested::new(v.as_object().unwrap().clone()))
            .collect();
        assert_eq!(ra[0].id, ra[1].id, "key order does not change the id");
        assert_ne!(ra[0].id, ra[2].id);
        for r in &ra {
            assert!(r.id > 0 && r.id < (1 << 31));
        }
        assert_eq!(ra[0].echo()["id"], json!(ra[0].id));
        assert!(
            ra[0].echo().get("filter").is_none(),
            "omitted keys stay omitted"
        );
    }

    /// Ids are echoed to clients and kept by channels that resume: the same object must get
    /// the same id from every release. The hash of the canonical text, as written and
    /// hashed by hand, for objects with escapes, non-ASCII text, numbers and nesting.
    #[test]
    fn ids_are_the_fnv_hash_of_the_canonical_text() {
        fn by_text(raw: &Map<String, Value>) -> u32 {
            let text = Value::Object(raw.clone()).to_string();
            let mut hash: u32 = 0x811c_9dc5;
            for byte in text.bytes() {
                hash ^= u32::from(byte);
                hash = hash.wrapping_mul(0x0100_0193);
            }
            hash % 0x7fff_fffe + 1
        }
        let todos = json!({"event":"INSERT","schema":"public","table":"todos"});
        let quoted = json!({"table":"todos","schema":"public","event":"*",
            "filter":"note=eq.a \"quoted\" é"});
        assert_eq!(stable_id(todos.as_object().unwrap()), 334_186_004);
        assert_eq!(stable_id(quoted.as_object().unwrap()), 354_647_719);
        for v in [
            todos,
            quoted,
            json!({}),
            json!({"event":"UPDATE","n":1.5e300,"m":-7,"nested":{"b":[1,null,true],"a":"\u{1}\n"}}),
        ] {
            let raw = v.as_object().unwrap();
            assert_eq!(stable_id(raw), by_text(raw), "{v}");
        }
    }

    /// The join reply's entries are written from the entries as sent: the same text as the
    /// JSON tree of each entry with its id, with `id` before, after and among the other keys,
    /// and in place of an `id` the client sent.
    #[test]
    fn echoes_are_the_entries_with_their_ids() {
        let entries: Vec<Requested> = [
            json!({"event":"INSERT","schema":"public","table":"todos"}),
            json!({"event":"*","filter":"id=eq.1","id":"mine","schema":"public"}),
            json!({"a":1,"b":[1,{"c":"\"q\""}]}),
            json!({"zz":null}),
            json!({}),
        ]
        .into_iter()
        .map(|v| Requested::new(v.as_object().unwrap().clone()))
        .collect();
        let tree = Value::Array(entries.iter().map(Requested::echo).collect());
        let text = serde_json::to_string(&Echoes(&entries)).unwrap();
        assert_eq!(text, tree.to_string());
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back[1]["id"],
            json!(entries[1].id),
            "the client's id is replaced"
        );
        assert_eq!(serde_json::to_string(&Echoes(&[])).unwrap(), "[]");
    }

    proptest::proptest! {
        /// `id` takes its sorted place among any keys, next to look-alikes of it.
        #[test]
        fn echoes_place_the_id_among_any_keys(
            keys in proptest::collection::btree_map(
                proptest::sample::select(
                    vec!["", "ID", "Id", "a", "i", "ic", "id", "id_", "ida", "j", "schema", "é"],
                ),
                0i64..3,
                0..8,
            ),
        ) {
            let raw: Map<String, Value> =
                keys.into_iter().map(|(k, v)| (k.to_owned(), Value::from(v))).collect();
            let entries = [Requested::new(raw)];
            let tree = Value::Array(vec![entries[0].echo()]);
            proptest::prop_assert_eq!(
                serde_json::to_string(&Echoes(&entries)).unwrap(),
                tree.to_string()
            );
        }
    }

    #[test]
    fn events_parse_case_insensitively_and_default_to_all() {
        assert!(Events::parse(Some("insert")).contains(Op::Insert));
        assert!(!Events::parse(Some("insert")).contains(Op::Delete));
        assert_eq!(Events::parse(Some("weird")), Events::ALL);
        assert_eq!(Events::parse(None), Events::ALL);
    }
}
