//! Scenario 8: what the event journal costs a request.
//!
//! A request the relay answers writes, on its own task, one attempt start before it
//! goes upstream and its `usage.recorded` and `request.finished` before its last
//! byte, each handed on to the publisher's queue. This measures exactly that work per
//! request, at concurrency 1 and 32, for each `JOURNAL_FSYNC` setting, against the
//! baseline of the same run: the publish path before the journal existed (handing the
//! two events to an in-memory queue). With `always`, the time includes waiting for the
//! group-commit sync, as the request's last chunk does.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use hdrhistogram::Histogram;
use ingest::journal::{AttemptStart, Fsync, Journal, JournalConfig};
use schema::{AccountId, Envelope, Event, Outcome, RequestFinished};
use tokio::sync::mpsc;

use super::replay::usage_event;

/// How a request publishes.
#[derive(Clone, Copy)]
enum Mode {
    /// The queue only (the publish path before the journal).
    QueueOnly,
    /// Journal, then queue.
    Journal(Fsync),
}

impl Mode {
    fn label(self) -> String {
        match self {
            Mode::QueueOnly => "queue only (baseline: no journal)".to_owned(),
            Mode::Journal(Fsync::Never) => "journal, `JOURNAL_FSYNC=never`".to_owned(),
            Mode::Journal(Fsync::Interval(d)) => {
                format!("journal, `JOURNAL_FSYNC={}` (default)", d.as_millis())
            }
            Mode::Journal(Fsync::Always) => "journal, `JOURNAL_FSYNC=always`".to_owned(),
        }
    }
}

struct Measured {
    hist: Histogram<u64>,
    wall: Duration,
    requests: u64,
}

fn request_events(i: u64) -> Result<(AttemptStart, Vec<Envelope>)> {
    let usage = usage_event(i)?;
    let finished = Envelope::new(
        uuid::Uuid::now_v7(),
        Utc::now(),
        Event::RequestFinished(RequestFinished {
            endpoint: "/v1/messages".into(),
            status: 200,
            outcome: Outcome::Completed,
            model: Some("claude-sonnet-4-6".into()),
            stream: true,
            latency_us: 1_850_000,
            ttfb_us: Some(420_000),
            upstream_us: Some(1_849_000),
            attempts: 1,
            routing: None,
            error_type: None,
            upstream_request_id: Some("req_011CSHoEeqs5C35K2UUqR7Fy".into()),
            rejected_by: None,
        }),
    )
    .with_request(format!("req_bench_{i}"))
    .with_key(usage.tenant.clone(), usage.api_key.clone())
    .with_account(usage.account.clone());
    let attempt = AttemptStart {
        request_id: format!("req_bench_{i}"),
        attempt: 1,
        account: usage.account.clone().unwrap_or(AccountId::parse("acct-0")?),
        tenant: usage.tenant.clone(),
        api_key: usage.api_key.clone(),
        model: "claude-sonnet-4-6".into(),
        stream: true,
        endpoint: "/v1/messages".into(),
        started_at: Utc::now(),
    };
    Ok((attempt, vec![usage, finished]))
}

async fn run_mode(mode: Mode, concurrency: u64, per_task: u64) -> Result<Measured> {
    let dir = tempfile::tempdir()?;
    let journal = match mode {
        Mode::QueueOnly => None,
        Mode::Journal(fsync) => {
            let mut c = JournalConfig::new(dir.path().join("journal"));
            c.fsync = fsync;
            Some(Journal::open(&c)?.0)
        }
    };
    // The publisher's queue, drained as the publisher's task would.
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Envelope)>();
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let journal = journal.clone();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            for i in 0..per_task {
                let (attempt, events) = request_events(t * per_task + i)?;
                let t0 = Instant::now();
                match &journal {
                    None => {
                        for e in events {
                            let _ = tx.send((0, e));
                        }
                    }
                    Some(j) => {
                        j.attempt_started(&attempt)?;
                        let seq = j.append_events(events, |seq, e| {
                            let _ = tx.send((seq, e));
                        })?;
                        if j.syncs_each_record() {
                            j.durable(seq).await;
                        }
                        // The publisher reports what the log holds; here, at once.
                        j.handled(seq);
                    }
                }
                hist.record(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX))?;
            }
            anyhow::Ok(hist)
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    let wall = started.elapsed();
    drop(tx);
    drain.await?;
    Ok(Measured {
        hist,
        wall,
        requests: concurrency * per_task,
    })
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// Runs the scenario; returns the markdown section.
pub async fn run(quick: bool) -> Result<String> {
    let per_task_c1 = if quick { 2_000 } else { 20_000 };
    let per_task_c32 = if quick { 100 } else { 1_000 };
    let modes = [
        Mode::QueueOnly,
        Mode::Journal(Fsync::Never),
        Mode::Journal(Fsync::Interval(Duration::from_millis(100))),
        Mode::Journal(Fsync::Always),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### 8. The event journal's cost per request\n\nPer request: one attempt start, then `usage.recorded` + `request.finished` written and handed to the publisher's queue (with `always`, plus the wait for the group-commit sync that the response's last chunk waits for). Interleaved with the baseline in one run: the same two events handed to the queue without a journal, the publish path before the journal. Times in µs; ratio = p50 over the baseline's p50 at the same concurrency. Files on this machine's disk (`{}`).\n\n| mode | concurrency | requests | p50 µs | p99 µs | max µs | requests/s | p50 ratio |\n|---|---|---|---|---|---|---|---|",
        std::env::temp_dir().display()
    );
    for concurrency in [1u64, 32] {
        let per_task = if concurrency == 1 {
            per_task_c1
        } else {
            per_task_c32
        };
        let mut baseline_p50 = None;
        for mode in modes {
            super::scenarios::Bench::progress(&format!(
                "journal: {} at c={concurrency}",
                mode.label()
            ));
            let o = run_mode(mode, concurrency, per_task).await?;
            let p50 = o.hist.value_at_quantile(0.5);
            let base = *baseline_p50.get_or_insert(p50);
            let _ = writeln!(
                out,
                "| {} | {concurrency} | {} | {} | {} | {} | {:.0} | {:.2}× |",
                mode.label(),
                o.requests,
                us(p50),
                us(o.hist.value_at_quantile(0.99)),
                us(o.hist.max()),
                o.requests as f64 / o.wall.as_secs_f64().max(1e-9),
                p50 as f64 / base.max(1) as f64,
            );
        }
    }
    Ok(out)
}
