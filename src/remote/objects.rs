//! [`Objects`]: one bucket (or directory) and a prefix inside it, opened from
//! `--object-store`: `s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX`, `az://CONTAINER/PREFIX`, or
//! `file:///DIR`. Credentials, region and endpoint come from the environment, as every
//! S3 tool reads them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`; `GOOGLE_*` and `AZURE_*` likewise).
//! Nothing here ever formats a credential: errors and logs name the URL, which holds none.
//!
//! Every request is retried a bounded number of times with backoff (object_store's retry
//! loop, for 5xx answers and connection errors) and bounded in time: an unreachable store
//! fails the caller within about [`RETRY_TIMEOUT`] plus one [`REQUEST_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

/// Retries of one request (5xx answers, connection errors, timeouts).
pub const MAX_RETRIES: usize = 4;
/// No retry starts after this long from the first try.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(20);
/// One request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong talking to the object store: the operation, the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// No such object.
    #[error("{url}/{key}: not found in the object store")]
    NotFound { url: String, key: String },
    /// The store failed or could not be reached, after the retries.
    #[error("object store {url}: cannot {action} {key}: {reason}")]
    Failed {
        url: String,
        action: &'static str,
        key: String,
        reason: String,
    },
}

/// A bucket and a prefix. Cheap to clone.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The URL as configured (no secrets): what messages show.
    url: String,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Objects({})", self.url)
    }
}

/// object_store's HTTP client is reqwest on rustls without a built-in provider: the process
/// uses ring's (kiln's TLS provider everywhere). Installing it twice is harmless.
fn install_crypto_provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

