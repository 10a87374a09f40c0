//! The tools around runs: `pipe bench` with its bare-loop baselines, `pipe generate`
//! (deterministic sample data), `pipe new` (stage scaffolding) and `pipe test`
//! (declarative pipeline tests).

pub mod bench;
pub mod generate;
pub mod scaffold;
pub mod testfile;
