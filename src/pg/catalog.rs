//! What the gateway knows of the application's tables: columns and their type names, primary
//! key, replica identity, and which tables are published (enabled for realtime).
//!
//! Read from the system catalogs through the pool and cached: by relation id for decoding
//! (stage 2), by name for validating subscriptions at join. An entry is refreshed when a change
//! does not fit it (a column was added or dropped), when a subscription does not validate
//! against it, and after a short time to live, so `ALTER TABLE` is picked up without a restart.
//!
//! Joins never amplify into database load: every read made for a join goes through one lock,
//! so at most one catalog query is in flight for joins however many arrive, and joins waiting
//! for a fresh answer share the first read that started after they asked. Tables not found are
//! remembered too ([`NEGATIVE_TTL`]), so a flood of joins naming an unknown or unpublished
//! table costs one read per lock cycle, and the pool stays free for deliveries, cap checks and
//! registry writes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use sqlx::{PgPool, Row};
use tokio::sync::RwLock;

use super::Error;

/// How long a cached table description is trusted.
const TABLE_TTL: Duration = Duration::from_secs(10);
/// How long a table description found by name serves joins before it is read again.
const BY_NAME_TTL: Duration = Duration::from_secs(2);
/// How long the published-table list is trusted before a miss forces a re-read.
const PUBLISHED_TTL: Duration = Duration::from_secs(2);
/// How long "no such table" serves joins that do not ask for a fresh answer.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// Most names remembered; past it, the names of tables not found are forgotten first.
const MAX_NAMES: usize = 10_000;
/// The publication whose tables are enabled for realtime.
pub const PUBLICATION: &str = "supabase_realtime";

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// `pg_type.typname`, e.g. `int4`, `text`, `_int8`.
    pub type_name: String,
}

/// A table as the gateway needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// `pg_class.oid`.
    pub relid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in table order.
    pub columns: Vec<ColumnInfo>,
    /// Primary-key column names, in table order.
    pub primary_key: Vec<String>,
    /// `REPLICA IDENTITY FULL`: deliveries carry the whole old row.
    pub replica_identity_full: bool,
    /// Row-level security is enabled on the table.
    pub rls_enabled: bool,
}

