//! The PNG chart: one panel per measurement, horizontal bars at the median
//! with a whisker from min to max. Text is drawn with ab_glyph from a TTF
//! file (Debian's fonts-dejavu-core), so nothing links fontconfig.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::{
    coord::{Shift, ranged1d::SegmentValue},
    prelude::*,
    style::{FontStyle, register_font},
};

use crate::{
    cost::{Hook, Rules, Subject},
    methods::Method,
    reads::{Read, Table},
    report::{Run, control_rows, reads_rows, upgrade_summaries},
    stats::{Summary, percentile},
};

const FONT_FILES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
const OURS: RGBColor = RGBColor(31, 119, 180);
const CEILING: RGBColor = RGBColor(44, 160, 44);
const OTHER: RGBColor = RGBColor(150, 150, 150);
const SECOND: RGBColor = RGBColor(255, 127, 14);
const OURS_LIGHT: RGBColor = RGBColor(130, 180, 225);
const SECOND_LIGHT: RGBColor = RGBColor(255, 190, 130);

struct Bar {
    value: f64,
    range: Option<(f64, f64)>,
}

impl Bar {
    fn of(s: Option<Summary>) -> Option<Self> {
        s.map(|s| Self {
            value: s.median,
            range: Some((s.min, s.max)),
        })
    }
}

struct Row {
    label: String,
    /// One bar per series.
    bars: Vec<Option<Bar>>,
    /// Overrides the series colour (single-series panels).
    color: Option<RGBColor>,
}

