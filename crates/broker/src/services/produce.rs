//! `runnel.v1.ProduceService`: `Produce`, `ProduceStream` and `InitProducer`, over the
//! produce operations of [`crate::broker::produce`].
//!
//! A unary `Produce` runs the write and finish stages in turn; a `ProduceStream` writes
//! requests in the order received and finishes them in that order on a second task, so
//! appends of later requests overlap the fsyncs of earlier ones. Quotas delay the answer of
//! a `Produce`, and the reading of the next request of a `ProduceStream`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use runnel_proto::pb::{self, produce_service_server::ProduceService};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Request, Response, Status, Streaming};

use super::access::{Protected as _, access, authorized};
use super::caller::caller;
use super::{finish, rpc_done, status};
use crate::broker::Broker;
use crate::broker::budget::kib;
use crate::broker::produce::Written;
use crate::error::RpcError;
use crate::quotas::Quota;

/// The produce service.
#[derive(Debug, Clone)]
pub struct Produce {
    broker: Arc<Broker>,
}

impl Produce {
    pub(crate) fn new(broker: Arc<Broker>) -> Self {
        Produce { broker }
    }
}

/// What the reader of a `ProduceStream` hands to its responder, in stream order.
enum Step {
    /// A request that went through the write stage (or failed as a whole).
    Request(Result<Written, (u64, RpcError)>, StreamPermits),
    /// The stream must end with this status after the answers before it.
    End(Status),
}

/// The per-stream in-flight permits of one request, released once it is answered.
struct StreamPermits {
    _count: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::ProduceResponse, Status>> + Send>>;

/// The batch bytes of a produce request.
fn batch_bytes(req: &pb::ProduceRequest) -> u64 {
    req.partitions
        .iter()
        .flat_map(|e| e.batches.iter())
        .map(|b| b.len() as u64)
        .sum()
}

#[tonic::async_trait]
impl ProduceService for Produce {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let started = Instant::now();
        let b = &self.broker;
        let caller = caller(request.extensions(), &b.quotas);
        let (_, req) = match authorized(request) {
            Ok(authorized) => authorized,
            Err(e) => return finish("Produce", started, Err(e)),
        };
        let size = batch_bytes(&req);
        let result = match b.produce_write(req).await {
            Ok(written) => Ok(b.produce_finish(written).await),
            Err(e) => Err(e),
        };
        b.quotas.pace(&caller, Quota::ProduceBytes, size).await;
        finish("Produce", started, result)
    }

    type ProduceStreamStream = ResponseStream;

    // Served by `produce_http` in the running broker; kept for the trait.
    async fn produce_stream(
        &self,
        request: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let (_, extensions, inbound) = request.into_parts();
        produce_stream(self.broker.clone(), &extensions, inbound).map(Response::new)
    }

    async fn init_producer(
        &self,
        request: Request<pb::InitProducerRequest>,
    ) -> Result<Response<pb::InitProducerResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (_, req) = authorized(request)?;
            self.broker
                .init_producer(req.producer_id, req.producer_epoch)
                .await
        }
        .await
        .map(|(id, epoch)| pb::InitProducerResponse {
            producer_id: id,
            producer_epoch: i32::from(epoch),
        });
        finish("InitProducer", started, result)
    }
}

