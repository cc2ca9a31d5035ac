//! What a run prints at the end: the medians as a Markdown table (ready
//! for docs/benchmarks.md) with ratios to Passerelle, Passerelle's own
//! figures, and the targets, each met or not with its figure.

use crate::contestants::{Contestant, Sample};
use crate::median;
use crate::passerelle::StartUp;
use crate::transform::TransformCost;

pub struct Report {
    messages: usize,
    rounds: usize,
    concurrency: u16,
    pub samples: Vec<(Contestant, Vec<Sample>)>,
    pub start_up: Option<StartUp>,
    pub transform: Option<TransformCost>,
    pub swaps: Vec<f64>,
    /// Passerelle's peak RSS in the swap phase, in bytes.
    pub swap_peak_rss: Option<u64>,
}

/// A contestant's medians over the rounds.
struct Figures {
    rate: f64,
    min: f64,
    max: f64,
    cpu_us: f64,
    broker_us: Option<f64>,
    machine_busy: Option<f64>,
}

impl Report {
    pub fn new(messages: usize, rounds: usize, concurrency: u16) -> Self {
        Self {
            messages,
            rounds,
            concurrency,
            samples: Vec::new(),
            start_up: None,
            transform: None,
            swaps: Vec::new(),
            swap_peak_rss: None,
        }
    }

    fn figures(&self, contestant: Contestant) -> Option<Figures> {
        let (_, samples) = self.samples.iter().find(|(c, _)| *c == contestant)?;
        let rates: Vec<f64> = samples.iter().map(|s| s.rate).collect();
        // The median of a figure over the rounds that have it, scaled.
        let median_of = |figure: fn(&Sample) -> Option<f64>, scale: f64| {
            let values: Vec<f64> = samples.iter().filter_map(figure).map(|f| f * scale).collect();
            (!values.is_empty()).then(|| median(values))
        };
        Some(Figures {
            min: rates.iter().copied().fold(f64::INFINITY, f64::min),
            max: rates.iter().copied().fold(0.0, f64::max),
            rate: median(rates),
            cpu_us: median_of(|s| s.cpu_per_message, 1e6).unwrap_or(f64::NAN),
            broker_us: median_of(|s| s.broker_cpu_per_message, 1e6),
            machine_busy: median_of(|s| s.machine_busy, 100.0),
        })
    }

    fn peak_rss_mib(&self) -> Option<f64> {
        let (_, samples) = self.samples.iter().find(|(c, _)| *c == Contestant::Passerelle)?;
        let peak = samples.iter().filter_map(|s| s.peak_rss).max()?;
        Some(mib(peak))
    }

    /// The target's figure: the higher of the delivery rounds' peak and
    /// the swap phase's, where the host also compiles.
    fn highest_rss_mib(&self) -> Option<f64> {
        let swapping = self.swap_peak_rss.map(mib);
        self.peak_rss_mib().into_iter().chain(swapping).reduce(f64::max)
    }

    pub fn print(&self) {
        println!();
        println!(
            "## {} persistent messages x {} round(s), {} in flight: medians",
            self.messages, self.rounds, self.concurrency
        );
        println!();
        self.print_table();
        println!();
        println!(
            "Broker CPU is RabbitMQ's over the same window; machine busy is the share of all cores in use \
             (contestant, broker and this harness's HTTP server): near 100%, the round was limited by the \
             machine, not by the contestant alone."
        );
        println!();
        self.print_passerelle();
        println!();
        self.print_targets();
    }

