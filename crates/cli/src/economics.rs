//! `tokenfab economics`: cost per million tokens and revenue per dollar from a throughput.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tokenfab_bench::economics::{render, throughput_from_report, EconomicsInput};

#[derive(clap::Args)]
pub struct Args {
    /// Output tokens per second the machine sustains.
    #[arg(long, conflicts_with = "from", required_unless_present = "from")]
    tokens_per_second: Option<f64>,
    /// A `tokenfab bench --json` file: takes the throughput at the SLO point (the capacity
    /// point, else the best run meeting the SLO).
    #[arg(long)]
    from: Option<PathBuf>,
    /// Share of requests that must meet the SLO for a run to count (with --from).
    #[arg(long, default_value_t = 0.9)]
    slo_attainment: f64,
    /// Purchase price of the hardware, USD.
    #[arg(long, default_value_t = 0.0)]
    hardware_cost: f64,
    /// Rent per hour in USD, instead of a purchase.
    #[arg(long)]
    rent_per_hour: Option<f64>,
    #[arg(long, default_value_t = 4.0)]
    years: f64,
    /// Power drawn, watts (all year).
    #[arg(long, default_value_t = 0.0)]
    power_watts: f64,
    /// Electricity price, USD per kWh.
    #[arg(long, default_value_t = 0.0)]
    electricity: f64,
    /// Share of the time the machine serves at that throughput.
    #[arg(long, default_value_t = 1.0)]
    utilization: f64,
    /// What a provider charges per million tokens, USD.
    #[arg(long)]
    price_per_mtok: f64,
    /// Also write the inputs and results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let (tokens_per_s, source) = match (&args.from, args.tokens_per_second) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            let (tps, why) = throughput_from_report(&v, args.slo_attainment)?;
            (tps, format!("{}: {why}", path.display()))
        }
        (None, Some(t)) => (t, "--tokens-per-second".to_string()),
        (None, None) => bail!("give --tokens-per-second or --from"),
    };
    if args.hardware_cost == 0.0 && args.rent_per_hour.is_none() {
        bail!("give --hardware-cost or --rent-per-hour");
    }
    let input = EconomicsInput {
        tokens_per_s,
        hardware_cost: args.hardware_cost,
        rent_per_hour: args.rent_per_hour,
        years: args.years,
        power_watts: args.power_watts,
        electricity_usd_per_kwh: args.electricity,
        utilization: args.utilization,
        price_per_mtok: args.price_per_mtok,
    };
    input.validate()?;
    let output = input.compute();
    println!("throughput from {source}");
    print!("{}", render(&input, &output));
    if let Some(path) = &args.json {
        let v = serde_json::json!({"source": source, "input": input, "output": output});
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
