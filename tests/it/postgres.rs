//! Jobs on PostgreSQL (issue 11): one contract for every job store, run against SQLite and a
//! real PostgreSQL; claims racing between replicas; a server over a real socket training on
//! PostgreSQL, followed, listed and cancelled through another replica; the database down at
//! start (a clear error, password masked) and while serving (job routes 503, predictions go
//! on, readiness says so).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::jobs::store::{CancelOutcome, NewChild, ParentFilter};
use kiln::jobs::{JobEnd, JobFilter, JobRecord, JobState, JobStore, PgJobStore, SqliteJobStore};
use kiln::training::search::TrialResult;
use kiln::training::spec::{JobSpec, ResolvedSpec};
use kiln::training::trainer::EpochEvent;
use serde_json::{json, Value};

use crate::pg::{self, Db};
use crate::training::{follow, iris_csv, upload};
use crate::util::*;

fn iris() -> kiln::dataset::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/iris.csv");
    kiln::dataset::read_table(&path, None, None).unwrap()
}

fn spec(model: &str) -> ResolvedSpec {
    let body = format!(
        r#"{{"model": "{model}", "dataset": "ds_0123456789abcdef", "target": "species",
            "training": {{"epochs": 7}}}}"#
    );
    JobSpec::from_json(body.as_bytes())
        .unwrap()
        .resolve(&iris())
        .unwrap()
}

fn epoch(n: u32) -> EpochEvent {
    serde_json::from_value(json!({
        "epoch": n, "epochs": 7, "loss": 1.0 / f64::from(n), "val_loss": 0.5,
        "metrics": {"accuracy": 0.75}, "learning_rate": 0.01, "samples_per_sec": 1000.0,
        "epoch_seconds": 0.1, "eta_seconds": 0.6
    }))
    .unwrap()
}

fn ids(jobs: &[JobRecord]) -> Vec<&str> {
    jobs.iter().map(|j| j.id.as_str()).collect()
}

/// Opens a handle on one shared database as the replica named.
type Open<'a> = &'a dyn Fn(&str) -> Box<dyn JobStore>;

