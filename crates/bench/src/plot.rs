//! `--plot FILE.png`: latency percentiles against the delivered rate — one point per second of
//! a fan-out run, or one per step of a ramp.

use std::path::Path;

use plotters::prelude::*;

use crate::stats::Report;

pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    // (deliveries/s, p50, p90, p99) points.
    let points: Vec<(f64, f64, f64, f64)> = if !report.steps.is_empty() {
        report
            .steps
            .iter()
            .map(|s| {
                (
                    s.deliveries_per_sec,
                    s.latency_ms.p50,
                    s.latency_ms.p90,
                    s.latency_ms.p99,
                )
            })
            .collect()
    } else {
        report
            .per_second
            .iter()
            .filter(|w| w.deliveries > 0)
            .map(|w| {
                (
                    w.deliveries as f64,
                    w.latency_ms.p50,
                    w.latency_ms.p90,
                    w.latency_ms.p99,
                )
            })
            .collect()
    };
    anyhow::ensure!(
        !points.is_empty(),
        "nothing to plot: no deliveries were measured"
    );
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let y_max = points.iter().map(|p| p.3).fold(1.0, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "roomcast {} — {} connections, {} room{}",
        report.scenario,
        report.connections,
        report.rooms,
        if report.rooms == 1 { "" } else { "s" }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("deliveries per second")
        .y_desc("latency (ms)")
        .x_label_formatter(&|v| {
            if *v >= 1e6 {
                format!("{:.1}M", v / 1e6)
            } else {
                format!("{:.0}k", v / 1e3)
            }
        })
        .draw()?;
    type Getter = fn(&(f64, f64, f64, f64)) -> f64;
    let series: [(&str, RGBColor, Getter); 3] = [
        ("p50", BLUE, |p| p.1),
        ("p90", GREEN, |p| p.2),
        ("p99", RED, |p| p.3),
    ];
    let ramp = !report.steps.is_empty();
    for (name, color, get) in series {
        let pts: Vec<(f64, f64)> = points.iter().map(|p| (p.0, get(p))).collect();
        if ramp {
            chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
        }
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?
            .label(name)
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
