//! Integration tests of pier-store, one binary (link once) with one module per behaviour.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod store {
    pub mod common;
    mod conformance;
    mod crash;
    mod figures;
    mod format;
    mod proptests;
    mod reclaim;
    mod shards;
}
