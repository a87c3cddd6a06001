//! The framework's cost question behind `applctl plan`: API spend against a reserved GPU.
//!
//! monthly tokens = requests/day × tokens/request × 30; API cost = monthly tokens × price per
//! 1M tokens; self-hosted cost = GPU cost + operations per month. The framework puts the
//! crossover at typically $3,000–5,000/month of API spend; compliance (HIPAA, air gap) means
//! self-hosted on-prem whatever the cost.

use std::fmt::Write as _;

use serde::Serialize;

/// Days per month in the framework's arithmetic.
pub const DAYS_PER_MONTH: f64 = 30.0;
/// Lower and upper edge of the framework's crossover band, USD of API spend per month.
pub const CROSSOVER_BAND: (f64, f64) = (3_000.0, 5_000.0);

/// Inputs of a cost plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostInput {
    pub requests_per_day: u64,
    pub tokens_per_request: u64,
    /// API price, USD per 1M tokens.
    pub api_price_per_mtok: f64,
    /// Reserved GPU cost, USD per month (hardware amortization or rental).
    pub gpu_cost_per_month: f64,
    /// Operations (power, hosting, staff time), USD per month.
    pub ops_cost_per_month: f64,
    /// HIPAA, air gap or another rule that keeps data on-prem.
    pub compliance_requires_on_prem: bool,
}

/// What the framework recommends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recommendation {
    /// Compliance decides: self-hosted on-prem.
    SelfHostCompliance,
    /// Self-hosting is cheaper.
    SelfHost,
    /// The API is cheaper.
    Api,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostPlan {
    pub input: CostInput,
    pub monthly_tokens: f64,
    pub api_cost_per_month: f64,
    pub self_hosted_cost_per_month: f64,
    /// Monthly tokens at which API spend equals the self-hosted cost.
    pub break_even_tokens_per_month: f64,
    /// Requests per day at that break-even, at the given tokens per request.
    pub break_even_requests_per_day: f64,
    /// Where the API spend sits against the framework's $3,000–5,000 band.
    pub band: &'static str,
    pub recommendation: Recommendation,
    pub reason: String,
}

/// Why a cost plan cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CostError {
    #[error("API price must be positive, got {0}")]
    Price(f64),
    #[error("costs must be finite and not negative")]
    Cost,
}

/// Answers the cost question.
pub fn cost_plan(input: CostInput) -> Result<CostPlan, CostError> {
    if !(input.api_price_per_mtok.is_finite() && input.api_price_per_mtok > 0.0) {
        return Err(CostError::Price(input.api_price_per_mtok));
    }
    for c in [input.gpu_cost_per_month, input.ops_cost_per_month] {
        if !(c.is_finite() && c >= 0.0) {
            return Err(CostError::Cost);
        }
    }
    let monthly_tokens =
        input.requests_per_day as f64 * input.tokens_per_request as f64 * DAYS_PER_MONTH;
    let api = monthly_tokens / 1e6 * input.api_price_per_mtok;
    let own = input.gpu_cost_per_month + input.ops_cost_per_month;
    let break_even_tokens = own / input.api_price_per_mtok * 1e6;
    let break_even_requests = if input.tokens_per_request > 0 {
        break_even_tokens / DAYS_PER_MONTH / input.tokens_per_request as f64
    } else {
        f64::INFINITY
    };
    let band = if api < CROSSOVER_BAND.0 {
        "below the $3,000-5,000/month crossover band"
    } else if api <= CROSSOVER_BAND.1 {
        "inside the $3,000-5,000/month crossover band"
    } else {
        "above the $3,000-5,000/month crossover band"
    };
    let (recommendation, reason) = if input.compliance_requires_on_prem {
        (
            Recommendation::SelfHostCompliance,
            "compliance (HIPAA or air gap) requires self-hosting on-prem, whatever the cost"
                .to_string(),
        )
    } else if api > own {
        (
            Recommendation::SelfHost,
            format!("self-hosting saves ${:.0}/month ({band})", api - own),
        )
    } else {
        (
            Recommendation::Api,
            format!("the API is ${:.0}/month cheaper ({band})", own - api),
        )
    };
    Ok(CostPlan {
        input,
        monthly_tokens,
        api_cost_per_month: api,
        self_hosted_cost_per_month: own,
        break_even_tokens_per_month: break_even_tokens,
        break_even_requests_per_day: break_even_requests,
        band,
        recommendation,
        reason,
    })
}

impl CostPlan {
    /// The plan as a plain-text table.
    pub fn render_table(&self) -> String {
        let i = &self.input;
        let mut out = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "{k:<28}{v}");
        };
        row(
            "volume",
            format!(
                "{} requests/day x {} tokens = {:.1}M tokens/month",
                i.requests_per_day,
                i.tokens_per_request,
                self.monthly_tokens / 1e6
            ),
        );
        row(
            "API cost",
            format!(
                "${:.0}/month at ${:.2} per 1M tokens",
                self.api_cost_per_month, i.api_price_per_mtok
            ),
        );
        row(
            "self-hosted cost",
            format!(
                "${:.0}/month (GPU ${:.0} + operations ${:.0})",
                self.self_hosted_cost_per_month, i.gpu_cost_per_month, i.ops_cost_per_month
            ),
        );
        row(
            "break-even",
            format!(
                "{:.1}M tokens/month = {:.0} requests/day",
                self.break_even_tokens_per_month / 1e6,
                self.break_even_requests_per_day
            ),
        );
        let rec = match self.recommendation {
            Recommendation::SelfHostCompliance => "self-host on-prem",
            Recommendation::SelfHost => "self-host",
            Recommendation::Api => "use the API",
        };
        row("recommendation", format!("{rec}: {}", self.reason));
        out
    }

    /// The plan as pretty JSON.
    pub fn to_json(&self) -> String {
        // Plain data; serde_json writes non-finite floats as null rather than failing.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
