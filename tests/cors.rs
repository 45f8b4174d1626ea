//! Browser access to the HTTP API (CORS, `CORS_ALLOWED_ORIGINS`): headless Chromium on a page of
//! another origin sends with realtime-js over REST (`httpSend()`, and `send()` on a channel it
//! never joined) while a socket client receives; and the same exchange at the HTTP level,
//! preflight and actual request.

mod common;

use std::time::Duration;

use common::{http_exchange, token, HttpAnswer, TestDb, TestGateway, WsClient};
use realtime_gateway::config::AllowedOrigins;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// tests/clients/js/browser.mjs: Chromium over the DevTools protocol (playwright-core), on a
/// page served from its own loopback port.
struct Browser {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// The page's origin, `http://127.0.0.1:<port>`.
    origin: String,
}

impl Browser {
    async fn start() -> Browser {
        let common::Script {
            child,
            stdin,
            lines,
        } = common::spawn_script("browser.mjs", &[]).await;
        let mut browser = Browser {
            child,
            stdin,
            lines,
            origin: String::new(),
        };
        let ready = browser.next("ready").await;
        browser.origin = ready["origin"].as_str().unwrap().to_owned();
        browser
    }

    /// The next line, which must be event `ev` (the browser's start included: 60 s).
    async fn next(&mut self, ev: &str) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no `{ev}` from the browser within 60 s"))
            .expect("browser stdout")
            .unwrap_or_else(|| panic!("the browser driver exited before `{ev}` (see stderr)"));
        let value: Value = serde_json::from_str(&line).expect("a JSON line");
        assert_eq!(value["ev"], ev, "{value}");
        value
    }

    /// Has the page send to `channel` of `gw` over REST; returns what realtime-js returned.
    async fn send_over_rest(&mut self, gw: &TestGateway, channel: &str) -> Value {
        let cmd = json!({"cmd": "run", "realtime": format!("ws://{}/realtime/v1", gw.addr),
                         "apikey": token("anon", None), "channel": channel});
        let line = format!("{cmd}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        self.next("result").await
    }

    async fn exit(mut self) {
        self.stdin.write_all(b"{\"cmd\":\"exit\"}\n").await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

/// The broadcasts of event `via-http-send` and `via-send` reach `receiver` on `topic`.
async fn receives_both(receiver: &mut WsClient, topic: &str) {
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = receiver.expect_event(topic, "broadcast").await;
        seen.push((m.payload["event"].clone(), m.payload["payload"].clone()));
    }
    seen.sort_by_key(|(event, _)| event.to_string());
    assert_eq!(
        seen,
        [
            (json!("via-http-send"), json!({"n": 1})),
            (json!("via-send"), json!({"n": 2})),
        ]
    );
}

#[tokio::test]
async fn chromium_on_another_origin_sends_over_rest_with_realtime_js() {
    let db = TestDb::new().await;
    let mut browser = Browser::start().await;
    let listed = browser.origin.clone();
    let any = TestGateway::start(&db).await;
    let listing = TestGateway::start_with(&db, |c| {
        c.cors_allowed_origins =
            AllowedOrigins::List(vec!["https://app.example.com".to_owned(), listed]);
    })
    .await;
    let elsewhere = TestGateway::start_with(&db, |c| {
        c.cors_allowed_origins = AllowedOrigins::List(vec!["https://app.example.com".to_owned()]);
    })
    .await;
    assert_ne!(
        browser.origin,
        format!("http://{}", any.addr),
        "the page is of another origin"
    );

    for (gw, channel) in [(&any, "any-origin"), (&listing, "listed-origin")] {
        let mut receiver = WsClient::anon(gw).await;
        let topic = format!("realtime:{channel}");
        receiver.join(&topic, json!({})).await;
        let result = browser.send_over_rest(gw, channel).await;
        assert_eq!(result["httpSend"], json!({"success": true}), "{result}");
        assert_eq!(result["send"], "ok", "{result}");
        // (realtime-js never reads the empty body of `httpSend()`'s 202, which Chromium may
        // report as an aborted request afterwards; what matters is that CORS blocked nothing.)
        assert!(!result.to_string().contains("CORS"), "{result}");
        receives_both(&mut receiver, &topic).await;
    }

    // A gateway that does not list the page's origin: Chromium refuses the preflight's answer
    // and sends nothing.
    let result = browser.send_over_rest(&elsewhere, "not-listed").await;
    assert_eq!(result["send"], "error", "{result}");
    assert!(result["httpSend"]["error"].is_string(), "{result}");
    let console = result["console"].to_string();
    assert!(console.contains("CORS policy"), "{result}");
    browser.exit().await;
}

const ALLOWED_HEADERS: [&str; 7] = [
    "apikey",
    "authorization",
    "content-type",
    "x-client-info",
    "accept-profile",
    "content-profile",
    "prefer",
];

async fn preflight(gw: &TestGateway, path: &str, origin: &str) -> HttpAnswer {
    http_exchange(
        gw.addr,
        "OPTIONS",
        path,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "apikey,authorization,content-type,x-client-info",
            ),
        ],
        "",
    )
    .await
    .unwrap()
}

