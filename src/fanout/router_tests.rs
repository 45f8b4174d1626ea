//! Tests of the router: frames shared between recipients, ids listed once.

use super::*;
use crate::change::Op;
use crate::fanout::subscription::Events;
use crate::outbound::Body;
use crate::outbound::{self, Limits, Receiver};
use crate::pg::catalog::{ColumnInfo, TableInfo};
use tokio_util::sync::CancellationToken;

fn table() -> Arc<TableInfo> {
    Arc::new(TableInfo {
        relid: 1,
        schema: "public".into(),
        name: "items".into(),
        columns: vec![ColumnInfo {
            name: "id".into(),
            type_name: "int4".into(),
        }],
        primary_key: vec!["id".into()],
        replica_identity_full: false,
        rls_enabled: false,
    })
}

fn change() -> ChangeEvent {
    let record = serde_json::json!({"id": 1});
    ChangeEvent {
        id: 1,
        seq: 0,
        table: table(),
        op: Op::Insert,
        record: record.as_object().cloned(),
        old_full: None,
        commit_timestamp: "2026-01-01T00:00:00.000Z".into(),
        captured_at: std::time::SystemTime::UNIX_EPOCH,
        record_raw: Some(vec![(
            "id".into(),
            serde_json::value::RawValue::from_string("1".into()).unwrap(),
        )]),
        old_raw: None,
        filter_gap: false,
        undeliverable: None,
    }
}

fn sub(id: u32) -> PgSub {
    PgSub {
        id,
        events: Events::ALL,
        schema: "public".into(),
        table: "items".into(),
        filter: None,
        filter_text: None,
        select: None,
    }
}

/// Subscribes connection `conn` on `topic` and returns its queue.
fn join(router: &Router, conn: ConnId, topic: &str, subs: Vec<PgSub>) -> Receiver {
    let limits = Limits {
        max_frames: 8,
        max_bytes: 1 << 16,
    };
    let (tx, rx) = outbound::channel(limits, CancellationToken::new());
    let key = ChannelKey {
        conn,
        topic: Arc::from(topic),
    };
    let claims = Arc::new(Claims::new("anon", 0, None, Default::default()));
    router.subscribe(Arc::new(PgChannel::new(key, tx, Vsn::V2, subs, claims)));
    rx
}

/// A queued text frame, read as the client's WebSocket reader hands it over.
struct Text(Frame);

impl Text {
    fn as_str(&self) -> &str {
        let Body::Wire(bytes) = &self.0.body else {
            panic!("not a frame to write");
        };
        let (opcode, payload) = crate::socket::frame::parse(bytes).expect("a whole frame");
        assert_eq!(opcode, crate::socket::frame::TEXT);
        std::str::from_utf8(payload).expect("utf-8")
    }
}

fn text(frame: Frame) -> Text {
    Text(frame)
}

#[test]
fn identical_frames_are_written_once_and_shared() {
    let router = Router::new();
    let mut a = join(&router, 1, "realtime:room", vec![sub(7)]);
    let mut b = join(&router, 2, "realtime:room", vec![sub(7)]);
    let mut other_topic = join(&router, 3, "realtime:hall", vec![sub(7)]);
    let mut other_ids = join(&router, 4, "realtime:room", vec![sub(7), sub(9)]);
    let mut wakes = Wakes::default();
    let routed = router.route(&change(), Sight::everything(), 1 << 20, &mut wakes);
    assert_eq!(routed.delivered, 4);
    assert_eq!(wakes.len(), 4, "each queue once");
    router.route(&change(), Sight::everything(), 1 << 20, &mut wakes);
    assert_eq!(wakes.len(), 4, "still each queue once");
    wakes.wake_all();
    assert!(wakes.is_empty());
    let a = text(a.try_recv().unwrap());
    let b = text(b.try_recv().unwrap());
    assert_eq!(
        a.as_str().as_ptr(),
        b.as_str().as_ptr(),
        "one copy for both"
    );
    assert!(a
        .as_str()
        .starts_with(r#"[null,null,"realtime:room","postgres_changes",{"ids":[7],"data":"#));
    let hall = text(other_topic.try_recv().unwrap());
    assert!(
        hall.as_str().contains(r#""realtime:hall""#),
        "{}",
        hall.as_str()
    );
    let both = text(other_ids.try_recv().unwrap());
    assert!(
        both.as_str().contains(r#""ids":[7,9]"#),
        "{}",
        both.as_str()
    );
    assert_ne!(both.as_str().as_ptr(), a.as_str().as_ptr());
}

/// Guards the linear dedupe: identical subscriptions are listed once, distinct ones each
/// once in join order, and the columns of several selections are united.
#[test]
fn ids_are_listed_once_in_join_order() {
    let router = Router::new();
    let many: Vec<PgSub> = (1..=100).chain([5, 5, 100]).map(sub).collect();
    let mut c = join(&router, 1, "realtime:room", many);
    let mut selective = {
        let mut a = sub(3);
        a.select = Some(vec!["id".into(), "b".into()]);
        let mut b = sub(4);
        b.select = Some(vec!["a".into(), "id".into()]);
        join(&router, 2, "realtime:sel", vec![a, b])
    };
    let mut wakes = Wakes::default();
    router.route(&change(), Sight::everything(), 1 << 20, &mut wakes);
    wakes.wake_all();
    let frame = text(c.try_recv().unwrap());
    let expected: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    assert!(
        frame
            .as_str()
            .contains(&format!(r#""ids":[{}]"#, expected.join(","))),
        "{}",
        frame.as_str()
    );
    let frame = text(selective.try_recv().unwrap());
    assert!(
        frame.as_str().contains(r#""ids":[3,4]"#),
        "{}",
        frame.as_str()
    );
}

/// A channel registered again with other tables leaves the tables it no longer names, keeps
/// the ones it still names, and leaves every one of them when it unsubscribes.
#[test]
fn a_channel_registered_again_leaves_the_tables_it_no_longer_names() {
    let on = |table: &str, id: u32| PgSub {
        table: table.into(),
        ..sub(id)
    };
    let router = Router::new();
    let _queue = join(
        &router,
        1,
        "realtime:room",
        vec![on("items", 1), on("orders", 2)],
    );
    let tables = |router: &Router| {
        let mut names: Vec<String> = router
            .by_table
            .iter()
            .map(|entry| entry.key().1.clone())
            .collect();
        names.sort();
        names
    };
    assert_eq!(tables(&router), ["items", "orders"]);
    assert_eq!(router.subscription_count(), 2);
    let _queue = join(
        &router,
        1,
        "realtime:room",
        vec![on("orders", 3), on("users", 4)],
    );
    assert_eq!(tables(&router), ["orders", "users"]);
    assert_eq!(router.channel_count(), 1);
    assert_eq!(router.subscription_count(), 2);
    let mut wakes = Wakes::default();
    let routed = router.route(&change(), Sight::everything(), 1 << 20, &mut wakes);
    assert_eq!(routed.delivered, 0, "a change of items reaches nobody");
    router.unsubscribe(&ChannelKey {
        conn: 1,
        topic: Arc::from("realtime:room"),
    });
    assert!(tables(&router).is_empty());
    assert_eq!(router.channel_count(), 0);
}
