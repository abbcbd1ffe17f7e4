//! PostgreSQL for the catalog of models and datasets: a connection pool (TLS when the URL
//! says `sslmode=require`), the catalog's versioned schema, and LISTEN for the
//! notifications replicas send each other when the catalog changes.
//!
//! The catalog's migrations are versioned in a table of their own
//! (`kiln_catalog_migrations`) and serialized by an advisory lock of their own, so they stay
//! independent of the job tables' (`jobs::postgres`). Errors never hold the URL: it may
//! hold a password (callers name it masked).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;

/// Connecting, and waiting for a free pooled connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one catalog call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const POOL_SIZE: usize = 4;
/// The advisory lock that serializes the catalog's migrations ("kilncatl" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_6c6e_6361_746c;

/// The channel a replica notifies after changing the models in the catalog (the payload:
/// the model's name).
pub const MODELS_CHANNEL: &str = "kiln_models";

/// The catalog's schema, one entry per version; a version once released never changes.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "model versions and datasets",
    "
CREATE TABLE kiln_models (
    name TEXT PRIMARY KEY,
    -- The number the next version gets: numbers are never reused while the model exists.
    next_version BIGINT NOT NULL
);
CREATE TABLE kiln_model_versions (
    model TEXT NOT NULL REFERENCES kiln_models (name) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    -- SHA-256 of the manifest: the version's identity, and where its objects live.
    hash TEXT NOT NULL,
    -- JSON: file name -> {sha256, size}.
    files TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE kiln_datasets (
    id TEXT PRIMARY KEY,
    -- JSON: the dataset's metadata and profile, as the API shows it.
    info TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
",
)];

/// What a catalog call reports: the database could not be reached (callers answer 503),
/// or it answered with an error.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
}

/// The driver's error, as unavailable when the database could not be reached or went away.
pub fn pg_error(e: tokio_postgres::Error) -> PgError {
    let connection_lost = e.is_closed()
        || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
        || e.code().is_some_and(|c| {
            let c = c.code();
            c.starts_with("08") || c.starts_with("57P")
        });
    let text = match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    };
    if connection_lost {
        PgError::Unavailable(text)
    } else {
        PgError::Database(text)
    }
}

pub fn pool_error(e: deadpool_postgres::PoolError) -> PgError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        e @ (deadpool_postgres::PoolError::Timeout(_)
        | deadpool_postgres::PoolError::Closed
        | deadpool_postgres::PoolError::NoRuntimeSpecified
        | deadpool_postgres::PoolError::PostCreateHook(_)) => PgError::Unavailable(e.to_string()),
    }
}

fn parse(url: &str) -> Result<tokio_postgres::Config, PgError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| PgError::Database(format!("invalid database URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("kiln");
    }
    Ok(config)
}

fn rustls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    tokio_postgres_rustls::MakeRustlsConnect::with_native_certs()
        .map(|(tls, _unreadable)| tls)
        .map_err(|e| {
            PgError::Database(format!(
                "sslmode=require, and no trusted root certificate could be loaded: {e:?}"
            ))
        })
}

/// A pool of `size` connections on `url` (TLS when it says `sslmode=require`); connects
/// lazily. Shared by the catalog and the job store (`jobs::postgres`).
pub fn pool(url: &str, size: usize) -> Result<Pool, PgError> {
    let config = parse(url)?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if config.get_ssl_mode() == SslMode::Require {
        Manager::from_config(config, rustls()?, manager_config)
    } else {
        Manager::from_config(config, tokio_postgres::NoTls, manager_config)
    };
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| PgError::Database(e.to_string()))
}

/// A pool on `url`, the catalog migrated. Fails when the database cannot be reached.
pub async fn connect(url: &str) -> Result<Pool, PgError> {
    let pool = pool(url, POOL_SIZE)?;
    let mut client = pool.get().await.map_err(pool_error)?;
    migrate(&mut client, &CATALOG).await?;
    drop(client);
    Ok(pool)
}