impl TableInfo {
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Schema and table of a published table.
pub type TableName = (String, String);

/// Cached catalog reads.
#[derive(Debug)]
pub struct Catalog {
    pool: PgPool,
    by_relid: DashMap<u32, (Arc<TableInfo>, Instant)>,
    /// Descriptions by name, and names not found (`None`), with when they were read.
    by_name: DashMap<TableName, (Option<Arc<TableInfo>>, Instant)>,
    published: RwLock<(Arc<HashSet<TableName>>, Option<Instant>)>,
    /// Held while the catalog is read for a join, so a join storm costs one catalog read at a
    /// time, shared by every join that waited for it.
    refreshing: tokio::sync::Mutex<()>,
    /// Catalog reads made for joins (by name, and of the publication).
    reads: std::sync::atomic::AtomicU64,
}

impl Catalog {
    /// A catalog reading through `pool`.
    pub fn new(pool: PgPool) -> Catalog {
        Catalog {
            pool,
            by_relid: DashMap::new(),
            by_name: DashMap::new(),
            published: RwLock::new((Arc::new(HashSet::new()), None)),
            refreshing: tokio::sync::Mutex::new(()),
            reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Catalog reads made for joins so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_read(&self) {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("gateway_catalog_reads_total").increment(1);
    }

    /// The table with relation id `relid`, cached.
    ///
    /// # Errors
    /// [`Error::Sqlx`] when the catalog cannot be read; `Ok(None)` when the table is gone.
    pub async fn table(&self, relid: u32) -> Result<Option<Arc<TableInfo>>, Error> {
        if let Some(entry) = self.by_relid.get(&relid) {
            if entry.1.elapsed() < TABLE_TTL {
                return Ok(Some(Arc::clone(&entry.0)));
            }
        }
        self.refresh(relid).await
    }

    /// Reads the table with relation id `relid` afresh.
    ///
    /// # Errors
    /// [`Error::Sqlx`] when the catalog cannot be read.
    pub async fn refresh(&self, relid: u32) -> Result<Option<Arc<TableInfo>>, Error> {
        let table = load(&self.pool, relid).await?.map(Arc::new);
        match &table {
            Some(t) => {
                self.by_relid.insert(relid, (Arc::clone(t), Instant::now()));
            }
            None => {
                self.by_relid.remove(&relid);
            }
        }
        Ok(table)
    }

    /// The table `schema.name`, if it exists. Without `fresh`, a description younger than a
    /// couple of seconds (or a "not found" younger than [`NEGATIVE_TTL`]) is returned; with
    /// `fresh`, only an answer read after this call began.
    ///
    /// # Errors
    /// [`Error::Sqlx`] when the catalog cannot be read.
    pub async fn table_by_name(
        &self,
        schema: &str,
        name: &str,
        fresh: bool,
    ) -> Result<Option<Arc<TableInfo>>, Error> {
        let asked = Instant::now();
        let key = (schema.to_owned(), name.to_owned());
        let cached = |key: &TableName| {
            self.by_name.get(key).and_then(|entry| {
                let (table, at) = &*entry;
                let usable = if fresh {
                    *at >= asked
                } else {
                    at.elapsed()
                        < if table.is_some() {
                            BY_NAME_TTL
                        } else {
                            NEGATIVE_TTL
                        }
                };
                usable.then(|| table.clone())
            })
        };
        if let Some(table) = cached(&key) {
            return Ok(table);
        }
        let _refreshing = self.refreshing.lock().await;
        // Another join may have read it while this one waited.
        if let Some(table) = cached(&key) {
            return Ok(table);
        }
        self.count_read();
        // Stamped with when the read began: an answer counts as fresh only for calls that
        // began before it.
        let started = Instant::now();
        let table = self.read_by_name(schema, name).await?;
        if self.by_name.len() >= MAX_NAMES {
            self.by_name.retain(|_, (table, _)| table.is_some());
            if self.by_name.len() >= MAX_NAMES {
                self.by_name.clear();
            }
        }
        self.by_name.insert(key, (table.clone(), started));
        Ok(table)
    }

    async fn read_by_name(
        &self,
        schema: &str,
        name: &str,
    ) -> Result<Option<Arc<TableInfo>>, Error> {
        let relid: Option<i64> = sqlx::query_scalar(
            "select c.oid::int8 from pg_catalog.pg_class c \
             join pg_catalog.pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')",
        )
        .bind(schema)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        match relid.and_then(|r| u32::try_from(r).ok()) {
            Some(relid) => self.refresh(relid).await,
            None => Ok(None),
        }
    }

    /// Tables in the `supabase_realtime` publication. A cached list younger than a couple of
    /// seconds is returned unless `fresh` is set; with `fresh`, only a list read after this
    /// call began.
    ///
    /// # Errors
    /// [`Error::Sqlx`] when the catalog cannot be read.
    pub async fn published(&self, fresh: bool) -> Result<Arc<HashSet<TableName>>, Error> {
        let asked = Instant::now();
        let cached = || async {
            let cached = self.published.read().await;
            let usable = cached.1.is_some_and(|at| {
                if fresh {
                    at >= asked
                } else {
                    at.elapsed() < PUBLISHED_TTL
                }
            });
            usable.then(|| Arc::clone(&cached.0))
        };
        if let Some(set) = cached().await {
            return Ok(set);
        }
        let _refreshing = self.refreshing.lock().await;
        if let Some(set) = cached().await {
            return Ok(set);
        }
        self.count_read();
        let started = Instant::now();
        let rows = sqlx::query(
            "select schemaname::text as s, tablename::text as t \
             from pg_catalog.pg_publication_tables where pubname = $1",
        )
        .bind(PUBLICATION)
        .fetch_all(&self.pool)
        .await?;
        let set: HashSet<TableName> = rows
            .iter()
            .map(|r| (r.get::<String, _>("s"), r.get::<String, _>("t")))
            .collect();
        let set = Arc::new(set);
        *self.published.write().await = (Arc::clone(&set), Some(started));
        Ok(set)
    }
}

async fn load(pool: &PgPool, relid: u32) -> Result<Option<TableInfo>, Error> {
    let Some(head) = sqlx::query(
        "select n.nspname::text as schema, c.relname::text as name, \
                c.relreplident = 'f' as full, c.relrowsecurity as rls \
         from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace \
         where c.oid = $1::int8::oid",
    )
    .bind(i64::from(relid))
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let columns = sqlx::query(
        "select a.attname::text as name, t.typname::text as type, \
                coalesce(a.attnum = any(i.indkey), false) as pk \
         from pg_catalog.pg_attribute a \
         join pg_catalog.pg_type t on t.oid = a.atttypid \
         left join pg_catalog.pg_index i on i.indrelid = a.attrelid and i.indisprimary \
         where a.attrelid = $1::int8::oid and a.attnum > 0 and not a.attisdropped \
         order by a.attnum",
    )
    .bind(i64::from(relid))
    .fetch_all(pool)
    .await?;
    let primary_key = columns
        .iter()
        .filter(|r| r.get::<bool, _>("pk"))
        .map(|r| r.get::<String, _>("name"))
        .collect();
    Ok(Some(TableInfo {
        relid,
        schema: head.get("schema"),
        name: head.get("name"),
        columns: columns
            .iter()
            .map(|r| ColumnInfo {
                name: r.get("name"),
                type_name: r.get("type"),
            })
            .collect(),
        primary_key,
        replica_identity_full: head.get("full"),
        rls_enabled: head.get("rls"),
    }))
}
