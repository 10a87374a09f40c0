//! The `compute` stage.