/// A versioned schema: the table recording its applied versions, the advisory lock that
/// serializes replicas migrating it at once, its steps (a version once released never
/// changes) and its name in messages.
pub struct Schema {
    pub table: &'static str,
    pub lock: i64,
    pub migrations: &'static [(i32, &'static str, &'static str)],
    pub what: &'static str,
}

const CATALOG: Schema = Schema {
    table: "kiln_catalog_migrations",
    lock: MIGRATION_LOCK,
    migrations: MIGRATIONS,
    what: "catalog",
};

/// Brings `schema` up to its latest version in one transaction, under its advisory lock
/// (held until the commit: a second replica starting now waits, then finds nothing to do).
/// A database whose schema is newer than this binary is refused.
pub async fn migrate(
    client: &mut deadpool_postgres::Client,
    schema: &Schema,
) -> Result<(), PgError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema.lock])
        .await
        .map_err(pg_error)?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (
            version INTEGER PRIMARY KEY,
            description TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        schema.table
    ))
    .await
    .map_err(pg_error)?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT COALESCE(MAX(version), 0) FROM {}", schema.table),
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    let latest = schema.migrations.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(PgError::Database(format!(
            "the {} schema is at version {current}, newer than this kiln knows ({latest}): run a newer kiln",
            schema.what
        )));
    }
    let insert = format!(
        "INSERT INTO {} (version, description) VALUES ($1, $2)",
        schema.table
    );
    for &(version, description, sql) in schema.migrations.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute(&insert, &[&version, &description])
            .await
            .map_err(pg_error)?;
        tracing::info!(
            version,
            description,
            schema = schema.what,
            "schema migrated"
        );
    }
    tx.commit().await.map_err(pg_error)
}

/// Runs `f` with a pooled connection, within [`CALL_TIMEOUT`].
pub async fn with_client<T>(
    pool: &Pool,
    f: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, PgError>,
) -> Result<T, PgError> {
    let work = async {
        let mut client = pool.get().await.map_err(pool_error)?;
        f(&mut client).await
    };
    tokio::time::timeout(CALL_TIMEOUT, work)
        .await
        .map_err(|_| {
            PgError::Unavailable(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))
        })?
}

/// Listens on `channel` from a connection of its own and bumps the returned counter on
/// every notification, and each time `LISTEN` is in place, the first time included (what
/// was sent before is not delivered, so the listener must look again). Reconnects every second while the database is away. The
/// task ends when every receiver is gone.
pub fn listen(
    url: &str,
    channel: &'static str,
) -> Result<tokio::sync::watch::Receiver<u64>, PgError> {
    let config = parse(url)?;
    let tls = (config.get_ssl_mode() == SslMode::Require)
        .then(rustls)
        .transpose()?;
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        while !tx.is_closed() {
            let run = match &tls {
                Some(tls) => listen_once(&config, tls.clone(), channel, &tx).await,
                None => listen_once(&config, tokio_postgres::NoTls, channel, &tx).await,
            };
            if let Err(e) = run {
                tracing::warn!(channel, error = %e, "catalog notifications interrupted; polling until they are back");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok(rx)
}

async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    channel: &str,
    tx: &tokio::sync::watch::Sender<u64>,
) -> Result<(), PgError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await.map_err(pg_error)?;
    let (note_tx, mut note_rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    if note_tx.send(()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(pg_error(e)),
                None => return Ok(()),
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(pg_error)?;
    tx.send_modify(|n| *n += 1);
    tracing::debug!(channel, "listening for catalog notifications");
    while note_rx.recv().await.is_some() {
        tx.send_modify(|n| *n += 1);
        if tx.is_closed() {
            break;
        }
    }
    drop(client);
    match driver.await {
        Ok(r) => r.and(Err(PgError::Unavailable(
            "the listening connection closed".into(),
        ))),
        Err(e) => Err(PgError::Unavailable(e.to_string())),
    }
}
