//! Start-up glue: open the database and the event log, build the state, run the
//! server and the background tasks, and shut everything down in order.
//!
//! This is the only place that picks an `EventLog` implementation: `NATS_URL` set
//! means JetStream, unset means the embedded SQLite log.

use crate::accounts::AccountStore;
use crate::app::{AppInner, AppState};
use crate::config::{CommonConfig, ServeConfig};
use crate::crypto::Cipher;
use crate::db::{self, Backend};
use crate::identity::JwtKeys;
use crate::keys::KeyStore;
use crate::services::{ServiceSettings, Services};
use anyhow::Context as _;
use ingest::publisher::{Publisher, PublisherConfig};
use ingest::EventLog;
use sqlx::AnyPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Creates `DATA_DIR` if needed.
pub fn ensure_data_dir(common: &CommonConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&common.data_dir)
        .with_context(|| format!("cannot create DATA_DIR {}", common.data_dir.display()))
}

/// Opens the configured event log.
pub async fn open_event_log(common: &CommonConfig) -> anyhow::Result<Arc<dyn EventLog>> {
    match &common.nats_url {
        Some(url) => {
            let settings = nats::StreamSettings {
                duplicate_window: Duration::from_secs(common.nats_duplicate_window_secs),
                ..nats::StreamSettings::default()
            };
            let log = nats::JetStreamLog::connect(url, settings)
                .await
                .with_context(|| "cannot open the JetStream event log at NATS_URL")?;
            Ok(Arc::new(log))
        }
        None => {
            let path = common.data_dir.join("events.db");
            let log = ingest::sqlite::SqliteLog::open(&path)
                .await
                .with_context(|| format!("cannot open the event log {}", path.display()))?;
            Ok(Arc::new(log))
        }
    }
}

/// Opens the database and applies every migration (relay and projections).
pub async fn open_db(common: &CommonConfig) -> anyhow::Result<AnyPool> {
    let url = common.database_url();
    let backend = Backend::from_url(&url)?;
    let pool = db::connect(&url).await?;
    db::migrate(&pool, backend).await?;
    projections::migrate(&pool)
        .await
        .context("projection migrations failed")?;
    Ok(pool)
}

/// Loads the credential cipher.
pub fn cipher(common: &CommonConfig) -> anyhow::Result<Cipher> {
    Ok(Cipher::load_or_create(
        common.encryption_key.as_deref(),
        &common.data_dir,
    )?)
}

/// The publisher's settings from the common configuration: spool and journal in
/// `DATA_DIR`.
pub fn publisher_config(common: &CommonConfig) -> PublisherConfig {
    let mut c = PublisherConfig::new(common.data_dir.join("spool.db"));
    c.journal.fsync = common.journal_fsync;
    c
}

