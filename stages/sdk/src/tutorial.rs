//! Writing a stage, start to finish.
//!
//! TODO
