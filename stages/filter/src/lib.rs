//! The `filter` stage.
