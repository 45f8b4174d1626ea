//! Resuming after a reconnect (README, "Resuming after a reconnect"): a realtime-js client that
//! passes a session id gets, after its socket was cut, every change it missed exactly once and
//! in order before live ones, and the `system` message says whether the resume was complete.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{eventually, realtime_table, token, Client, Driver, TestDb, TestGateway};
use realtime_gateway::session::SessionEnd;
use serde_json::{json, Value};

const ROWS: i64 = 1000;

fn session_id() -> String {
    format!("tab-{}", uuid::Uuid::new_v4())
}

/// What a client received: each row id's count, the ids in order, and the `system` messages
/// of Postgres Changes.
#[derive(Default)]
struct Received {
    seen: HashMap<i64, u32>,
    order: Vec<i64>,
    systems: Vec<Value>,
}

impl Received {
    /// Reads `js`'s events until row `last` arrived (and, with `system`, a `system` message).
    async fn through(&mut self, js: &mut Driver, last: i64, system: bool) {
        let mut have_last = false;
        let mut have_system = !system;
        while !(have_last && have_system) {
            let e = js
                .expect(|e| {
                    e["ev"] == "change"
                        || (e["ev"] == "system" && e["payload"]["extension"] == "postgres_changes")
                })
                .await;
            if e["ev"] == "system" {
                self.systems.push(e["payload"].clone());
                have_system = true;
                continue;
            }
            let id = e["payload"]["new"]["id"].as_i64().expect("row id");
            *self.seen.entry(id).or_default() += 1;
            self.order.push(id);
            have_last |= id == last;
        }
    }

    /// The last `system` message says `resumed: true`, and after one more row, every row of
    /// the run has arrived once, in order (anything delivered twice would come before that row).
    async fn resumed_with_every_row(&mut self, js: &mut Driver, pool: &sqlx::PgPool) {
        let resumed = self.system();
        assert_eq!(resumed["resumed"], true, "{resumed}");
        insert(pool, ROWS + 1, ROWS + 2).await;
        self.through(js, ROWS + 1, false).await;
        self.exactly_once(1, ROWS + 1);
    }

    /// The last `system` message.
    fn system(&self) -> &Value {
        self.systems.last().expect("a system message")
    }

    /// Every id in `from..=to` arrived once, in commit order.
    fn exactly_once(&self, from: i64, to: i64) {
        let doubled: Vec<_> = self.seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(doubled.is_empty(), "delivered twice: {doubled:?}");
        let missing: Vec<_> = (from..=to)
            .filter(|id| !self.seen.contains_key(id))
            .collect();
        assert!(missing.is_empty(), "never delivered: {missing:?}");
        let extra: Vec<_> = self
            .seen
            .keys()
            .filter(|id| !(from..=to).contains(*id))
            .collect();
        assert!(extra.is_empty(), "not expected: {extra:?}");
        assert!(self.order.windows(2).all(|w| w[0] < w[1]), "out of order");
    }
}

/// A realtime-js client of session `session`, subscribed to the inserts of `notes` on channel
/// `feed` (with `access_token` when given), once it hears SUBSCRIBED.
async fn subscriber(gw: &TestGateway, session: &str, access_token: Option<&str>) -> Driver {
    let mut js = Driver::start(Client::Js, gw, json!({ "session": session })).await;
    let mut subscribe = json!({"cmd": "subscribe", "channel": "feed",
        "changes": [{"event": "INSERT", "schema": "public", "table": "notes"}]});
    if let Some(t) = access_token {
        subscribe["access_token"] = json!(t);
    }
    js.send(subscribe).await;
    js.expect(|e| e["ev"] == "status" && e["status"] == "SUBSCRIBED")
        .await;
    js
}

/// The next `system` message of Postgres Changes, and the rows received before it.
async fn system(js: &mut Driver) -> (Value, Vec<i64>) {
    let mut rows = Vec::new();
    loop {
        let e = js
            .expect(|e| {
                e["ev"] == "change"
                    || (e["ev"] == "system" && e["payload"]["extension"] == "postgres_changes")
            })
            .await;
        if e["ev"] == "system" {
            return (e["payload"].clone(), rows);
        }
        rows.push(e["payload"]["new"]["id"].as_i64().expect("row id"));
    }
}