struct Panel {
    title: String,
    unit: &'static str,
    series: Vec<(&'static str, RGBColor)>,
    rows: Vec<Row>,
}

fn plot<T, E: std::fmt::Debug>(r: Result<T, E>) -> Result<T> {
    r.map_err(|e| anyhow!("drawing the chart: {e:?}"))
}

fn register_fonts() -> Result<()> {
    let path = FONT_FILES
        .iter()
        .find(|p| Path::new(p).is_file())
        .with_context(|| {
            format!("no DejaVuSans.ttf in {FONT_FILES:?}: install fonts-dejavu-core (cargo xtask bench does)")
        })?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    // The font registry wants 'static data; the program draws one chart.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a font ab_glyph can read"))
}

pub fn write(run: &Run, path: &Path) -> Result<()> {
    register_fonts()?;
    let root = BitMapBackend::new(path, (1600, 1750)).into_drawing_area();
    plot(root.fill(&WHITE))?;
    let (title, body) = root.split_vertically(50);
    plot(title.titled(
        &format!(
            "ingress-xdp benchmark — {} × {}, kernel {}{}",
            run.machine.cpus,
            run.machine.cpu_model,
            run.machine.kernel,
            if run.quick { " (quick run)" } else { "" }
        ),
        ("sans-serif", 24),
    ))?;
    let panels = [
        cost_panel(run),
        rate_panel(run),
        receiver_panel(run),
        control_panel(run),
        reads_panel(run),
        upgrade_panel(run),
    ];
    for (area, panel) in body.split_evenly((3, 2)).iter().zip(&panels) {
        draw_panel(area, panel)?;
    }
    plot(root.present()).with_context(|| format!("writing {}", path.display()))
}

fn cost_panel(run: &Run) -> Panel {
    let subjects = [
        (
            Subject::Ours(Hook::Xdp, Rules::One),
            "ours XDP, 1 port",
            OURS,
        ),
        (
            Subject::Ours(Hook::Xdp, Rules::Counted),
            "ours XDP, 4,096 counted",
            OURS_LIGHT,
        ),
        (
            Subject::Ours(Hook::Tc, Rules::One),
            "ours TC, 1 port",
            SECOND,
        ),
        (
            Subject::Ours(Hook::Tc, Rules::Counted),
            "ours TC, 4,096 counted",
            SECOND_LIGHT,
        ),
        (Subject::XdpFilter, "xdp-filter", OTHER),
        (Subject::Minimal, "minimal port check", CEILING),
        (Subject::MinimalLookup, "minimal + rule lookup", CEILING),
        (Subject::MinimalMaps, "minimal + our maps", CEILING),
    ];
    let rows = run.cost.done().map_or_else(Vec::new, |c| {
        c.frames
            .iter()
            .enumerate()
            .map(|(f, frame)| Row {
                label: frame.name.into(),
                bars: subjects
                    .iter()
                    .map(|(s, ..)| Bar::of(c.above_floor(*s, f)))
                    .collect(),
                color: None,
            })
            .collect()
    });
    Panel {
        title: "1. Per-packet cost above the test_run floor".into(),
        unit: "ns per packet",
        series: subjects.iter().map(|(_, n, c)| (*n, *c)).collect(),
        rows,
    }
}

fn method_color(m: Method) -> RGBColor {
    match m {
        Method::OursTc
        | Method::OursXdpGeneric
        | Method::OursXdpNative
        | Method::OursXdpNativeEvents
        | Method::OursXdpNativeNoEventCode => OURS,
        Method::MinimalDrop
        | Method::MinimalEthertype
        | Method::MinimalLookup
        | Method::MinimalMaps
        | Method::BareDrop => CEILING,
        _ => OTHER,
    }
}

fn method_rows(run: &Run, pick: fn(&crate::rate::MethodResult) -> &Vec<f64>) -> Vec<Row> {
    run.rate.done().map_or_else(Vec::new, |results| {
        results
            .methods
            .iter()
            .map(|r| Row {
                label: r.method.name().into(),
                bars: vec![Bar::of(Summary::of(pick(r)))],
                color: Some(method_color(r.method)),
            })
            .collect()
    })
}

fn rate_panel(run: &Run) -> Panel {
    Panel {
        title: "2. Drop rate through a veth (generator + receiver)".into(),
        unit: "million packets per second",
        series: vec![("Mpps", OURS)],
        rows: method_rows(run, |r| &r.mpps),
    }
}

fn receiver_panel(run: &Run) -> Panel {
    Panel {
        title: "2. Receiver's cost (threaded NAPI kthread)".into(),
        unit: "ns per packet",
        series: vec![("ns/packet", OURS)],
        rows: method_rows(run, |r| &r.cost_ns),
    }
}

fn control_panel(run: &Run) -> Panel {
    let rows = run.control.done().map_or_else(Vec::new, |c| {
        control_rows(c)
            .into_iter()
            .map(|(label, samples)| {
                let at = |p| percentile(samples, p).map(|value| Bar { value, range: None });
                Row {
                    label: label.replace('`', ""),
                    bars: vec![at(50.0), at(99.0)],
                    color: None,
                }
            })
            .collect()
    });
    Panel {
        title: "3. Control plane against dockerd".into(),
        unit: "milliseconds",
        series: vec![("p50", OURS), ("p99", SECOND)],
        rows,
    }
}

fn reads_panel(run: &Run) -> Panel {
    let short_read = |r: Read| match r {
        Read::ListInProcess => "ranges()",
        Read::StatsInProcess => "stats refresh",
        Read::ListCli => "list --json",
        Read::StatsCli => "stats --json",
    };
    let short_table = |t: Table| match t {
        Table::Singles => "10k rules",
        Table::Range => "1 range",
    };
    let rows = run.reads.done().map_or_else(Vec::new, |r| {
        reads_rows(r)
            .into_iter()
            .map(|(read, table, new, old)| Row {
                label: format!("{}, {}", short_read(read), short_table(table)),
                bars: vec![
                    Bar::of(Summary::of(new)),
                    old.and_then(|o| Bar::of(Summary::of(&o.ms))),
                ],
                color: None,
            })
            .collect()
    });
    Panel {
        title: "4. Reads with 10,000 ports blocked".into(),
        unit: "milliseconds (ranges(), stats refresh: in-process; --json: the process)",
        series: vec![("this build", OURS), ("0.1.0", OTHER)],
        rows,
    }
}

fn upgrade_panel(run: &Run) -> Panel {
    let (rows, passed) = run.upgrade.done().map_or_else(
        || (Vec::new(), None),
        |u| {
            let (p, e) = upgrade_summaries(u);
            let row = |label: &str, s| Row {
                label: label.into(),
                bars: vec![Bar::of(s)],
                color: None,
            };
            (
                vec![
                    row("spawn -> new program on the link", p),
                    row("spawn -> attach exited", e),
                ],
                Some(u.trials.iter().map(|t| t.passed).sum::<u64>()),
            )
        },
    );
    Panel {
        title: match passed {
            Some(n) => format!("5. Upgrade from 0.1.0 under traffic ({n} blocked packets passed)"),
            None => "5. Upgrade from 0.1.0 under traffic".into(),
        },
        unit: "milliseconds",
        series: vec![("ms", OURS)],
        rows,
    }
}

fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, p: &Panel) -> Result<()> {
    if p.rows.is_empty() {
        plot(area.titled(&p.title, ("sans-serif", 20)))?;
        return plot(area.draw_text(
            "not measured in this run",
            &("sans-serif", 18).into_text_style(area),
            (40, 60),
        ));
    }
    let n = p.rows.len();
    let xmax = p
        .rows
        .iter()
        .flat_map(|r| r.bars.iter().flatten())
        .map(|b| b.range.map_or(b.value, |(_, hi)| hi.max(b.value)))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        // Room for the value labels, and for the legend of grouped panels.
        * if p.series.len() > 1 { 1.75 } else { 1.18 };
    let xmin = p
        .rows
        .iter()
        .flat_map(|r| r.bars.iter().flatten())
        .map(|b| b.range.map_or(b.value, |(lo, _)| lo.min(b.value)))
        .fold(0.0f64, f64::min);
    let mut chart = plot(
        ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(230)
            // Integer ranges are inclusive in plotters: 0..n-1 is n bands.
            .build_cartesian_2d(xmin..xmax, (0..n - 1).into_segmented()),
    )?;
    // Row 0 at the top.
    let labels: Vec<String> = p.rows.iter().rev().map(|r| r.label.clone()).collect();
    plot(
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_formatter(&|v| axis_text(*v, xmax))
            .x_desc(p.unit)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw(),
    )?;
    let band = chart.plotting_area().dim_in_pixel().1 as f64 / n as f64;
    let k = p.series.len();
    let pad = (band * 0.12).round();
    let thick = ((band - 2.0 * pad) / k as f64).max(1.0);
    for (j, (name, color)) in p.series.iter().enumerate() {
        let bars: Vec<(usize, &Bar, RGBColor)> = p
            .rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let b = r.bars.get(j)?.as_ref()?;
                Some((n - 1 - i, b, r.color.unwrap_or(*color)))
            })
            .collect();
        // Margins inside the row's band: top, bottom in pixels.
        let top = (pad + j as f64 * thick) as u32;
        let bottom = (band - pad - (j + 1) as f64 * thick).max(0.0) as u32;
        let mid = |y: usize| SegmentValue::CenterOf(y);
        let series = plot(chart.draw_series(bars.iter().map(|&(y, b, c)| {
            let mut r = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(y)),
                    (b.value, SegmentValue::Exact(y + 1)),
                ],
                c.filled(),
            );
            r.set_margin(top, bottom, 0, 0);
            r
        })))?;
        if k > 1 {
            series.label(*name).legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
            });
        }
        // Whiskers and value labels sit on the bar's own line.
        let offset = (top as f64 + thick / 2.0 - band / 2.0) as i32;
        let px = |x: f64| chart.backend_coord(&(x, SegmentValue::CenterOf(0))).0;
        let whiskers: Vec<(usize, f64, i32)> = bars
            .iter()
            .filter_map(|&(y, b, _)| b.range.map(|(lo, hi)| (y, lo, px(hi) - px(lo))))
            .collect();
        plot(chart.draw_series(whiskers.iter().map(|&(y, lo, len)| {
            EmptyElement::at((lo, mid(y)))
                + PathElement::new(vec![(0, offset), (len, offset)], BLACK.stroke_width(2))
        })))?;
        plot(chart.draw_series(bars.iter().map(|&(y, b, _)| {
            let at = b.range.map_or(b.value, |(_, hi)| hi.max(b.value));
            EmptyElement::at((at, mid(y)))
                + Text::new(
                    value_text(b.value),
                    (6, offset - 7),
                    ("sans-serif", 13).into_font(),
                )
        })))?;
    }
    if k > 1 {
        plot(
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw(),
        )?;
    }
    Ok(())
}

fn axis_text(v: f64, xmax: f64) -> String {
    if xmax >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn value_text(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
