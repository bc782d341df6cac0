//! The SVG chart of a benchmark run (`--svg`): latency percentiles and throughput over
//! time, one colour per server.

use std::fmt::Write;

use super::report::Outcome;

/// A two-panel SVG: latency percentiles (bars) and throughput over time (lines).
pub fn svg(outcomes: &[Outcome]) -> String {
    const COLORS: [&str; 2] = ["#2563eb", "#9ca3af"];
    let (w, h, pad) = (900.0, 360.0, 50.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    // Left: latency percentiles (ms), log-free linear bars.
    let labels = ["p50", "p90", "p99", "p99.9", "max"];
    let values = |o: &Outcome| {
        let l = &o.latency_us;
        [l.p50, l.p90, l.p99, l.p99_9, l.max].map(|v| v as f64 / 1e3)
    };
    let top = outcomes
        .iter()
        .flat_map(&values)
        .fold(0.0f64, f64::max)
        .max(0.001);
    let panel = (w / 2.0) - pad * 1.5;
    let _ = writeln!(out, "<text x=\"{pad}\" y=\"20\">latency (ms)</text>");
    let group = panel / labels.len() as f64;
    let bar = group / (outcomes.len() as f64 + 1.0);
    for (i, label) in labels.iter().enumerate() {
        let x0 = pad + i as f64 * group;
        for (j, o) in outcomes.iter().enumerate() {
            let v = values(o)[i];
            let bh = (h - 2.0 * pad) * v / top;
            let _ = writeln!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {label}: {v:.2} ms</title></rect>",
                x0 + j as f64 * bar,
                h - pad - bh,
                bar * 0.9,
                bh,
                COLORS[j % 2],
                o.target
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\">{label}</text>",
            x0,
            h - pad + 15.0
        );
    }
    let _ = writeln!(out, "<text x=\"5\" y=\"{}\">{top:.1}</text>", pad + 4.0);
    // Right: throughput per second.
    let x_origin = w / 2.0 + pad / 2.0;
    let seconds = outcomes
        .iter()
        .map(|o| o.throughput_per_sec.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let peak = outcomes
        .iter()
        .flat_map(|o| o.throughput_per_sec.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let _ = writeln!(
        out,
        "<text x=\"{x_origin}\" y=\"20\">delivered events/s over time (peak {peak:.0})</text>"
    );
    for (j, o) in outcomes.iter().enumerate() {
        let points: Vec<String> = o
            .throughput_per_sec
            .iter()
            .enumerate()
            .map(|(s, c)| {
                let x = x_origin + panel * s as f64 / seconds as f64;
                let y = h - pad - (h - 2.0 * pad) * (*c as f64) / peak;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            COLORS[j % 2],
            points.join(" ")
        );
        let _ = writeln!(
            out,
            "<text x=\"{x_origin}\" y=\"{}\" fill=\"{}\">{}</text>",
            h - 10.0 - 14.0 * j as f64,
            COLORS[j % 2],
            o.target
        );
    }
    out.push_str("</svg>\n");
    out
}
