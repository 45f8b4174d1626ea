//! Delivery diagnostics of the admin API against a real gateway and PostgreSQL: for one change,
//! a subscriber whose filter excludes the row is told "filtered", one whose token may not see
//! the row (row-level security) "refused", a matching one "delivered", one that subscribed
//! later "not_subscribed", and a client that does not read until its queue overflows
//! "dropped"; the table's and the channel's recent traffic are listed with their counts.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http_request, realtime_table, token, TestDb, TestGateway, WsClient};
use serde_json::{json, Value};

const ALICE: &str = "a11ce000-5a1e-4d6a-9d1a-0c4f4c7e2b01";
const BOB: &str = "b0b00000-5a1e-4d6a-9d1a-0c4f4c7e2b02";

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let service = format!("Bearer {}", token("service_role", None));
    let (status, text) = http_request(addr, "GET", path, &[("authorization", &service)], "")
        .await
        .unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
    (status, body)
}

async fn get_ok(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// A raw client of `sub` (an `authenticated` token, or `service_role` when `None`).
async fn client(gw: &TestGateway, sub: Option<&str>) -> WsClient {
    let key = match sub {
        Some(sub) => token("authenticated", Some(sub)),
        None => token("service_role", None),
    };
    WsClient::connect(&gw.ws_url(&key, "2.0.0")).await
}

fn changes(filter: Option<&str>) -> Value {
    let mut entry = json!({"event": "*", "schema": "public", "table": "diag"});
    if let Some(filter) = filter {
        entry["filter"] = json!(filter);
    }
    json!([entry])
}

/// The id of the one open connection that joined `channel`, once the registry has it (rows
/// are written off the message path).
async fn connection_on(addr: SocketAddr, channel: &str) -> String {
    let path = format!("/admin/api/connections?channel={channel}");
    common::eventually(Duration::from_secs(20), "the connection is listed", || {
        let path = path.clone();
        async move { get_ok(addr, &path).await["total"] == 1 }
    })
    .await;
    get_ok(addr, &path).await["connections"][0]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The outbox id of the newest change.
async fn last_change_id(db: &TestDb) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("select max(id) from realtime.changes")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// The outcome of change `id` for each channel name.
async fn outcomes(addr: SocketAddr, id: i64, query: &str) -> Vec<(String, String, Value)> {
    let answer = get_ok(addr, &format!("/admin/api/diagnostics/changes/{id}{query}")).await;
    let mut out: Vec<(String, String, Value)> = answer["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["channel"].as_str().unwrap().to_owned(),
                s["outcome"].as_str().unwrap().to_owned(),
                s.clone(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One change of a table with row-level security, four subscribers: the matching one is
/// told "delivered", the one whose filter excludes the row "filtered" (with the filter), the
/// one whose user may not see the row "refused", the one that joined afterwards
/// "not_subscribed"; the table's diagnostics count the same. Then a subscriber that does not
/// read gets bulk rows until its queue overflows: the changes before the overflow were
/// "delivered" to it, the one its full queue refused "dropped", and nothing after it reached it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscriber_is_told_what_became_of_a_change() {
    const MAX_ROWS: usize = 4000;
    let db = TestDb::new().await;
    realtime_table(&db, "diag", "owner uuid, kind text, body text").await;
    let mut conn = db.connect().await;
    for sql in [
        "alter table public.diag enable row level security",
        "create policy own_rows on public.diag for select to authenticated \
           using (owner = auth.uid())",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    let gw = TestGateway::start_with(&db, |c| {
        c.outbound_queue_frames = 16;
        c.outbound_queue_bytes = 64 * 1024;
        c.diagnostics.trace_changes_per_table = 5000;
    })
    .await;
    let mut matching = client(&gw, Some(ALICE)).await;
    matching
        .subscribe("realtime:matching", changes(Some("kind=eq.hot")))
        .await;
    let mut filtered = client(&gw, Some(ALICE)).await;
    filtered
        .subscribe("realtime:filtered", changes(Some("kind=eq.cold")))
        .await;
    let mut refused = client(&gw, Some(BOB)).await;
    refused.subscribe("realtime:refused", changes(None)).await;
    // The slow client: a tiny receive buffer; it reads nothing after subscribing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(socket.connect(gw.addr).await.unwrap());
    let url = gw.ws_url(&token("service_role", None), "2.0.0");
    let (slow, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let mut slow = WsClient::from_stream(slow);
    slow.subscribe("realtime:slow", changes(None)).await;

    sqlx::query("insert into public.diag (owner, kind, body) values ($1, 'hot', 'first')")
        .bind(uuid::Uuid::parse_str(ALICE).unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    let first = last_change_id(&db).await;
    let delivered = matching
        .expect_event("realtime:matching", "postgres_changes")
        .await;
    assert_eq!(delivered.payload["data"]["record"]["body"], "first");
    let mut late = client(&gw, Some(ALICE)).await;
    late.subscribe("realtime:late", changes(None)).await;

    let got = outcomes(gw.addr, first, "").await;
    let names: Vec<(&str, &str)> = got
        .iter()
        .map(|(c, o, _)| (c.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("filtered", "filtered"),
            ("late", "not_subscribed"),
            ("matching", "delivered"),
            ("refused", "refused"),
            ("slow", "delivered"),
        ],
        "{got:#?}"
    );
    assert_eq!(got[0].2["filters"], json!(["kind=eq.cold"]), "{got:#?}");
    assert_eq!(got[3].2["role"], "authenticated");
    assert_eq!(got[3].2["user"], BOB);
    // One subscriber asked for by connection and channel.
    let bob_conn = connection_on(gw.addr, "refused").await;
    let one = outcomes(
        gw.addr,
        first,
        &format!("?connection={bob_conn}&channel=refused"),
    )
    .await;
    assert_eq!(one.len(), 1, "{one:#?}");
    assert_eq!(one[0].1, "refused");

    let table = get_ok(gw.addr, "/admin/api/diagnostics/tables/public/diag").await;
    assert_eq!(table["subscribers"].as_array().unwrap().len(), 5, "{table}");
    let first_counts = &table["recent"][0];
    assert_eq!(first_counts["id"], first);
    assert_eq!(
        first_counts["counts"],
        json!({"subscribers": 4, "delivered": 2, "error_entries": 0, "filtered": 1,
               "refused": 1, "dropped": 0}),
        "{table}"
    );
    let only_bob = get_ok(
        gw.addr,
        &format!("/admin/api/diagnostics/tables/public/diag?user={BOB}"),
    )
    .await;
    let bob_subs = only_bob["subscribers"].as_array().unwrap();
    assert_eq!(bob_subs.len(), 1, "{only_bob}");
    assert_eq!(bob_subs[0]["subscriptions"][0]["event"], "*");

    // Bulk rows of no owner: only the slow client's service_role sees them (the policy keeps
    // them from the others, which do not read either), until its queue overflows.
    let slow_id = connection_on(gw.addr, "slow").await;
    let handle = gw
        .state
        .session
        .sessions
        .by_connection_id(uuid::Uuid::parse_str(&slow_id).unwrap())
        .expect("the slow session");
    let body = "x".repeat(16 * 1024);
    let pool = db.pool().await;
    let mut written = 0;
    while !handle.outbound.is_slow() {
        assert!(written < MAX_ROWS, "no overflow after {written} rows");
        sqlx::query("insert into public.diag (owner, kind, body) values (null, 'bulk', $1)")
            .bind(&body)
            .execute(&pool)
            .await
            .unwrap();
        written += 1;
    }
    assert_eq!(slow.closed_with(Duration::from_secs(10)).await, Some(4001));
    let last = last_change_id(&db).await;
    common::eventually(
        Duration::from_secs(20),
        "the last change routed",
        || async {
            get(gw.addr, &format!("/admin/api/diagnostics/changes/{last}"))
                .await
                .0
                == 200
        },
    )
    .await;
    let mut seen = Vec::new();
    for id in first + 1..=last {
        let query = format!("?connection={slow_id}&channel=slow");
        let (status, answer) = get(
            gw.addr,
            &format!("/admin/api/diagnostics/changes/{id}{query}"),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let subscribers = answer["subscribers"].as_array().unwrap();
        assert_eq!(subscribers.len(), 1, "{answer}");
        seen.push(subscribers[0]["outcome"].as_str().unwrap().to_owned());
    }
    let dropped_at = seen
        .iter()
        .position(|o| o == "dropped")
        .unwrap_or_else(|| panic!("no change reported dropped: {seen:?}"));
    assert!(dropped_at > 0, "{seen:?}");
    assert!(
        seen[..dropped_at].iter().all(|o| o == "delivered"),
        "{seen:?}"
    );
    assert!(
        seen[dropped_at..]
            .iter()
            .all(|o| o == "dropped" || o == "not_subscribed"),
        "{seen:?}"
    );
    let answer = get_ok(
        gw.addr,
        &format!(
            "/admin/api/diagnostics/changes/{}",
            first + 1 + dropped_at as i64
        ),
    )
    .await;
    let slow_answer = answer["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["channel"] == "slow")
        .unwrap()
        .clone();
    assert_eq!(slow_answer["subscribed_now"], false, "{answer}");
    assert!(
        answer["change"]["counts"]["dropped"].as_u64().unwrap() >= 1,
        "{answer}"
    );

    let (status, unknown) = get(gw.addr, "/admin/api/diagnostics/changes/999999999").await;
    assert_eq!(status, 404, "{unknown}");
    assert_eq!(unknown["error"], "unknown_change");
    let (status, bad) = get(gw.addr, "/admin/api/diagnostics/changes/abc").await;
    assert_eq!(status, 400, "{bad}");
    gw.stop().await.unwrap();
}

/// A channel's diagnostics list its members and its last broadcasts with what each fan-out
/// did: the sender skipped (no `broadcast.self`), the other member reached; REST broadcasts
/// are told apart; the busiest channels list counts them.
#[tokio::test]
async fn a_channel_lists_its_members_and_last_broadcasts() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut sender = WsClient::anon(&gw).await;
    sender.join("realtime:diag-room", json!({})).await;
    let mut receiver = WsClient::anon(&gw).await;
    receiver.join("realtime:diag-room", json!({})).await;
    let join_ref = "1";
    sender
        .send(
            Some(join_ref),
            "realtime:diag-room",
            "broadcast",
            json!({"type": "broadcast", "event": "wave", "payload": {"n": 1}}),
        )
        .await;
    let got = receiver
        .expect_event("realtime:diag-room", "broadcast")
        .await;
    assert_eq!(got.payload["event"], "wave");
    let key = token("anon", None);
    let (status, body) = http_request(
        gw.addr,
        "POST",
        "/api/broadcast/diag-room/events/from-rest",
        &[("apikey", &key), ("content-type", "application/json")],
        "{\"n\": 2}",
    )
    .await
    .unwrap();
    assert_eq!(status, 202, "{body}");
    receiver
        .expect_event("realtime:diag-room", "broadcast")
        .await;

    let topic = get_ok(gw.addr, "/admin/api/diagnostics/topics/diag-room").await;
    assert_eq!(topic["members"].as_array().unwrap().len(), 2, "{topic}");
    assert_eq!(topic["totals"]["broadcasts"], 2, "{topic}");
    let recent = topic["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 2, "{topic}");
    assert_eq!(recent[0]["origin"], "rest", "{topic}");
    assert_eq!(recent[0]["event"], "from-rest");
    assert_eq!(recent[0]["delivered"], 2, "{topic}");
    assert_eq!(recent[1]["origin"], "connection", "{topic}");
    assert_eq!(recent[1]["event"], "wave");
    assert_eq!(
        (
            recent[1]["members"].clone(),
            recent[1]["delivered"].clone(),
            recent[1]["skipped_sender"].clone()
        ),
        (json!(2), json!(1), json!(1)),
        "{topic}"
    );
    let sender_id = recent[1]["connection_id"].as_str().unwrap();
    let members: Vec<&str> = topic["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["connection_id"].as_str().unwrap())
        .collect();
    assert!(members.contains(&sender_id), "{topic}");
    let private = get_ok(
        gw.addr,
        "/admin/api/diagnostics/topics/diag-room?private=true",
    )
    .await;
    assert!(
        private["members"].as_array().unwrap().is_empty(),
        "{private}"
    );

    // The registry rows are written off the message path.
    common::eventually(Duration::from_secs(20), "both joins recorded", || async {
        get_ok(gw.addr, "/admin/api/channels").await["by_subscribers"][0]["subscriptions"] == 2
    })
    .await;
    let top = get_ok(gw.addr, "/admin/api/channels?limit=5").await;
    assert_eq!(top["by_subscribers"][0]["channel"], "diag-room", "{top}");
    assert_eq!(top["by_subscribers"][0]["subscriptions"], 2, "{top}");
    let busiest = &top["by_messages"][0];
    assert_eq!(busiest["channel"], "diag-room", "{top}");
    assert_eq!(busiest["broadcasts"], 2, "{top}");
    assert_eq!(busiest["members"], 2, "{top}");
    let (status, bad) = get(gw.addr, "/admin/api/channels?limit=0").await;
    assert_eq!(status, 400, "{bad}");
    gw.stop().await.unwrap();
}
