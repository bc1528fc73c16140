//! Line charts as standalone SVG, written by hand like walsh's bench charts
//! (`walsh::bench::report::Chart`: same size, font, palette and legend), for curves
//! rather than bars: x linear or log10, y linear, each series a polyline.

use std::fmt::Write as _;

/// The bench charts' palette, in order.
pub const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One polyline.
#[derive(Clone, Debug)]
pub struct Line {
    /// Legend entry; `None` keeps the line out of the legend (e.g. single seeds).
    pub name: Option<String>,
    /// Index into [`COLORS`] (wraps).
    pub color: usize,
    /// Bold (a mean) or thin and translucent (one run).
    pub bold: bool,
    /// (x, y) points in drawing order; points with a non-finite coordinate, or x <= 0 on
    /// a log axis, are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A line chart: axes, grid, one `<path>` per line, a legend of the named lines.
#[derive(Clone, Debug)]
pub struct LineChart {
    pub title: String,
    /// Under the title, smaller; empty for none.
    pub subtitle: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    /// The y range drawn; lines are clipped to it. `None`: every point's range.
    pub y_range: Option<(f64, f64)>,
    pub lines: Vec<Line>,
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A short axis label: 3e13 as "3e13", 1500 as "1500", 0.5 as "0.5".
fn short(v: f64) -> String {
    if v != 0.0 && !(1e-3..1e5).contains(&v.abs()) {
        let exp = v.abs().log10().floor() as i32;
        let mant = v / 10f64.powi(exp);
        if (mant - mant.round()).abs() < 1e-9 {
            format!("{}e{exp}", mant.round())
        } else {
            format!("{mant:.1}e{exp}")
        }
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round())
    } else {
        format!("{v}")
    }
}

/// A grid step of 1, 2 or 5 times a power of ten that cuts `range` into 4 to 10 parts.
fn tick_step(range: f64) -> f64 {
    let raw = range / 5.0;
    let power = 10f64.powf(raw.log10().floor());
    let m = raw / power;
    let nice = if m < 1.5 {
        1.0
    } else if m < 3.5 {
        2.0
    } else if m < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * power
}

impl LineChart {
    fn points<'a>(&self, line: &'a Line) -> impl Iterator<Item = (f64, f64)> + 'a {
        let log_x = self.log_x;
        line.points
            .iter()
            .copied()
            .filter(move |&(x, y)| x.is_finite() && y.is_finite() && (!log_x || x > 0.0))
    }

    /// The chart as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let (w, h, left, right, top, bottom) = (760.0, 420.0, 70.0, 190.0, 52.0, 56.0);
        let plot_w: f64 = w - left - right;
        let plot_h: f64 = h - top - bottom;
        let all: Vec<(f64, f64)> = self.lines.iter().flat_map(|l| self.points(l)).collect();
        let tx = |x: f64| if self.log_x { x.log10() } else { x };
        let (mut x_lo, mut x_hi) = all
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(x, _)| {
                (a.min(tx(x)), b.max(tx(x)))
            });
        let (mut y_lo, mut y_hi) = self.y_range.unwrap_or_else(|| {
            all.iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(_, y)| {
                    (a.min(y), b.max(y))
                })
        });
        if all.is_empty() {
            (x_lo, x_hi, y_lo, y_hi) = (0.0, 1.0, 0.0, 1.0);
        }
        if x_hi - x_lo < 1e-12 {
            x_hi = x_lo + 1.0;
        }
        if y_hi - y_lo < 1e-12 {
            y_hi = y_lo + 1.0;
        }
        let sx = |x: f64| left + plot_w * (tx(x) - x_lo) / (x_hi - x_lo);
        let sy = |y: f64| top + plot_h * (y_hi - y) / (y_hi - y_lo);

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<defs><clipPath id="plot"><rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/></clipPath></defs>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="15">{}</text>"#,
            left + plot_w / 2.0,
            escape(&self.title)
        );
        if !self.subtitle.is_empty() {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="38" text-anchor="middle" font-size="11" fill="#555">{}</text>"##,
                left + plot_w / 2.0,
                escape(&self.subtitle)
            );
        }
        // y grid: round values, 4 to 10 of them
        let step = tick_step(y_hi - y_lo);
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        let mut k = (y_lo / step).ceil() as i64;
        while (k as f64) * step <= y_hi + 1e-9 * step {
            let v = k as f64 * step;
            let yy = sy(v);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.decimals$}</text>"##,
                left + plot_w,
                left - 6.0,
                yy + 4.0,
            );
            k += 1;
        }
        // x grid: decades (and 2x, 5x within them) on a log axis, five levels otherwise
        let ticks: Vec<f64> = if self.log_x {
            let mut t = Vec::new();
            for e in (x_lo.floor() as i32)..=(x_hi.ceil() as i32) {
                for m in [1.0, 2.0, 5.0] {
                    let v = m * 10f64.powi(e);
                    if (x_lo - 1e-9..=x_hi + 1e-9).contains(&v.log10()) {
                        t.push(v);
                    }
                }
            }
            t
        } else {
            (0..=4)
                .map(|k| x_lo + (x_hi - x_lo) * k as f64 / 4.0)
                .collect()
        };
        for v in ticks {
            let xx = sx(v);
            let _ = writeln!(
                s,
                r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{top}" y2="{}" stroke="#eee"/><text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"##,
                top + plot_h,
                top + plot_h + 16.0,
                short(v)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
        );
        // thin lines first, so the means are drawn over them
        let mut order: Vec<&Line> = self.lines.iter().collect();
        order.sort_by_key(|l| l.bold);
        for line in order {
            let mut d = String::new();
            for (i, (x, y)) in self.points(line).enumerate() {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1}",
                    if i == 0 { "M" } else { " L" },
                    sx(x),
                    sy(y)
                );
            }
            if d.is_empty() {
                continue;
            }
            let (width, opacity) = if line.bold { (2.5, 1.0) } else { (1.0, 0.45) };
            let _ = writeln!(
                s,
                r#"<path d="{d}" fill="none" stroke="{}" stroke-width="{width}" stroke-opacity="{opacity}" clip-path="url(#plot)"/>"#,
                COLORS[line.color % COLORS.len()],
            );
        }
        let named = self
            .lines
            .iter()
            .filter_map(|l| l.name.as_ref().map(|n| (n, l.color)));
        for (i, (name, color)) in named.enumerate() {
            let ly = top + 18.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2.5"/><text x="{}" y="{:.1}">{}</text>"#,
                w - right + 12.0,
                w - right + 30.0,
                ly + 6.0,
                ly + 6.0,
                COLORS[color % COLORS.len()],
                w - right + 36.0,
                ly + 10.0,
                escape(name)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            left + plot_w / 2.0,
            h - 14.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>"#,
            top + plot_h / 2.0,
            top + plot_h / 2.0,
            escape(&self.y_label)
        );
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(log_x: bool) -> LineChart {
        LineChart {
            title: "t <&>".into(),
            subtitle: String::new(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x,
            y_range: None,
            lines: vec![
                Line {
                    name: None,
                    color: 0,
                    bold: false,
                    points: vec![(1.0, 3.0), (10.0, 2.0), (100.0, 1.0)],
                },
                Line {
                    name: Some("mean".into()),
                    color: 1,
                    bold: true,
                    points: vec![(0.0, 9.0), (10.0, 2.5), (100.0, f64::NAN), (1000.0, 1.5)],
                },
            ],
        }
    }

    #[test]
    fn one_path_per_line_and_a_legend_entry_per_named_line() {
        let svg = chart(true).to_svg();
        assert_eq!(svg.matches("<path ").count(), 2);
        assert!(
            svg.contains("<text x=\"606\" y=\"62.0\">mean</text>"),
            "{svg}"
        );
        assert!(svg.contains("t &lt;&amp;&gt;"));
        // log axis: x = 0 and the NaN point are dropped from the bold line (two points),
        // 1 and 1000 are the ends of the axis, labelled
        let bold = svg
            .lines()
            .find(|l| l.contains("stroke-width=\"2.5\" stroke-opacity"))
            .unwrap();
        assert_eq!(bold.matches(" L").count(), 1, "{bold}");
        assert!(
            svg.contains(">1000</text>") && svg.contains(">1</text>"),
            "{svg}"
        );
        // thin lines are drawn before the bold one
        assert!(
            svg.find("stroke-width=\"1\"").unwrap()
                < svg.find("stroke-width=\"2.5\" stroke-opacity").unwrap()
        );
    }

    #[test]
    fn the_plot_area_maps_the_data_range() {
        let svg = chart(false).to_svg();
        // linear x from 0 to 1000: the thin line's first point (x = 1) is near the left
        // edge (70), y = 3.0 of the range [1.0, 9.0] at 3/4 of the height down from the top
        let thin = svg
            .lines()
            .find(|l| l.contains("stroke-width=\"1\""))
            .unwrap();
        assert!(thin.contains("d=\"M70.5,286.0"), "{thin}");
    }

    #[test]
    fn grid_steps_are_round() {
        for (range, step) in [(0.58, 0.1), (8.0, 2.0), (0.03, 0.005), (1.0, 0.2)] {
            assert!(
                (tick_step(range) - step).abs() < 1e-12 * step,
                "{range}: {}",
                tick_step(range)
            );
        }
        // y from 1 to 9: lines at the multiples of 2 inside, 2 to 8
        let svg = chart(false).to_svg();
        for (label, drawn) in [
            (">2</text>", true),
            (">8</text>", true),
            (">9</text>", false),
        ] {
            assert_eq!(svg.contains(label), drawn, "{label}: {svg}");
        }
    }

    #[test]
    fn short_labels() {
        assert_eq!(short(3e13), "3e13");
        assert_eq!(short(2.5e12), "2.5e12");
        assert_eq!(short(1500.0), "1500");
        assert_eq!(short(0.5), "0.5");
    }
}
