//! `shrink report RUN.json…`: the size-against-perplexity trade-off of one or more runs (their
//! `shrink run --json` reports) as an SVG chart, and the points as a table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// One point of a run: after the input or a pass, with a perplexity.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub label: String,
    pub bytes: f64,
    pub ppl: f64,
}

/// A run's name (its pipeline file's stem) and points in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

/// Reads the points of a `shrink run --json` report: the input and every pass with a `ppl`
/// (`eval: (every_pass: true)`), and the final `eval` at the last pass's size.
pub fn series(path: &Path, report: &Value) -> Result<Series> {
    let name = report["pipeline"]
        .as_str()
        .map(|p| {
            Path::new(p)
                .file_stem()
                .map_or(p.to_string(), |s| s.to_string_lossy().into_owned())
        })
        .with_context(|| format!("{}: not a `shrink run --json` report", path.display()))?;
    fn push(points: &mut Vec<Point>, label: &str, row: &Value, ppl: Option<f64>) {
        if let (Some(b), Some(p)) = (row["bytes"].as_f64(), ppl) {
            if p.is_finite() {
                points.push(Point {
                    label: label.to_string(),
                    bytes: b,
                    ppl: p,
                });
            }
        }
    }
    let mut points = Vec::new();
    push(
        &mut points,
        "input",
        &report["input"],
        report["input"]["ppl"].as_f64(),
    );
    let passes = report["passes"].as_array().cloned().unwrap_or_default();
    for p in &passes {
        push(
            &mut points,
            p["name"].as_str().unwrap_or("?"),
            p,
            p["ppl"].as_f64(),
        );
    }
    let last = passes.last().unwrap_or(&report["input"]);
    let final_ppl = report["eval"]["ppl"].as_f64();
    // With `every_pass` the last pass's point is the final evaluation already.
    if final_ppl.is_some() && points.last().is_none_or(|p| Some(p.ppl) != final_ppl) {
        push(&mut points, "eval", last, final_ppl);
    }
    if points.is_empty() {
        bail!(
            "{}: no perplexity in the report: give the pipeline an `eval` (with `every_pass: true` for a point per pass)",
            path.display()
        );
    }
    Ok(Series { name, points })
}

/// Axis ticks: about `n` round values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart: size (MB) across, perplexity up; a line per run through its points.
pub fn svg(all: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 480.0, 70.0, 190.0, 30.0, 50.0);
    let pts = all.iter().flat_map(|s| &s.points);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in pts {
        x0 = x0.min(p.bytes / 1e6);
        x1 = x1.max(p.bytes / 1e6);
        y0 = y0.min(p.ppl);
        y1 = y1.max(p.ppl);
    }
    let pad = |a: f64, b: f64| {
        let d = ((b - a) * 0.08).max(b.abs() * 0.02).max(1e-9);
        (a - d, b + d)
    };
    let ((x0, x1), (y0, y1)) = (pad(x0, x1), pad(y0, y1));
    let (pw, ph) = (w - left - right, h - top - bottom);
    let sx = |v: f64| left + (v - x0) / (x1 - x0) * pw;
    let sy = |v: f64| top + ph - (v - y0) / (y1 - y0) * ph;
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    for t in ticks(x0, x1, 6) {
        let x = sx(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 16.0,
            fmt_tick(t)
        );
    }
    for t in ticks(y0, y1, 6) {
        let y = sy(t);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">model size (MB)</text>"#,
        left + pw / 2.0,
        h - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">perplexity</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    for (i, series) in all.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = series
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.bytes / 1e6), sy(p.ppl)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for p in &series.points {
            let (x, y) = (sx(p.bytes / 1e6), sy(p.ppl));
            let _ = writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{c}"><title>{}: {} — {:.2} MB, ppl {:.3}</title></circle><text x="{:.1}" y="{:.1}" font-size="10" fill="{c}">{}</text>"#,
                escape(&series.name),
                escape(&p.label),
                p.bytes / 1e6,
                p.ppl,
                x + 6.0,
                y - 6.0,
                escape(&p.label)
            );
        }
        let ly = top + 14.0 + 18.0 * i as f64;
        let lx = left + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(&series.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// `shrink report`: reads the reports, writes the chart (atomically), prints the points.
pub fn report(runs: &[PathBuf], out: &Path) -> Result<()> {
    if runs.is_empty() {
        bail!("give one or more `shrink run --json` reports");
    }
    let mut all = Vec::new();
    for r in runs {
        let text =
            std::fs::read_to_string(r).with_context(|| format!("{}: cannot read", r.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", r.display()))?;
        all.push(series(r, &v)?);
    }
    println!("{:<32} {:<18} {:>12} {:>10}", "run", "point", "MB", "ppl");
    for s in &all {
        for p in &s.points {
            println!(
                "{:<32} {:<18} {:>12.3} {:>10.3}",
                s.name,
                p.label,
                p.bytes / 1e6,
                p.ppl
            );
        }
    }
    let tmp = out.with_extension("svg.tmp");
    std::fs::write(&tmp, svg(&all)).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("{}: cannot write", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(17.3, 31.9, 6);
        assert!(t.first().is_some_and(|v| *v >= 17.3) && t.last().is_some_and(|v| *v <= 31.9));
        assert_eq!(t, vec![20.0, 25.0, 30.0]);
    }

    #[test]
    fn points_come_from_every_pass_with_a_perplexity_and_the_final_eval() {
        let r = serde_json::json!({
            "pipeline": "pipelines/quick.ron",
            "input": {"bytes": 4e6, "ppl": 10.0},
            "passes": [
                {"name": "prune-structured", "bytes": 3e6, "ppl": 12.0},
                {"name": "cast", "bytes": 1.5e6},
            ],
            "eval": {"ppl": 12.5},
        });
        let s = series(Path::new("r.json"), &r).expect("series");
        assert_eq!(s.name, "quick");
        let got: Vec<(&str, f64, f64)> = s
            .points
            .iter()
            .map(|p| (p.label.as_str(), p.bytes, p.ppl))
            .collect();
        assert_eq!(
            got,
            vec![
                ("input", 4e6, 10.0),
                ("prune-structured", 3e6, 12.0),
                ("eval", 1.5e6, 12.5)
            ]
        );
        let chart = svg(&[s]);
        assert!(chart.starts_with("<svg") && chart.contains("<polyline"));
        assert_eq!(chart.matches("<circle").count(), 3);
        let none = serde_json::json!({"pipeline": "p.ron", "input": {"bytes": 1.0}, "passes": []});
        let e = series(Path::new("x.json"), &none).expect_err("no ppl");
        assert!(e.to_string().contains("no perplexity"), "{e}");
    }
}