/// What every job store does, whatever holds it.
fn contract(open: Open) {
    let s = open("replica-a");
    for (id, model) in [("job_a", "iris"), ("job_b", "wine"), ("job_c", "iris")] {
        let r = s.insert(id, &spec(model)).unwrap();
        assert_eq!(
            (r.state, r.model(), r.replica.as_deref()),
            (JobState::Queued, model, None)
        );
    }
    assert!(
        s.insert("job_a", &spec("iris")).is_err(),
        "a job id was stored twice"
    );

    // Oldest first, each once, recorded with the claiming replica.
    let a = s.claim_next().unwrap().unwrap();
    assert_eq!((a.id.as_str(), a.state), ("job_a", JobState::Running));
    assert_eq!(a.replica.as_deref(), Some("replica-a"));
    assert!(a.started_ms.is_some());

    // Epochs: the history in order, progress its last entry, one row per epoch number.
    assert!(!s.record_epoch("job_a", &epoch(1)).unwrap());
    assert!(!s.record_epoch("job_a", &epoch(2)).unwrap());
    assert!(!s.record_epoch("job_a", &epoch(2)).unwrap());
    let h: Vec<u32> = s
        .history("job_a")
        .unwrap()
        .iter()
        .map(|e| e.epoch)
        .collect();
    assert_eq!(h, [1, 2]);
    assert_eq!(s.get("job_a").unwrap().unwrap().progress.unwrap().epoch, 2);

    // Cancel: a queued job ends at once, a running one is asked, a final one says so.
    assert_eq!(s.request_cancel("job_b").unwrap(), CancelOutcome::Cancelled);
    assert_eq!(s.get("job_b").unwrap().unwrap().state, JobState::Cancelled);
    assert!(!s.requeue("job_b").unwrap());
    assert_eq!(s.request_cancel("job_a").unwrap(), CancelOutcome::Requested);
    assert!(
        s.record_epoch("job_a", &epoch(3)).unwrap(),
        "the cancel was not passed on"
    );
    assert_eq!(
        s.request_cancel("job_b").unwrap(),
        CancelOutcome::AlreadyFinal(JobState::Cancelled)
    );
    assert_eq!(
        s.request_cancel("job_0000000000000000").unwrap(),
        CancelOutcome::NotFound
    );

    // Lists: newest first, filtered, paged.
    let list = |f: JobFilter| s.list(&f).unwrap();
    let all = list(JobFilter {
        limit: 10,
        ..Default::default()
    });
    assert_eq!(ids(&all), ["job_c", "job_b", "job_a"]);
    let page = list(JobFilter {
        limit: 2,
        before: Some("job_c".into()),
        ..Default::default()
    });
    assert_eq!(ids(&page), ["job_b", "job_a"]);
    let iris = list(JobFilter {
        model: Some("iris".into()),
        state: Some(JobState::Queued),
        limit: 10,
        ..Default::default()
    });
    assert_eq!(ids(&iris), ["job_c"]);

    // Only a running job finishes, once.
    let metrics: kiln::model::format::Metrics =
        serde_json::from_value(json!({"accuracy": 0.9})).unwrap();
    assert!(s
        .finish(
            "job_a",
            &JobEnd::Succeeded {
                version: 3,
                metrics: metrics.clone()
            }
        )
        .unwrap());
    assert!(!s.finish("job_a", &JobEnd::Cancelled).unwrap());
    let a = s.get("job_a").unwrap().unwrap();
    assert_eq!((a.state, a.version), (JobState::Succeeded, Some(3)));
    assert_eq!(a.metrics.as_ref(), Some(&metrics));
    assert!(a.finished_ms.is_some());

    // job_c runs when this replica stops; the same replica, started again, finds it.
    assert_eq!(s.claim_next().unwrap().unwrap().id, "job_c");
    assert!(s.claim_next().unwrap().is_none(), "a job was claimed twice");
    for n in 1..=3 {
        s.record_epoch("job_c", &epoch(n)).unwrap();
    }
    drop(s);
    let s = open("replica-a");
    assert_eq!(ids(&s.interrupted().unwrap()), ["job_c"]);
    s.truncate_history("job_c", 1).unwrap();
    assert_eq!(s.get("job_c").unwrap().unwrap().progress.unwrap().epoch, 1);
    assert!(s.requeue("job_c").unwrap());
    assert!(!s.requeue("job_c").unwrap());
    assert_eq!(s.claim_next().unwrap().unwrap().id, "job_c");
    assert!(s
        .finish("job_c", &JobEnd::Failed("diverged".into()))
        .unwrap());
    let c = s.get("job_c").unwrap().unwrap();
    assert_eq!(
        (c.state, c.error.as_deref()),
        (JobState::Failed, Some("diverged"))
    );

    let mut counts = s.count_by_state().unwrap();
    counts.sort_by_key(|(state, _)| state.as_str());
    assert_eq!(
        counts,
        [
            (JobState::Cancelled, 1),
            (JobState::Failed, 1),
            (JobState::Succeeded, 1)
        ]
    );
    assert!(s.get("job_zzz").unwrap().is_none());

    children_contract(&*s);
}

