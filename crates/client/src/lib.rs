//! The Runnel client library: it will offer a `Producer` (batching, key partitioning,
//! idempotence, pipelining over `ProduceStream`), a `Consumer` (`Fetch` and `Subscribe`) and an
//! `Admin` over the `runnel.v1` gRPC protocol, mapping the broker's error codes to a typed
//! error with `is_retriable()`.
//!
//! Its only contract with the broker is `proto/`, the same one any other language uses.
//! Nothing is implemented yet: the client issue fills this crate.
