//! Broker calls that may wait for a durable write (an fsync of a definition, a queue's
//! registration in the message store) run through [`storage_bound`], so that the wait does
//! not hold up the other tasks queued on the same tokio worker (AMQP channels, the
//! management API's changes on a single node).

/// Runs `f` in place; on a multi-threaded runtime, tokio first hands this worker's other
/// tasks to another worker (`block_in_place`), as it does for any blocking section.
pub fn storage_bound<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
