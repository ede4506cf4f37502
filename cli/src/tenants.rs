//! `agentq tenants`: a tenant's settings, read and changed (admin: AWS credentials and
//! `AGENTQ_TABLE`, like `agentq keys`).

use agentq::domain::tenant::{MAX_WEIGHT, OverCap, Tenant, tenant_id};
use agentq::store::{TenantAdmin as _, TenantRead as _};
use clap::Subcommand;

use crate::CliError;
use crate::keys::{store, unavailable};

#[derive(Subcommand)]
pub enum TenantsCommand {
    /// Show a tenant's settings.
    Get { id: String },
    /// Change a tenant's settings (the others are kept).
    Set {
        id: String,
        /// Over its running cap, refuse a submit (429) or hold the task in line until a slot frees.
        #[arg(long, value_parser = ["reject", "hold"])]
        over_cap: Option<String>,
        /// Tasks queued or running at once.
        #[arg(long)]
        max_running: Option<u32>,
        /// Submissions per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Submissions in a burst.
        #[arg(long)]
        burst: Option<u32>,
        /// Spend per calendar month (UTC); 0 removes the budget.
        #[arg(long)]
        monthly_budget_usd: Option<f64>,
        /// Its share of the workers against other tenants with a backlog (1 to 16; default 1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_WEIGHT as i64))]
        weight: Option<u32>,
        /// Model tokens its tasks may use per minute; 0 removes the limit.
        #[arg(long)]
        tokens_per_minute: Option<u64>,
        /// Model calls its tasks may make per minute; 0 removes the limit.
        #[arg(long)]
        requests_per_minute: Option<u32>,
    },
}

fn show(tenant: &Tenant, json: bool) {
    if json {
        out!("{}", serde_json::to_string(tenant).unwrap_or_default());
        return;
    }
    let l = &tenant.limits;
    let budget = l.monthly_budget_nanos.map_or_else(|| "none".to_owned(), |b| format!("${}", b as f64 / 1e9));
    let over_cap = match l.over_cap {
        OverCap::Reject => "reject",
        OverCap::Hold => "hold",
    };
    let per_minute = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    out!(
        "{}: {}/s, burst {}, {} running at once (over the cap: {over_cap}), monthly budget {budget}, weight {}, model tokens per minute {}, model requests per minute {}",
        tenant.tenant_id,
        l.rate_per_sec,
        l.burst,
        l.max_running,
        l.weight,
        per_minute(l.tokens_per_minute),
        per_minute(l.requests_per_minute.map(u64::from)),
    );
}

pub async fn run(command: TenantsCommand, json: bool) -> Result<(), CliError> {
    let store = store().await?;
    match command {
        TenantsCommand::Get { id } => {
            let tenant = store.tenant(&id).await.map_err(unavailable)?;
            let tenant = tenant.ok_or_else(|| CliError::Rejected(format!("no tenant {id:?}")))?;
            show(&tenant, json);
            Ok(())
        }
        TenantsCommand::Set {
            id,
            over_cap,
            max_running,
            rate,
            burst,
            monthly_budget_usd,
            weight,
            tokens_per_minute,
            requests_per_minute,
        } => {
            let id = tenant_id(&id).map_err(|e| CliError::Usage(e.to_string()))?;
            let mut tenant = store.tenant(&id).await.map_err(unavailable)?.ok_or_else(|| {
                CliError::Rejected(format!("no tenant {id:?}: `agentq keys create --tenant` makes one"))
            })?;
            let l = &mut tenant.limits;
            if let Some(o) = over_cap {
                l.over_cap = if o == "hold" { OverCap::Hold } else { OverCap::Reject };
            }
            if let Some(m) = max_running {
                l.max_running = m;
            }
            if let Some(r) = rate {
                l.rate_per_sec = r;
            }
            if let Some(b) = burst {
                l.burst = b;
            }
            if let Some(usd) = monthly_budget_usd {
                l.monthly_budget_nanos = (usd > 0.0).then(|| (usd * 1e9).round() as u64);
            }
            if let Some(w) = weight {
                l.weight = w;
            }
            if let Some(n) = tokens_per_minute {
                l.tokens_per_minute = (n > 0).then_some(n);
            }
            if let Some(n) = requests_per_minute {
                l.requests_per_minute = (n > 0).then_some(n);
            }
            store.put_tenant(&tenant).await.map_err(unavailable)?;
            show(&tenant, json);
            Ok(())
        }
    }
}