/// Two round trips with the gateway: the pong answering the ping that followed the last frame
/// `js` read has then reached the gateway (it left the client before the second join, which the
/// gateway read after it), so what `js` read so far is confirmed.
async fn settle(js: &mut Driver) {
    for channel in ["settle-a", "settle-b"] {
        js.send(json!({"cmd": "subscribe", "channel": channel}))
            .await;
        js.expect(|e| {
            e["ev"] == "status" && e["channel"] == channel && e["status"] == "SUBSCRIBED"
        })
        .await;
    }
}

/// Waits until some socket's positions are stored.
async fn stored(pool: &sqlx::PgPool) {
    eventually(Duration::from_secs(10), "a position stored", || async {
        sqlx::query_scalar::<_, bool>("select exists (select from realtime.resume_points)")
            .fetch_one(pool)
            .await
            .unwrap()
    })
    .await;
}

/// Inserts rows `from..to` of `notes`, one transaction each, in order.
async fn insert(pool: &sqlx::PgPool, from: i64, to: i64) {
    for n in from..to {
        sqlx::query("insert into notes (id, body) values ($1, $2)")
            .bind(n)
            .bind(format!("note {n}"))
            .execute(pool)
            .await
            .unwrap();
    }
}

/// Cut by the gateway (an operator's kick) while 1,000 rows are being inserted: after
/// realtime-js reconnects on its own, every row arrives exactly once, in order, and the join
/// says `resumed: true`.
#[tokio::test]
async fn a_client_cut_by_the_gateway_gets_every_change_once_after_reconnecting() {
    let db = TestDb::new().await;
    realtime_table(&db, "notes", "body text").await;
    let pool = db.pool().await;
    let gw = TestGateway::start(&db).await;
    let mut js = subscriber(&gw, &session_id(), None).await;
    let (first, _) = system(&mut js).await;
    assert_eq!(first["resumed"], false, "{first}");
    assert_eq!(first["reason"], "not_found", "{first}");

    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move { insert(&pool, 1, ROWS + 1).await })
    };
    let mut got = Received::default();
    got.through(&mut js, 100, false).await;
    let mut kicked = 0;
    gw.state.session.sessions.for_each(|handle| {
        handle.close(SessionEnd::Kicked);
        kicked += 1;
    });
    assert_eq!(kicked, 1);
    writer.await.unwrap();
    got.through(&mut js, ROWS, true).await;
    assert!(got.system()["missed_changes"].as_u64().unwrap() > 0);
    got.resumed_with_every_row(&mut js, &pool).await;
    js.exit().await;
}

/// A client that goes silent (no heartbeats, nothing read) while 1,000 rows are inserted is
/// closed by the gateway; when it comes back to its dead connection and reconnects, it gets the
/// rows it never read, exactly once.
#[tokio::test]
async fn a_client_that_went_silent_gets_what_it_never_read() {
    let db = TestDb::new().await;
    realtime_table(&db, "notes", "body text").await;
    let pool = db.pool().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.heartbeat_interval = Duration::from_millis(200);
        c.heartbeat_timeout = Duration::from_secs(2);
    })
    .await;
    let mut js = subscriber(&gw, &session_id(), None).await;
    let mut got = Received::default();
    insert(&pool, 1, 11).await;
    got.through(&mut js, 10, true).await;
    // Frozen only once the gateway knows it read row 10: a connection that dies between the
    // client reading a frame and its pong reaching the gateway gets that frame again (README).
    settle(&mut js).await;
    js.send(json!({"cmd": "freeze"})).await;
    js.expect(|e| e["ev"] == "frozen").await;
    insert(&pool, 11, ROWS + 1).await;
    let sessions = gw.state.session.sessions.clone();
    eventually(Duration::from_secs(30), "the silent session closed", || {
        let sessions = sessions.clone();
        async move { sessions.is_empty() }
    })
    .await;
    js.send(json!({"cmd": "wake"})).await;
    got.systems.clear();
    got.through(&mut js, ROWS, true).await;
    got.resumed_with_every_row(&mut js, &pool).await;
    js.exit().await;
}

