//! An SVG flamegraph of an episode, drawn by inferno (flamegraph.pl's
//! layout, search and zoom). The title is the episode's headline, the
//! subtitle its verdict and where the time went. Time off the CPU is drawn
//! cold: its frames carry inferno's `_[w]` annotation (not shown, but it keeps
//! them apart from the same functions on the CPU) and are given blues, time
//! waiting for a CPU purples, while on-CPU frames keep the warm JavaScript
//! palette (green for JavaScript, as in flamegraph.pl's `--colors js`).
use inferno::flamegraph::{
    self,
    color::{Color, MultiPalette, Palette, PaletteMap},
};

use super::common::{ExportError, Format, Profile, State};

pub struct Svg;

impl Format for Svg {
    const NAME: &'static str = "svg";
    const EXT: &'static str = "svg";
    fn render(p: &Profile) -> Result<Vec<u8>, ExportError> {
        render(p)
    }
}

/// Annotation for frames of time off the CPU; inferno hides it when drawing.
const COLD: &str = "_[w]";

fn cold_color(name: &str, state: State) -> Color {
    // A stable shade per name (FNV-1a), so neighbours differ.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let v = (h % 60) as u8;
    match state {
        State::Runqueue => Color {
            r: 150 + v / 2,
            g: 110 + v,
            b: 220,
        },
        _ => Color {
            r: 80 + v,
            g: 140 + v,
            b: 235,
        },
    }
}

fn render(p: &Profile) -> Result<Vec<u8>, ExportError> {
    let mut palette = PaletteMap::default();
    let mut lines = Vec::with_capacity(p.stacks.len());
    for s in &p.stacks {
        let cold = matches!(s.state, State::OffCpu | State::Runqueue);
        let mut line = String::new();
        let mut push = |name: &str, line: &mut String| {
            if !line.is_empty() {
                line.push(';');
            }
            // inferno splits on ';' and reads the count after the last space.
            let name = name.replace(';', ":");
            if cold {
                let annotated = format!("{name}{COLD}");
                palette.insert(&annotated, cold_color(&name, s.state));
                line.push_str(&annotated);
            } else {
                line.push_str(&name);
            }
        };
        for f in p.frames(s) {
            push(&f.name, &mut line);
        }
        match (s.state.marker(), line.is_empty()) {
            (Some(marker), _) => push(marker, &mut line),
            (None, true) => push("[no stack]", &mut line),
            (None, false) => {}
        }
        line.push_str(&format!(" {}", s.weight));
        lines.push(line);
    }
    let mut opt = flamegraph::Options::default();
    opt.title = p.headline.clone();
    opt.subtitle = Some(p.detail.clone());
    opt.colors = Palette::Multi(MultiPalette::Js);
    opt.palette_map = Some(&mut palette);
    opt.count_name = if p.period_ns == 0 {
        "samples (ms off the CPU)".to_owned()
    } else {
        "samples".to_owned()
    };
    // Stable colours for the same input: files can be compared and tested.
    opt.hash = true;
    opt.deterministic = true;
    let mut out = Vec::new();
    if lines.is_empty() {
        lines.push("[no samples] 1".to_owned());
    }
    flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut out).map_err(
        |source| ExportError::Render {
            format: "svg",
            source,
        },
    )?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        export::common::Stack,
        symbolize::{Frame, FrameKind},
    };

    /// inferno writes a DOCTYPE, which roxmltree refuses unless allowed.
    const XML: roxmltree::ParsingOptions = roxmltree::ParsingOptions {
        allow_dtd: true,
        nodes_limit: u32::MAX,
    };

    pub(crate) fn profile() -> Profile {
        let js = |n: &str| Frame::new(n, FrameKind::Js);
        Profile {
            id: "7-7-100".into(),
            headline: "pid 7 tid 7 main: loop blocked 300.0 ms, 20 samples".into(),
            detail: "busy in JavaScript: on-CPU 70%, asleep 30% <&>".into(),
            pid: 7,
            tid: Some(7),
            thread: "main".into(),
            thread_name: Some("node".into()),
            verdict: Some("javascript".into()),
            start_ns: 100,
            start_unix_ns: 1_700_000_000_000_000_000,
            duration_ns: 300_000_000,
            period_ns: 5_025_125,
            root: None,
            stacks: vec![
                Stack {
                    frames: vec![js("main /a.js:1:1"), js("blockSpin /a.js:3:9")],
                    state: State::OnCpu,
                    weight: 20,
                    samples: 20,
                    ns: 210_000_000,
                },
                Stack {
                    frames: vec![js("main /a.js:1:1"), js("wait /a.js:9:1")],
                    state: State::OffCpu,
                    weight: 18,
                    samples: 0,
                    ns: 90_000_000,
                },
                Stack {
                    frames: vec![],
                    state: State::Runqueue,
                    weight: 1,
                    samples: 0,
                    ns: 5_000_000,
                },
            ],
        }
    }

    #[test]
    fn svg_is_well_formed_with_title_frames_and_cold_colours() {
        let svg = String::from_utf8(render(&profile()).unwrap()).unwrap();
        let doc = roxmltree::Document::parse_with_options(&svg, XML).expect("well-formed XML");
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        let all = texts.join("\n");
        assert!(all.contains("loop blocked 300.0 ms"), "title missing");
        assert!(all.contains("asleep 30% <&>"), "subtitle missing");
        assert!(all.contains("blockSpin /a.js:3:9"), "function missing");
        // The annotation is drawn away; the off-CPU frame and marker stay.
        assert!(all.contains("[off-cpu]") && !all.contains("_[w]"), "{all}");
        // On-CPU `main` and off-CPU `main` are different rectangles, the
        // latter in a blue.
        let cold = cold_color("wait /a.js:9:1", State::OffCpu);
        let fill = format!("rgb({},{},{})", cold.r, cold.g, cold.b);
        assert!(svg.contains(&fill), "no cold fill {fill}");
    }

    #[test]
    fn an_empty_profile_still_draws() {
        let mut p = profile();
        p.stacks.clear();
        let svg = String::from_utf8(render(&p).unwrap()).unwrap();
        roxmltree::Document::parse_with_options(&svg, XML).expect("well-formed XML");
    }
}