/// Serves a `ProduceStream` call of the caller in `extensions` (authenticated by the
/// [`CallerLayer`](super::caller::CallerLayer)): reads the requests of `inbound` and returns
/// the stream of their answers. The generated service's route and the one that reads the
/// requests from their HTTP/2 frames (`produce_http`) both come here.
pub(crate) fn produce_stream<S>(
    broker: Arc<Broker>,
    extensions: &tonic::Extensions,
    mut inbound: S,
) -> Result<ResponseStream, Status>
where
    S: Stream<Item = Result<pb::ProduceRequest, Status>> + Send + Unpin + 'static,
{
    let started = Instant::now();
    if let Err(e) = broker.check_running() {
        return finish("ProduceStream", started, Err(e)).map(Response::into_inner);
    }
    let limits = &broker.config.limits;
    let max_in_flight = limits.produce_stream_max_in_flight as usize;
    let max_kib = kib(limits.produce_stream_max_in_flight_bytes);
    let count = Arc::new(Semaphore::new(max_in_flight));
    // validate() keeps the byte limit below 2^40, so KiB fit a semaphore.
    let bytes = Arc::new(Semaphore::new(max_kib as usize));
    let (steps_tx, mut steps_rx) = mpsc::channel::<Step>(max_in_flight);
    let (out_tx, out_rx) = mpsc::channel(max_in_flight);
    let caller = caller(extensions, &broker.quotas);
    let access = match access(extensions) {
        Ok(access) => access,
        Err(e) => return finish("ProduceStream", started, Err(e)).map(Response::into_inner),
    };
    let mut seen = access.revision();

    // Reader: reads a request only while fewer than the limits are unanswered, and runs
    // the write stage in stream order.
    let reader_broker = broker.clone();
    tokio::spawn(async move {
        let b = reader_broker;
        let shutdown = b.shutdown.clone();
        loop {
            let count_permit = tokio::select! {
                biased;
                () = shutdown.wait() => break,
                p = count.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let message = tokio::select! {
                biased;
                () = shutdown.wait() => break,
                m = inbound.next() => m,
            };
            let req = match message {
                Some(Ok(req)) => req,
                None => return,
                Some(Err(status)) => {
                    let _ = steps_tx.send(Step::End(status::inbound(status))).await;
                    return;
                }
            };
            let size = batch_bytes(&req);
            let want = kib(size).min(max_kib) as u32;
            let bytes_permit = tokio::select! {
                biased;
                () = shutdown.wait() => break,
                p = bytes.clone().acquire_many_owned(want) => p.ok(),
            };
            let id = req.request_id;
            // Credentials revoked or expired end the stream; each request is authorized
            // on its own, and a denied one is answered inline.
            if let Err(e) = access.revalidate(&mut seen) {
                let _ = steps_tx.send(Step::End(e.status())).await;
                return;
            }
            let written = match req.authorize(&access) {
                Ok(()) => b.produce_write(req).await.map_err(|e| (id, e)),
                Err(e) => Err((id, e)),
            };
            let permits = StreamPermits {
                _count: count_permit,
                _bytes: bytes_permit,
            };
            if steps_tx
                .send(Step::Request(written, permits))
                .await
                .is_err()
            {
                return;
            }
            // Over a quota, the next request is read later (answers go on meanwhile).
            let delay = b
                .quotas
                .charge(&caller, Quota::Requests, 1)
                .max(b.quotas.charge(&caller, Quota::ProduceBytes, size));
            if !delay.is_zero() {
                tokio::select! {
                    biased;
                    () = shutdown.wait() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        // Shutdown: stop reading; the requests already read are answered first.
        let _ = steps_tx
            .send(Step::End(RpcError::shutting_down().status()))
            .await;
    });

    // Responder: finishes requests in stream order and sends their responses.
    tokio::spawn(async move {
        let b = broker;
        let mut code = Code::Ok;
        while let Some(step) = steps_rx.recv().await {
            match step {
                Step::Request(written, permits) => {
                    let response = match written {
                        Ok(w) => b.produce_finish(w).await,
                        Err((request_id, e)) => pb::ProduceResponse {
                            request_id,
                            results: Vec::new(),
                            error: Some(e.to_pb()),
                        },
                    };
                    if out_tx.send(Ok(response)).await.is_err() {
                        code = Code::Cancelled;
                        break;
                    }
                    drop(permits);
                }
                Step::End(status) => {
                    code = status.code();
                    let _ = out_tx.send(Err(status)).await;
                    break;
                }
            }
        }
        rpc_done("ProduceStream", code, started);
    });
    Ok(Box::pin(ReceiverStream::new(out_rx)) as ResponseStream)
}
