//! `agentq keys`: create, list and revoke API keys. These are admin operations on the store
//! (AWS credentials and `AGENTQ_TABLE`), not API calls, so no key is needed to make the first.

use agentq::domain::tenant::{Limits, Tenant, new_key, tenant_id};
use agentq::store::{DynamoStore, TenantAdmin, TenantRead};
use clap::Subcommand;

use crate::CliError;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key for a tenant (creating the tenant, or updating its limits). The key is
    /// printed once, as the last line.
    Create {
        #[arg(long)]
        tenant: String,
        /// Submissions per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Submissions in a burst.
        #[arg(long)]
        burst: Option<u32>,
        /// Tasks queued or running at once.
        #[arg(long)]
        max_running: Option<u32>,
        /// Spend per calendar month (UTC).
        #[arg(long)]
        monthly_budget_usd: Option<f64>,
    },
    /// List keys (never the keys themselves).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by its id (from `keys list`).
    Revoke { key_id: String },
}

pub(crate) async fn store() -> Result<DynamoStore, CliError> {
    let table = std::env::var("AGENTQ_TABLE")
        .map_err(|_| CliError::Usage("AGENTQ_TABLE is not set (make up writes it to .run/cli.env)".into()))?;
    let sdk = agentq::runtime::aws::sdk_config(&agentq::runtime::config::AwsTimeouts::TOOLS).await;
    Ok(DynamoStore::new(agentq::runtime::aws::dynamodb(&sdk), table, std::time::Duration::from_secs(30 * 86_400)))
}

pub(crate) fn unavailable(e: agentq::store::StoreError) -> CliError {
    CliError::Unavailable(format!("{:#}", anyhow::Error::from(e)))
}

pub async fn run(command: KeysCommand, json: bool) -> Result<(), CliError> {
    let store = store().await?;
    let now = agentq::now();
    match command {
        KeysCommand::Create { tenant, rate, burst, max_running, monthly_budget_usd } => {
            let id = tenant_id(&tenant).map_err(|e| CliError::Usage(e.to_string()))?;
            let existing = store.tenant(&id).await.map_err(unavailable)?;
            let mut limits = existing.as_ref().map(|t| t.limits).unwrap_or_default();
            if let Some(r) = rate {
                limits.rate_per_sec = r;
            }
            if let Some(b) = burst {
                limits.burst = b;
            }
            if let Some(m) = max_running {
                limits.max_running = m;
            }
            if let Some(usd) = monthly_budget_usd {
                limits.monthly_budget_nanos = Some((usd * 1e9).round() as u64);
            }
            if !(limits.rate_per_sec > 0.0 && limits.burst > 0 && limits.max_running > 0) {
                return Err(CliError::Usage("rate, burst and max-running must be positive".into()));
            }
            let created_at = existing.map_or(now, |t| t.created_at);
            store.put_tenant(&Tenant { tenant_id: id.clone(), limits, created_at }).await.map_err(unavailable)?;
            let (key, record) = new_key(&id, now);
            store.put_key(&record).await.map_err(unavailable)?;
            if json {
                out!(
                    "{}",
                    serde_json::json!({"tenant": id, "key_id": record.key_id, "limits": limits, "key": key.expose()})
                );
            } else {
                eprintln!("created key {} for tenant {id} ({})", record.key_id, describe(&limits));
                eprintln!("store it now: it is shown only once");
                out!("{}", key.expose());
            }
        }
        KeysCommand::List { tenant } => {
            for k in store.list_keys(tenant.as_deref()).await.map_err(unavailable)? {
                if json {
                    out!(
                        "{}",
                        serde_json::to_string(&serde_json::json!({
                            "key_id": k.key_id, "prefix": k.prefix, "tenant": k.tenant_id,
                            "created_at": k.created_at.to_string(), "revoked": k.is_revoked()
                        }))
                        .unwrap_or_default()
                    );
                } else {
                    let state = if k.is_revoked() { "revoked" } else { "active" };
                    out!("{}  {}…  {:<20}  {state}", k.key_id, k.prefix, k.tenant_id);
                }
            }
        }
        KeysCommand::Revoke { key_id } => match store.revoke_key(&key_id, now).await.map_err(unavailable)? {
            Some(k) => out!("revoked {} (tenant {})", k.key_id, k.tenant_id),
            None => return Err(CliError::Rejected(format!("no key with id {key_id}"))),
        },
    }
    Ok(())
}

fn describe(l: &Limits) -> String {
    let budget = l
        .monthly_budget_nanos
        .map_or_else(|| "no monthly budget".to_owned(), |b| format!("${} a month", b as f64 / 1e9));
    format!("{}/s, burst {}, {} running at once, {budget}", l.rate_per_sec, l.burst, l.max_running)
}
