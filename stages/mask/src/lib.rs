//! The `mask` stage.
