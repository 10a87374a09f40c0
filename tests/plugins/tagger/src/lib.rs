//! Test plugin `tagger`.
