//! The web console on the metrics port: its JSON API as a script would call it, and the page
//! in a real browser (Debian's headless Chromium driven through chromedriver) as a user would
//! use it: create a topic, produce a record, find it in the message browser, see a group's
//! lag, delete the topic.
//!
//! The browser test needs `chromium` and `chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`); without them it says so and passes, unless
//! `RUNNEL_BROWSER_TESTS=required` (set by `.ci/run`) makes it fail.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use runnel_proto::pb;
use serde_json::{Value, json};

use crate::harness::*;

/// One HTTP/1.1 request to `addr`; returns the status and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP port");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn the_console_api_creates_produces_reads_and_reports_errors_as_json() {
    let b = Broker::start().await;
    let at = b.metrics;
    let (status, page) = http(at, "GET", "/", None);
    assert_eq!(status, 200);
    assert!(page.contains("<title>Runnel console</title>"), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    let (status, body) = http(
        at,
        "POST",
        "/api/topics",
        Some(&json!({"topic": "orders", "partitions": 2})),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(json_of(&body)["partition_count"], 2);
    let (status, body) = http(
        at,
        "POST",
        "/api/topics",
        Some(&json!({"topic": "orders", "partitions": 2})),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(json_of(&body)["code"], "TOPIC_EXISTS");

    let record = json!({"partition": 1, "key": "k", "value": "{\"id\": 7}",
        "headers": [{"name": "source", "value": "test"}, {"name": "empty", "value": null}]});
    let (status, body) = http(at, "POST", "/api/topics/orders/messages", Some(&record));
    assert_eq!(status, 201, "{body}");
    assert_eq!(json_of(&body)["offset"], 0);
    // A binary value written over gRPC comes back as base64.
    let mut bb = runnel_format::BatchBuilder::new();
    bb.push(None, Some(&[0xff, 0x1b, 0x00][..]), &[], 5);
    produce(&b, "orders", 1, vec![bb.build()]).await;

    let (status, body) = http(
        at,
        "GET",
        "/api/topics/orders/messages?partition=1&offset=0",
        None,
    );
    assert_eq!(status, 200, "{body}");
    let read = json_of(&body);
    let records = read["records"].as_array().expect("records");
    assert_eq!(records.len(), 2, "{read}");
    assert_eq!(records[0]["key"], json!({"text": "k"}));
    assert_eq!(records[0]["value"], json!({"text": "{\"id\": 7}"}));
    assert_eq!(
        records[0]["headers"],
        json!([{"name": "source", "value": {"text": "test"}}, {"name": "empty", "value": null}])
    );
    assert_eq!(records[1]["key"], Value::Null);
    assert_eq!(records[1]["value"], json!({"base64": "/xsA"}));
    // By time: the first batch at or after it.
    let (_, body) = http(
        at,
        "GET",
        "/api/topics/orders/messages?partition=1&time_ms=0",
        None,
    );
    assert_eq!(json_of(&body)["from"], 0);

    let (status, body) = http(at, "GET", "/api/topics/nope/messages", None);
    assert_eq!(status, 404, "{body}");
    assert_eq!(json_of(&body)["code"], "UNKNOWN_TOPIC");
    let (status, body) = http(at, "GET", "/api/topics/orders/messages?limit=501", None);
    assert_eq!(status, 400, "{body}");
    assert!(
        json_of(&body)["error"]
            .as_str()
            .unwrap_or("")
            .contains("limit"),
        "{body}"
    );
    let (status, body) = http(
        at,
        "POST",
        "/api/topics",
        Some(&json!({"topic": "bad name!", "partitions": 1})),
    );
    assert_eq!(status, 400, "{body}");

    let (status, body) = http(at, "GET", "/api/topics", None);
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["topics"][0]["records"], 2, "{body}");
    let (status, body) = http(at, "GET", "/api/broker", None);
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["topics"], 1, "{body}");
    let (status, _) = http(at, "DELETE", "/api/topics/orders", None);
    assert_eq!(status, 204);
    assert!(
        b.admin()
            .list_topics(pb::ListTopicsRequest {})
            .await
            .unwrap()
            .into_inner()
            .topics
            .is_empty()
    );

    // A name other than localhost (DNS rebinding) is refused.
    let mut rebound = TcpStream::connect(at).expect("connect");
    rebound.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(
        rebound,
        "GET /api/topics HTTP/1.1\r\nHost: evil.example:7172\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    rebound.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains("evil.example"), "{response}");

    // The metrics are still where Prometheus looks.
    let (status, metrics) = http(at, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(metrics.contains("runnel_build_info"), "{metrics}");
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts chromedriver, or says why not (and fails if browser tests are required).
    fn start() -> Option<Self> {
        let found = ["chromedriver", "chromium"].map(on_path);
        let [Some(driver), Some(_)] = found else {
            let required = std::env::var("RUNNEL_BROWSER_TESTS").is_ok_and(|v| v == "required");
            let why = "the console's browser test needs chromium and chromedriver on PATH \
                       (Debian: apt-get install chromium chromium-driver)";
            assert!(!required, "{why}");
            eprintln!("SKIPPED: {why}");
            return None;
        };
        let port = free_addr().port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = std::time::Instant::now() + PATIENCE;
        while TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Driver {
            child,
            url: format!("http://{addr}"),
        })
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": on_path("chromium").expect("chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Waits for the element `css`, then for its text to hold `needle`.
async fn text_of(c: &Client, css: &str, needle: &str) -> String {
    within(async {
        loop {
            if let Ok(e) = c.find(Locator::Css(css)).await
                && let Ok(text) = e.text().await
                && text.contains(needle)
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

async fn click(c: &Client, css: &str) {
    let e = within(c.wait().for_element(Locator::Css(css)))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let e = within(c.wait().for_element(Locator::Css(css)))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_user_creates_a_topic_produces_finds_the_record_and_sees_lag() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let b = Broker::start().await;
    // A group 3 records behind on payments/0.
    create_topic(&b, "payments", 1).await;
    produce(&b, "payments", 0, vec![batch_of("pay", 0, 5)]).await;
    let committed = b
        .groups()
        .commit_offsets(pb::CommitOffsetsRequest {
            group: "billing".into(),
            member_id: String::new(),
            member_epoch: 0,
            offsets: vec![pb::OffsetCommit {
                topic: "payments".into(),
                partition: 0,
                offset: 2,
                metadata: String::new(),
            }],
        })
        .await
        .expect("commit")
        .into_inner();
    assert!(committed.results[0].error.is_none(), "{committed:?}");

    let c = driver.browser().await;
    let console = format!("http://{}/", b.metrics);
    c.goto(&console).await.expect("open the console");

    // Create a topic.
    type_into(&c, "#new-topic-name", "orders").await;
    type_into(&c, "#new-topic-partitions", "2").await;
    click(&c, "#create-topic button[type=submit]").await;
    text_of(&c, "#notice", "Created topic orders").await;
    text_of(&c, "#topics tr[data-topic=orders]", "orders").await;

    // Produce a record from its page, and find it in the message browser.
    click(&c, "#topics tr[data-topic=orders] a").await;
    text_of(&c, "#partitions", "Partition").await;
    type_into(&c, "#produce-key", "order-42").await;
    type_into(&c, "#produce-value", "{\"id\":42,\"item\":\"book\"}").await;
    type_into(&c, "#produce-headers", "source=console").await;
    click(&c, "#produce button[type=submit]").await;
    text_of(&c, "#notice", "Produced to partition 0 at offset 0").await;
    let row = text_of(&c, "#records tr[data-offset='0']", "order-42").await;
    // The partitions' offsets are those after the append.
    text_of(&c, "#partitions tbody tr:first-child", "0 0 1 1").await;
    assert!(
        row.contains("\"item\": \"book\""),
        "pretty-printed JSON: {row}"
    );
    assert!(row.contains("source:"), "headers: {row}");
    // The record is real: read over gRPC.
    let stored = values(&fetch_all(&b, "orders", 0, 0).await, 0);
    assert_eq!(stored, ["{\"id\":42,\"item\":\"book\"}"]);
    // From an offset, in the browser.
    c.find(Locator::Css("#browse-from"))
        .await
        .expect("from")
        .select_by_value("offset")
        .await
        .expect("select");
    type_into(&c, "#browse-offset", "0").await;
    click(&c, "#browse button[type=submit]").await;
    text_of(&c, "#messages", "from offset 0: 1 records").await;
    let shot = c.screenshot().await.expect("screenshot");
    let _ = std::fs::write(workspace_root().join("target/console-topic.png"), shot);

    // The group's lag, in records and seconds.
    click(&c, "#nav-groups").await;
    click(&c, "#groups tr[data-group=billing] a").await;
    let lag = text_of(&c, "#lag tr[data-partition='payments/0']", "payments").await;
    let cells: Vec<&str> = lag.split_whitespace().collect();
    assert_eq!(cells[..5], ["payments", "0", "2", "5", "3"], "{lag}");
    assert!(cells[5].parse::<f64>().is_ok(), "lag in seconds: {lag}");
    let shot = c.screenshot().await.expect("screenshot");
    let _ = std::fs::write(workspace_root().join("target/console-groups.png"), shot);

    // Delete the topic, confirming.
    click(&c, "#nav-topics").await;
    click(&c, "#topics tr[data-topic=orders] button").await;
    within(async {
        while c.accept_alert().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    text_of(&c, "#notice", "Deleted topic orders").await;
    let topics = b
        .admin()
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        topics
            .topics
            .iter()
            .map(|t| t.topic.as_str())
            .collect::<Vec<_>>(),
        ["payments"]
    );
    c.close().await.expect("close the browser");
}