/// A search job and its trials as child jobs: queued together with the parent's move to
/// waiting, listed by parent, claimed like any job; the parent is claimable again only once
/// every child has ended, and a cancel of the parent reaches its children.
fn children_contract(s: &dyn JobStore) {
    let child = |id: &str, trial: u32| NewChild {
        id: id.to_owned(),
        trial,
        spec: spec("iris"),
        deadline_ms: Some(42),
    };
    s.insert("job_p", &spec("iris")).unwrap();
    assert_eq!(s.claim_next().unwrap().unwrap().id, "job_p");
    let kids = [child("job_p1", 1), child("job_p2", 2)];
    assert!(s.spawn_children("job_p", &kids).unwrap());
    assert!(
        !s.spawn_children("job_p", &kids).unwrap(),
        "a waiting job spawned twice"
    );
    let p = s.get("job_p").unwrap().unwrap();
    assert_eq!(p.state, JobState::Waiting);
    let c = s.children("job_p").unwrap();
    assert_eq!(ids(&c), ["job_p1", "job_p2"]);
    assert_eq!(
        (c[1].parent.as_deref(), c[1].trial, c[1].deadline_ms),
        (Some("job_p"), Some(2), Some(42))
    );
    let list = |parent: ParentFilter| {
        s.list(&JobFilter {
            parent,
            limit: 100,
            ..Default::default()
        })
        .unwrap()
    };
    assert_eq!(
        ids(&list(ParentFilter::Of("job_p".into()))),
        ["job_p2", "job_p1"]
    );
    assert!(list(ParentFilter::TopLevel)
        .iter()
        .all(|j| j.parent.is_none()));
    assert_eq!(
        list(ParentFilter::Any).len(),
        list(ParentFilter::TopLevel).len() + 2
    );
    // The children are claimed (oldest first); the parent not before both have ended.
    assert_eq!(s.claim_next().unwrap().unwrap().id, "job_p1");
    assert_eq!(s.claim_next().unwrap().unwrap().id, "job_p2");
    assert!(s.claim_next().unwrap().is_none());
    let result: TrialResult = serde_json::from_value(json!({
        "trial": 1, "outcome": "completed", "epochs_run": 3, "score": 0.9,
        "metrics": {"accuracy": 0.9}, "seconds": 0.5}))
    .unwrap();
    assert!(s
        .finish("job_p1", &JobEnd::Trial(Box::new(result)))
        .unwrap());
    let p1 = s.get("job_p1").unwrap().unwrap();
    assert_eq!(p1.state, JobState::Succeeded);
    assert_eq!(p1.trial_result.unwrap().score, Some(0.9));
    assert!(
        s.claim_next().unwrap().is_none(),
        "claimed before its trials ended"
    );
    assert!(s
        .finish("job_p2", &JobEnd::Failed("diverged".into()))
        .unwrap());
    let p = s.claim_next().unwrap().unwrap();
    assert_eq!((p.id.as_str(), p.state), ("job_p", JobState::Running));
    assert!(s.finish("job_p", &JobEnd::Cancelled).unwrap());

    // Cancel of a waiting search: it and its queued trials at once, the running one asked.
    s.insert("job_q", &spec("iris")).unwrap();
    assert_eq!(s.claim_next().unwrap().unwrap().id, "job_q");
    assert!(s
        .spawn_children("job_q", &[child("job_q1", 1), child("job_q2", 2)])
        .unwrap());
    assert_eq!(s.claim_next().unwrap().unwrap().id, "job_q1");
    assert_eq!(s.request_cancel("job_q").unwrap(), CancelOutcome::Cancelled);
    let c = s.children("job_q").unwrap();
    assert_eq!(
        (c[0].state, c[0].cancel_requested),
        (JobState::Running, true)
    );
    assert_eq!(c[1].state, JobState::Cancelled);
    assert!(s.record_epoch("job_q1", &epoch(1)).unwrap());
    // A running search asked to cancel spawns nothing.
    s.insert("job_r", &spec("iris")).unwrap();
    assert_eq!(s.claim_next().unwrap().unwrap().id, "job_r");
    assert_eq!(s.request_cancel("job_r").unwrap(), CancelOutcome::Requested);
    assert!(!s.spawn_children("job_r", &[child("job_r1", 1)]).unwrap());
    assert!(s.children("job_r").unwrap().is_empty());
}

#[test]
fn the_job_store_contract_holds_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    contract(&|replica| Box::new(SqliteJobStore::open(&path).unwrap().with_replica(replica)));
}

/// A runtime for the PostgreSQL store's driver; the store's (blocking) methods are called
/// from this test's own thread, as the server calls them from blocking threads.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn connect(rt: &tokio::runtime::Runtime, url: &str, replica: &str) -> PgJobStore {
    rt.block_on(PgJobStore::connect(url, replica)).unwrap()
}

#[test]
fn the_job_store_contract_holds_on_postgres() {
    let Some(db) = Db::new() else { return };
    let rt = runtime();
    contract(&|replica| Box::new(connect(&rt, &db.url, replica)));
}

