//! The `validate` stage.
