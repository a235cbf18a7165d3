//! The projector: crash and restart, stream errors, leases, checkpoints, lag.

use crate::common::*;
use crate::each_backend;
use futures::StreamExt;
use ingest::{Appended, EventLog, EventStream, LogError, Position};
use projections::Dialect as _;
use projections::{Projection, Projector, ProjectorOptions};
use schema::{Envelope, HealthEvidence, HealthReason, HealthState, Outcome};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

each_backend!(
    failure_mid_batch_then_restart_gives_identical_rows,
    aborted_task_then_restart_gives_identical_rows,
    stream_error_resubscribes_from_checkpoint,
    lease_keeps_a_second_runner_out,
    lease_of_a_process_that_is_gone_is_taken_over_at_once,
    checkpoint_only_moves_forward,
    newer_event_version_stops_the_projector,
    group_catches_up_members_at_different_checkpoints,
);

/// A mixed workload of `n` events over a few tenants, keys, accounts and models.
pub fn workload(n: usize) -> Vec<Envelope> {
    let mut out = Vec::with_capacity(n);
    let models = [
        "claude-sonnet-4-6",
        "claude-opus-4-6",
        "claude-haiku-4-5",
        "claude-new",
    ];
    for i in 0..n {
        let when = at(2026, 11, 1, 0) + chrono::Duration::minutes(i as i64 * 7);
        let acc = ["acc_1", "acc_2", "acc_3"][i % 3];
        let e = match i % 10 {
            0..=5 => usage(&UsageSpec {
                tenant: ["acme", "globex"][i % 2],
                key: ["key_a", "key_b", "key_c"][i % 3],
                account: acc,
                model: models[i % 4].into(),
                request: format!("req_{i}"),
                tokens: [i as u64 % 5_000, 100, i as u64 % 777, 10, 1],
                at: when,
            }),
            6 | 7 => finished(&format!("req_{i}"), acc, Outcome::Completed, when),
            8 => health(
                acc,
                HealthState::Healthy,
                [HealthState::RateLimited, HealthState::Healthy][i % 2],
                HealthReason::RateLimited,
                when,
                HealthEvidence::default(),
            ),
            _ => admin("key.create", when),
        };
        out.push(e);
    }
    out
}

fn quick() -> ProjectorOptions {
    ProjectorOptions {
        batch_size: 64,
        lease_ttl: Duration::from_millis(600),
        retry_min: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        ..Default::default()
    }
}

/// Runs every projection with `run()` in background tasks until each checkpoint reaches
/// the head, then stops them.
pub async fn run_live(db: &sqlx::AnyPool, log: Arc<dyn EventLog>, ps: Vec<Arc<dyn Projection>>) {
    run_live_with(db, log, ps, quick(), async {}).await
}

