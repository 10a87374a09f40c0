//! The `select` stage.
