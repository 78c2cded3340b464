//! SVG plots of `attnforge bench` rows (plotters): per table, the time of every series at every
//! shape, ours and PyTorch's side by side (log scale), and each series' bandwidth as a percentage
//! of its own file's device copy (the ceiling a memory-bound kernel can reach).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::bench::{File, Row};

/// One table: shapes on the x axis, a bar per series at each.
struct Table {
    name: String,
    shapes: Vec<String>,
    /// (series, value per shape).
    series: Vec<(String, Vec<Option<f64>>)>,
}

fn copy_gbps(rows: &[Row]) -> Option<f64> {
    rows.iter().find(|r| r.op.starts_with("device copy")).and_then(|r| Some(r.bytes? / r.ms? / 1e6))
}

/// The tables of `ours` (by their `table` key), with the rows of `torch` that have the same
/// table and shape; `value` maps a row and its file's copy bandwidth (GB/s) to the plotted value.
fn tables(ours: &File, torch: Option<&File>, value: &dyn Fn(&Row, Option<f64>) -> Option<f64>) -> Vec<Table> {
    let mut out: Vec<Table> = Vec::new();
    let files: Vec<&File> = std::iter::once(ours).chain(torch).collect();
    for r in ours.rows() {
        if let (Some(t), Some(s)) = (&r.table, &r.shape) {
            let tab = match out.iter_mut().position(|x| x.name == *t) {
                Some(i) => &mut out[i],
                None => {
                    out.push(Table { name: t.clone(), shapes: Vec::new(), series: Vec::new() });
                    out.last_mut().unwrap()
                }
            };
            if !tab.shapes.contains(s) {
                tab.shapes.push(s.clone());
            }
        }
    }
    for tab in &mut out {
        for f in &files {
            let copy = copy_gbps(f.rows());
            for r in f.rows() {
                let (Some(t), Some(s), Some(se)) = (&r.table, &r.shape, &r.series) else { continue };
                let Some(i) = tab.shapes.iter().position(|x| x == s).filter(|_| *t == tab.name) else { continue };
                let name = se.clone();
                let k = match tab.series.iter().position(|(n, _)| *n == name) {
                    Some(k) => k,
                    None => {
                        tab.series.push((name, vec![None; tab.shapes.len()]));
                        tab.series.len() - 1
                    }
                };
                tab.series[k].1[i] = value(r, copy);
            }
        }
    }
    out
}

/// Writes `<table>-time.svg` and `<table>-bandwidth.svg` for every table into `dir`.
pub fn write_all(ours: &File, torch: Option<&File>, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let time = tables(ours, torch, &|r, _| r.ms.map(|ms| ms * 1e3));
    let bw = tables(ours, torch, &|r, copy| Some(100.0 * r.bytes? / r.ms? / 1e6 / copy?));
    if time.is_empty() {
        return Err("no row has a table, shape and series to plot (modes mma and decode-graph have them)".into());
    }
    for t in &time {
        let p = dir.join(format!("{}-time.svg", t.name));
        draw(t, &p, "µs per call (log scale; lower is better)", true).map_err(|e| format!("{}: {e}", p.display()))?;
        written.push(p);
    }
    for t in &bw {
        let p = dir.join(format!("{}-bandwidth.svg", t.name));
        draw(t, &p, "% of the device copy's bandwidth (higher is better)", false).map_err(|e| format!("{}: {e}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}

fn draw(t: &Table, path: &Path, ylabel: &str, log: bool) -> Result<(), Box<dyn std::error::Error>> {
    let values: Vec<f64> = t.series.iter().flat_map(|(_, v)| v.iter().flatten().copied()).filter(|v| v.is_finite() && *v > 0.0).collect();
    if values.is_empty() {
        return Err("nothing to plot".into());
    }
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let n = t.shapes.len();
    let width = (260 + n * (30 + 14 * t.series.len())).max(900) as u32;
    let root = SVGBackend::new(path, (width, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!("{}: {}", t.name, ylabel);
    let palette = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75), RGBColor(227, 119, 194), RGBColor(127, 127, 127), RGBColor(188, 189, 34), RGBColor(23, 190, 207)];
    let w = 0.8 / t.series.len() as f64;
    let style = TextStyle::from(("sans-serif", 12).into_font()).transform(FontTransform::Rotate90).color(&BLACK);
    macro_rules! bars {
        ($chart:expr, $floor:expr) => {{
            for (k, (name, vals)) in t.series.iter().enumerate() {
                let color = palette[k % palette.len()];
                $chart
                    .draw_series(vals.iter().enumerate().filter_map(|(i, v)| {
                        let v = (*v)?;
                        let x0 = i as f64 + 0.1 + k as f64 * w;
                        Some(Rectangle::new([(x0, $floor), (x0 + w * 0.9, v)], color.filled()))
                    }))?
                    .label(name.clone())
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
            }
            // Shape names under the bars, turned a quarter (on the root area: below the plot).
            for (i, s) in t.shapes.iter().enumerate() {
                let (px, py) = $chart.backend_coord(&(i as f64 + 0.45, $floor));
                root.draw(&Text::new(s.clone(), (px, py + 6), style.clone()))?;
            }
            $chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
        }};
    }
    if log {
        let (y0, y1) = (lo / 1.5, hi * 1.5);
        let mut chart = ChartBuilder::on(&root).caption(title, ("sans-serif", 18)).margin(12).x_label_area_size(100).y_label_area_size(70).build_cartesian_2d(0f64..n as f64, (y0..y1).log_scale())?;
        chart.configure_mesh().disable_x_mesh().x_labels(0).y_desc("µs").draw()?;
        bars!(chart, y0);
    } else {
        let y1 = (hi * 1.1).max(100.0);
        let mut chart = ChartBuilder::on(&root).caption(title, ("sans-serif", 18)).margin(12).x_label_area_size(100).y_label_area_size(70).build_cartesian_2d(0f64..n as f64, 0f64..y1)?;
        chart.configure_mesh().disable_x_mesh().x_labels(0).y_desc("%").draw()?;
        bars!(chart, 0.0);
    }
    root.present()?;
    Ok(())
}
