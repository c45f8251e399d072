//! `plot`: renders side-by-side results as SVG charts a reader can read at a glance: echo
//! comparisons (`stratus-load compare`), fanout comparisons (`loadtest/compare-fanout.sh`)
//! and idle-connection memory (`loadtest/compare-connections.sh`).
//!
//! Each input file is one scenario: a panel of its own, titled with the scenario and its
//! rate, with one horizontal bar per setup (the setup's name beside it, its figure at the
//! bar's end) on an axis of its own scale, so a scenario whose figures are a hundred times
//! smaller than its neighbour's still reads. Figures are written `620k`, `1.8M`, `310 µs`,
//! `1.2 ms`; each axis names its unit; the legend (each setup's colour, and which shade is
//! p50 and which p99) stands in a column of its own, beside the panels, never over a bar.
//! A setup keeps its colour in every chart. Stratus comes first, the raw TCP reference last.
//! Fanout results that measured the server's CPU (over the publish window only) show it
//! beside each setup's deliveries/s, and in a chart of their own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

#[derive(Args, Debug, Clone)]
pub(crate) struct PlotArgs {
    /// Result files (`compare echo`, `compare fanout`, `compare connections`), one panel each.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output prefix: writes PREFIX-echo-throughput.svg, PREFIX-echo-latency.svg, the same
    /// for fanout (and PREFIX-fanout-cpu.svg for the fanout results that measured the
    /// server's CPU), and PREFIX-connections-memory.svg, for the kinds of results given.
    #[arg(long, default_value = "compare")]
    out: String,
}

/// The kind of scenario a result file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Echo,
    Fanout,
    Connections,
}

/// What one chart shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    /// Messages (echo) or deliveries (fanout) per second: one bar per setup.
    Throughput,
    /// p50 and p99 in microseconds: two bars per setup.
    Latency,
    /// Server RSS per idle connection, in bytes: one bar per setup.
    Memory,
    /// Server CPU per delivery in microseconds (fanout): one bar per setup.
    Cpu,
}

impl Kind {
    /// The charts drawn for this kind, with their file names' suffixes.
    fn charts(self) -> &'static [Measure] {
        match self {
            Kind::Echo => &[Measure::Throughput, Measure::Latency],
            Kind::Fanout => &[Measure::Throughput, Measure::Latency, Measure::Cpu],
            Kind::Connections => &[Measure::Memory],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::Fanout => "fanout",
            Kind::Connections => "connections",
        }
    }

    /// The chart's title: what is measured, in which unit, and which way is better.
    fn caption(self, measure: Measure) -> &'static str {
        match (self, measure) {
            (Kind::Echo, Measure::Throughput) => "Echo: messages per second (higher is better)",
            (Kind::Echo, _) => "Echo: round-trip latency, p50 and p99 (lower is better)",
            (Kind::Fanout, Measure::Throughput) => {
                "Fanout: deliveries per second, all subscribers together (higher is better)"
            }
            (Kind::Fanout, Measure::Cpu) => {
                "Fanout: server CPU per delivery, publish window only (lower is better)"
            }
            (Kind::Fanout, _) => {
                "Fanout: publish-to-receive latency, p50 and p99 (lower is better)"
            }
            (Kind::Connections, _) => {
                "Idle connections: server memory (RSS) per connection (lower is better)"
            }
        }
    }

    /// The value axis's title, in `unit` (for latency: µs or ms).
    fn axis(self, measure: Measure, unit: &str) -> String {
        match (self, measure) {
            (Kind::Echo, Measure::Throughput) => "messages per second (msg/s)".to_owned(),
            (Kind::Fanout, Measure::Throughput) => "deliveries per second (msg/s)".to_owned(),
            (Kind::Echo, Measure::Latency) => format!("round-trip latency ({unit})"),
            (Kind::Fanout, Measure::Latency) => format!("publish-to-receive latency ({unit})"),
            (_, Measure::Cpu) => "server CPU time per delivery (µs)".to_owned(),
            (_, _) => "server RSS per connection (bytes)".to_owned(),
        }
    }
}