    fn print_table(&self) {
        let passerelle = self.figures(Contestant::Passerelle);
        println!(
            "| contestant | msg/s | rounds (min–max) | CPU µs/msg | Passerelle's rate ÷ this | Passerelle's CPU ÷ this | broker CPU µs/msg | machine busy |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (contestant, _) in &self.samples {
            let Some(figures) = self.figures(*contestant) else {
                continue;
            };
            let ratio =
                |ours: Option<f64>, theirs: f64| ours.map_or("–".into(), |ours| format!("{:.2}×", ours / theirs));
            let or_dash = |figure: Option<f64>, unit: &str| figure.map_or("–".into(), |f| format!("{f:.1}{unit}"));
            println!(
                "| {} | {:.0} | {:.0}–{:.0} | {:.1} | {} | {} | {} | {} |",
                contestant.label(),
                figures.rate,
                figures.min,
                figures.max,
                figures.cpu_us,
                ratio(passerelle.as_ref().map(|p| p.rate), figures.rate),
                ratio(passerelle.as_ref().map(|p| p.cpu_us), figures.cpu_us),
                or_dash(figures.broker_us, ""),
                or_dash(figures.machine_busy, "%"),
            );
        }
    }

    fn print_passerelle(&self) {
        if let Some(rss) = self.peak_rss_mib() {
            println!(
                "- Passerelle's peak RSS (VmHWM, both shipped routes loaded), highest of the rounds: {rss:.1} MiB"
            );
        }
        if let Some(rss) = self.swap_peak_rss.map(mib) {
            println!(
                "- Passerelle's peak RSS in the swap phase (serving, and compiling each new version): {rss:.1} MiB"
            );
        }
        if let Some(cost) = &self.transform {
            println!(
                "- transform alone, ns/msg: native mapping {:.0}; component, fresh instance, pooling allocator {:.0}, \
                 on-demand allocator {:.0}; sandbox overhead (pooled - native) {:.1} µs",
                cost.native_ns,
                cost.pooled_ns,
                cost.on_demand_ns,
                (cost.pooled_ns - cost.native_ns) / 1e3
            );
        }
        if !self.swaps.is_empty() {
            let (min, max) = min_max(&self.swaps);
            println!(
                "- swap, file replaced -> first delivery from the new version: median {:.1} ms (min {min:.1}, max {max:.1})",
                median(self.swaps.clone())
            );
        }
        if let Some(start_up) = &self.start_up {
            println!(
                "- start-up to /readyz 200: median {:.1} ms with a warm compile cache (the first, cold: {:.1} ms)",
                start_up.warm_ms, start_up.cold_ms
            );
        }
    }

    fn print_targets(&self) {
        println!("Targets (issue 10):");
        let rate_vs = |other| Some(self.figures(Contestant::Passerelle)?.rate / self.figures(other)?.rate);
        let cpu_vs = |other| Some(self.figures(Contestant::Passerelle)?.cpu_us / self.figures(other)?.cpu_us);
        target(
            "end to end >= 0.9x native",
            rate_vs(Contestant::Native),
            |r| r >= 0.9,
            "x",
        );
        target("end to end >= 4x Node.js", rate_vs(Contestant::Node), |r| r >= 4.0, "x");
        let overhead = self.transform.as_ref().map(|c| (c.pooled_ns - c.native_ns) / 1e3);
        target("transform overhead <= 10 µs", overhead, |us| us <= 10.0, " µs");
        target("CPU/msg <= 1.2x native", cpu_vs(Contestant::Native), |r| r <= 1.2, "x");
        let swap = (!self.swaps.is_empty()).then(|| median(self.swaps.clone()));
        target("swap < 500 ms", swap, |ms| ms < 500.0, " ms");
        target(
            "start-up < 200 ms",
            self.start_up.as_ref().map(|s| s.warm_ms),
            |ms| ms < 200.0,
            " ms",
        );
        target("RSS < 150 MiB", self.highest_rss_mib(), |mib| mib < 150.0, " MiB");
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn target(name: &str, figure: Option<f64>, met: impl Fn(f64) -> bool, unit: &str) {
    match figure {
        Some(value) if met(value) => println!("- {name}: met ({value:.2}{unit})"),
        Some(value) => println!("- {name}: NOT met ({value:.2}{unit})"),
        None => println!("- {name}: not measured in this run"),
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    (min, max)
}
