//! What the command line adds to a pipeline ([`RunOptions`]) and the fully resolved
//! [`RunPlan`] a run is started from.
//!
//! Resolution is a pure function ([`RunPlan::resolve`]), in the spirit of ripgrep's "low
//! args → high args": every default and override is decided here, once, before any
//! thread starts, so the run itself never asks "which format?" or "which file?" again,
//! and the rules are unit-tested without running anything.

use std::path::{Path, PathBuf};

use pipe_sdk::codec::Format;

use super::plan::PipelinePlan;

/// What the command line adds to a plan. `None` means "the pipeline's, else the default".
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Input files; `-` is stdin; none means stdin.
    pub inputs: Vec<String>,
    /// Output file; none means stdout.
    pub output: Option<PathBuf>,
    /// Input format override.
    pub input_format: Option<Format>,
    /// Output format override.
    pub output_format: Option<Format>,
    /// Watch plugins and config (`--no-watch` turns it off).
    pub watch: bool,
    /// Dead-letter file override.
    pub dead_letter: Option<PathBuf>,
    /// Batch size override.
    pub batch_size: Option<usize>,
    /// Worker count override for every stage (stateful stages still run one).
    pub workers: Option<usize>,
    /// Progress reporting on stderr.
    pub progress: bool,
    /// Throw the output away (for `pipe bench`).
    pub discard_output: bool,
}

/// A run, fully decided: the pipeline with the overrides applied, and where every
/// record comes from and goes to.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// The pipeline, with `--batch-size` and `--workers` applied.
    pub pipeline: PipelinePlan,
    /// Inputs in order (`-` is stdin), at least one.
    pub inputs: Vec<String>,
    /// The format of each input, same order.
    pub input_formats: Vec<Format>,
    /// The output file; `None` is stdout.
    pub output: Option<PathBuf>,
    /// The output format.
    pub output_format: Format,
    /// The dead-letter file, when one is set.
    pub dead_letter: Option<PathBuf>,
    /// Hot reload on.
    pub watch: bool,
    /// Progress on stderr.
    pub progress: bool,
    /// Throw the output away.
    pub discard_output: bool,
}

/// Options that cannot make a run (exit 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `--batch-size` out of [`bounds::BATCH_SIZE`](super::bounds::BATCH_SIZE).
    #[error(
        "--batch-size must be a whole number from {lo} to {hi}, not {0}",
        lo = super::bounds::BATCH_SIZE.0,
        hi = super::bounds::BATCH_SIZE.1
    )]
    BatchSize(usize),
    /// `--workers` out of [`bounds::WORKERS`](super::bounds::WORKERS).
    #[error(
        "--workers must be a whole number from {lo} to {hi}, not {0}",
        lo = super::bounds::WORKERS.0,
        hi = super::bounds::WORKERS.1
    )]
    Workers(usize),
    /// `-` named twice.
    #[error("stdin (`-`) can be read only once")]
    StdinTwice,
    /// Options that do not fit a pipeline reading a stream (files, `-o`).
    #[error("{0}")]
    Stream(String),
    /// A `dead-letter` policy with no file.
    #[error(
        "pipeline `{pipeline}` sends records to the dead letter, but no file is set: add \
         `dead_letter = \"rejects.jsonl\"` to the pipeline or pass --dead-letter FILE"
    )]
    NoDeadLetter {
        /// The pipeline.
        pipeline: String,
    },
}

