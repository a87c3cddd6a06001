//! `applctl plan`: the framework's cost question (API spend against a reserved GPU), from the
//! planned volume, the API price and the GPU cost. The arithmetic lives in
//! `appl_firmware_profiles::plan`; this module parses flags and prints.

use std::process::ExitCode;

use appl_firmware_profiles::plan::{cost_plan, CostInput};

/// Compare API spend with self-hosting for a planned volume.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Planned requests per day.
    #[arg(long, value_name = "N")]
    pub requests_per_day: u64,
    /// Tokens per request (prompt + completion, as the API bills them).
    #[arg(long, value_name = "N")]
    pub tokens_per_request: u64,
    /// API price in USD per 1M tokens.
    #[arg(long, value_name = "USD", default_value_t = 15.0)]
    pub api_price: f64,
    /// Reserved GPU cost in USD per month (rental, or hardware amortized).
    #[arg(long, value_name = "USD")]
    pub gpu_cost: f64,
    /// Operations cost in USD per month (power, hosting, staff time).
    #[arg(long, value_name = "USD", default_value_t = 0.0)]
    pub ops_cost: f64,
    /// HIPAA, an air gap or another rule keeps the data on-prem.
    #[arg(long)]
    pub compliance: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `applctl plan`.
pub fn run(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let plan = match cost_plan(CostInput {
        requests_per_day: args.requests_per_day,
        tokens_per_request: args.tokens_per_request,
        api_price_per_mtok: args.api_price,
        gpu_cost_per_month: args.gpu_cost,
        ops_cost_per_month: args.ops_cost,
        compliance_requires_on_prem: args.compliance,
    }) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let text = if args.json {
        plan.to_json() + "\n"
    } else {
        plan.render_table()
    };
    crate::check::write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}
