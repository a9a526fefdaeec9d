//! Token economics: what a measured throughput costs and earns over the hardware's life.
//!
//! Formulas (a year is 365 days = 8,760 h = 31,536,000 s; the machine is powered all year):
//! - tokens per year = tokens/s × utilization × 31,536,000; lifetime tokens = that × years
//! - capital = hardware cost, or rent per hour × 8,760 × years when renting
//! - power = watts / 1000 × 8,760 × years × USD per kWh
//! - cost per million tokens = (capital + power) / (lifetime tokens / 10⁶)
//! - revenue = lifetime tokens / 10⁶ × price per million tokens
//! - revenue per dollar of hardware = revenue / capital (NVIDIA's "$1 earns $7" figure)
//! - break-even utilization = (capital + power) / (revenue at utilization 1): below it the
//!   tokens sold do not pay for the machine (above 1: they never do at this price).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::report::table;
use crate::BenchError;

pub const SECONDS_PER_YEAR: f64 = 365.0 * 24.0 * 3600.0;
pub const HOURS_PER_YEAR: f64 = 365.0 * 24.0;

/// What the operator knows about the machine and the market.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EconomicsInput {
    /// Output tokens per second the machine sustains (at the SLO, ideally).
    pub tokens_per_s: f64,
    /// Purchase price in USD (ignored when `rent_per_hour` is set).
    pub hardware_cost: f64,
    /// Rent in USD per hour, instead of a purchase.
    pub rent_per_hour: Option<f64>,
    pub years: f64,
    pub power_watts: f64,
    pub electricity_usd_per_kwh: f64,
    /// Share of the time the machine serves at that throughput, 0..=1.
    pub utilization: f64,
    /// What a provider charges per million tokens.
    pub price_per_mtok: f64,
}

/// What the tokens cost and earn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EconomicsOutput {
    pub tokens_per_year: f64,
    pub lifetime_tokens: f64,
    pub capital_cost: f64,
    pub power_cost: f64,
    pub total_cost: f64,
    pub cost_per_mtok: f64,
    pub capital_cost_per_mtok: f64,
    pub power_cost_per_mtok: f64,
    pub revenue: f64,
    /// Revenue / capital (null without a capital cost).
    pub revenue_per_hardware_dollar: Option<f64>,
    /// Revenue / (capital + power).
    pub revenue_per_dollar: Option<f64>,
    pub profit: f64,
    /// Utilization at which revenue equals total cost (null when nothing can be earned).
    pub break_even_utilization: Option<f64>,
}

impl EconomicsInput {
    pub fn validate(&self) -> Result<(), BenchError> {
        let check = |field: &'static str, v: f64, ok: bool, rule: &str| {
            if ok && v.is_finite() {
                Ok(())
            } else {
                Err(BenchError::InvalidArg {
                    field,
                    msg: format!("must be {rule}. Given: {v}"),
                })
            }
        };
        check(
            "tokens-per-second",
            self.tokens_per_s,
            self.tokens_per_s > 0.0,
            "> 0",
        )?;
        check("years", self.years, self.years > 0.0, "> 0")?;
        check(
            "utilization",
            self.utilization,
            self.utilization > 0.0 && self.utilization <= 1.0,
            "in (0, 1]",
        )?;
        check(
            "hardware-cost",
            self.hardware_cost,
            self.hardware_cost >= 0.0,
            ">= 0",
        )?;
        check(
            "power-watts",
            self.power_watts,
            self.power_watts >= 0.0,
            ">= 0",
        )?;
        check(
            "electricity",
            self.electricity_usd_per_kwh,
            self.electricity_usd_per_kwh >= 0.0,
            ">= 0",
        )?;
        check(
            "price-per-mtok",
            self.price_per_mtok,
            self.price_per_mtok >= 0.0,
            ">= 0",
        )?;
        if let Some(r) = self.rent_per_hour {
            check("rent-per-hour", r, r >= 0.0, ">= 0")?;
        }
        Ok(())
    }

    pub fn compute(&self) -> EconomicsOutput {
        let full_year_tokens = self.tokens_per_s * SECONDS_PER_YEAR;
        let tokens_per_year = full_year_tokens * self.utilization;
        let lifetime_tokens = tokens_per_year * self.years;
        let capital_cost = match self.rent_per_hour {
            Some(r) => r * HOURS_PER_YEAR * self.years,
            None => self.hardware_cost,
        };
        let power_cost =
            self.power_watts / 1000.0 * HOURS_PER_YEAR * self.years * self.electricity_usd_per_kwh;
        let total_cost = capital_cost + power_cost;
        let mtok = lifetime_tokens / 1e6;
        let revenue = mtok * self.price_per_mtok;
        let full_revenue = full_year_tokens * self.years / 1e6 * self.price_per_mtok;
        let ratio = |num: f64, den: f64| (den > 0.0).then(|| num / den);
        EconomicsOutput {
            tokens_per_year,
            lifetime_tokens,
            capital_cost,
            power_cost,
            total_cost,
            cost_per_mtok: total_cost / mtok,
            capital_cost_per_mtok: capital_cost / mtok,
            power_cost_per_mtok: power_cost / mtok,
            revenue,
            revenue_per_hardware_dollar: ratio(revenue, capital_cost),
            revenue_per_dollar: ratio(revenue, total_cost),
            profit: revenue - total_cost,
            break_even_utilization: ratio(total_cost, full_revenue),
        }
    }
}

