//! `applctl plan`: the framework's cost question (API spend against a reserved GPU), from the
//! planned volume, the API price and the GPU cost. `--from-audit` answers it from recorded
//! traffic instead (`plan_audit.rs`). The arithmetic lives in
//! `appl_firmware_profiles::plan`; this module parses flags and prints.

use std::process::ExitCode;

use appl_firmware_profiles::plan::{cost_plan, CostInput};

/// Compare API spend with self-hosting for a planned volume.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Planned requests per day.
    #[arg(long, value_name = "N", required_unless_present = "from_audit")]
    pub requests_per_day: Option<u64>,
    /// Tokens per request (prompt + completion, as the API bills them).
    #[arg(long, value_name = "N", required_unless_present = "from_audit")]
    pub tokens_per_request: Option<u64>,
    /// API price in USD per 1M tokens.
    #[arg(long, value_name = "USD", default_value_t = 15.0)]
    pub api_price: f64,
    /// Reserved GPU cost in USD per month (rental, or hardware amortized).
    #[arg(long, value_name = "USD", required_unless_present = "from_audit")]
    pub gpu_cost: Option<f64>,
    /// Operations cost in USD per month (power, hosting, staff time).
    #[arg(long, value_name = "USD", default_value_t = 0.0)]
    pub ops_cost: f64,
    /// HIPAA, an air gap or another rule keeps the data on-prem.
    #[arg(long)]
    pub compliance: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub audit: crate::plan_audit::FromAuditArgs,
}

/// Runs `applctl plan`.
pub fn run(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    // clap requires these unless --from-audit, which `main` sends elsewhere.
    let (Some(requests_per_day), Some(tokens_per_request), Some(gpu_cost)) = (
        args.requests_per_day,
        args.tokens_per_request,
        args.gpu_cost,
    ) else {
        eprintln!("error: --requests-per-day, --tokens-per-request and --gpu-cost are required");
        return Ok(ExitCode::from(2));
    };
    let plan = match cost_plan(CostInput {
        requests_per_day,
        tokens_per_request,
        api_price_per_mtok: args.api_price,
        gpu_cost_per_month: gpu_cost,
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