/// One setup's figures in one scenario.
#[derive(Debug, Clone, PartialEq)]
struct Setup {
    name: String,
    /// Messages or deliveries per second; for connections, bytes per connection.
    value: f64,
    p50_us: f64,
    p99_us: f64,
    /// Server CPU per delivery (µs), where every round measured it (fanout).
    cpu_us: Option<f64>,
}

/// One scenario: one panel.
#[derive(Debug, Clone, PartialEq)]
struct Group {
    kind: Kind,
    /// The scenario (`echo 100 x 20 B`).
    title: String,
    /// Its rate (`1 publisher, flat out`, `15 publishes/s`, `closed loop, ...`).
    rate: String,
    setups: Vec<Setup>,
}

impl Group {
    fn label(&self) -> String {
        format!("{} · {}", self.title, self.rate)
    }
}

/// `x` to three significant digits, without trailing zeros (`1.8`, `620`, `12.5`).
fn three_digits(x: f64) -> String {
    let decimals = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// `x` in steps of `step` (1000) with the suffixes `units` (the first for `x < step`), to
/// three significant digits: a figure that rounds up to the next step takes its suffix.
fn scaled(x: f64, step: f64, units: &[&str]) -> String {
    if !x.is_finite() || x <= 0.0 {
        return format!("0{}", units.first().copied().unwrap_or(""));
    }
    let mut i = 0;
    let mut v = x;
    while i + 1 < units.len() && v >= step {
        v /= step;
        i += 1;
    }
    // 999.6 rounds to 1000: that is the next unit's 1.
    if i + 1 < units.len() && three_digits(v).parse::<f64>().is_ok_and(|r| r >= step) {
        v /= step;
        i += 1;
    }
    format!("{}{}", three_digits(v), units[i])
}

/// A count or rate: `950`, `12.5k`, `620k`, `1.8M`, `2.5G`.
pub(crate) fn si(x: f64) -> String {
    scaled(x, 1000.0, &["", "k", "M", "G"])
}

/// A duration in microseconds: `310 µs`, `1.25 ms`, `180 ms`, `2.5 s`.
pub(crate) fn micros(us: f64) -> String {
    scaled(us, 1000.0, &[" µs", " ms", " s"])
}

/// A message size: `20 B`, `16 KiB` (a whole number of KiB), `1500 B`.
fn message_size(b: u64) -> String {
    if b >= 1024 && b.is_multiple_of(1024) {
        format!("{} KiB", b / 1024)
    } else {
        format!("{b} B")
    }
}

/// A size in bytes: exact below 10 kB, where a per-connection target lives (`748 B`,
/// `1937 B`), then `137 kB`, `12 MB`.
pub(crate) fn bytes(b: f64) -> String {
    if b < 10_000.0 {
        return format!("{:.0} B", b.max(0.0));
    }
    scaled(b, 1000.0, &[" B", " kB", " MB", " GB"])
}

fn mean(v: &Value) -> f64 {
    v.as_array().map_or(0.0, |v| {
        v.iter().filter_map(Value::as_f64).sum::<f64>() / v.len().max(1) as f64
    })
}

/// Where a setup goes among the others: Stratus first, the uWebSockets-class peers next,
/// then the Rust peers, the raw TCP reference (no WebSocket framing) last.
fn rank(name: &str) -> (usize, &str) {
    const ORDER: [&str; 6] = [
        "stratus",
        "uwebsockets.js",
        "bun",
        "fastwebsockets",
        "tokio-tungstenite",
        "tungstenite",
    ];
    match ORDER.iter().position(|n| *n == name) {
        Some(i) => (i, ""),
        None if name.ends_with("-raw") => (usize::MAX, name),
        None => (ORDER.len(), name),
    }
}

/// Reads one result file into a group.
fn load(path: &Path) -> anyhow::Result<Group> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    group(&report).with_context(|| format!("plotting {}", path.display()))
}