/// [`run_live`] with options, while `fed` runs (events may still be arriving): the
/// projectors start first, and the head they must reach is read once `fed` is done.
pub async fn run_live_with(
    db: &sqlx::AnyPool,
    log: Arc<dyn EventLog>,
    ps: Vec<Arc<dyn Projection>>,
    opts: ProjectorOptions,
    fed: impl std::future::Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let names: Vec<&'static str> = ps.iter().map(|p| p.name()).collect();
    for p in ps {
        let projector = Projector::new(db.clone(), log.clone(), p).with_options(opts.clone());
        let token = stop.clone();
        tasks.push(tokio::spawn(async move { projector.run(token).await }));
    }
    fed.await;
    let head = log.head().await.unwrap();
    wait_for("projectors to catch up", || {
        let db = db.clone();
        let names = names.clone();
        async move {
            for n in names {
                if projections::runner::checkpoint(&db, n).await.unwrap() < head {
                    return false;
                }
            }
            true
        }
    })
    .await;
    stop.cancel();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

/// Runs `ps` as one group with `run()` while `fed` runs, then until every checkpoint
/// reaches the head as of the end of `fed`.
pub async fn run_live_group(
    db: &sqlx::AnyPool,
    log: Arc<dyn EventLog>,
    ps: Vec<Arc<dyn Projection>>,
    fed: impl std::future::Future<Output = ()>,
) {
    let names: Vec<&'static str> = ps.iter().map(|p| p.name()).collect();
    let projector = Projector::group(db.clone(), log.clone(), ps);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { projector.run(token).await });
    fed.await;
    let head = log.head().await.unwrap();
    wait_for("the group to catch up", || {
        let db = db.clone();
        let names = names.clone();
        async move {
            for n in names {
                if projections::runner::checkpoint(&db, n).await.unwrap() < head {
                    return false;
                }
            }
            true
        }
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

async fn failure_mid_batch_then_restart_gives_identical_rows(db: &TestDb) {
    let log = MemLog::new();
    log.push_all(&workload(2_000));
    // Reference: an uninterrupted run into a second database.
    let reference = db.another().await;
    catch_up(&reference.pool, log.clone()).await;

    // Each projection fails once in the middle of a batch, after writing rows in the
    // transaction; the runner rolls back, re-subscribes and carries on.
    let ps: Vec<Arc<dyn Projection>> = projections::all(prices())
        .into_iter()
        .map(|p| {
            Arc::new(FailOnce {
                inner: p,
                position: 1_001,
                fired: AtomicBool::new(false),
            }) as Arc<dyn Projection>
        })
        .collect();
    // run_until_caught_up surfaces the failure ...
    for p in &ps {
        let err = Projector::new(db.pool.clone(), log.clone(), p.clone())
            .with_options(quick())
            .run_until_caught_up()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        let at = projections::runner::checkpoint(&db.pool, p.name())
            .await
            .unwrap();
        assert!((1_001 - 64..1_001).contains(&at), "checkpoint {at}");
    }
    // ... and a restart finishes the job.
    run_live(&db.pool, log.clone(), ps).await;
    assert_eq!(dump_all(&db.pool).await, dump_all(&reference.pool).await);
    reference.cleanup().await;
}

async fn aborted_task_then_restart_gives_identical_rows(db: &TestDb) {
    let log = MemLog::new();
    log.push_all(&workload(3_000));
    let reference = db.another().await;
    catch_up(&reference.pool, log.clone()).await;

    let usage = projections::all(prices()).remove(0);
    let projector = Arc::new(
        Projector::new(db.pool.clone(), log.clone(), usage.clone()).with_options(
            ProjectorOptions {
                batch_size: 16,
                ..quick()
            },
        ),
    );
    let running = projector.clone();
    let task = tokio::spawn(async move { running.run(CancellationToken::new()).await });
    wait_for("some progress", || {
        let db = db.pool.clone();
        async move { projections::runner::checkpoint(&db, "usage").await.unwrap() > 200 }
    })
    .await;
    // Killed at an arbitrary point, possibly inside a transaction.
    task.abort();
    let _ = task.await;
    let at = projections::runner::checkpoint(&db.pool, "usage")
        .await
        .unwrap();
    assert!(at < 3_000, "the run finished before it could be killed");
    // The dead runner's lease blocks a new runner until it expires.
    let fresh = Projector::new(db.pool.clone(), log.clone(), usage).with_options(quick());
    let mut attempts = 0;
    loop {
        match fresh.run_until_caught_up().await {
            Ok(p) => {
                assert_eq!(p, 3_000);
                break;
            }
            Err(projections::Error::LeaseHeld { .. }) => {
                attempts += 1;
                assert!(attempts < 1_000, "lease never expired");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    for (table, key) in [
        ("usage_ledger", "event_id"),
        ("usage_totals", "day, tenant, api_key, account, model"),
    ] {
        assert_eq!(
            dump(&db.pool, table, key).await,
            dump(&reference.pool, table, key).await,
            "{table}"
        );
    }
    reference.cleanup().await;
}

/// A log whose first subscription fails after `after` events.
struct BreaksOnce {
    inner: Arc<MemLog>,
    after: usize,
    broken: AtomicBool,
}

#[async_trait::async_trait]
impl EventLog for BreaksOnce {
    async fn append(&self, event: &Envelope) -> Result<Appended, LogError> {
        self.inner.append(event).await
    }
    async fn subscribe(
        &self,
        after: Position,
        filter: Option<schema::Category>,
    ) -> Result<EventStream, LogError> {
        let s = self.inner.subscribe(after, filter).await?;
        if self.broken.swap(true, Ordering::SeqCst) {
            return Ok(s);
        }
        let err = futures::stream::iter([Err(LogError::Unavailable("connection reset".into()))]);
        Ok(s.take(self.after).chain(err).boxed())
    }
    async fn head(&self) -> Result<Position, LogError> {
        self.inner.head().await
    }
    fn backend(&self) -> &'static str {
        "breaks-once"
    }
}

async fn stream_error_resubscribes_from_checkpoint(db: &TestDb) {
    let mem = MemLog::new();
    mem.push_all(&workload(1_000));
    let reference = db.another().await;
    catch_up(&reference.pool, mem.clone()).await;
    let log = Arc::new(BreaksOnce {
        inner: mem,
        after: 333,
        broken: AtomicBool::new(false),
    });
    let usage = projections::all(prices()).remove(0);
    let projector = Projector::new(db.pool.clone(), log.clone(), usage).with_options(quick());
    let mut lag = projector.lag();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { projector.run(token).await });
    tokio::time::timeout(
        Duration::from_secs(60),
        lag.wait_for(|l| l.checkpoint == 1_000 && l.behind() == 0),
    )
    .await
    .expect("lag never reached 0")
    .unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(log.broken.load(Ordering::SeqCst));
    assert_eq!(
        dump(&db.pool, "usage_ledger", "event_id").await,
        dump(&reference.pool, "usage_ledger", "event_id").await
    );
    assert_eq!(
        dump(
            &db.pool,
            "usage_totals",
            "day, tenant, api_key, account, model"
        )
        .await,
        dump(
            &reference.pool,
            "usage_totals",
            "day, tenant, api_key, account, model"
        )
        .await
    );
    reference.cleanup().await;
}

async fn lease_keeps_a_second_runner_out(db: &TestDb) {
    let log = MemLog::new();
    log.push_all(&workload(50));
    let usage = projections::all(prices()).remove(0);
    let first = Projector::new(db.pool.clone(), log.clone(), usage.clone()).with_options(
        ProjectorOptions {
            lease_ttl: Duration::from_secs(30),
            ..quick()
        },
    );
    let mut lag = first.lag();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { first.run(token).await });
    tokio::time::timeout(
        Duration::from_secs(30),
        lag.wait_for(|l| l.checkpoint == 50),
    )
    .await
    .unwrap()
    .unwrap();
    let second = Projector::new(db.pool.clone(), log.clone(), usage.clone());
    match second.run_until_caught_up().await {
        Err(projections::Error::LeaseHeld { projection, .. }) => assert_eq!(projection, "usage"),
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    let mut noop = |_: projections::Lag| {};
    assert!(matches!(
        second.rebuild(&mut noop).await,
        Err(projections::Error::LeaseHeld { .. })
    ));
    // A clean stop releases the lease at once.
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(second.run_until_caught_up().await.unwrap(), 50);
}

async fn lease_of_a_process_that_is_gone_is_taken_over_at_once(db: &TestDb) {
    let log = MemLog::new();
    log.push_all(&workload(20));
    let usage = projections::all(prices()).remove(0);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let far = chrono::Utc::now().timestamp_millis() + 3_600_000;
    let put = |holder: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query("DELETE FROM leases WHERE name = 'usage'")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query(
                &pool.sql("INSERT INTO leases (name, holder, until_ms) VALUES ('usage', $1, $2)"),
            )
            .bind(holder)
            .bind(far)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // A live holder (this very process, another runner) keeps its lease.
    put(projections::runner::holder::new_holder()).await;
    let runner = Projector::new(db.pool.clone(), log.clone(), usage.clone());
    assert!(matches!(
        runner.run_until_caught_up().await,
        Err(projections::Error::LeaseHeld { .. })
    ));
    // A holder on another machine is waited for.
    put(format!("host:another-boot:{}:{dead_pid}:1:x", ns.display())).await;
    assert!(matches!(
        runner.run_until_caught_up().await,
        Err(projections::Error::LeaseHeld { .. })
    ));
    // A process of this machine that exited an hour before its lease ends is gone.
    put(format!(
        "host:{}:{}:{dead_pid}:1:x",
        boot.trim(),
        ns.display()
    ))
    .await;
    assert_eq!(runner.run_until_caught_up().await.unwrap(), 20);
}

async fn checkpoint_only_moves_forward(db: &TestDb) {
    let mut tx = db.pool.begin().await.unwrap();
    assert!(projections::runner::advance_checkpoint(&mut tx, "x", 5)
        .await
        .unwrap());
    assert!(!projections::runner::advance_checkpoint(&mut tx, "x", 3)
        .await
        .unwrap());
    assert!(!projections::runner::advance_checkpoint(&mut tx, "x", 5)
        .await
        .unwrap());
    assert!(projections::runner::advance_checkpoint(&mut tx, "x", 9)
        .await
        .unwrap());
    tx.commit().await.unwrap();
    assert_eq!(
        projections::runner::checkpoint(&db.pool, "x")
            .await
            .unwrap(),
        9
    );
}

async fn newer_event_version_stops_the_projector(db: &TestDb) {
    let log = MemLog::new();
    let mut e = usage(&UsageSpec::default());
    log.push(&usage(&UsageSpec::default()));
    e.version = 2;
    log.push(&e);
    let usage_p = projections::all(prices()).remove(0);
    let err = Projector::new(db.pool.clone(), log.clone(), usage_p)
        .run_until_caught_up()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            projections::Error::UnsupportedVersion { position: 2, .. }
        ),
        "{err}"
    );
    assert_eq!(
        projections::runner::checkpoint(&db.pool, "usage")
            .await
            .unwrap(),
        0
    );
}

async fn group_catches_up_members_at_different_checkpoints(db: &TestDb) {
    let log = MemLog::new();
    let events = workload(1_500);
    log.push_all(&events[..1_000]);
    // Only `usage` and `audit` have seen the first 1000 events.
    let all = projections::all(prices());
    for p in [&all[0], &all[3]] {
        Projector::new(db.pool.clone(), log.clone(), p.clone())
            .run_until_caught_up()
            .await
            .unwrap();
    }
    log.push_all(&events[1_000..]);
    // A duplicate at a new position, seen by the group only.
    log.push(&events[10]);
    let group = Projector::group(db.pool.clone(), log.clone(), all).with_options(quick());
    assert_eq!(group.name(), "usage+accounts+requests+audit+notifications");
    assert_eq!(group.current_lag().await.unwrap().checkpoint, 0);
    assert_eq!(group.run_until_caught_up().await.unwrap(), 1_501);
    assert_eq!(group.current_lag().await.unwrap().behind(), 0);
    let reference = db.another().await;
    catch_up(&reference.pool, log.clone()).await;
    assert_eq!(dump_all(&db.pool).await, dump_all(&reference.pool).await);
    reference.cleanup().await;
}
