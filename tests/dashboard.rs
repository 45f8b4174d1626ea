//! The admin dashboard at `/admin` (README "Admin dashboard"), in headless Chromium: it follows
//! real realtime-js clients as they connect, shows the warning state from 80 % of the cap, kicks
//! a connection (the client sees the close), loads nothing from another origin and shows
//! nothing without the credential; and its stream at the HTTP level.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{http_exchange, token, AdminPage, Crowd, SseStream, TestDb, TestGateway, WsClient};
use serde_json::Value;

/// The page's JavaScript expression for the text of element `id`.
fn text_of(id: &str) -> String {
    format!("document.getElementById('{id}').textContent")
}

/// Fills in the credential and submits the form.
async fn sign_in(page: &mut AdminPage, credential: &str) {
    page.wait(
        "the sign-in form",
        "!document.getElementById('sign-in').hidden",
    )
    .await;
    page.type_into("#credential", credential).await;
    page.click("#credential-form button[type=submit]").await;
}

/// Guards the whole promise of the dashboard with real clients and a real browser: the count
/// rises as realtime-js clients connect, the warning state appears at 80 % of a cap of 5, and
/// the kick button closes a connection, whose client sees 4002.
#[tokio::test]
async fn the_dashboard_follows_connections_warns_near_the_cap_and_kicks() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.max_connections = 5;
        c.dashboard.admin_sample_interval = Duration::from_millis(200);
    })
    .await;
    let mut page = AdminPage::start().await;
    assert_eq!(page.open(&format!("http://{}/admin", gw.addr)).await, 200);
    sign_in(&mut page, &token("service_role", None)).await;
    let connections = text_of("cluster-connections");
    page.wait(
        "no connection, no warning",
        &format!(
            "{connections} === '0' && document.getElementById('capacity').dataset.state === 'ok' \
             && {} === '5'",
            text_of("cap")
        ),
    )
    .await;

    let mut first = Crowd::start(&gw, 3).await;
    first.subscribed(3).await;
    page.wait(
        "3 connections, no warning (60 %)",
        &format!(
            "{connections} === '3' && document.getElementById('capacity').dataset.state === 'ok' \
             && document.getElementById('cap-warning').hidden"
        ),
    )
    .await;

    let mut second = Crowd::start(&gw, 1).await;
    second.subscribed(1).await;
    page.wait(
        "4 connections and the warning state (80 %)",
        &format!(
            "{connections} === '4' \
             && document.getElementById('capacity').dataset.state === 'warning' \
             && !document.getElementById('cap-warning').hidden"
        ),
    )
    .await;
    let banner = page.eval(&text_of("cap-warning")).await;
    assert!(banner.as_str().unwrap().contains("80 %"), "{banner}");
    page.wait(
        "the crossing in the audit table",
        "document.querySelector('#audit tr[data-kind=cap_threshold_crossed]') !== null",
    )
    .await;
    page.wait(
        "a kick button per connection",
        "document.querySelectorAll('#connections button.kick').length === 4",
    )
    .await;
    page.wait(
        "the node in the nodes table, with its 4 connections",
        "[...document.querySelectorAll('#nodes tbody tr')].some((tr) => tr.cells[2]?.textContent === '4')",
    )
    .await;
    // Each crowd's client i joins `crowd<i>`: crowd0 has two connections, then crowd1, crowd2.
    page.wait(
        "the crowds' channels among the top channels, the busiest first",
        "[...document.querySelectorAll('#channels tbody tr')].map((tr) => \
         tr.cells[0].textContent + ':' + tr.cells[1].textContent).join(' ') \
         === 'crowd0:2 crowd1:1 crowd2:1'",
    )
    .await;

    // Broadcasts to crowd0 (two subscribers) reach the charts: a point with messages per
    // second and a delivery latency.
    let apikey = token("anon", None);
    let body = serde_json::json!({"messages": (0..10)
        .map(|n| serde_json::json!({"topic": "crowd0", "event": "tick", "payload": {"n": n}}))
        .collect::<Vec<_>>()})
    .to_string();
    for _ in 0..10 {
        let (status, answer) = common::http_request(
            gw.addr,
            "POST",
            "/api/broadcast",
            &[("apikey", &apikey), ("Content-Type", "application/json")],
            &body,
        )
        .await
        .unwrap();
        assert_eq!(status, 202, "{answer}");
    }
    page.wait(
        "a chart point with deliveries and their latency",
        "view.points.some((p) => p.messages_per_second > 0 && p.latency_p99_ms != null)",
    )
    .await;

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("admin-warning.png");
    page.screenshot(&shot).await;
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {}", shot.display());
    eprintln!("dashboard screenshot: {}", shot.display());

    // Kick the second crowd's client (the newest connection), from the page.
    let id = page
        .eval(
            "[...document.querySelectorAll('#connections button.kick')].at(-1).dataset.connection",
        )
        .await;
    let id = id.as_str().expect("a connection id").to_owned();
    page.click(&format!("#connections button.kick[data-connection='{id}']"))
        .await;
    let answer = page
        .wait(
            "the kick's answer",
            &format!(
                "document.getElementById('kick-result').dataset.connection === '{id}' \
                 && document.getElementById('kick-result').dataset.result"
            ),
        )
        .await;
    assert_eq!(answer, "kicked");
    let said = page.eval(&text_of("kick-result")).await;
    assert!(said.as_str().unwrap().contains("4002"), "{said}");
    let closed = second
        .until(Duration::from_secs(20), |e| {
            e["ev"] == "socket" && e["state"] == "close"
        })
        .await;
    assert_eq!(closed["code"], 4002, "{closed}");
    assert_eq!(closed["reason"], "closed by operator", "{closed}");
    // realtime-js reconnects, as after any close it did not ask for; the page follows.
    second
        .until(Duration::from_secs(30), |e| {
            e["ev"] == "connecting" && e["attempt"] == 2
        })
        .await;
    page.wait(
        "the kicked connection gone from the list",
        &format!("document.querySelector(\"#connections tr[data-connection='{id}']\") === null"),
    )
    .await;
    let others = first.pending();
    assert!(
        !others.iter().any(|e| e["ev"] == "socket"),
        "only the kicked client was closed: {others:?}"
    );

    first.stop().await;
    second.stop().await;
    page.exit().await;
    gw.stop().await.unwrap();
}

