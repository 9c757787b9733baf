//! Token refresh through the local endpoint, tokens checked: the original Go example's
//! promises, its replacement's, and what neither tested.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dsql_pgx::Pool;
use dsql_pgx::pool::RefreshError;

use common::TestEndpoint;
use common::dsql::{FlakyCredentials, assert_code, dsql_pgx, output, stdout};

async fn session_id(pool: &Pool) -> String {
    let conn = pool.get().await.expect("connection");
    let row = conn
        .query_one("select sys.current_session_id()", &[])
        .await
        .expect("query");
    let id: String = row.get(0);
    assert_eq!(
        id,
        conn.session_id(),
        "the registry knows the server's session id"
    );
    id
}

/// The session IDs of connections a test holds.
fn ids_of(held: &[dsql_pgx::pool::PooledConn]) -> BTreeSet<String> {
    held.iter().map(|c| c.session_id().to_string()).collect()
}

fn ids(pool: &Pool) -> BTreeSet<String> {
    pool.connections()
        .into_iter()
        .map(|c| c.session_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_refresh() {
    let ep = TestEndpoint::start().await;
    let mut settings = ep.settings("admin");
    settings.pool.min_idle = 1;
    settings.pool.max_size = 1;
    let pool = Pool::new(&settings).await.unwrap();
    let before = session_id(&pool).await;
    let report = pool.refresh().await.unwrap();
    let after = session_id(&pool).await;
    assert_ne!(before, after);
    assert_eq!(report.retired, vec![before]);
    assert_eq!(report.opened, vec![after]);
    assert!(report.overlap.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn multiple_connections_refresh() {
    let ep = TestEndpoint::start().await;
    let mut settings = ep.settings("admin");
    settings.pool.min_idle = 3;
    let pool = Pool::new(&settings).await.unwrap();
    let held = pool.get_many(3).await.unwrap();
    let before = ids_of(&held);
    assert_eq!(before.len(), 3);
    drop(held);
    let report = pool.refresh().await.unwrap();
    let held = pool.get_many(3).await.unwrap();
    let after = ids_of(&held);
    assert_eq!(after.len(), 3);
    assert!(before.is_disjoint(&after), "{before:?} vs {after:?}");
    assert!(report.opened.len() >= 3, "{report:?}");
    assert!(report.overlap.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn comprehensive_connection_refresh() {
    let ep = TestEndpoint::start().await;
    let mut settings = ep.settings("admin");
    settings.pool.max_size = 5;
    let pool = Pool::new(&settings).await.unwrap();
    let held = pool.get_many(5).await.unwrap();
    let before = ids_of(&held);
    assert_eq!(before.len(), 5);
    let stats_before = pool.stats();
    assert_eq!((stats_before.total, stats_before.in_use), (5, 5));
    drop(held);
    let report = pool.refresh().await.unwrap();
    let held = pool.get_many(5).await.unwrap();
    let after = ids_of(&held);
    assert_eq!(after.len(), 5);
    assert!(before.is_disjoint(&after));
    assert!(report.overlap.is_empty());
    let stats = pool.stats();
    assert_eq!(stats.generation, stats_before.generation + 1);
    assert_eq!(stats.closed_retired, 5);
    assert!(stats.opened >= 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn periodic_token_refresh() {
    let ep = TestEndpoint::start().await;
    let mut settings = ep.settings("admin");
    settings.pool.min_idle = 1;
    settings.pool.max_size = 1;
    let pool = Pool::new(&settings).await.unwrap();
    let before = session_id(&pool).await;
    let mut refresher = pool.spawn_refresher(Duration::from_secs(2));
    let report = tokio::time::timeout(Duration::from_secs(10), refresher.reports.recv())
        .await
        .expect("a refresh within the interval")
        .expect("refresher running")
        .expect("refresh succeeded");
    assert_eq!(report.retired, vec![before.clone()]);
    assert_ne!(
        session_id(&pool).await,
        before,
        "changed without a manual call"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_connection_outlives_its_token() {
    let ep = TestEndpoint::start().await;
    let mut settings = ep.settings("admin");
    settings.target.token_expires_in = Duration::from_secs(1);
    settings.pool.max_size = 1;
    settings.pool.min_idle = 1;
    let pool = Pool::new(&settings).await.unwrap();
    let first = session_id(&pool).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        session_id(&pool).await,
        first,
        "same connection, token long expired"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lazy_connection_after_token_expiry_authenticates() {
    let ep = TestEndpoint::start().await;
    let mut settings = ep.settings("admin");
    settings.target.token_expires_in = Duration::from_secs(1);
    settings.pool.min_idle = 0;
    let pool = Pool::new(&settings).await.unwrap();
    assert_eq!(pool.connections().len(), 0);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let id = session_id(&pool).await;
    assert_eq!(id.len(), 26, "opened with a fresh token");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_max_lifetime_yields_new_ids() {
    let ep = TestEndpoint::start().await;
    let mut settings = ep.settings("admin");
    settings.pool.max_lifetime = Duration::from_secs(1);
    settings.pool.max_size = 1;
    settings.pool.min_idle = 1;
    let pool = Pool::new(&settings).await.unwrap();
    let first = session_id(&pool).await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_ne!(session_id(&pool).await, first);
    assert!(pool.stats().closed_lifetime >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_connections_are_distinct() {
    let ep = TestEndpoint::start().await;
    let mut settings = ep.settings("admin");
    settings.pool.max_size = 20;
    let pool = Pool::new(&settings).await.unwrap();
    let held = pool.get_many(20).await.unwrap();
    let mut ids = BTreeSet::new();
    for conn in &held {
        let row = conn
            .query_one("select sys.current_session_id()", &[])
            .await
            .unwrap();
        ids.insert(row.get::<_, String>(0));
    }
    assert_eq!(ids.len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_spanning_a_refresh_completes_and_its_connection_retires() {
    let ep = TestEndpoint::start().await;
    let pool = Pool::new(&ep.settings("admin")).await.unwrap();
    let conn = pool.get().await.unwrap();
    let busy = conn.session_id().to_string();
    let sleeper = tokio::spawn(async move {
        let result = conn.simple_query("select pg_sleep(2)").await.map(drop);
        (result, conn)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = pool.refresh().await.unwrap();
    assert!(report.retired.contains(&busy));
    assert!(!report.opened.contains(&busy));
    let (result, conn) = sleeper.await.unwrap();
    result.expect("the query in flight was not interrupted");
    assert!(ids(&pool).contains(&busy), "still open until returned");
    drop(conn);
    assert!(!ids(&pool).contains(&busy), "retired when returned");
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_workers_across_five_refreshes_never_fail() {
    let ep = TestEndpoint::start().await;
    let pool = Pool::new(&ep.settings("admin")).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (pool, stop, ok, failed) = (pool.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let result = match pool.get().await {
                        Ok(conn) => conn
                            .simple_query("select 1")
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match result {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            eprintln!("query failed: {error}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = ids(&pool);
        let report = pool.refresh().await.unwrap();
        let opened: BTreeSet<String> = report.opened.iter().cloned().collect();
        assert!(before.is_disjoint(&opened), "every ID replaced");
        assert!(report.overlap.is_empty());
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
    let generation = pool.generation();
    assert!(
        pool.connections()
            .iter()
            .all(|c| c.generation == generation),
        "no old connection left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_while_signing_fails_keeps_serving() {
    let ep = TestEndpoint::start().await;
    let credentials = FlakyCredentials::new(&ep);
    let settings = ep.settings_with("admin", credentials.source());
    let pool = Pool::new(&settings).await.unwrap();
    let before = ids(&pool);
    let generation = pool.generation();

    credentials.set(false);
    let error = pool.refresh().await.expect_err("signing must fail");
    assert!(matches!(error, RefreshError::Sign(_)), "{error:?}");
    assert_eq!(pool.generation(), generation, "nothing retired");
    for _ in 0..10 {
        session_id(&pool).await;
    }
    assert!(
        ids(&pool).is_superset(&before),
        "the old connections keep serving"
    );

    credentials.set(true);
    let report = pool.refresh().await.unwrap();
    assert!(before.is_disjoint(&ids(&pool)));
    assert!(report.overlap.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_refreshes_coalesce() {
    let ep = TestEndpoint::start().await;
    let pool = Pool::new(&ep.settings("admin")).await.unwrap();
    let start = pool.generation();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.refresh().await.unwrap() })
        })
        .collect();
    let mut generations = BTreeSet::new();
    for call in calls {
        generations.insert(call.await.unwrap().generation);
    }
    assert!(
        pool.generation() - start < 4,
        "some of the four calls coalesced"
    );
    assert!(generations.len() <= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_demo_local_end_to_end() {
    let mut cmd = dsql_pgx();
    cmd.args([
        "refresh-demo",
        "--local",
        "--interval",
        "1s",
        "--refreshes",
        "2",
        "--workers",
        "3",
        "--format",
        "json",
    ]);
    let out = output(cmd).await;
    assert_code(&out, 0);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert_eq!(lines.len(), 3, "two refreshes and a summary");
    for line in &lines[..2] {
        assert_eq!(line["overlap"], 0);
        assert_eq!(line["failed"], 0);
        assert!(line["ok"].as_u64().unwrap() > 0);
        let before: BTreeSet<&str> = line["before"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let after: BTreeSet<&str> = line["after"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(!after.is_empty() && before.is_disjoint(&after));
        // Of `before`, those the pool opened since the refresh before (so not in its `after`).
        assert!(
            line["grew"].as_u64().unwrap() <= before.len() as u64,
            "{line}"
        );
    }
    let (first_after, second_before) = (&lines[0]["after"], &lines[1]["before"]);
    let grew = second_before
        .as_array()
        .unwrap()
        .iter()
        .filter(|id| !first_after.as_array().unwrap().contains(id))
        .count();
    assert_eq!(lines[1]["grew"], grew, "{}", lines[1]);
    assert_eq!(lines[2]["summary"], true);
    assert_eq!(lines[2]["failed"], 0);
    assert_eq!(lines[2]["refreshes"], 2);
}
