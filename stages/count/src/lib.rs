//! The `count` stage.