/// Guards against a page that fetches a font, script or style from a CDN (it must work on a
/// machine without internet access), and against one that shows anything, or leaks the
/// credential into a URL, before a valid credential is given. Along the way, the per-node view
/// with a second node on the database, whose connection is kicked from this node's page.
#[tokio::test]
async fn the_page_loads_nothing_from_another_origin_and_shows_nothing_without_the_credential() {
    let db = TestDb::new().await;
    let admin_token = "static-admin-token-for-the-page";
    let gw = TestGateway::start_with(&db, |c| {
        c.admin_token = Some(admin_token.to_owned());
        c.dashboard.admin_sample_interval = Duration::from_millis(200);
    })
    .await;
    let origin = format!("http://{}", gw.addr);

    let answer = http_exchange(gw.addr, "GET", "/admin", &[], "")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let csp = answer.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(
        !csp.contains("http"),
        "the policy names no other origin: {csp}"
    );
    assert!(
        !answer.body.contains("://"),
        "the page names no URL: {}",
        answer.body
    );

    let mut page = AdminPage::start().await;
    assert_eq!(page.open(&format!("{origin}/admin")).await, 200);
    // A token of another role is refused; the page says why and shows no data.
    let anon = token("anon", None);
    sign_in(&mut page, &anon).await;
    let refused = page
        .wait(
            "the refusal",
            "document.getElementById('sign-in-error').textContent",
        )
        .await;
    assert!(
        refused.as_str().unwrap().contains("service_role"),
        "{refused}"
    );
    let shown = page
        .eval("[document.getElementById('dashboard').hidden, sessionStorage.length]")
        .await;
    assert_eq!(shown, serde_json::json!([true, 0]));
    assert_eq!(page.eval(&text_of("cluster-connections")).await, "–");

    // The static admin token opens it.
    sign_in(&mut page, admin_token).await;
    page.wait(
        "the live dashboard",
        &format!(
            "document.getElementById('live').dataset.state === 'live' \
             && {} === '0' && !document.getElementById('dashboard').hidden",
            text_of("cluster-connections")
        ),
    )
    .await;
    page.wait(
        "this node in the nodes table",
        &format!(
            "document.querySelector('#nodes tbody td')?.textContent === '{}'",
            gw.config.node_id
        ),
    )
    .await;
    page.wait(
        "the refused attempt in the audit table",
        "document.querySelector('#audit tr[data-kind=auth_refused]') !== null",
    )
    .await;
    page.wait(
        "points on the charts",
        "document.getElementById('messages-rate').textContent !== '–'",
    )
    .await;

    // A second node on the database: the nodes table lists both, the connections list shows
    // the other node's connection, and its kick button has the other node close it.
    let other = TestGateway::start(&db).await;
    let other_id = other.config.node_id.clone();
    let mut remote = WsClient::anon(&other).await;
    page.wait(
        "both nodes, the other with its connection",
        &format!(
            "[...document.querySelectorAll('#nodes tbody tr')].length === 2 \
             && [...document.querySelectorAll('#nodes tbody tr')].some((tr) => \
                tr.cells[0].textContent === '{other_id}' && tr.cells[2].textContent === '1')"
        ),
    )
    .await;
    let row = format!(
        "[...document.querySelectorAll('#connections tbody tr')].find((tr) => \
         tr.cells[1]?.textContent === '{other_id}')"
    );
    let id = page
        .wait(
            "the other node's connection",
            &format!("{row}?.dataset.connection"),
        )
        .await;
    let id = id.as_str().unwrap().to_owned();
    page.click(&format!("#connections button.kick[data-connection='{id}']"))
        .await;
    assert_eq!(
        remote.closed_with(Duration::from_secs(20)).await,
        Some(4002)
    );
    // The answer is 202: the other node was asked to close it.
    let answer = page
        .wait(
            "the kick's answer",
            &format!(
                "document.getElementById('kick-result').dataset.connection === '{id}' \
                 && document.getElementById('kick-result').dataset.result"
            ),
        )
        .await;
    assert_eq!(answer, "kicked");
    let said = page.eval(&text_of("kick-result")).await;
    assert!(said.as_str().unwrap().contains("was asked"), "{said}");

    let (requests, console) = page.log().await;
    // The page runs under its own policy: nothing it does is refused, nothing throws (the
    // refused credential's 403 is the one error the browser reports).
    let problems: Vec<&String> = console
        .iter()
        .filter(|l| !(l.starts_with("error: Failed to load resource") && l.contains("403")))
        .filter(|l| l.starts_with("error") || l.starts_with("pageerror"))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    let urls: Vec<&str> = requests.iter().filter_map(|r| r["url"].as_str()).collect();
    for url in &urls {
        assert!(
            url.starts_with(&format!("{origin}/")) || url.starts_with("data:"),
            "a request to another origin: {url} (all: {urls:#?})"
        );
        assert!(
            !url.contains(admin_token) && !url.contains(&anon),
            "a credential in a URL: {url}"
        );
    }
    for path in [
        "/admin",
        "/admin/dashboard.js",
        "/admin/dashboard.css",
        "/admin/stream",
    ] {
        assert!(
            urls.contains(&format!("{origin}{path}").as_str()),
            "{path} not requested: {urls:#?}"
        );
    }
    page.exit().await;
    other.stop().await.unwrap();
    gw.stop().await.unwrap();
}

