//! The `dedup` stage.
