//! Test harness: a real PostgreSQL, a fresh database per test, the gateway on 127.0.0.1:0.
//!
//! One helper per file, all re-exported here so tests write `use common::...`:
//! - `admin_page`: [`AdminPage`], headless Chromium on the admin dashboard;
//! - `cluster`: the PostgreSQL server (`DATABASE_URL`, or a private cluster with a watchdog);
//! - `db`: [`TestDb`], a database per test from a migrated template, and [`realtime_table`];
//! - `gateway`: [`TestGateway`] in this test's runtime, [`JWT_SECRET`], [`token`], [`eventually`];
//! - `http`: [`http_get`] and [`http_request`];
//! - `ws`: [`WsClient`], a raw Phoenix client, and its frames ([`Msg`]);
//! - `crowd`: [`Crowd`], many realtime-js clients in one Node.js process;
//! - `driver`: [`Driver`], a real [`Client`] (Node.js or Python) over stdin/stdout;
//! - `node`: [`spawn_script`], a Node.js script of tests/clients/js over stdin/stdout lines;
//! - `process`: [`GatewayProcess`], the binary as a child, plus small process helpers;
//! - `proxy`: [`Proxy`], a TCP proxy to PostgreSQL a test can cut and restore;
//! - `sse`: [`SseStream`], a server-sent-events reader (the admin dashboard's stream).

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod admin_page;
pub mod cluster;
pub mod crowd;
pub mod db;
pub mod driver;
pub mod gateway;
pub mod http;
pub mod node;
pub mod process;
pub mod proxy;
pub mod sse;
pub mod ws;

// Every test binary uses only some of the helpers: like `dead_code` above, an unused
// re-export is not a mistake here.
#[allow(unused_imports)]
pub use {
    admin_page::*, crowd::*, db::*, driver::*, gateway::*, http::*, node::*, process::*, proxy::*,
    sse::*, ws::*,
};