/// Replicas starting at once migrate the schema one at a time; then two replicas claiming
/// from one queue as fast as they can each get different jobs, and every job is claimed.
/// A database at schema version 1 (from before trial jobs) is upgraded at connect, keeping
/// its jobs, which then list as top-level jobs.
#[test]
fn a_version_1_database_is_upgraded_keeping_its_jobs() {
    let Some(db) = Db::new() else { return };
    let rt = runtime();
    let s = connect(&rt, &db.url, "r1");
    s.insert("job_old", &spec("iris")).unwrap();
    drop(s);
    // Back to version 1, as an older kiln left it.
    crate::pg::execute(
        &db.url,
        "DROP INDEX jobs_parent; DROP INDEX jobs_waiting; \
         ALTER TABLE jobs DROP COLUMN parent, DROP COLUMN trial, DROP COLUMN deadline_ms, \
         DROP COLUMN trial_result; DELETE FROM kiln_schema_migrations WHERE version = 2;",
    );
    let s = connect(&rt, &db.url, "r1");
    let old = s.get("job_old").unwrap().unwrap();
    assert_eq!((old.state, old.parent), (JobState::Queued, None));
    let top = s
        .list(&JobFilter {
            parent: ParentFilter::TopLevel,
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&top), ["job_old"]);
    assert!(s.children("job_old").unwrap().is_empty());
}

