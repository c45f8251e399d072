//! `plot`: renders `compare` results (JSON; echo comparisons from `stratus-load compare`,
//! fanout comparisons from `loadtest/compare-fanout.sh`) as SVG bar charts: throughput
//! per scenario and server, and latency (p50 and p99) per scenario and server.

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
    /// Output prefix: writes PREFIX-echo-throughput.svg, PREFIX-echo-latency.svg, and the
    /// same for fanout, for the kinds of results given.
    #[arg(long, default_value = "compare")]
    out: String,
}

/// One server's figures in one scenario.
struct Figures {
    server: String,
    rate: f64,
    p50: f64,
    p99: f64,
}

/// One scenario (a group of bars): its kind (echo or fanout), label and servers.
struct Group {
    kind: &'static str,
    label: String,
    servers: Vec<Figures>,
}

fn mean(v: &Value) -> f64 {
    v.as_array().map_or(0.0, |v| {
        v.iter().filter_map(Value::as_f64).sum::<f64>() / v.len().max(1) as f64
    })
}

fn load(path: &PathBuf) -> anyhow::Result<Group> {
    let report: Value = serde_json::from_str(&std::fs::read_to_string(path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    let params = &report["params"];
    let (kind, label, p50, p99) = if report["scenario"] == "compare fanout" {
        let label = format!(
            "{} subs x {} B, {} publisher(s)",
            params["subscribers"].as_u64().unwrap_or(0),
            params["size"].as_u64().unwrap_or(0),
            params["publishers"].as_u64().unwrap_or(1)
        );
        ("fanout", label, "latency_p50_us", "latency_p99_us")
    } else {
        let echo = &params["echo"];
        let label = format!(
            "{} x {} B",
            echo["connections"].as_u64().unwrap_or(0),
            echo["size"].as_u64().unwrap_or(0)
        );
        ("echo", label, "rtt_p50_us", "rtt_p99_us")
    };
    let servers = report["results"]
        .as_object()
        .context("no results")?
        .iter()
        .map(|(name, r)| Figures {
            server: name.clone(),
            rate: r["mean"].as_f64().unwrap_or(0.0),
            p50: mean(&r[p50]),
            p99: mean(&r[p99]),
        })
        .collect();
    Ok(Group {
        kind,
        label,
        servers,
    })
}

/// Bars: one group per label, one bar per server in each.
type Bars = Vec<(String, Vec<(String, f64)>)>;

fn chart(groups: &Bars, path: &str, title: &str) -> anyhow::Result<()> {
    let servers: Vec<String> = groups
        .first()
        .map(|g| g.1.iter().map(|s| s.0.clone()).collect())
        .unwrap_or_default();
    let max = groups
        .iter()
        .flat_map(|g| g.1.iter().map(|s| s.1))
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
            let v = g.1.iter().find(|s| &s.0 == server)?.1;
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
    for (kind, unit, what) in [
        ("echo", "messages per second", "round trip"),
        ("fanout", "deliveries per second", "publish to receive"),
    ] {
        let of_kind: Vec<&Group> = groups.iter().filter(|g| g.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let throughput: Bars = of_kind
            .iter()
            .map(|g| {
                let bars = g.servers.iter().map(|f| (f.server.clone(), f.rate));
                (g.label.clone(), bars.collect())
            })
            .collect();
        let latency: Bars = of_kind
            .iter()
            .flat_map(|g| {
                let p50 = g.servers.iter().map(|f| (f.server.clone(), f.p50));
                let p99 = g.servers.iter().map(|f| (f.server.clone(), f.p99));
                [
                    (format!("{} p50", g.label), p50.collect()),
                    (format!("{} p99", g.label), p99.collect()),
                ]
            })
            .collect();
        chart(
            &throughput,
            &format!("{}-{kind}-throughput.svg", args.out),
            &format!("{kind}: {unit}"),
        )?;
        chart(
            &latency,
            &format!("{}-{kind}-latency.svg", args.out),
            &format!("{kind}: {what} latency, p50 and p99 (µs)"),
        )?;
    }
    Ok(())
}