fn group(report: &Value) -> anyhow::Result<Group> {
    let params = &report["params"];
    let count = |v: &Value| v.as_u64().unwrap_or(0);
    let (kind, title, rate, p50, p99) = match report["scenario"].as_str() {
        Some("compare fanout") => {
            let publishers = params["publishers"].as_u64().unwrap_or(1);
            let who = match publishers {
                1 => "1 publisher".to_owned(),
                n => format!("{n} publishers"),
            };
            let per_s = params["rate"].as_f64().unwrap_or(0.0);
            let rate = if per_s > 0.0 {
                format!("{who}, {} publishes/s", si(per_s))
            } else {
                format!("{who}, flat out")
            };
            let mut title = format!(
                "fanout {} subscribers x {}",
                si(count(&params["subscribers"]) as f64),
                message_size(count(&params["size"]))
            );
            if let Some(deflate) = params["deflate"].as_str() {
                title.push_str(&format!(", deflate {deflate}"));
            }
            (
                Kind::Fanout,
                title,
                rate,
                "latency_p50_us",
                "latency_p99_us",
            )
        }
        Some("compare echo") => {
            let echo = &params["echo"];
            let in_flight = echo["in_flight"].as_u64().unwrap_or(1);
            let title = format!(
                "echo {} connections x {}",
                si(count(&echo["connections"]) as f64),
                message_size(count(&echo["size"]))
            );
            let rate = format!("closed loop, {in_flight} in flight per connection");
            (Kind::Echo, title, rate, "rtt_p50_us", "rtt_p99_us")
        }
        Some("compare connections") => {
            let title = format!(
                "{} idle connections",
                si(count(&params["connections"]) as f64)
            );
            let rate = "subscribed to one topic, deflate offered".to_owned();
            (Kind::Connections, title, rate, "", "")
        }
        other => bail!(
            "scenario {}: plot reads compare echo, compare fanout and compare connections results",
            other.map_or_else(|| "missing".to_owned(), str::to_owned)
        ),
    };
    let mut setups: Vec<Setup> = report["results"]
        .as_object()
        .context("no results")?
        .iter()
        .map(|(name, r)| Setup {
            name: name.clone(),
            value: r["mean"].as_f64().unwrap_or(0.0),
            p50_us: mean(&r[p50]),
            p99_us: mean(&r[p99]),
            cpu_us: r["server_cpu_us_per_delivery"]
                .as_array()
                .filter(|v| !v.is_empty() && v.iter().all(Value::is_number))
                .map(|_| mean(&r["server_cpu_us_per_delivery"])),
        })
        .collect();
    if setups.is_empty() {
        bail!("no setup in the results");
    }
    setups.sort_by(|a, b| rank(&a.name).cmp(&rank(&b.name)));
    Ok(Group {
        kind,
        title,
        rate,
        setups,
    })
}

/// Each setup's colour, the same in every chart of a run.
struct Colors(BTreeMap<String, RGBColor>);

impl Colors {
    fn of(groups: &[Group]) -> Self {
        const KNOWN: [(&str, RGBColor); 7] = [
            ("stratus", RGBColor(31, 119, 180)),
            ("uwebsockets.js", RGBColor(214, 39, 40)),
            ("bun", RGBColor(255, 127, 14)),
            ("fastwebsockets", RGBColor(44, 160, 44)),
            ("tokio-tungstenite", RGBColor(148, 103, 189)),
            ("tungstenite", RGBColor(148, 103, 189)),
            ("uring-tcp-raw", RGBColor(127, 127, 127)),
        ];
        const OTHERS: [RGBColor; 5] = [
            RGBColor(140, 86, 75),
            RGBColor(227, 119, 194),
            RGBColor(188, 189, 34),
            RGBColor(23, 190, 207),
            RGBColor(60, 60, 60),
        ];
        let mut map = BTreeMap::new();
        let mut others = 0;
        for setup in groups.iter().flat_map(|g| &g.setups) {
            if map.contains_key(&setup.name) {
                continue;
            }
            let color = match KNOWN.iter().find(|(n, _)| *n == setup.name) {
                Some((_, c)) => *c,
                None => {
                    others += 1;
                    OTHERS[(others - 1) % OTHERS.len()]
                }
            };
            map.insert(setup.name.clone(), color);
        }
        Self(map)
    }

