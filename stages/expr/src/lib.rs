//! The expression language shared by `filter` and `compute`.