/// The throughput to price from a `tokenfab bench --json` file, and where it came from: the
/// capacity point of the first server if searched, else its best run that met the SLO
/// (goodput share at least `attainment`), else (no SLO given) its best run.
pub fn throughput_from_report(v: &Value, attainment: f64) -> Result<(f64, String), BenchError> {
    let target = v
        .pointer("/targets/0")
        .ok_or_else(|| BenchError::Protocol {
            url: "bench JSON".into(),
            msg: "no `targets[0]`: not a `tokenfab bench --json` file".into(),
        })?;
    let num = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_f64);
    if let Some(users) = target.pointer("/capacity/users").and_then(Value::as_u64) {
        let tps = num(target, "/capacity/output_tokens_per_s").unwrap_or(0.0);
        return Ok((tps, format!("capacity point: {users} users within the SLO")));
    }
    let runs = target
        .get("runs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has_slo = runs.iter().any(|r| r.get("goodput").is_some());
    let best = runs
        .iter()
        .filter(|r| !has_slo || num(r, "/goodput/share").is_some_and(|s| s >= attainment))
        .filter_map(|r| Some((num(r, "/output_tokens_per_s")?, r)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let label = |r: &Value| match (r.get("concurrency"), r.get("request_rate_target")) {
        (Some(c), _) => format!("c={c}"),
        (None, Some(x)) => format!("rate={x}"),
        _ => "rate=inf".into(),
    };
    match best {
        Some((tps, r)) if has_slo => Ok((tps, format!("best run meeting the SLO ({})", label(r)))),
        Some((tps, r)) => Ok((tps, format!("best run, no SLO given ({})", label(r)))),
        None => Err(BenchError::Protocol {
            url: "bench JSON".into(),
            msg: format!(
                "no run met the SLO for {:.0}% of requests",
                attainment * 100.0
            ),
        }),
    }
}

fn usd(x: f64) -> String {
    if x.abs() >= 1000.0 {
        let s = format!("{:.0}", x.abs());
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        format!("{}${out}", if x < 0.0 { "-" } else { "" })
    } else if x.abs() >= 1.0 {
        format!("{}${:.2}", if x < 0.0 { "-" } else { "" }, x.abs())
    } else {
        format!("{}${:.4}", if x < 0.0 { "-" } else { "" }, x.abs())
    }
}

/// The inputs and results as a two-column table.
pub fn render(i: &EconomicsInput, o: &EconomicsOutput) -> String {
    let opt = |x: Option<f64>, unit: &str| x.map_or("-".into(), |v| format!("{v:.2}{unit}"));
    let rows: Vec<Vec<String>> = vec![
        vec![
            "tokens/s (at utilization 1)".into(),
            format!("{:.1}", i.tokens_per_s),
        ],
        vec!["utilization".into(), format!("{:.2}", i.utilization)],
        vec!["years".into(), format!("{}", i.years)],
        vec![
            "tokens per year".into(),
            format!("{:.4e}", o.tokens_per_year),
        ],
        vec![
            "tokens over the lifetime".into(),
            format!("{:.4e}", o.lifetime_tokens),
        ],
        vec![
            if i.rent_per_hour.is_some() {
                "rent over the lifetime"
            } else {
                "hardware"
            }
            .into(),
            usd(o.capital_cost),
        ],
        vec!["power over the lifetime".into(), usd(o.power_cost)],
        vec!["cost per million tokens".into(), usd(o.cost_per_mtok)],
        vec!["  of which capital".into(), usd(o.capital_cost_per_mtok)],
        vec!["  of which power".into(), usd(o.power_cost_per_mtok)],
        vec!["price per million tokens".into(), usd(i.price_per_mtok)],
        vec!["revenue over the lifetime".into(), usd(o.revenue)],
        vec![
            "revenue per dollar of hardware".into(),
            opt(o.revenue_per_hardware_dollar, ""),
        ],
        vec![
            "revenue per dollar of cost".into(),
            opt(o.revenue_per_dollar, ""),
        ],
        vec!["profit".into(), usd(o.profit)],
        vec![
            "break-even utilization".into(),
            opt(o.break_even_utilization, ""),
        ],
    ];
    table(&["", "value"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nvidia() -> EconomicsInput {
        EconomicsInput {
            tokens_per_s: 24_000.0,
            hardware_cost: 350_000.0,
            rent_per_hour: None,
            years: 4.0,
            power_watts: 0.0,
            electricity_usd_per_kwh: 0.0,
            utilization: 1.0,
            price_per_mtok: 0.79,
        }
    }

    #[test]
    fn nvidia_h200_example() {
        // 24,000 tok/s × 31,536,000 s = 756,864,000,000 tokens a year; × 4 = 3,027,456,000,000.
        // Revenue 3,027,456 Mtok × $0.79 = $2,391,690.24; / $350,000 = 6.8334 per dollar.
        let o = nvidia().compute();
        assert_eq!(o.tokens_per_year, 756_864_000_000.0);
        assert_eq!(o.lifetime_tokens, 3_027_456_000_000.0);
        assert!((o.revenue - 2_391_690.24).abs() < 1e-3);
        let r = o.revenue_per_hardware_dollar.unwrap();
        assert!((r - 6.8334).abs() < 1e-4, "{r}");
        assert!(
            (6.75..6.85).contains(&r),
            "about 6.8 dollars back per dollar"
        );
        // Capital per Mtok: 350,000 / 3,027,456 = $0.11561.
        assert!((o.cost_per_mtok - 0.115609).abs() < 1e-5);
        // Break-even: the machine pays for itself at 350,000 / 2,391,690.24 = 14.63% utilization.
        assert!((o.break_even_utilization.unwrap() - 0.146341).abs() < 1e-5);
        assert!((o.profit - 2_041_690.24).abs() < 1e-3);
    }

    #[test]
    fn power_rent_and_utilization() {
        // 10 kW at $0.10/kWh for 4 years: 10 × 8,760 × 4 × 0.10 = $35,040.
        let mut i = EconomicsInput {
            power_watts: 10_000.0,
            electricity_usd_per_kwh: 0.10,
            ..nvidia()
        };
        let o = i.compute();
        assert!((o.power_cost - 35_040.0).abs() < 1e-6);
        assert!((o.total_cost - 385_040.0).abs() < 1e-6);
        // Half the time busy: half the tokens and revenue, same cost; break-even unchanged.
        i.utilization = 0.5;
        let h = i.compute();
        assert!((h.lifetime_tokens - o.lifetime_tokens / 2.0).abs() < 1.0);
        assert!((h.cost_per_mtok - 2.0 * o.cost_per_mtok).abs() < 1e-9);
        assert!(
            (h.break_even_utilization.unwrap() - o.break_even_utilization.unwrap()).abs() < 1e-12
        );
        // Renting at $10/h for 4 years: 10 × 8,760 × 4 = $350,400, replacing the purchase.
        let r = EconomicsInput {
            rent_per_hour: Some(10.0),
            ..nvidia()
        }
        .compute();
        assert!((r.capital_cost - 350_400.0).abs() < 1e-6);
        assert!(EconomicsInput {
            utilization: 1.5,
            ..nvidia()
        }
        .validate()
        .is_err());
        assert!(nvidia().validate().is_ok());
    }

    #[test]
    fn throughput_from_bench_json() {
        let with_cap = serde_json::json!({"targets": [{"runs": [], "capacity": {"users": 12, "output_tokens_per_s": 80.5}}]});
        assert_eq!(throughput_from_report(&with_cap, 0.9).unwrap().0, 80.5);
        let runs = serde_json::json!({"targets": [{"runs": [
            {"concurrency": 1, "output_tokens_per_s": 40.0, "goodput": {"share": 1.0}},
            {"concurrency": 8, "output_tokens_per_s": 75.0, "goodput": {"share": 0.95}},
            {"concurrency": 32, "output_tokens_per_s": 85.0, "goodput": {"share": 0.2}}
        ]}]});
        let (tps, why) = throughput_from_report(&runs, 0.9).unwrap();
        assert_eq!(tps, 75.0);
        assert!(why.contains("c=8"), "{why}");
        assert!(throughput_from_report(&serde_json::json!({}), 0.9).is_err());
        assert_eq!(usd(2_391_690.24), "$2,391,690");
    }
}