/// Builds the application state and starts the publisher.
pub async fn build_state(
    common: CommonConfig,
    config: ServeConfig,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<AppState> {
    ensure_data_dir(&common)?;
    let db = open_db(&common).await?;
    let log = open_event_log(&common).await?;
    let cipher = cipher(&common)?;
    let publisher = Publisher::start(
        log.clone(),
        PublisherConfig {
            queue_capacity: config.event_queue_capacity,
            spool_max_events: config.event_spool_max_events,
            ..publisher_config(&common)
        },
        &tracker,
        shutdown.clone(),
    )
    .await
    .context("cannot start the event publisher")?;
    let hasher = cipher.key_hasher();
    let accounts = AccountStore::new(db.clone(), cipher);
    let jwt = JwtKeys::load_or_create(
        config.jwt_secret.as_deref(),
        common.nats_url.is_some(),
        &common.data_dir,
        config.jwt_lifetime().map_err(anyhow::Error::msg)?,
    )?;
    let keys = KeyStore::new(db.clone(), hasher);
    let services = Services::new(
        db.clone(),
        keys.clone(),
        accounts.clone(),
        Some(jwt),
        publisher.clone(),
        ServiceSettings {
            billing_tz: common.billing_tz().map_err(anyhow::Error::msg)?,
            registration_enabled: config.registration_enabled,
            egress: common.egress(),
        },
    );
    bootstrap_admin(&services, &common, &config).await?;
    let proxy = Arc::new(crate::proxy::ProxyState::new(
        &config,
        common.egress(),
        publisher.clone(),
    ));
    let limiter = Arc::new(
        crate::limits::engine::Limiter::new(
            db.clone(),
            Backend::from_url(&common.database_url())?,
            crate::projectors::price_table(&common)?,
            crate::limits::engine::LimitSettings {
                tz: common.billing_tz().map_err(anyhow::Error::msg)?,
                week_start: config.week_start().map_err(anyhow::Error::msg)?,
                fail_open: config.limits_fail_open,
            },
        )
        .with_publisher(publisher.clone()),
    );
    let refresher = Arc::new(crate::token_refresh::TokenRefresher::new(
        accounts.clone(),
        config.oauth(),
        config.global_proxy_url(),
        publisher.clone(),
    ));
    // Read the head before the accounts, so every account change logged after this
    // load is seen by the admin watcher.
    let as_of = log.head().await.context("cannot read the event log head")?;
    proxy
        .accounts_as_of
        .store(as_of, std::sync::atomic::Ordering::SeqCst);
    proxy.pool.reload(
        accounts
            .list()
            .await
            .context("cannot load the upstream accounts")?,
    );
    let deps = crate::proxy::ProxyDeps(Arc::new(crate::proxy::ProxyDepsInner {
        config,
        log,
        publisher,
        keys,
        accounts,
        shutdown,
        tracker,
        proxy,
        limiter,
        refresher,
    }));
    Ok(AppState(Arc::new(AppInner {
        common,
        db,
        deps,
        services,
    })))
}

/// Creates the first admin when there is no user yet. A generated password is printed
/// once to stderr and written to `<DATA_DIR>/initial-admin-password` (mode 0600).
async fn bootstrap_admin(
    services: &Services,
    common: &CommonConfig,
    config: &ServeConfig,
) -> anyhow::Result<()> {
    let created = services
        .bootstrap_admin(
            &config.default_admin_username,
            &config.default_admin_email,
            config.default_admin_password.as_deref(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the first admin: {e}"))?;
    if let Some((user, generated)) = created {
        match generated {
            Some(password) => {
                let path = common.data_dir.join("initial-admin-password");
                let _ = std::fs::remove_file(&path);
                crate::crypto::write_private(&path, &format!("{password}\n"))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                // On stdout, once: not in the log stream (stderr), which may be shipped.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "created admin user {:?} with password {password} (also in {}); change it after logging in",
                    user.username,
                    path.display()
                );
            }
            None => {
                tracing::info!(username = %user.username, "created the admin user from DEFAULT_ADMIN_*")
            }
        }
    }
    Ok(())
}

/// `relay serve`: binds, serves until SIGINT/SIGTERM, then drains.
pub async fn serve(common: CommonConfig, config: ServeConfig) -> anyhow::Result<()> {
    let addr = format!("{}:{}", config.host, config.port);
    ensure_data_dir(&common)?;
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let state = build_state(common, config, shutdown.clone(), tracker.clone()).await?;
    let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    tracing::info!(addr = %bound, log = state.log.backend(), "relay listening");
    tracker.spawn(wait_for_signal(shutdown.clone()));
    run_with_state(listener, state).await
}

/// Runs the server and background tasks on a bound listener until shutdown, then
/// waits for the tracker (publisher drain, projectors) to finish.
pub async fn run_with_state(listener: TcpListener, state: AppState) -> anyhow::Result<()> {
    let shutdown = state.shutdown.clone();
    let tracker = state.tracker.clone();
    crate::background::spawn(&state);
    let options = state.config.server_options();
    if let Some(addr) = state.config.health_addr.clone() {
        let health = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on HEALTH_ADDR {addr}"))?;
        let opts = crate::server::ServerOptions {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            ..options.clone()
        };
        tracker.spawn(crate::server::run(
            health,
            crate::server::health_router(),
            shutdown.clone(),
            opts,
        ));
    }
    if let Some(addr) = state.config.metrics_addr.clone() {
        let metrics = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on METRICS_ADDR {addr}"))?;
        let opts = crate::server::ServerOptions {
            max_connections: 64,
            ..options.clone()
        };
        tracker.spawn(crate::server::run(
            metrics,
            crate::proxy::metrics_router(state.deps.clone()),
            shutdown.clone(),
            opts,
        ));
    }
    let app = crate::server::router(state);
    let result = crate::server::run(listener, app, shutdown.clone(), options).await;
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    result.context("server failed")
}

/// Cancels `shutdown` on SIGINT or SIGTERM; returns early if it is cancelled first.
pub async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
        _ = shutdown.cancelled() => return,
    }
    tracing::info!("shutdown requested; draining");
    shutdown.cancel();
}
