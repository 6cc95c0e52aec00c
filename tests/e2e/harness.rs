//! The suite's harness: [`Broker`] runs the real `runneld`, [`runnel`] finds the CLI, and the
//! helpers and the table of expected errors are those of `runnel-test-support`, shared with
//! the broker's in-process tests.

pub use runnel_test_support::prelude::*;
pub use runnel_test_support::process::*;
