//! A self-contained SVG chart of a run: per scenario, latency percentiles
//! per load step (log scale) beside throughput per load step.

use std::fmt::Write;

use super::report::{RunReport, ScenarioResult};

const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 220.0;
const MARGIN: f64 = 56.0;
const ROW_H: f64 = PANEL_H + 70.0;
const SERIES: [(&str, &str); 4] = [
    ("p50", "#1b9e77"),
    ("p95", "#7570b3"),
    ("p99", "#d95f02"),
    ("p99.9", "#e7298a"),
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn x_of(i: usize, n: usize, left: f64) -> f64 {
    left + PANEL_W * (i as f64 + 0.5) / n.max(1) as f64
}

/// Latency panel: one polyline per percentile over the steps, log10 y axis.
fn latency_panel(out: &mut String, s: &ScenarioResult, left: f64, top: f64) {
    let values: Vec<[f64; 4]> = s
        .steps
        .iter()
        .map(|st| {
            let l = &st.latency_ms;
            [l.p50, l.p95, l.p99, l.p999]
        })
        .collect();
    let max = values.iter().flatten().copied().fold(0.01, f64::max);
    let (lo, hi) = (-2.0_f64, max.log10().ceil().max(-1.0));
    let y = |ms: f64| top + PANEL_H - PANEL_H * ((ms.max(0.01).log10() - lo) / (hi - lo));
    axes(out, left, top, "latency (ms, log scale)");
    let mut decade = lo;
    while decade <= hi {
        let yy = y(10f64.powf(decade));
        let _ = write!(
            out,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
            left + PANEL_W,
            left - 4.0,
            yy + 3.0,
            10f64.powf(decade)
        );
        decade += 1.0;
    }
    for (k, (name, color)) in SERIES.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x_of(i, values.len(), left), y(v[k])))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(out, r#"<circle cx="{px}" cy="{py}" r="3" fill="{color}"/>"#);
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{color}">{name}</text>"#,
            left + 8.0 + 48.0 * k as f64,
            top + 14.0
        );
    }
    labels(out, s, left, top);
}

/// Throughput panel: requests/s bars, decisions/s where they differ.
fn throughput_panel(out: &mut String, s: &ScenarioResult, left: f64, top: f64) {
    let max = s
        .steps
        .iter()
        .map(|st| st.decisions_per_second.max(st.requests_per_second))
        .fold(1.0, f64::max)
        * 1.2; // headroom for the labels above the bars
    axes(out, left, top, "throughput (per second)");
    let n = s.steps.len().max(1);
    let width = PANEL_W / n as f64 * 0.35;
    for (i, st) in s.steps.iter().enumerate() {
        let x = x_of(i, n, left);
        for (j, (value, color)) in [
            (st.requests_per_second, "#4575b4"),
            (st.decisions_per_second, "#91bfdb"),
        ]
        .into_iter()
        .enumerate()
        {
            let h = PANEL_H * value / max;
            let bx = x - width + j as f64 * width;
            let _ = write!(
                out,
                r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"><title>{value:.0}/s</title></rect>"#,
                top + PANEL_H - h,
                width * 0.95
            );
        }
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{:.0}</text>"#,
            top + PANEL_H - PANEL_H * st.requests_per_second / max - 4.0,
            st.requests_per_second
        );
    }
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#4575b4">requests/s</text><text x="{:.1}" y="{:.1}" font-size="11" fill="#5a9bc4">decisions/s</text><text x="{}" y="{}" font-size="10" text-anchor="end">top {max:.0}</text>"##,
        left + 8.0,
        top + 14.0,
        left + 88.0,
        top + 14.0,
        left + PANEL_W - 4.0,
        top + 14.0
    );
    labels(out, s, left, top);
}

fn axes(out: &mut String, left: f64, top: f64, title: &str) {
    let _ = write!(
        out,
        r##"<rect x="{left}" y="{top}" width="{PANEL_W}" height="{PANEL_H}" fill="#fafafa" stroke="#999"/><text x="{}" y="{}" font-size="12" text-anchor="middle">{title}</text>"##,
        left + PANEL_W / 2.0,
        top - 6.0
    );
}

fn labels(out: &mut String, s: &ScenarioResult, left: f64, top: f64) {
    for (i, st) in s.steps.iter().enumerate() {
        let x = x_of(i, s.steps.len(), left);
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
            top + PANEL_H + 14.0,
            escape(&st.label)
        );
        if st.verdicts.is_empty() {
            continue;
        }
        // The seed's targets: PASS, or FAIL with the missed ones.
        let failed: Vec<&str> = st
            .verdicts
            .iter()
            .filter(|v| !v.pass)
            .map(|v| v.target.split(' ').next().unwrap_or_default())
            .collect();
        let (text, color) = match failed.is_empty() {
            true => ("PASS".to_owned(), "#1a9850"),
            false => (format!("FAIL {}", failed.join(",")), "#d73027"),
        };
        let all: Vec<String> = st.verdicts.iter().map(|v| v.text()).collect();
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" font-size="9" text-anchor="middle" fill="{color}">{}<title>{}</title></text>"#,
            top + PANEL_H + 27.0,
            escape(&text),
            escape(&all.join("; "))
        );
    }
}

/// The whole chart as an SVG document.
pub fn chart(report: &RunReport) -> String {
    let width = 2.0 * PANEL_W + 3.0 * MARGIN;
    let height = ROW_H * report.scenarios.len().max(1) as f64 + 40.0;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="{MARGIN}" y="22" font-size="15">velro-authz load run {}</text>"#,
        escape(&report.started_at)
    );
    for (row, s) in report.scenarios.iter().enumerate() {
        let top = 40.0 + ROW_H * row as f64 + 34.0;
        let errors = s.overall.error_count();
        let ratio = s.ceiling_ratio.map_or(String::new(), |r| {
            format!(", {r:.2} of the health-check ceiling")
        });
        let _ = write!(
            out,
            r#"<text x="{MARGIN}" y="{:.1}" font-size="13" font-weight="bold">{} ({}, {:.0} req/s overall{ratio}, {errors} errors, {} mismatches)</text>"#,
            top - 20.0,
            escape(&s.name),
            s.mode,
            s.overall.requests_per_second,
            s.overall.mismatches
        );
        latency_panel(&mut out, s, MARGIN, top);
        throughput_panel(&mut out, s, 2.0 * MARGIN + PANEL_W, top);
    }
    out.push_str("</svg>\n");
    out
}
