//! Test plugin `faulty`.
