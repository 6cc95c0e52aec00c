//! An in-process broker on `127.0.0.1:0` with a temporary data directory, and helpers to
//! build batches and check error statuses.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use runnel_broker::Config;
use runnel_proto::pb::{
    self, admin_service_client::AdminServiceClient, consume_service_client::ConsumeServiceClient,
    group_service_client::GroupServiceClient, produce_service_client::ProduceServiceClient,
};
use runnel_storage::batch::BatchBuilder;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Bounds every wait in the tests so a bug hangs nothing; never an assertion on speed.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A broker running in this process.
pub struct TestBroker {
    addr: std::net::SocketAddr,
    pub config: Config,
    dir: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), runnel_broker::Error>>>,
    pub channel: Channel,
}

/// A config for tests: the given data directory, metrics off, short deadlines.
pub fn test_config(data_dir: &Path) -> Config {
    let mut c = Config {
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    c.metrics.enabled = false;
    c.shutdown.deadline_ms = 5_000;
    c
}

impl TestBroker {
    /// Starts a broker with the default test config.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker after `tweak` adjusts the test config.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        tweak(&mut config);
        Self::launch(config, Some(dir)).await
    }

    async fn launch(config: Config, dir: Option<TempDir>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(runnel_broker::run(config.clone(), listener, async move {
            let _ = stopped.await;
        }));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(PATIENCE)
            .connect_lazy();
        TestBroker {
            addr,
            config,
            dir,
            stop: Some(stop),
            task: Some(task),
            channel,
        }
    }

    /// The gRPC address.
    pub fn channel_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    pub fn produce(&self) -> ProduceServiceClient<Channel> {
        ProduceServiceClient::new(self.channel.clone())
    }

    pub fn consume(&self) -> ConsumeServiceClient<Channel> {
        ConsumeServiceClient::new(self.channel.clone())
    }

    pub fn groups(&self) -> GroupServiceClient<Channel> {
        GroupServiceClient::new(self.channel.clone())
    }

    /// A channel on a connection of its own (a separate client process, in effect).
    pub fn new_channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect_timeout(PATIENCE)
            .connect_lazy()
    }

    /// Begins shutdown without waiting for it.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts the broker down and waits for `run` to return; returns its data directory.
    pub async fn stop(mut self) -> (Config, Option<TempDir>) {
        self.signal_stop();
        let task = self.task.take().expect("running");
        let result = tokio::time::timeout(PATIENCE, task)
            .await
            .expect("run returns within the patience")
            .expect("run does not panic");
        result.expect("run ends cleanly");
        (self.config.clone(), self.dir.take())
    }

    /// Stops and starts again on the same data directory (a new port).
    pub async fn restart(self) -> Self {
        let (config, dir) = self.stop().await;
        Self::launch(config, dir).await
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// Waits for `f`, failing the test if it takes longer than [`PATIENCE`].
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("finished within the patience")
}

/// A batch of `n` records `key-i` / `value-i` with timestamps from `ts`.
pub fn batch(n: u32, ts: i64) -> Bytes {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b.push(
            Some(format!("key-{i}").as_bytes()),
            Some(format!("value-{i}").as_bytes()),
            &[],
            ts + i64::from(i),
        );
    }
    b.build()
}

/// An idempotent batch of `n` records.
pub fn idempotent_batch(n: u32, id: i64, epoch: i16, seq: i32) -> Bytes {
    let mut b = BatchBuilder::new();
    b.producer(id, epoch, seq);
    for i in 0..n {
        b.push(
            None,
            Some(format!("v{seq}-{i}").as_bytes()),
            &[],
            1_000 + i64::from(i),
        );
    }
    b.build()
}

/// Creates a topic with `partitions` partitions and default config.
pub async fn create_topic(b: &TestBroker, topic: &str, partitions: u32) {
    b.admin()
        .create_topic(pb::CreateTopicRequest {
            topic: topic.into(),
            partition_count: partitions,
            config: None,
        })
        .await
        .expect("create topic");
}

/// A produce entry for one partition.
pub fn entry(partition: u32, batches: Vec<Bytes>) -> pb::ProducePartition {
    pb::ProducePartition {
        partition: Some(partition),
        partition_key: None,
        batches,
    }
}

/// Produces batches to one partition and returns the result of the entry.
pub async fn produce(
    b: &TestBroker,
    topic: &str,
    partition: u32,
    batches: Vec<Bytes>,
) -> pb::ProducePartitionResult {
    let resp = b
        .produce()
        .produce(pb::ProduceRequest {
            request_id: 1,
            topic: topic.into(),
            acks: pb::Acks::Written as i32,
            partitions: vec![entry(partition, batches)],
        })
        .await
        .expect("produce")
        .into_inner();
    resp.results.into_iter().next().expect("one result")
}

/// Asserts a failed RPC's gRPC code, Runnel code (trailer) and that its message contains
/// `needle`.
pub fn assert_status(
    status: &tonic::Status,
    code: tonic::Code,
    runnel: pb::ErrorCode,
    needle: &str,
) {
    assert_eq!(status.code(), code, "status: {status:?}");
    let trailer = status
        .metadata()
        .get(runnel_proto::ERROR_CODE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    assert_eq!(trailer, Some(runnel as i32), "trailer of {status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} lacks {needle:?}",
        status.message()
    );
}

/// Asserts an inline error's code and message.
pub fn assert_inline(error: Option<&pb::Error>, runnel: pb::ErrorCode, needle: &str) {
    let e = error.expect("an inline error");
    assert_eq!(e.code, runnel as i32, "inline error {e:?}");
    assert!(
        e.message.contains(needle),
        "message {:?} lacks {needle:?}",
        e.message
    );
}

/// Reads a partition from `offset` to its end with `Fetch`; returns the batches.
pub async fn fetch_all(b: &TestBroker, topic: &str, partition: u32, mut offset: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    loop {
        let r = b
            .consume()
            .fetch(pb::FetchRequest {
                partitions: vec![pb::FetchPartition {
                    topic: topic.into(),
                    partition,
                    offset,
                    max_bytes: 0,
                }],
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 0,
            })
            .await
            .expect("fetch")
            .into_inner();
        let r = r.results.into_iter().next().expect("one result");
        assert!(r.error.is_none(), "fetch error {:?}", r.error);
        if r.batches.is_empty() {
            return out;
        }
        offset = r.next_offset;
        out.extend(r.batches);
    }
}
