//! `attnforge bench`: the GPU benchmarks of `attnforge_hip::bench` (device events, medians),
//! their table, JSON through serde (NaN written as null, so the file is always valid JSON) and,
//! with PyTorch's numbers from `bench/torch_baseline.py --json`, an SVG plot per table.

use std::path::PathBuf;
use std::process::ExitCode;

use attnforge_hip::bench::{run_bench, BenchReport, Mode, Options};
use serde::{Deserialize, Serialize};

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum ModeArg {
    /// RoPE, append, attention per dtype, then the fusion strategies.
    All,
    /// The composite step of each fusion strategy.
    Strategies,
    /// The matrix-core prefill and decode shapes.
    Mma,
    /// One decode step through the owned and the engine path.
    Engine,
    /// A decode step over 32 layers: eager, plan + run, graph replay.
    DecodeGraph,
    /// Sliding-window decode (window 4096) against full attention at L=131072, as decode-graph.
    Window,
    /// The matrix-core prefill and decode twice each, untimed (for a kernel profiler).
    ProfileMma,
    /// merge_states: bf16 partial outputs and their lse merged (T=16/4096/32768, 2 and 4 states).
    Merge,
    /// Decode over an FP8 e4m3 KV cache against a bf16 one (B=1/16/64, L=8192/32768), as decode-graph.
    Fp8,
}

/// Options of `attnforge bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to time.
    #[arg(long, value_enum, default_value = "all")]
    mode: ModeArg,
    /// Fewer shapes.
    #[arg(long)]
    quick: bool,
    /// Run each strategy problem of backend NAME twice, untimed, for a kernel profiler.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Write the rows as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Time nothing: read the rows of an earlier `--json` (to plot them again).
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    /// PyTorch's rows (`bench/torch_baseline.py --json FILE`, same mode, same device call).
    #[arg(long, value_name = "FILE")]
    torch: Option<PathBuf>,
    /// Write an SVG plot per table into DIR: time per shape, ours next to PyTorch's, and the
    /// percentage of the device copy's bandwidth.
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
}

/// One row as the JSON files hold it (ours and PyTorch's alike).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Row {
    /// What was timed.
    pub op: String,
    /// Dtype name.
    pub dtype: String,
    /// Median milliseconds (null where not measured).
    pub ms: Option<f64>,
    /// Bytes moved per call (null where not meaningful).
    pub bytes: Option<f64>,
    /// Floating-point operations per call.
    pub flops: Option<f64>,
    /// Plot keys: table, shape, series (absent for rows without a PyTorch counterpart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// See `table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<String>,
    /// See `table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
}

/// A whole file: the device and the rows (PyTorch's script writes a bare list of rows).
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum File {
    /// `attnforge bench --json`.
    Report {
        /// The GPU.
        device: String,
        /// The rows.
        rows: Vec<Row>,
    },
    /// `bench/torch_baseline.py --json`.
    Rows(Vec<Row>),
}

impl File {
    pub fn rows(&self) -> &[Row] {
        match self {
            File::Report { rows, .. } | File::Rows(rows) => rows,
        }
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn to_file(r: &BenchReport) -> File {
    File::Report {
        device: r.device.clone(),
        rows: r
            .rows
            .iter()
            .map(|x| Row {
                op: x.name.clone(),
                dtype: x.dtype.name().into(),
                ms: finite(x.ms),
                bytes: finite(x.bytes),
                flops: finite(x.flops),
                table: x.table.clone(),
                shape: x.shape.clone(),
                series: x.series.clone(),
            })
            .collect(),
    }
}

pub fn read(p: &PathBuf) -> Result<File, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
}

pub fn run(a: Args) -> ExitCode {
    match go(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn go(a: Args) -> Result<(), String> {
    let ours = match &a.from {
        Some(p) => read(p)?,
        None => {
            let mode = match a.mode {
                ModeArg::All => Mode::All,
                ModeArg::Strategies => Mode::Strategies,
                ModeArg::Mma => Mode::Mma,
                ModeArg::Engine => Mode::Engine,
                ModeArg::DecodeGraph => Mode::DecodeGraph,
                ModeArg::Window => Mode::Window,
                ModeArg::ProfileMma => Mode::ProfileMma,
                ModeArg::Merge => Mode::Merge,
                ModeArg::Fp8 => Mode::Fp8,
            };
            let report = run_bench(&Options { mode, quick: a.quick, profile: a.profile.clone() })?;
            print!("{}", report.table());
            to_file(&report)
        }
    };
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&ours).expect("rows serialise")).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    if let Some(dir) = &a.plots {
        let torch = a.torch.as_ref().map(read).transpose()?;
        let written = crate::plot::write_all(&ours, torch.as_ref(), dir)?;
        for p in written {
            println!("plot: {}", p.display());
        }
    }
    Ok(())
}
