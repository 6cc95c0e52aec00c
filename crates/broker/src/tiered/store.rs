//! The object store: built from `[remote_storage]`, and probed at start so that a bad
//! setting fails the start with one line naming it, not the first upload.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as Key;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion,
};

use super::error::one_line;
use crate::config::RemoteStorageSettings;
use crate::error::Error;

/// Builds the S3 client. Requests are signed with the configured keys, or the standard
/// `AWS_*` environment variables for those left empty.
///
/// # Errors
/// [`Error::Config`] naming the setting the client refuses.
pub fn build(s: &RemoteStorageSettings) -> Result<Arc<dyn ObjectStore>, Error> {
    // reqwest is built without a crypto provider of its own: rustls uses the process default,
    // ring, as the gRPC listener does. Installing it twice is harmless.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&s.bucket)
        .with_region(&s.region)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_client_options(
            ClientOptions::new()
                .with_timeout(Duration::from_millis(s.request_timeout_ms))
                .with_connect_timeout(Duration::from_millis(s.request_timeout_ms.min(10_000)))
                .with_allow_http(s.endpoint.starts_with("http://")),
        )
        // Runnel retries uploads itself, with its own backoff; a read fails fast so that a
        // consumer hears UNAVAILABLE instead of waiting minutes.
        .with_retry(RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_millis(s.request_timeout_ms),
            ..RetryConfig::default()
        });
    if !s.endpoint.is_empty() {
        b = b.with_endpoint(&s.endpoint);
    }
    if !s.access_key_id.is_empty() {
        b = b.with_access_key_id(&s.access_key_id);
    }
    if !s.secret_access_key.is_empty() {
        b = b.with_secret_access_key(&s.secret_access_key);
    }
    let store = b.build().map_err(|e| Error::Config {
        key: "remote_storage".into(),
        reason: one_line(&e),
    })?;
    Ok(Arc::new(store))
}

/// Checks that the store is reachable, takes the credentials, holds the bucket, and honours
/// conditional writes (create-only, and update-if-ETag), which manifests depend on: writes
/// one probe object twice create-only (the second must be refused), once with a wrong ETag
/// (refused too) and once with the right one, then deletes it.
///
/// # Errors
/// [`Error::Config`] naming the setting at fault and what the store answered.
pub async fn probe(
    store: &dyn ObjectStore,
    s: &RemoteStorageSettings,
    id: &str,
) -> Result<(), Error> {
    let key = probe_key(s, id);
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let first = store
        .put_opts(&key, payload("probe 1"), create.clone())
        .await;
    let first = match first {
        Ok(r) => r,
        // A probe left by a crash of this broker: start over.
        Err(object_store::Error::AlreadyExists { .. }) => {
            store.delete(&key).await.map_err(|e| unreachable(s, &e))?;
            store
                .put_opts(&key, payload("probe 1"), create.clone())
                .await
                .map_err(|e| unreachable(s, &e))?
        }
        Err(e) => return Err(unreachable(s, &e)),
    };
    let ignored = |what: &str| Error::Config {
        key: "remote_storage.endpoint".into(),
        reason: format!(
            "{} does not honour conditional writes ({what} was accepted); Runnel needs them \
             to keep two brokers from writing one partition's manifest (docs/tiered-storage.md)",
            endpoint_name(s)
        ),
    };
    match store.put_opts(&key, payload("probe 2"), create).await {
        Err(object_store::Error::AlreadyExists { .. }) => {}
        Ok(_) => return Err(ignored("a create-only write over an existing object")),
        Err(e) => return Err(unreachable(s, &e)),
    }
    let stale = PutOptions {
        mode: PutMode::Update(UpdateVersion {
            e_tag: Some("\"runnel-stale-etag\"".into()),
            version: None,
        }),
        ..PutOptions::default()
    };
    match store.put_opts(&key, payload("probe 3"), stale).await {
        Err(object_store::Error::Precondition { .. }) => {}
        Ok(_) => return Err(ignored("a write with a stale ETag")),
        Err(e) => return Err(unreachable(s, &e)),
    }
    let fresh = PutOptions {
        mode: PutMode::Update(UpdateVersion {
            e_tag: first.e_tag,
            version: first.version,
        }),
        ..PutOptions::default()
    };
    match store.put_opts(&key, payload("probe 4"), fresh).await {
        Ok(_) => {}
        Err(object_store::Error::Precondition { .. }) => {
            return Err(ignored_etag(s));
        }
        Err(e) => return Err(unreachable(s, &e)),
    }
    store.delete(&key).await.map_err(|e| unreachable(s, &e))
}