fn env_true(var: &str) -> bool {
    std::env::var(var)
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

impl Objects {
    /// Opens `url` (no request is made: [`Objects::check`] makes one). The error says what is
    /// wrong with the URL or the environment, never a credential.
    pub fn open(url: &str) -> Result<Objects, String> {
        Objects::open_with(url, &[])
    }

    /// [`Objects::open`] with S3 settings given here on top of the environment's, by
    /// object_store's names (`aws_endpoint`, `aws_access_key_id`, `aws_allow_http`, …): for
    /// tests, which must not change their process's environment.
    pub fn open_with(url: &str, s3_options: &[(&str, &str)]) -> Result<Objects, String> {
        install_crypto_provider();
        let url = url.trim_end_matches('/').to_owned();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("object store '{url}': expected SCHEME://…"))?;
        let retry = RetryConfig {
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
            ..RetryConfig::default()
        };
        let client = ClientOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        let bad = |e: object_store::Error| format!("object store '{url}': {e}");
        let (store, prefix): (Arc<dyn ObjectStore>, &str) = match scheme {
            "file" => {
                std::fs::create_dir_all(rest)
                    .map_err(|e| format!("object store '{url}': creating {rest}: {e}"))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(rest)
                    .map_err(bad)?
                    .with_automatic_cleanup(true);
                (Arc::new(fs), "")
            }
            "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" => {
                let prefix = rest.split_once('/').map_or("", |(_, p)| p);
                let store: Arc<dyn ObjectStore> = match scheme {
                    "s3" | "s3a" => {
                        let mut allow_http = env_true("AWS_ALLOW_HTTP");
                        let mut builder = object_store::aws::AmazonS3Builder::from_env();
                        for (k, v) in s3_options {
                            if *k == "aws_allow_http" {
                                allow_http = *v == "true";
                                continue;
                            }
                            let key = k
                                .parse()
                                .map_err(|e| format!("object store option {k}: {e}"))?;
                            builder = builder.with_config(key, *v);
                        }
                        Arc::new(
                            builder
                                .with_url(&url)
                                .with_retry(retry)
                                .with_client_options(client.with_allow_http(allow_http))
                                .build()
                                .map_err(bad)?,
                        )
                    }
                    "gs" => Arc::new(
                        object_store::gcp::GoogleCloudStorageBuilder::from_env()
                            .with_url(&url)
                            .with_retry(retry)
                            .with_client_options(client)
                            .build()
                            .map_err(bad)?,
                    ),
                    _ => Arc::new(
                        object_store::azure::MicrosoftAzureBuilder::from_env()
                            .with_url(&url)
                            .with_retry(retry)
                            .with_client_options(client)
                            .build()
                            .map_err(bad)?,
                    ),
                };
                (store, prefix)
            }
            other => return Err(format!("object store '{url}': unknown scheme {other}://")),
        };
        let prefix = Path::parse(prefix).map_err(|e| format!("object store '{url}': {e}"))?;
        Ok(Objects { store, prefix, url })
    }

    /// The URL as configured (no secrets).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The full path of `key` (`a/b/c`, relative to the prefix).
    pub fn path(&self, key: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            p = p.join(part);
        }
        p
    }

    fn failed(&self, action: &'static str, key: &str, e: object_store::Error) -> ObjectError {
        match e {
            object_store::Error::NotFound { .. } => ObjectError::NotFound {
                url: self.url.clone(),
                key: key.to_owned(),
            },
            e => ObjectError::Failed {
                url: self.url.clone(),
                action,
                key: key.to_owned(),
                reason: e.to_string(),
            },
        }
    }

    /// One request that lists the prefix: fails when the store cannot be reached, the
    /// bucket does not exist or the credentials are refused.
    pub async fn check(&self) -> Result<(), ObjectError> {
        let mut listing = self.store.list(Some(&self.prefix));
        match listing.next().await {
            Some(Err(e)) => Err(self.failed("list", "", e)),
            _ => Ok(()),
        }
    }

    /// Writes one object whole: readers see all of it or none.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ObjectError> {
        self.store
            .put(&self.path(key), PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.failed("write", key, e))
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        let got = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| self.failed("read", key, e))?;
        got.bytes().await.map_err(|e| self.failed("read", key, e))
    }

    /// Removes one object; one that is already gone is fine.
    pub async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", key, e)),
        }
    }

    /// Removes every object under `key/`.
    pub async fn delete_all(&self, key: &str) -> Result<(), ObjectError> {
        let under = self.path(key);
        let mut listing = self.store.list(Some(&under));
        let mut paths = Vec::new();
        while let Some(meta) = listing.next().await {
            paths.push(meta.map_err(|e| self.failed("list", key, e))?.location);
        }
        for p in paths {
            match self.store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.failed("delete", p.as_ref(), e)),
            }
        }
        Ok(())
    }

    /// Starts a multipart upload of `key`: nothing is visible until [`Multipart::finish`];
    /// an aborted or dropped one leaves no object.
    pub async fn multipart(&self, key: &str) -> Result<Multipart, ObjectError> {
        let upload = self
            .store
            .put_multipart(&self.path(key))
            .await
            .map_err(|e| self.failed("start the upload of", key, e))?;
        Ok(Multipart {
            objects: self.clone(),
            key: key.to_owned(),
            writer: Some(object_store::WriteMultipart::new_with_chunk_size(
                upload, PART_SIZE,
            )),
        })
    }
}

/// Parts of a multipart upload (S3's minimum is 5 MiB for all but the last).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight at once per upload.
const PARTS_IN_FLIGHT: usize = 2;

/// A multipart upload in progress.
pub struct Multipart {
    objects: Objects,
    key: String,
    writer: Option<object_store::WriteMultipart>,
}

impl Multipart {
    /// Appends bytes; waits while too many parts are in flight.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ObjectError> {
        let w = self
            .writer
            .as_mut()
            .expect("a multipart upload is written until it ends");
        w.wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(|e| self.objects.failed("upload", &self.key, e))?;
        w.write(chunk);
        Ok(())
    }

    /// Completes the upload: the object appears whole.
    pub async fn finish(mut self) -> Result<(), ObjectError> {
        let w = self.writer.take().expect("finished once");
        w.finish()
            .await
            .map(|_| ())
            .map_err(|e| self.objects.failed("complete the upload of", &self.key, e))
    }

    /// Abandons the upload: its parts are removed and no object appears.
    pub async fn abort(mut self) {
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.abort().await {
                tracing::warn!(key = %self.key, error = %e, "cannot abort a multipart upload; its parts stay until the bucket's lifecycle removes them");
            }
        }
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            // Dropped mid-way (a failed request): abort in the background.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = w.abort().await;
                });
            }
        }
    }
}
