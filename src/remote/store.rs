//! Opening a remote's object store (the Arrow project's `object_store`) from its URL, with
//! credentials from each backend's standard environment and bounded timeouts, so an
//! unreachable remote is one clear line within seconds, not a hang.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

use super::RemoteSpec;

/// How long to wait for a connection, and for a whole request (a large object's transfer).
const CONNECT_TIMEOUT: &str = "3s";
const REQUEST_TIMEOUT: &str = "3600s";
/// The longest silence within a request (a stalled server).
const READ_TIMEOUT: &str = "60s";

fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(10),
    }
}

/// The object store behind `spec`, rooted at its URL's path.
pub fn open(spec: &RemoteSpec) -> Result<Arc<dyn ObjectStore>, String> {
    let url = &spec.url;
    if !url.contains("://") || url.starts_with("file://") {
        let path = url.strip_prefix("file://").unwrap_or(url);
        // Not created here: a missing folder is as often a share that is not mounted.
        if !std::path::Path::new(path).is_dir() {
            return Err(format!("the folder {path} does not exist (create it, or mount the share it is on)"));
        }
        let store = LocalFileSystem::new_with_prefix(path).map_err(|e| e.to_string())?;
        return Ok(Arc::new(store.with_automatic_cleanup(true)));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let prefix = parsed.path().trim_matches('/').to_string();
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "s3" | "s3a" => Arc::new(
            AmazonS3Builder::from_env()
                .with_url(url)
                .with_retry(retry())
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), CONNECT_TIMEOUT)
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), REQUEST_TIMEOUT)
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ReadTimeout), READ_TIMEOUT)
                .build()
                .map_err(|e| e.to_string())?,
        ),
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .with_retry(retry())
                .with_config(GoogleConfigKey::Client(ClientConfigKey::ConnectTimeout), CONNECT_TIMEOUT)
                .with_config(GoogleConfigKey::Client(ClientConfigKey::Timeout), REQUEST_TIMEOUT)
                .with_config(GoogleConfigKey::Client(ClientConfigKey::ReadTimeout), READ_TIMEOUT)
                .build()
                .map_err(|e| e.to_string())?,
        ),
        "az" | "azure" | "abfs" | "abfss" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .with_retry(retry())
                .with_config(AzureConfigKey::Client(ClientConfigKey::ConnectTimeout), CONNECT_TIMEOUT)
                .with_config(AzureConfigKey::Client(ClientConfigKey::Timeout), REQUEST_TIMEOUT)
                .with_config(AzureConfigKey::Client(ClientConfigKey::ReadTimeout), READ_TIMEOUT)
                .build()
                .map_err(|e| e.to_string())?,
        ),
        // WebDAV: the URL is the folder itself.
        "http" | "https" => {
            return Ok(Arc::new(
                HttpBuilder::new()
                    .with_url(url)
                    .with_retry(retry())
                    .with_config(ClientConfigKey::ConnectTimeout, CONNECT_TIMEOUT)
                    .with_config(ClientConfigKey::Timeout, REQUEST_TIMEOUT)
                    .with_config(ClientConfigKey::ReadTimeout, READ_TIMEOUT)
                    .with_config(ClientConfigKey::AllowHttp, "true")
                    .build()
                    .map_err(|e| e.to_string())?,
            ))
        }
        other => return Err(format!("unsupported scheme `{other}://` (s3, gs, az, https, or a folder)")),
    };
    // The bucket is the host; what follows is a folder within it.
    Ok(if prefix.is_empty() { store } else { Arc::new(PrefixStore::new(store, prefix)) })
}
