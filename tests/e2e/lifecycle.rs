//! The broker's life: many records across partitions and restarts, SIGTERM under load, and
//! kill -9. Nothing acknowledged is ever lost.

use std::collections::BTreeMap;

use runnel_proto::pb::{self, ErrorCode};
use tokio_stream::StreamExt as _;

use crate::harness::*;

const PARTITIONS: u32 = 4;
const PER_PARTITION: u64 = 25_000;
const PER_BATCH: u64 = 500;

#[tokio::test]
async fn a_hundred_thousand_records_survive_a_restart_in_order() {
    let b = Broker::start().await;
    create_topic(&b, "events", PARTITIONS).await;

    // Pipelined on one ProduceStream: 200 requests of 500 records, round over the partitions.
    let mut requests = Vec::new();
    for chunk in 0..PER_PARTITION / PER_BATCH {
        for p in 0..PARTITIONS {
            requests.push(pb::ProduceRequest {
                request_id: requests.len() as u64,
                topic: "events".into(),
                acks: pb::Acks::Written as i32,
                partitions: vec![entry(
                    p,
                    vec![batch_of(&format!("p{p}"), chunk * PER_BATCH, PER_BATCH)],
                )],
            });
        }
    }
    let total = requests.len();
    let mut responses = b
        .produce()
        .produce_stream(tokio_stream::iter(requests))
        .await
        .expect("produce stream")
        .into_inner();
    let mut answered = 0;
    while let Some(r) = within(responses.next()).await {
        let r = r.expect("response");
        assert_eq!(r.request_id, answered as u64);
        assert!(r.error.is_none() && r.results[0].error.is_none(), "{r:?}");
        answered += 1;
    }
    assert_eq!(answered, total);

    let mut b = b;
    let status = b.sigterm();
    assert!(status.success(), "exit status {status}:\n{}", b.log_text());
    for p in 0..PARTITIONS {
        let marker =
            runnel_storage::partition_dir(&b.data_dir, "events", p).join(".clean-shutdown");
        assert!(marker.exists(), "partition {p} closed cleanly");
    }
    let b = b.start_again().await;

    let mut count = 0;
    for p in 0..PARTITIONS {
        let got = values(&fetch_all(&b, "events", p, 0).await, 0);
        assert_eq!(got.len() as u64, PER_PARTITION, "partition {p}");
        for (i, v) in got.iter().enumerate() {
            assert_eq!(v, &format!("p{p}-{i}"), "partition {p} offset {i}");
        }
        count += got.len();
    }
    assert_eq!(count, 100_000);
    let d = describe_topic(&b, "events").await;
    assert!(
        d.partitions
            .iter()
            .all(|p| p.log_end_offset == PER_PARTITION)
    );
}

#[tokio::test]
async fn sigterm_under_load_loses_nothing_acknowledged() {
    let mut b = Broker::start().await;
    create_topic(&b, "t", 2).await;
    let mut subscription = subscribe(&b, "t", 0, None).await;
    within(subscription.next()).await.unwrap().unwrap();

    // Two producers write until the broker stops answering; every acknowledged batch is
    // remembered with its offset.
    let mut producers = Vec::new();
    for p in 0..2u32 {
        let mut client = pb::produce_service_client::ProduceServiceClient::new(b.new_channel());
        producers.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            for i in 0u64.. {
                let r = client
                    .produce(pb::ProduceRequest {
                        request_id: i,
                        topic: "t".into(),
                        acks: pb::Acks::Written as i32,
                        partitions: vec![entry(p, vec![batch_of(&format!("p{p}"), i * 10, 10)])],
                    })
                    .await;
                match r {
                    Ok(r) => {
                        let r = r.into_inner().results.remove(0);
                        assert!(r.error.is_none(), "{r:?}");
                        acked.insert(r.batches[0].base_offset, i);
                    }
                    Err(_) => return acked,
                }
            }
            acked
        }));
    }
    // Let some traffic through, then stop the broker in the middle of it.
    within(async {
        loop {
            let d = describe_topic(&b, "t").await;
            if d.partitions.iter().all(|p| p.log_end_offset >= 500) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    b.signal("TERM");
    // The subscriber gets the batches appended so far, then the shutdown status.
    let e = within(async {
        loop {
            match subscription.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return e,
                None => panic!("the stream ended without a status"),
            }
        }
    })
    .await;
    assert_status(&e, ErrorCode::BrokerShuttingDown, "shutting down");
    let status = b.wait_exit();
    assert!(status.success(), "exit status {status}:\n{}", b.log_text());
    let mut acked = Vec::new();
    for t in producers {
        acked.push(within(t).await.unwrap());
    }
    assert!(b.log_text().contains("runneld stopped"));

    let b = b.start_again().await;
    for (p, acked) in acked.iter().enumerate() {
        let got = values(&fetch_all(&b, "t", p as u32, 0).await, 0);
        assert!(!acked.is_empty());
        for (&offset, &i) in acked {
            assert_eq!(
                got.get(offset as usize),
                Some(&format!("p{p}-{}", i * 10)),
                "acknowledged batch {i} at offset {offset} of partition {p}"
            );
        }
    }
}

#[tokio::test]
async fn kill_9_loses_nothing_acknowledged() {
    let mut b = Broker::start().await;
    create_topic(&b, "t", 1).await;
    let mut acked = Vec::new();
    for i in 0..200u64 {
        let r = produce(&b, "t", 0, vec![batch_of("k", i * 5, 5)]).await;
        acked.push(r.batches[0].base_offset);
    }
    b.kill9();
    let marker = runnel_storage::partition_dir(&b.data_dir, "t", 0).join(".clean-shutdown");
    assert!(
        !marker.exists(),
        "a killed broker leaves no clean-shutdown marker"
    );
    let b = b.start_again().await;
    let got = values(&fetch_all(&b, "t", 0, 0).await, 0);
    assert_eq!(got.len(), 1000);
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v, &format!("k-{i}"));
    }
    assert_eq!(acked, (0..200).map(|i| i * 5).collect::<Vec<u64>>());
}