/// The next event of `stream` named `name` (others are skipped), within 20 s.
async fn next_named(stream: &mut SseStream, name: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = stream
            .next_within(left)
            .await
            .unwrap_or_else(|| panic!("the stream ended before `{name}`"));
        if event.event == name {
            return event.json();
        }
    }
}

/// Guards the stream's credential: refused (and audited) without one or with one of another
/// role, ended when the token it was opened with expires, ended at shutdown (so that shutdown
/// does not wait on it), and bounded per node.
#[tokio::test]
async fn the_stream_asks_for_the_credential_and_ends_with_it() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.dashboard.admin_sample_interval = Duration::from_millis(100);
    })
    .await;
    let refused = SseStream::open(gw.addr, "/admin/stream", &[])
        .await
        .unwrap_err();
    assert_eq!(refused.status, 401, "{refused:?}");
    let body: Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(body["error"], "unauthorized");
    let anon = format!("Bearer {}", token("anon", None));
    let refused = SseStream::open(gw.addr, "/admin/stream", &[("Authorization", &anon)])
        .await
        .unwrap_err();
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.contains("service_role"), "{refused:?}");
    let pool = db.pool().await;
    common::eventually(Duration::from_secs(10), "the refusals audited", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "select count(*) from realtime.audit_log where kind = 'auth_refused' \
                 and detail->>'stage' = 'admin' and detail->>'endpoint' = '/admin/stream'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            n == 2
        }
    })
    .await;

    // A token valid for two more seconds: the stream serves, then ends with the reason.
    let short = realtime_gateway::auth::sign(common::JWT_SECRET, "service_role", None, 2).unwrap();
    let bearer = format!("Bearer {short}");
    let mut stream = SseStream::open(gw.addr, "/admin/stream", &[("Authorization", &bearer)])
        .await
        .unwrap_or_else(|a| panic!("{a:?}"));
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    assert_eq!(stream.header("cache-control"), Some("no-store"));
    let history = next_named(&mut stream, "history").await;
    assert!(history.is_array(), "{history}");
    let sample = next_named(&mut stream, "sample").await;
    assert_eq!(sample["node_id"], gw.config.node_id.as_str());
    assert_eq!(sample["connections"]["cap"], 200);
    assert_eq!(sample["connections"]["warn_at"], 160);
    // The first sample may predate the listener's connection (it is the latest one at once).
    let mut sample = sample;
    while sample["listener_connected"] != true {
        sample = next_named(&mut stream, "sample").await;
    }
    assert_eq!(sample["database"], true);
    let end = next_named(&mut stream, "end").await;
    assert_eq!(end["reason"], "token_expired", "{end}");
    assert!(stream.next_within(Duration::from_secs(10)).await.is_none());

    // At most MAX_STREAMS at once.
    let bearer = format!("Bearer {}", token("service_role", None));
    let mut open = Vec::new();
    for _ in 0..realtime_gateway::admin::dashboard::MAX_STREAMS {
        let mut s = SseStream::open(gw.addr, "/admin/stream", &[("Authorization", &bearer)])
            .await
            .unwrap_or_else(|a| panic!("{a:?}"));
        next_named(&mut s, "history").await;
        open.push(s);
    }
    let refused = SseStream::open(gw.addr, "/admin/stream", &[("Authorization", &bearer)])
        .await
        .unwrap_err();
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.body.contains("too_many_streams"), "{refused:?}");

    // Streams whose client went away give their places back (at their next sample).
    let mut watching = open.pop().unwrap();
    drop(open);
    let addr = gw.addr;
    common::eventually(Duration::from_secs(10), "a place for a new stream", || {
        let bearer = bearer.clone();
        async move {
            SseStream::open(addr, "/admin/stream", &[("Authorization", &bearer)])
                .await
                .is_ok()
        }
    })
    .await;

    // Shutdown ends the open streams instead of waiting on them.
    let stop = tokio::spawn(gw.stop());
    let end = next_named(&mut watching, "end").await;
    assert_eq!(end["reason"], "shutdown", "{end}");
    stop.await.unwrap().unwrap();
}