    fn get(&self, name: &str) -> RGBColor {
        self.0.get(name).copied().unwrap_or(BLACK)
    }
}

/// Pixels: the image's width, the legend's column, the setups' names, a row per setup.
const WIDTH: u32 = 1000;
const LEGEND_WIDTH: u32 = 180;
const NAMES_WIDTH: u32 = 140;
const HEADER: u32 = 48;
const ROW: u32 = 28;
const PAIR_ROW: u32 = 40;
/// A panel's caption, value axis, and the gap below it.
const PANEL_EXTRA: u32 = 38 + 46 + GAP;
const GAP: u32 = 22;
const FONT: &str = "sans-serif";

fn row_height(measure: Measure) -> u32 {
    match measure {
        Measure::Latency => PAIR_ROW,
        _ => ROW,
    }
}

fn panel_height(group: &Group, measure: Measure) -> u32 {
    PANEL_EXTRA + group.setups.len() as u32 * row_height(measure)
}

/// The latency axis's unit for figures up to `max_us`: ms from 1 ms up, else µs.
fn latency_unit(max_us: f64) -> (&'static str, f64) {
    if max_us >= 1000.0 {
        ("ms", 1000.0)
    } else {
        ("µs", 1.0)
    }
}

/// Draws one chart of `groups` (all of one kind) to `path`.
fn chart(groups: &[&Group], measure: Measure, colors: &Colors, path: &Path) -> anyhow::Result<()> {
    let Some(kind) = groups.first().map(|g| g.kind) else {
        return Ok(());
    };
    let height = HEADER + groups.iter().map(|g| panel_height(g, measure)).sum::<u32>() + 10;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (main, legend) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
    let (head, mut rest) = main.split_vertically(HEADER);
    head.draw(&Text::new(
        kind.caption(measure),
        (16, HEADER as i32 / 2),
        TextStyle::from((FONT, 21).into_font().style(FontStyle::Bold))
            .pos(Pos::new(HPos::Left, VPos::Center)),
    ))?;
    for (i, group) in groups.iter().enumerate() {
        let height = panel_height(group, measure);
        let (panel, below) = rest.split_vertically(height);
        rest = below;
        draw_panel(&panel, group, measure, colors)?;
        if i + 1 < groups.len() {
            // A rule between panels, in the gap below this one's axis title.
            let y = height as i32 - GAP as i32 / 2;
            let width = (WIDTH - LEGEND_WIDTH) as i32;
            panel.draw(&PathElement::new(
                [(16, y), (width - 16, y)],
                RGBColor(200, 200, 200),
            ))?;
        }
    }
    draw_legend(&legend, groups, measure, colors)?;
    root.present()?;
    println!("wrote {}", path.display());
    Ok(())
}

/// One bar: its value on the axis, the figure written at its end, its band within the
/// row (from the row's bottom, in rows), its shade.
type Bar = (f64, String, (f64, f64), RGBAColor);

/// The bars of one setup's row.
fn bars(setup: &Setup, measure: Measure, per_unit: f64, color: RGBColor) -> Vec<Bar> {
    match measure {
        Measure::Latency => vec![
            (
                setup.p50_us / per_unit,
                format!("p50 {}", micros(setup.p50_us)),
                (0.53, 0.88),
                color.mix(0.45),
            ),
            (
                setup.p99_us / per_unit,
                format!("p99 {}", micros(setup.p99_us)),
                (0.12, 0.47),
                color.to_rgba(),
            ),
        ],
        Measure::Throughput => {
            let figure = match setup.cpu_us {
                Some(cpu) => format!("{} · {} CPU each", si(setup.value), micros(cpu)),
                None => si(setup.value),
            };
            vec![(setup.value, figure, (0.18, 0.82), color.to_rgba())]
        }
        Measure::Memory => vec![(
            setup.value,
            bytes(setup.value),
            (0.18, 0.82),
            color.to_rgba(),
        )],
        Measure::Cpu => {
            let cpu = setup.cpu_us.unwrap_or(0.0);
            vec![(cpu, micros(cpu), (0.18, 0.82), color.to_rgba())]
        }
    }
}