impl RunPlan {
    /// Applies `opts` to `pipeline`. Formats: a flag wins, then the file's extension,
    /// then the pipeline's setting, then CSV; the output follows `-o`'s extension, the
    /// pipeline, then the first input's format.
    pub fn resolve(mut pipeline: PipelinePlan, opts: RunOptions) -> Result<RunPlan, PlanError> {
        if let Some(b) = opts.batch_size {
            if !(super::bounds::BATCH_SIZE.0..=super::bounds::BATCH_SIZE.1).contains(&(b as u64)) {
                return Err(PlanError::BatchSize(b));
            }
            pipeline.batch_size = b;
        }
        if let Some(w) = opts.workers {
            if !(super::bounds::WORKERS.0..=super::bounds::WORKERS.1).contains(&(w as u64)) {
                return Err(PlanError::Workers(w));
            }
            for s in &mut pipeline.stages {
                s.workers = w;
            }
        }
        let stream_inputs =
            crate::config::stream::resolve_inputs(&pipeline, &opts.inputs, opts.output.as_deref())
                .map_err(PlanError::Stream)?;
        let inputs = if let Some(names) = stream_inputs {
            names
        } else if opts.inputs.is_empty() {
            vec!["-".to_string()]
        } else {
            opts.inputs
        };
        if inputs.iter().filter(|i| *i == "-").count() > 1 {
            return Err(PlanError::StdinTwice);
        }
        let input_formats: Vec<Format> = inputs
            .iter()
            .map(|i| {
                opts.input_format
                    .or_else(|| {
                        (i != "-")
                            .then(|| Format::from_path(Path::new(i)))
                            .flatten()
                    })
                    .or(pipeline.input)
                    .unwrap_or(Format::Csv)
            })
            .collect();
        let output_format = opts
            .output_format
            .or_else(|| opts.output.as_deref().and_then(Format::from_path))
            .or(pipeline.output)
            .unwrap_or(input_formats[0]);
        let dead_letter = opts.dead_letter.or_else(|| pipeline.dead_letter.clone());
        if pipeline.needs_dead_letter() && dead_letter.is_none() {
            return Err(PlanError::NoDeadLetter {
                pipeline: pipeline.name.clone(),
            });
        }
        Ok(RunPlan {
            watch: opts.watch && pipeline.watch,
            pipeline,
            inputs,
            input_formats,
            output: opts.output,
            output_format,
            dead_letter,
            progress: opts.progress,
            discard_output: opts.discard_output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelinesConfig;

    fn pipeline(toml: &str) -> PipelinePlan {
        let path = Path::new("pipelines.toml");
        let cfg = PipelinesConfig::parse(path, toml).unwrap();
        let name = cfg.select(path, None).unwrap();
        cfg.plan(path, &name).unwrap()
    }

    fn plain() -> PipelinePlan {
        pipeline("[pipelines.default]\n")
    }

    #[test]
    fn no_inputs_means_stdin_as_csv() {
        let r = RunPlan::resolve(plain(), RunOptions::default()).unwrap();
        assert_eq!(r.inputs, ["-"]);
        assert_eq!(r.input_formats, [Format::Csv]);
        assert_eq!(r.output_format, Format::Csv);
    }

    #[test]
    fn formats_flag_then_extension_then_pipeline_then_csv() {
        let p = pipeline("[pipelines.default]\ninput = \"jsonl\"\noutput = \"csv\"\n");
        let opts = RunOptions {
            inputs: vec!["a.csv".into(), "b.unknown".into(), "-".into()],
            ..Default::default()
        };
        let r = RunPlan::resolve(p.clone(), opts.clone()).unwrap();
        assert_eq!(
            r.input_formats,
            [Format::Csv, Format::Jsonl, Format::Jsonl],
            "extension, then the pipeline's"
        );
        assert_eq!(r.output_format, Format::Csv, "the pipeline's output");
        let r = RunPlan::resolve(
            p,
            RunOptions {
                input_format: Some(Format::Csv),
                output: Some("out.jsonl".into()),
                ..opts
            },
        )
        .unwrap();
        assert_eq!(r.input_formats, [Format::Csv; 3], "the flag wins");
        assert_eq!(r.output_format, Format::Jsonl, "-o's extension");
    }

    #[test]
    fn output_follows_the_first_input_when_nothing_says() {
        let r = RunPlan::resolve(
            plain(),
            RunOptions {
                inputs: vec!["events.jsonl".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.output_format, Format::Jsonl);
    }

    #[test]
    fn overrides_apply_to_every_stage_and_zero_is_refused() {
        let p = pipeline(
            "[pipelines.default]\n[[pipelines.default.stages]]\nplugin = \"a\"\n\
             [[pipelines.default.stages]]\nplugin = \"b\"\nworkers = 3\n",
        );
        let r = RunPlan::resolve(
            p.clone(),
            RunOptions {
                workers: Some(2),
                batch_size: Some(7),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(r.pipeline.stages.iter().all(|s| s.workers == 2));
        assert_eq!(r.pipeline.batch_size, 7);
        let zero_w = RunOptions {
            workers: Some(0),
            ..Default::default()
        };
        assert_eq!(
            RunPlan::resolve(p.clone(), zero_w).unwrap_err(),
            PlanError::Workers(0)
        );
        let zero_b = RunOptions {
            batch_size: Some(0),
            ..Default::default()
        };
        assert_eq!(
            RunPlan::resolve(p, zero_b).unwrap_err(),
            PlanError::BatchSize(0)
        );
    }

    #[test]
    fn stdin_twice_is_refused() {
        let opts = RunOptions {
            inputs: vec!["-".into(), "-".into()],
            ..Default::default()
        };
        assert_eq!(
            RunPlan::resolve(plain(), opts).unwrap_err(),
            PlanError::StdinTwice
        );
    }

    #[test]
    fn a_dead_letter_policy_needs_a_file_from_the_pipeline_or_the_flag() {
        let p = pipeline("[pipelines.default]\non_bad_input = \"dead-letter\"\n");
        assert!(matches!(
            RunPlan::resolve(p.clone(), RunOptions::default()),
            Err(PlanError::NoDeadLetter { .. })
        ));
        let r = RunPlan::resolve(
            p,
            RunOptions {
                dead_letter: Some("rejects.jsonl".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.dead_letter.as_deref(), Some(Path::new("rejects.jsonl")));
    }

    #[test]
    fn watch_needs_both_the_flag_and_the_setting() {
        let p = pipeline("[settings]\nwatch = false\n[pipelines.default]\n");
        let on = RunOptions {
            watch: true,
            ..Default::default()
        };
        assert!(!RunPlan::resolve(p, on.clone()).unwrap().watch);
        assert!(RunPlan::resolve(plain(), on).unwrap().watch);
    }
}
