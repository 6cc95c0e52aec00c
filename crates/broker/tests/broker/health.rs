//! The standard health service and server reflection (v1 and v1alpha), as a stock gRPC
//! tool uses them.

use runnel_proto::pb::{self, ErrorCode};
use runnel_test_support::prelude::*;
use runnel_test_support::reflection::{SERVICES, reflect_v1, reflect_v1alpha};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn health_reports_serving_for_the_broker_and_each_service() {
    let b = TestBroker::start().await;
    let mut health = HealthClient::new(b.channel());
    for service in [
        "",
        "runnel.v1.AdminService",
        "runnel.v1.ProduceService",
        "runnel.v1.ConsumeService",
        "runnel.v1.GroupService",
    ] {
        let r = within(health.check(HealthCheckRequest {
            service: service.into(),
        }))
        .await
        .unwrap()
        .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn reflection_v1_lists_and_describes_every_service() {
    let b = TestBroker::start().await;
    let symbols = [
        "runnel.v1.ProduceService",
        "grpc.health.v1.Health",
        "runnel.v1.FetchRequest",
    ];
    let r = reflect_v1(&b, &symbols).await;
    assert_eq!(r.services, SERVICES);
    assert_eq!(r.files.len(), 3);
    for files in r.files {
        assert!(!files.is_empty());
    }
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_services_too() {
    let b = TestBroker::start().await;
    let names = reflect_v1alpha(&b, &[]).await.services;
    assert!(
        names.iter().any(|n| n == "runnel.v1.ConsumeService"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
}

/// While a partition is still opening, the health check answers NOT_SERVING (it neither hangs
/// nor says SERVING) and the services BROKER_STARTING; health says SERVING once every
/// partition is open. The partition's running
/// marker is made a FIFO, so that its open blocks until the test writes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_not_serving_until_every_partition_is_open() {
    let b = TestBroker::start().await;
    create_topic(&b, "slow", 1).await;
    let (config, _dir) = b.stop().await;
    let partition = config.data_dir.join("topics/slow/0");
    // No clean-shutdown marker (a crash; a clean close renamed the running marker to it),
    // and a running marker that blocks its reader.
    std::fs::remove_file(partition.join(runnel_storage::CLEAN_SHUTDOWN_MARKER)).unwrap();
    let marker = partition.join(runnel_storage::RUNNING_MARKER);
    assert!(!marker.exists());
    let made = std::process::Command::new("mkfifo")
        .arg(&marker)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runnel_broker::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let conn = Connection::new(addr, PATIENCE);
    let mut health = HealthClient::new(conn.channel());
    for service in ["", "runnel.v1.ProduceService"] {
        let status = within(async {
            loop {
                let check = health.check(HealthCheckRequest {
                    service: service.into(),
                });
                if let Ok(r) = check.await {
                    break r.into_inner().status();
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(
            status,
            ServingStatus::NotServing,
            "{service:?} while opening"
        );
    }
    assert!(!task.is_finished());
    // The services answer, retriably, that the broker is starting.
    let e = within(conn.admin().list_topics(pb::ListTopicsRequest {}))
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::BrokerStarting,
        "partitions are still opening",
    );

    // Another boot's id unblocks the open (which then rereads the partition), and the open
    // writes this boot's id back through the FIFO: read it.
    let unblock = tokio::task::spawn_blocking(move || {
        std::fs::write(&marker, "another-boot").unwrap();
        std::fs::read_to_string(&marker).unwrap()
    });
    within(async {
        while !conn.is_serving().await {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!within(unblock).await.unwrap().is_empty(), "this boot's id");
    let topic = describe_topic(&conn, "slow").await;
    assert_eq!(topic.partitions.len(), 1);

    stop.send(()).unwrap();
    within(task).await.unwrap().unwrap();
}
