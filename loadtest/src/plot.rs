//! `plot`: renders `compare` results (JSON) as SVG bar charts: throughput per scenario
//! and server, and round-trip p99 per scenario and server.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use plotters::prelude::*;
use serde_json::Value;

#[derive(Args, Debug, Clone)]
pub(crate) struct PlotArgs {
    /// `compare` result files, one group of bars each.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output prefix: writes PREFIX-throughput.svg and PREFIX-latency.svg.
    #[arg(long, default_value = "compare")]
    out: String,
}

/// One scenario's servers: (label, [(server, msgs/s, p99 µs)]).
type Group = (String, Vec<(String, f64, f64)>);

fn load(path: &PathBuf) -> anyhow::Result<Group> {
    let report: Value = serde_json::from_str(&std::fs::read_to_string(path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    let echo = &report["params"]["echo"];
    let label = format!(
        "{} x {} B",
        echo["connections"].as_u64().unwrap_or(0),
        echo["size"].as_u64().unwrap_or(0)
    );
    let mut servers = Vec::new();
    for (name, r) in report["results"].as_object().context("no results")? {
        let p99 = r["rtt_p99_us"].as_array().map_or(0.0, |v| {
            v.iter().filter_map(Value::as_f64).sum::<f64>() / v.len().max(1) as f64
        });
        servers.push((name.clone(), r["mean"].as_f64().unwrap_or(0.0), p99));
    }
    Ok((label, servers))
}

fn chart(
    groups: &[Group],
    path: &str,
    title: &str,
    value: fn(&(String, f64, f64)) -> f64,
) -> anyhow::Result<()> {
    let servers: Vec<String> = groups
        .first()
        .map(|g| g.1.iter().map(|s| s.0.clone()).collect())
        .unwrap_or_default();
    let max = groups
        .iter()
        .flat_map(|g| g.1.iter().map(value))
        .fold(0.0, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let slots = groups.len() * (servers.len() + 1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0..slots, 0.0..max.max(1.0))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len())
        .x_label_formatter(&|x| {
            groups
                .get(x / (servers.len() + 1))
                .map(|g| g.0.clone())
                .unwrap_or_default()
        })
        .draw()?;
    for (si, server) in servers.iter().enumerate() {
        let color = Palette99::pick(si).to_rgba();
        let bars = groups.iter().enumerate().filter_map(|(gi, g)| {
            let v = g.1.iter().find(|s| &s.0 == server).map(value)?;
            let x = gi * (servers.len() + 1) + si;
            Some(Rectangle::new([(x, 0.0), (x + 1, v)], color.filled()))
        });
        chart
            .draw_series(bars)?
            .label(server.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    println!("wrote {path}");
    Ok(())
}

pub(crate) fn run(args: PlotArgs) -> anyhow::Result<()> {
    let groups: Vec<Group> = args.inputs.iter().map(load).collect::<Result<_, _>>()?;
    chart(
        &groups,
        &format!("{}-throughput.svg", args.out),
        "echo messages per second",
        |s| s.1,
    )?;
    chart(
        &groups,
        &format!("{}-latency.svg", args.out),
        "echo round trip p99 (µs)",
        |s| s.2,
    )
}