/// Pixels a figure's text takes, about (14 px sans-serif).
fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * 7.6
}

/// The axis's end: far enough past every bar for the figure written at its end to fit
/// within the plot, `plot_width` pixels wide.
fn axis_top(bars: &[Bar], plot_width: f64) -> f64 {
    let top = bars
        .iter()
        .map(|(value, figure, _, _)| {
            let room = (plot_width - 8.0 - text_width(figure)).max(plot_width * 0.2);
            value * plot_width / room
        })
        .fold(0.0, f64::max);
    if top > 0.0 { top } else { 1.0 }
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    group: &Group,
    measure: Measure,
    colors: &Colors,
) -> anyhow::Result<()> {
    let n = group.setups.len();
    let max_us = group.setups.iter().map(|s| s.p99_us).fold(0.0, f64::max);
    let (unit, per_unit) = match measure {
        Measure::Latency => latency_unit(max_us),
        _ => ("", 1.0),
    };
    let rows: Vec<Vec<Bar>> = group
        .setups
        .iter()
        .map(|s| bars(s, measure, per_unit, colors.get(&s.name)))
        .collect();
    // The plot's width: the panel less the setups' names and the margins.
    let plot_width = f64::from(area.dim_in_pixel().0) - f64::from(NAMES_WIDTH) - 28.0;
    let top = axis_top(&rows.concat(), plot_width);
    let mut chart = ChartBuilder::on(area)
        .caption(group.label(), (FONT, 17).into_font().style(FontStyle::Bold))
        .margin_left(12)
        .margin_right(16)
        .margin_top(4)
        .margin_bottom(GAP)
        .x_label_area_size(46)
        .y_label_area_size(NAMES_WIDTH)
        .build_cartesian_2d(0.0..top, 0.0..n as f64)?;
    let axis = group.kind.axis(measure, unit);
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_labels(6)
        .x_label_formatter(&|v| match measure {
            Measure::Latency | Measure::Cpu => three_digits(*v),
            Measure::Memory => bytes(*v),
            Measure::Throughput => si(*v),
        })
        .x_desc(axis)
        .axis_desc_style((FONT, 15))
        .label_style((FONT, 14))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    let name_style =
        TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    let figure_style =
        TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (setup, row)) in group.setups.iter().zip(rows).enumerate() {
        // Row i from the top spans [y0, y0 + 1].
        let y0 = (n - 1 - i) as f64;
        let name = EmptyElement::at((0.0, y0 + 0.5))
            + Text::new(setup.name.clone(), (-10, 0), name_style.clone());
        chart.plotting_area().draw(&name)?;
        for (value, figure, (low, high), shade) in row {
            chart.plotting_area().draw(&Rectangle::new(
                [(0.0, y0 + low), (value, y0 + high)],
                shade.filled(),
            ))?;
            let at = EmptyElement::at((value, y0 + (low + high) / 2.0))
                + Text::new(figure, (5, 0), figure_style.clone());
            chart.plotting_area().draw(&at)?;
        }
    }
    Ok(())
}

fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    groups: &[&Group],
    measure: Measure,
    colors: &Colors,
) -> anyhow::Result<()> {
    let mut names: Vec<&str> = Vec::new();
    for setup in groups.iter().flat_map(|g| &g.setups) {
        if !names.contains(&setup.name.as_str()) {
            names.push(&setup.name);
        }
    }
    names.sort_by_key(|n| rank(n));
    let text = TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let heading = TextStyle::from((FONT, 15).into_font().style(FontStyle::Bold))
        .pos(Pos::new(HPos::Left, VPos::Center));
    let swatch =
        |y: i32, color: RGBAColor| Rectangle::new([(8, y - 7), (22, y + 7)], color.filled());
    let mut y = HEADER as i32 + 14;
    area.draw(&Text::new("setup", (8, y), heading.clone()))?;
    for name in names {
        y += 24;
        area.draw(&swatch(y, colors.get(name).to_rgba()))?;
        area.draw(&Text::new(name.to_owned(), (30, y), text.clone()))?;
    }
    if measure == Measure::Latency {
        let grey = RGBColor(90, 90, 90);
        y += 40;
        area.draw(&Text::new("bars", (8, y), heading))?;
        for (label, shade) in [("p50 (median)", grey.mix(0.45)), ("p99", grey.to_rgba())] {
            y += 24;
            area.draw(&swatch(y, shade))?;
            area.draw(&Text::new(label, (30, y), text.clone()))?;
        }
    }
    Ok(())
}