#[test]
fn replicas_migrate_together_and_never_claim_the_same_job() {
    let Some(db) = Db::new() else { return };
    let rt = Arc::new(runtime());
    let stores: Vec<Arc<PgJobStore>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (rt, url) = (rt.clone(), db.url.clone());
                scope.spawn(move || Arc::new(connect(&rt, &url, &format!("r{i}"))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let n = 40;
    for i in 0..n {
        stores[0]
            .insert(&format!("job_{i:016x}"), &spec("race"))
            .unwrap();
    }
    let claimed: Vec<Vec<JobRecord>> = std::thread::scope(|scope| {
        let handles: Vec<_> = stores
            .iter()
            .map(|s| {
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    while let Some(job) = s.claim_next().unwrap() {
                        mine.push(job);
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = HashSet::new();
    for (i, mine) in claimed.iter().enumerate() {
        for job in mine {
            assert!(seen.insert(job.id.clone()), "{} claimed twice", job.id);
            assert_eq!(job.replica.as_deref(), Some(format!("r{i}").as_str()));
        }
    }
    assert_eq!(seen.len(), n);
    let running = stores[1]
        .list(&JobFilter {
            state: Some(JobState::Running),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(running.len(), n);
}

/// A replica that stops renewing loses the job when its lease runs out: another replica
/// claims it, and the first can no longer record epochs, finish or requeue it; the
/// heartbeat tells it so.
#[test]
fn an_expired_lease_moves_the_job_and_fences_the_old_replica() {
    let Some(db) = Db::new() else { return };
    let rt = runtime();
    let lease = Duration::from_millis(600);
    let a = connect(&rt, &db.url, "a").with_lease(lease);
    let b = connect(&rt, &db.url, "b").with_lease(lease);
    a.insert("job_1", &spec("lease")).unwrap();
    a.insert("job_2", &spec("lease")).unwrap();
    assert_eq!(a.claim_next().unwrap().unwrap().id, "job_1");
    a.record_epoch("job_1", &epoch(1)).unwrap();
    // Renewed: b finds nothing of a's while a beats.
    assert_eq!(b.claim_next().unwrap().unwrap().id, "job_2");
    assert!(b.finish("job_2", &JobEnd::Cancelled).unwrap());
    for _ in 0..4 {
        std::thread::sleep(lease / 3);
        let beat = a.heartbeat(&["job_1".to_owned()]).unwrap();
        assert!(beat.lost.is_empty() && beat.cancel.is_empty(), "{beat:?}");
        assert!(b.claim_next().unwrap().is_none(), "a held lease was taken");
    }
    // a goes silent past its lease: b takes the job over.
    std::thread::sleep(lease + Duration::from_millis(200));
    let taken = b.claim_next().unwrap().unwrap();
    assert_eq!(
        (taken.id.as_str(), taken.replica.as_deref()),
        ("job_1", Some("b"))
    );
    assert_eq!(taken.state, JobState::Running);
    // a is fenced off.
    let err = a.record_epoch("job_1", &epoch(2)).unwrap_err();
    assert!(matches!(err, kiln::jobs::StoreError::LeaseLost(_)), "{err}");
    assert!(!a.finish("job_1", &JobEnd::Cancelled).unwrap());
    assert!(!a.requeue("job_1").unwrap());
    let beat = a.heartbeat(&["job_1".to_owned()]).unwrap();
    assert_eq!(beat.lost, ["job_1"]);
    assert_eq!(
        b.history("job_1")
            .unwrap()
            .iter()
            .map(|e| e.epoch)
            .collect::<Vec<_>>(),
        [1]
    );
    // A cancel made anywhere reaches b's heartbeat.
    assert_eq!(a.request_cancel("job_1").unwrap(), CancelOutcome::Requested);
    let beat = b.heartbeat(&["job_1".to_owned()]).unwrap();
    assert_eq!((beat.cancel, beat.lost), (vec!["job_1".to_owned()], vec![]));
}

fn toml_for(url: &str, replica: &str, lease_ms: u64) -> String {
    format!(
        "database = \"{url}\"\nreplica_id = \"{replica}\"\njob_lease_ms = {lease_ms}\n\
         max_concurrent_jobs = 1\n"
    )
}

async fn job(s: &Server, id: &str) -> Value {
    s.get(&format!("/v1/training-jobs/{id}")).await.1
}

/// Two replicas on one PostgreSQL (and one models directory): a job submitted through one
/// is followed, shown and listed through the other, and succeeds with a continuous history;
/// the other's cancel stops a second job wherever it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_jobs_through_postgres() {
    let Some(db) = tokio::task::spawn_blocking(Db::new).await.unwrap() else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    let one = Server::start(models.path(), &toml_for(&db.url, "one", 3000)).await;
    let two = Server::start(models.path(), &toml_for(&db.url, "two", 3000)).await;
    // Datasets live in each replica's data directory for now: upload to both.
    let (status, ds, _) = upload(&one, "text/csv", iris_csv()).await;
    assert_eq!(status, 201, "{ds}");
    let dataset = ds["id"].as_str().unwrap().to_owned();
    let from = one.data.path().join("datasets").join(&dataset);
    let to = two.data.path().join("datasets").join(&dataset);
    copy_dir(&from, &to);

    let spec = json!({"model": "shared", "dataset": dataset, "target": "species",
                      "training": {"epochs": 4, "batch_size": 16}});
    let (status, submitted) = one.post("/v1/training-jobs", &spec).await;
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["id"].as_str().unwrap().to_owned();

    let events = follow(&two, &id).await;
    let epochs: Vec<u64> = events
        .iter()
        .filter(|(k, _)| k == "epoch")
        .map(|(_, d)| d["epoch"].as_u64().unwrap())
        .collect();
    // Every epoch once, in order (a refit after training counts its epochs on).
    assert!(epochs.len() >= 4, "{events:?}");
    assert_eq!(epochs, (1..=epochs.len() as u64).collect::<Vec<_>>());
    let (kind, end) = events.last().unwrap();
    assert_eq!(
        (kind.as_str(), end["state"].as_str()),
        ("end", Some("succeeded"))
    );
    for s in [&one, &two] {
        let j = job(s, &id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["history"].as_array().unwrap().len(), epochs.len());
        let (status, list) = s.get("/v1/training-jobs?model=shared").await;
        assert_eq!(status, 200);
        assert_eq!(list["jobs"][0]["id"], id.as_str(), "{list}");
    }

    // A long job, cancelled through the other replica (whichever runs it).
    let long = json!({"model": "long", "dataset": dataset, "target": "species",
                      "training": {"epochs": 100000, "batch_size": 1}});
    let (_, submitted) = one.post("/v1/training-jobs", &long).await;
    let id = submitted["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while job(&two, &id).await["progress"]["epoch"]
        .as_u64()
        .unwrap_or(0)
        < 1
    {
        assert!(Instant::now() < deadline, "the long job never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = two
        .post(&format!("/v1/training-jobs/{id}:cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = job(&one, &id).await;
        if j["state"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "not cancelled: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    one.stop().await;
    two.stop().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A database that cannot be reached at start is a startup error naming it, password
/// masked; so is a wrong password on a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_startup_error_with_the_password_masked() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("postgres://kiln:hunter2-secret@127.0.0.1:{port}/kiln");
    let err = start_error(&url).await;
    assert!(
        err.contains(&format!("postgres://kiln:***@127.0.0.1:{port}/kiln")),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let Some(db) = tokio::task::spawn_blocking(Db::new).await.unwrap() else {
        return;
    };
    let wrong = db.url.replace(pg::PASSWORD, "not-the-password");
    let err = start_error(&wrong).await;
    assert!(err.contains("kiln:***@"), "{err}");
    assert!(
        !err.contains("not-the-password") && !err.contains(pg::PASSWORD),
        "{err}"
    );
    assert!(err.contains("password authentication failed"), "{err}");
    // sslmode=require is honoured: against a server without TLS, no plaintext fallback.
    if db
        .url
        .starts_with(&format!("postgres://kiln:{}@127.0.0.1", pg::PASSWORD))
    {
        let err = start_error(&format!("{}?sslmode=require", db.url)).await;
        assert!(err.contains("TLS"), "{err}");
        assert!(!err.contains(pg::PASSWORD), "{err}");
    }
}

async fn start_error(url: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    let toml = format!(
        "database = \"{url}\"\ndata_dir = \"{}\"\nmodels_dir = \"{}\"\n",
        data.path().display(),
        data.path().join("models").display()
    );
    let config = kiln::config::Config::from_toml(&toml, &Default::default()).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = tokio::time::timeout(
        Duration::from_secs(30),
        kiln::serve(
            config,
            listener,
            std::future::pending::<kiln::shutdown::Drain>(),
        ),
    )
    .await
    .expect("startup did not give up");
    format!("{:#}", started.expect_err("started without its database"))
}

/// PostgreSQL stops while kiln serves: predictions go on from memory, job routes answer
/// 503 with Retry-After, and readiness says the database is gone (and stays 200: every
/// replica would go at once, and predictions still work).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_down_stops_jobs_not_predictions() {
    let Some(source) = pg::source() else { return };
    let pg::Source::Bin(bin) = source else {
        // A server given by URL is not ours to stop.
        eprintln!(
            "skipped: needs a private cluster (KILN_TEST_PG_BIN), not KILN_TEST_DATABASE_URL"
        );
        return;
    };
    let cluster = Arc::new(
        tokio::task::spawn_blocking(move || pg::Cluster::start(&bin))
            .await
            .unwrap(),
    );
    let c = cluster.clone();
    let db = tokio::task::spawn_blocking(move || Db::on(c))
        .await
        .unwrap();
    let models = tempfile::tempdir().unwrap();
    fixture(models.path(), "m", 1, &tabular_spec());
    let s = Server::start(models.path(), &toml_for(&db.url, "solo", 900)).await;
    let predict = json!({"instances": [{"a": 1.0, "b": 2.0, "color": "red"}]});
    assert_eq!(s.post("/v1/models/m:predict", &predict).await.0, 200);
    assert_eq!(s.get("/v1/training-jobs").await.0, 200);

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
    let r = s
        .client
        .get(s.url("/v1/training-jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "database_unavailable", "{body}");
    assert!(!body.to_string().contains(pg::PASSWORD));
    assert_eq!(s.post("/v1/models/m:predict", &predict).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, health) = s.get("/health/ready").await;
        assert_eq!(status, 200, "{health}");
        if health["status"] == "degraded" {
            assert!(health["reasons"][0]
                .as_str()
                .unwrap()
                .contains("job database"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never reported the database: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}

/// kill -9 of the replica running a job: once its lease has run out, another replica
/// (sharing the data directory, so the checkpoint) claims the job and resumes it from the
/// checkpoint, with every epoch in the history once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_killed_replica_resumes_on_another() {
    use crate::process::{
        job, signal, spawn_server_logged, start_endless_job, wait_epochs, wait_ready,
    };
    let Some(db) = tokio::task::spawn_blocking(Db::new).await.unwrap() else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let env = |replica| {
        [
            ("KILN_DATABASE_URL", db.url.clone()),
            ("KILN_REPLICA_ID", replica),
            ("KILN_JOB_LEASE_MS", "1500".to_owned()),
        ]
    };
    let env_a = env("a".to_owned());
    let env_a: Vec<(&str, &str)> = env_a.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut a, base_a, _) = spawn_server_logged(models.path(), data.path(), &[], &env_a);
    wait_ready(&client, &base_a).await;
    let id = start_endless_job(&client, &base_a, "moved").await;
    let before = wait_epochs(&client, &base_a, &id, 3).await;
    assert_eq!(before["replica"], "a", "{before}");
    signal(&a, "-KILL");
    a.wait().unwrap();

    let env_b = env("b".to_owned());
    let env_b: Vec<(&str, &str)> = env_b.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut b, base_b, _) = spawn_server_logged(models.path(), data.path(), &[], &env_b);
    wait_ready(&client, &base_b).await;
    let stopped_at = job(&client, &base_b, &id).await["history"]
        .as_array()
        .unwrap()
        .len() as u64;
    assert!(stopped_at >= 3);
    let deadline = Instant::now() + Duration::from_secs(60);
    let later = loop {
        let j = job(&client, &base_b, &id).await;
        if j["replica"] == "b" && j["progress"]["epoch"].as_u64().unwrap_or(0) >= stopped_at + 2 {
            break j;
        }
        assert!(Instant::now() < deadline, "not taken over: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(later["state"], "running", "{later}");
    let epochs: Vec<u64> = later["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(
        epochs,
        (1..=epochs.len() as u64).collect::<Vec<_>>(),
        "history has gaps or repeats"
    );
    // Resumed from the checkpoint, not from scratch: the epochs a trained are still there,
    // timings and all (an epoch computed again would not match them).
    assert_eq!(later["history"][0], before["history"][0]);
    let r = client
        .post(format!("{base_b}/v1/training-jobs/{id}:cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    signal(&b, "-TERM");
    assert!(b.wait().unwrap().success());
}

/// A replica with `max_concurrent_jobs = 0` accepts a job and runs none; a replica with
/// room, started later on the same database (and data directory), runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_only_replica_leaves_its_jobs_to_the_others() {
    let Some(db) = tokio::task::spawn_blocking(Db::new).await.unwrap() else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    let serve_only = toml_for(&db.url, "front", 3000)
        .replace("max_concurrent_jobs = 1", "max_concurrent_jobs = 0");
    let front = Server::start(models.path(), &serve_only).await;
    let (status, ds, _) = upload(&front, "text/csv", iris_csv()).await;
    assert_eq!(status, 201, "{ds}");
    let dataset = ds["id"].as_str().unwrap().to_owned();
    let spec = json!({"model": "later", "dataset": dataset, "target": "species",
                      "training": {"epochs": 2}});
    let (status, submitted) = front.post("/v1/training-jobs", &spec).await;
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(job(&front, &id).await["state"], "queued");

    // A second process on the same data directory (so the same datasets).
    let env = [
        ("KILN_DATABASE_URL", db.url.as_str()),
        ("KILN_REPLICA_ID", "worker"),
    ];
    let (mut worker, base, _) =
        crate::process::spawn_server_logged(models.path(), front.data.path(), &[], &env);
    crate::process::wait_ready(&reqwest::Client::new(), &base).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = job(&front, &id).await;
        if j["state"] == "succeeded" {
            assert_eq!(j["replica"], "worker", "{j}");
            break;
        }
        assert!(Instant::now() < deadline, "never ran: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::process::signal(&worker, "-TERM");
    assert!(worker.wait().unwrap().success());
    front.stop().await;
}