fn ignored_etag(s: &RemoteStorageSettings) -> Error {
    Error::Config {
        key: "remote_storage.endpoint".into(),
        reason: format!(
            "{} refused a write with the ETag it had just returned; Runnel needs \
             update-if-ETag writes for manifests (docs/tiered-storage.md)",
            endpoint_name(s)
        ),
    }
}

fn probe_key(s: &RemoteStorageSettings, id: &str) -> Key {
    let prefix = s.prefix.trim_end_matches('/');
    if prefix.is_empty() {
        Key::from(format!("probes/{id}"))
    } else {
        Key::from(format!("{prefix}/probes/{id}"))
    }
}

fn payload(text: &'static str) -> PutPayload {
    PutPayload::from(Bytes::from_static(text.as_bytes()))
}

fn endpoint_name(s: &RemoteStorageSettings) -> String {
    if s.endpoint.is_empty() {
        format!("AWS S3 ({})", s.region)
    } else {
        s.endpoint.clone()
    }
}

/// The setting most likely at fault for a failed request, and the store's answer.
fn unreachable(s: &RemoteStorageSettings, e: &object_store::Error) -> Error {
    let text = one_line(e);
    let (key, why) = match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => (
            "remote_storage.secret_access_key",
            "the store refused the credentials",
        ),
        _ if text.contains("NoSuchBucket") || text.contains("bucket does not exist") => {
            ("remote_storage.bucket", "the bucket does not exist")
        }
        _ if text.contains("InvalidAccessKeyId")
            || text.contains("SignatureDoesNotMatch")
            || text.contains("AccessDenied")
            || text.contains("403") =>
        {
            (
                "remote_storage.secret_access_key",
                "the store refused the credentials",
            )
        }
        _ => (
            "remote_storage.endpoint",
            "the store did not answer as an S3-compatible store",
        ),
    };
    Error::Config {
        key: key.into(),
        reason: format!(
            "{why}: bucket {:?} at {}: {text}",
            s.bucket,
            endpoint_name(s)
        ),
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    fn settings() -> RemoteStorageSettings {
        RemoteStorageSettings {
            bucket: "b".into(),
            prefix: "p".into(),
            ..RemoteStorageSettings::default()
        }
    }

    #[tokio::test]
    async fn an_honest_store_passes_the_probe_and_keeps_no_probe_object() {
        let store = InMemory::new();
        probe(&store, &settings(), "broker-a").await.unwrap();
        probe(&store, &settings(), "broker-a").await.unwrap();
        assert!(
            store
                .head(&probe_key(&settings(), "broker-a"))
                .await
                .is_err()
        );
    }

    /// A store that takes every write as an overwrite, as some S3 servers do.
    #[derive(Debug)]
    struct IgnoresConditions(InMemory);

    impl std::fmt::Display for IgnoresConditions {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "IgnoresConditions")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for IgnoresConditions {
        async fn put_opts(
            &self,
            location: &Key,
            payload: PutPayload,
            _opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.0
                .put_opts(location, payload, PutOptions::default())
                .await
        }

        async fn put_multipart_opts(
            &self,
            location: &Key,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &Key,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: futures_util::stream::BoxStream<'static, object_store::Result<Key>>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<Key>> {
            self.0.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&Key>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&Key>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &Key,
            to: &Key,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_store_that_ignores_conditional_writes_is_refused_naming_the_endpoint() {
        let store = IgnoresConditions(InMemory::new());
        let err = probe(&store, &settings(), "broker-a").await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("remote_storage.endpoint"), "{text}");
        assert!(
            text.contains("does not honour conditional writes"),
            "{text}"
        );
        assert!(
            text.contains("a create-only write over an existing object"),
            "{text}"
        );
    }

    #[test]
    fn build_refuses_nothing_it_can_check_only_by_asking() {
        let s = RemoteStorageSettings {
            endpoint: "http://127.0.0.1:1".into(),
            access_key_id: "a".into(),
            secret_access_key: "s".into(),
            ..settings()
        };
        assert!(build(&s).is_ok());
    }
}