pub(crate) fn run(args: PlotArgs) -> anyhow::Result<()> {
    let groups: Vec<Group> = args
        .inputs
        .iter()
        .map(|p| load(p))
        .collect::<Result<_, _>>()?;
    let colors = Colors::of(&groups);
    for kind in [Kind::Echo, Kind::Fanout, Kind::Connections] {
        let of_kind: Vec<&Group> = groups.iter().filter(|g| g.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        for &measure in kind.charts() {
            let suffix = match measure {
                Measure::Throughput => "throughput",
                Measure::Latency => "latency",
                Measure::Memory => "memory",
                Measure::Cpu => "cpu",
            };
            // The CPU chart shows the scenarios that measured it for every setup.
            let shown: Vec<&Group> = of_kind
                .iter()
                .copied()
                .filter(|g| measure != Measure::Cpu || g.setups.iter().all(|s| s.cpu_us.is_some()))
                .collect();
            if shown.is_empty() {
                continue;
            }
            let path = PathBuf::from(format!("{}-{}-{suffix}.svg", args.out, kind.name()));
            chart(&shown, measure, &colors, &path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn counts_and_rates_read_in_k_and_m() {
        let cases = [
            (0.0, "0"),
            (7.0, "7"),
            (12.5, "12.5"),
            (950.0, "950"),
            (1234.0, "1.23k"),
            (41_900.0, "41.9k"),
            (150_000.0, "150k"),
            (620_000.0, "620k"),
            (999_600.0, "1M"),
            (1_800_000.0, "1.8M"),
            (1_680_000.0, "1.68M"),
            (2_500_000_000.0, "2.5G"),
        ];
        for (x, text) in cases {
            assert_eq!(si(x), text, "{x}");
        }
        assert_eq!(si(f64::NAN), "0");
    }

    #[test]
    fn durations_read_in_their_own_unit() {
        assert_eq!(micros(48.5), "48.5 µs");
        assert_eq!(micros(310.0), "310 µs");
        assert_eq!(micros(999.9), "1 ms");
        assert_eq!(micros(1250.0), "1.25 ms");
        assert_eq!(micros(180_000.0), "180 ms");
        assert_eq!(micros(2_500_000.0), "2.5 s");
        assert_eq!(bytes(748.0), "748 B");
        assert_eq!(bytes(1937.4), "1937 B");
        assert_eq!(bytes(136_552.0), "137 kB");
        assert_eq!(bytes(2_500_000.0), "2.5 MB");
        assert_eq!(latency_unit(999.0), ("µs", 1.0));
        assert_eq!(latency_unit(1000.0), ("ms", 1000.0));
    }

    fn fanout(rate: f64, publishers: u64) -> Value {
        json!({"scenario": "compare fanout",
               "params": {"subscribers": 10000, "size": 64, "rate": rate, "publishers": publishers},
               "results": {
                   "tungstenite": {"mean": 180000.0, "latency_p50_us": [80000], "latency_p99_us": [130000]},
                   "stratus": {"mean": 1500000.0, "latency_p50_us": [36000, 34000], "latency_p99_us": [110000]},
                   "bun": {"mean": 600000.0, "latency_p50_us": [50000], "latency_p99_us": [90000]}}})
    }

    /// `report` with the server's CPU per delivery measured for every setup, in two rounds.
    fn with_cpu(mut report: Value) -> Value {
        for (name, cpu) in [
            ("stratus", [0.5, 0.54]),
            ("bun", [1.2, 1.4]),
            ("tungstenite", [4.0, 4.2]),
        ] {
            report["results"][name]["server_cpu_us_per_delivery"] = json!(cpu);
        }
        report
    }

    #[test]
    fn every_group_is_labelled_with_its_scenario_and_rate() {
        let flat = group(&fanout(0.0, 1)).unwrap();
        assert_eq!(
            flat.label(),
            "fanout 10k subscribers x 64 B · 1 publisher, flat out"
        );
        let paced = group(&fanout(15.0, 4)).unwrap();
        assert_eq!(
            paced.label(),
            "fanout 10k subscribers x 64 B · 4 publishers, 15 publishes/s"
        );
        let mut shared = fanout(5.0, 1);
        shared["params"]["subscribers"] = json!(19000);
        shared["params"]["deflate"] = json!("shared");
        assert_eq!(
            group(&shared).unwrap().label(),
            "fanout 19k subscribers x 64 B, deflate shared · 1 publisher, 5 publishes/s"
        );
        let echo = group(&json!({"scenario": "compare echo",
            "params": {"echo": {"connections": 100, "size": 20, "in_flight": 1}},
            "results": {"stratus": {"mean": 300000.0, "rtt_p50_us": [300], "rtt_p99_us": [400]}}}))
        .unwrap();
        assert_eq!(echo.kind, Kind::Echo);
        assert_eq!(
            echo.label(),
            "echo 100 connections x 20 B · closed loop, 1 in flight per connection"
        );
        let large = group(&json!({"scenario": "compare echo",
            "params": {"echo": {"connections": 1000, "size": 16384, "in_flight": 1}},
            "results": {"stratus": {"mean": 1.0, "rtt_p50_us": [1], "rtt_p99_us": [1]}}}))
        .unwrap();
        assert_eq!(large.title, "echo 1k connections x 16 KiB");
        let idle = group(&json!({"scenario": "compare connections",
            "params": {"connections": 19000},
            "results": {"stratus": {"mean": 740}}}))
        .unwrap();
        assert_eq!(idle.kind, Kind::Connections);
        assert_eq!(idle.title, "19k idle connections");
        assert_eq!(idle.setups[0].value, 740.0);
        let why = group(&json!({"scenario": "compare echo", "results": {}})).unwrap_err();
        assert!(why.to_string().contains("no setup"), "{why}");
        let why = group(&json!({"scenario": "churn", "results": {}})).unwrap_err();
        assert!(why.to_string().contains("scenario churn"), "{why}");
    }

    #[test]
    fn stratus_comes_first_and_the_raw_reference_last() {
        let flat = group(&fanout(0.0, 1)).unwrap();
        let names: Vec<&str> = flat.setups.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["stratus", "bun", "tungstenite"]);
        assert_eq!(flat.setups[0].p50_us, 35000.0, "the mean of the rounds");
        let mut names = vec![
            "uring-tcp-raw",
            "zeta",
            "fastwebsockets",
            "stratus",
            "alpha",
        ];
        names.sort_by_key(|n| rank(n));
        assert_eq!(
            names,
            [
                "stratus",
                "fastwebsockets",
                "alpha",
                "zeta",
                "uring-tcp-raw"
            ]
        );
    }

    /// An SVG shape: x, then width and fill (`<rect>`) or anchor and content (`<text>`).
    type Shape<T> = (i32, T, String);

    /// The `<rect>`s of an SVG as (x, width, fill), and the `<text>`s as (x, anchor, text).
    fn shapes(svg: &str) -> (Vec<Shape<i32>>, Vec<Shape<String>>) {
        let attr = |tag: &str, name: &str| -> String {
            let key = format!(" {name}=\"");
            let at = tag.find(&key).map(|i| i + key.len()).unwrap_or(tag.len());
            tag[at..].split('"').next().unwrap_or_default().to_owned()
        };
        let rects = svg
            .split("<rect")
            .skip(1)
            .map(|t| {
                let tag = t.split('>').next().unwrap();
                let n = |name| attr(tag, name).parse().unwrap();
                (n("x"), n("width"), attr(tag, "fill"))
            })
            .collect();
        let texts = svg
            .split("<text")
            .skip(1)
            .map(|t| {
                let (tag, rest) = t.split_once('>').unwrap();
                let body = rest.split("</text>").next().unwrap().trim().to_owned();
                (
                    attr(tag, "x").parse().unwrap(),
                    attr(tag, "text-anchor"),
                    body,
                )
            })
            .collect();
        (rects, texts)
    }

    #[test]
    fn charts_name_their_units_write_figures_in_k_and_m_and_keep_the_legend_beside_the_bars() {
        let dir = std::env::temp_dir().join(format!("stratus-plot-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let groups = vec![
            group(&fanout(0.0, 1)).unwrap(),
            group(&with_cpu(fanout(15.0, 1))).unwrap(),
        ];
        assert_eq!(groups[0].setups[0].cpu_us, None);
        assert_eq!(
            groups[1].setups[0].cpu_us,
            Some(0.52),
            "the mean of the rounds"
        );
        let colors = Colors::of(&groups);
        let legend_x = (WIDTH - LEGEND_WIDTH) as i32;
        for measure in [Measure::Throughput, Measure::Latency, Measure::Cpu] {
            // The CPU chart has the groups that measured it (as `run` picks them).
            let refs: Vec<&Group> = match measure {
                Measure::Cpu => vec![&groups[1]],
                _ => groups.iter().collect(),
            };
            let path = dir.join(format!("{measure:?}.svg"));
            chart(&refs, measure, &colors, &path).unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            let (rects, texts) = shapes(&svg);
            let text = |s: &str| texts.iter().any(|t| t.2 == s);
            for g in &refs {
                assert!(text(&g.label()), "{measure:?}: panel {}", g.label());
            }
            assert!(!svg.contains("1500000"), "{measure:?}: a raw figure");
            match measure {
                Measure::Throughput => {
                    assert!(text("deliveries per second (msg/s)"));
                    assert!(text("1.5M") && text("600k") && text("180k"));
                    // Where the server's CPU was measured, it stands beside deliveries/s.
                    assert!(text("1.5M · 0.52 µs CPU each"), "{texts:?}");
                    assert!(text("180k · 4.1 µs CPU each"));
                }
                Measure::Cpu => {
                    assert!(text("server CPU time per delivery (µs)"));
                    assert!(text("0.52 µs") && text("1.3 µs") && text("4.1 µs"));
                }
                _ => {
                    assert!(text("publish-to-receive latency (ms)"));
                    assert!(text("p50 35 ms") && text("p99 110 ms") && text("p99 130 ms"));
                    assert!(text("p50 (median)") && text("p99"), "the shades' key");
                }
            }
            // Every setup has a bar left of the legend column and a swatch in it, and no
            // shape straddles the column's edge.
            for (name, color) in &colors.0 {
                let fill = format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2);
                let of: Vec<_> = rects.iter().filter(|r| r.2 == fill).collect();
                assert!(of.iter().any(|r| r.0 + r.1 <= legend_x), "{name}: no bar");
                assert!(
                    of.iter().any(|r| r.0 >= legend_x),
                    "{name}: not in the legend"
                );
                let label = texts.iter().find(|t| t.2 == *name && t.1 == "start");
                assert!(
                    label.is_some_and(|t| t.0 >= legend_x),
                    "{name}: legend entry"
                );
            }
            for (x, width, _) in rects.iter().filter(|r| r.1 < WIDTH as i32) {
                assert!(
                    x + width <= legend_x || *x >= legend_x,
                    "a rect across the legend"
                );
            }
            // A figure at a bar's end ends before the legend column (as wide as estimated).
            for (x, _, figure) in texts.iter().filter(|t| t.0 < legend_x && t.1 == "start") {
                let end = *x as f64 + text_width(figure);
                assert!(
                    end <= legend_x as f64,
                    "{measure:?}: {figure} runs to {end}"
                );
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