/// A session id is bound to the user: another user's token cannot resume it (the position
/// stays for its owner, who then resumes), and after the window nobody can.
#[tokio::test]
async fn another_user_or_a_late_reconnect_does_not_resume() {
    let db = TestDb::new().await;
    realtime_table(&db, "notes", "body text").await;
    let pool = db.pool().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.resume_window = Duration::from_secs(3);
    })
    .await;
    let session = session_id();
    let alice_id = uuid::Uuid::new_v4().to_string();
    let alice = token("authenticated", Some(&alice_id));
    let alice_row = format!("authenticated/{alice_id}");
    let mallory = token("authenticated", Some(&uuid::Uuid::new_v4().to_string()));
    let stored = || async {
        sqlx::query_scalar::<_, bool>(
            "select exists (select from realtime.resume_points \
                            where topic = 'realtime:feed' and identity = $1)",
        )
        .bind(&alice_row)
        .fetch_one(&pool)
        .await
        .unwrap()
    };

    let mut js = subscriber(&gw, &session, Some(&alice)).await;
    system(&mut js).await;
    js.exit().await;
    eventually(Duration::from_secs(10), "the position stored", stored).await;
    insert(&pool, 1, 2).await;

    let mut other = subscriber(&gw, &session, Some(&mallory)).await;
    let (refused, early) = system(&mut other).await;
    assert_eq!(refused["resumed"], false, "{refused}");
    assert_eq!(refused["reason"], "identity_changed", "{refused}");
    assert!(early.is_empty(), "{early:?}");
    insert(&pool, 2, 3).await;
    let mut live = Received::default();
    live.through(&mut other, 2, false).await;
    live.exactly_once(2, 2);
    other.exit().await;

    let mut back = subscriber(&gw, &session, Some(&alice)).await;
    let (resumed, missed) = system(&mut back).await;
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["missed_changes"], 2, "{resumed}");
    assert_eq!(missed, vec![1, 2]);
    back.exit().await;

    eventually(Duration::from_secs(10), "the position stored again", stored).await;
    eventually(Duration::from_secs(10), "the window over", || async {
        sqlx::query_scalar::<_, bool>(
            "select bool_and(expires_at < now()) from realtime.resume_points",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    })
    .await;
    let mut late = subscriber(&gw, &session, Some(&alice)).await;
    let (expired, _) = system(&mut late).await;
    assert_eq!(expired["resumed"], false, "{expired}");
    assert_eq!(expired["reason"], "window_expired", "{expired}");
    late.exit().await;
}

/// The outbox keeps what a stored position still needs: the pruner leaves the rows a session
/// missed until its window ends, then takes them.
#[tokio::test]
async fn the_pruner_keeps_what_a_stored_position_needs_until_it_expires() {
    let db = TestDb::new().await;
    realtime_table(&db, "notes", "body text").await;
    let pool = db.pool().await;
    let gw = TestGateway::start(&db).await;
    let mut js = subscriber(&gw, &session_id(), None).await;
    system(&mut js).await;
    js.exit().await;
    stored(&pool).await;
    insert(&pool, 1, 6).await;
    let prune = || async {
        sqlx::query_scalar::<_, i64>(
            "select realtime.prune_read_changes(interval '0 s', interval '1 hour')",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let kept = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from realtime.changes")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    // The node has read the rows and recorded it, so only the stored position holds them.
    eventually(Duration::from_secs(30), "the rows read", || async {
        sqlx::query_scalar::<_, bool>(
            "select coalesce(bool_and(max_id >= 5 and read_xmin > \
                 (select max(xid) from realtime.changes)), false) from realtime.change_readers",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(prune().await, 0);
    assert_eq!(kept().await, 5);
    sqlx::query("update realtime.resume_points set expires_at = now() - interval '1 s'")
        .execute(&pool)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the rows pruned", || async {
        prune().await;
        kept().await == 0
    })
    .await;
}

/// Positions are snapshots of the outbox, not of a node: a session that ended on one gateway
/// resumes on another sharing the database.
#[tokio::test]
async fn a_session_ended_on_one_node_resumes_on_another() {
    let db = TestDb::new().await;
    realtime_table(&db, "notes", "body text").await;
    let pool = db.pool().await;
    let first = TestGateway::start(&db).await;
    let second = TestGateway::start(&db).await;
    let session = session_id();
    let mut js = subscriber(&first, &session, None).await;
    insert(&pool, 1, 4).await;
    let mut got = Received::default();
    got.through(&mut js, 3, true).await;
    settle(&mut js).await;
    js.exit().await;
    stored(&pool).await;
    insert(&pool, 4, 8).await;
    let mut js = subscriber(&second, &session, None).await;
    let (resumed, missed) = system(&mut js).await;
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(missed, vec![4, 5, 6, 7]);
    insert(&pool, 8, 9).await;
    let mut live = Received::default();
    live.through(&mut js, 8, false).await;
    live.exactly_once(8, 8);
    js.exit().await;
}