fn lists(answer: &HttpAnswer, header: &str, items: &[&str]) {
    let value = answer
        .header(header)
        .unwrap_or_else(|| panic!("no {header}: {answer:?}"))
        .to_ascii_lowercase();
    let listed: Vec<&str> = value.split(',').map(str::trim).collect();
    for item in items {
        assert!(listed.contains(item), "{header}: {value} lacks {item}");
    }
}

/// What a browser checks, at the HTTP level: the preflight's answer, then the actual request's.
#[tokio::test]
async fn preflights_and_answers_say_which_origins_may_read_them() {
    let db = TestDb::new().await;
    let any = TestGateway::start(&db).await;
    let page = "http://page.example:3000";
    let key = token("anon", None);
    let bearer = format!("Bearer {key}");
    let body = json!({"messages": [{"topic": "t", "event": "e", "payload": {}}]}).to_string();
    for path in [
        "/realtime/v1/api/broadcast",
        "/realtime/v1/api/broadcast/t/events/e",
        "/api/broadcast",
    ] {
        let answer = preflight(&any, path, page).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
        lists(
            &answer,
            "access-control-allow-methods",
            &["get", "post", "options"],
        );
        lists(&answer, "access-control-allow-headers", &ALLOWED_HEADERS);
        assert!(
            answer.header("access-control-max-age").is_some(),
            "{answer:?}"
        );
    }
    let sent = http_exchange(
        any.addr,
        "POST",
        "/realtime/v1/api/broadcast",
        &[
            ("Origin", page),
            ("Authorization", &bearer),
            ("apikey", &key),
            ("Content-Type", "application/json"),
            ("X-Client-Info", "supabase-js-web/2"),
        ],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(sent.status, 202, "{sent:?}");
    assert_eq!(sent.header("access-control-allow-origin"), Some("*"));
    // Refusals too, so that the page can read why.
    let refused = http_exchange(
        any.addr,
        "POST",
        "/realtime/v1/api/broadcast",
        &[("Origin", page), ("Content-Type", "application/json")],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.header("access-control-allow-origin"), Some("*"));
    let metrics = http_exchange(any.addr, "GET", "/metrics", &[("Origin", page)], "")
        .await
        .unwrap();
    assert_eq!(metrics.status, 200);
    assert_eq!(metrics.header("access-control-allow-origin"), Some("*"));

    let listing = TestGateway::start_with(&db, |c| {
        c.cors_allowed_origins =
            AllowedOrigins::List(vec![page.to_owned(), "https://app.example.com".to_owned()]);
    })
    .await;
    let answer = preflight(&listing, "/realtime/v1/api/broadcast", page).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some(page));
    lists(&answer, "vary", &["origin"]);
    let sent = http_exchange(
        listing.addr,
        "POST",
        "/realtime/v1/api/broadcast",
        &[
            ("Origin", page),
            ("apikey", &key),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(sent.status, 202, "{sent:?}");
    assert_eq!(sent.header("access-control-allow-origin"), Some(page));
    lists(&sent, "vary", &["origin"]);
    // An origin not listed is not told it may read: the browser then refuses the answer.
    let other = preflight(
        &listing,
        "/realtime/v1/api/broadcast",
        "http://evil.example",
    )
    .await;
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "{other:?}"
    );
    lists(&other, "vary", &["origin"]);
}
