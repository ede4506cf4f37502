//! `agentq-local`: the local stack's helpers (see the crate docs). `make up` drives it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentq_local::deliver::{Delivery, LambdaInvoker, QueueRef};
use agentq_local::fake_model::FakeModel;
use agentq_local::gateway::Gateway;
use agentq_local::template::Template;
use anyhow::{Context as _, anyhow};
use aws_sdk_sqs::types::QueueAttributeName;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Local stand-ins for API Gateway, the SQS event source and the model")]
struct Cli {
    /// The SAM template describing the stack.
    #[arg(long, global = true, default_value = "template.yaml")]
    template: PathBuf,
    /// The stack name (`${AWS::StackName}` in resource names).
    #[arg(long, global = true, default_value = "agentq", env = "STACK_NAME")]
    stack: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the template's queues and tables; print the functions' environment as KEY=VALUE.
    Provision {
        /// Override the task queues' visibility timeout (the fault suite shortens it).
        #[arg(long, env = "AGENTQ_LOCAL_VISIBILITY_SECS")]
        visibility_timeout: Option<u32>,
    },
    /// Check the functions' environment as their cold start would (configuration, model keys,
    /// tool schemas) and say what is wrong, without starting anything.
    Preflight {
        #[arg(long)]
        env_file: PathBuf,
    },
    /// Delete the tables and queues integration tests made (names starting `test-`), so a
    /// long-lived emulator does not fill up.
    CleanTests,
    /// Serve the HTTP API at one address and deliver queued messages to the worker.
    Serve {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// Where the Lambda Invoke API is served (`cargo lambda watch`).
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        lambda: String,
        /// Receive loops per queue, at most the event source's MaximumConcurrency.
        #[arg(long, default_value_t = 2)]
        pollers: usize,
        /// How often scheduled functions run locally, in seconds.
        #[arg(long, default_value_t = 10, env = "AGENTQ_SCHEDULE_SECS")]
        schedule_secs: u64,
    },
    /// Submit one task through the HTTP API, wait for it to finish, print its final state.
    /// Exits non-zero unless it succeeded.
    Run {
        #[arg(long, default_value = "http://127.0.0.1:3000", env = "AGENTQ_URL")]
        url: String,
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        prompt: String,
    },
    /// Run the functions' binaries behind the Lambda Invoke API (an alternative to
    /// `cargo lambda watch` that restarts dead processes and enforces the template's timeouts).
    Lambdas {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Where the built binaries are.
        #[arg(long, default_value = "target/debug")]
        bin_dir: PathBuf,
        #[arg(long)]
        env_file: PathBuf,
        /// Processes per function started at once.
        #[arg(long, default_value_t = 2)]
        instances: usize,
        /// Processes per function at most: when all are busy an invocation starts another, as
        /// Lambda scales out (the function's concurrency limit).
        #[arg(long, default_value_t = 10)]
        max_instances: usize,
        /// `function=seconds`, overriding a function's timeout from the template.
        #[arg(long = "timeout")]
        timeouts: Vec<String>,
    },
    /// Run the fault suite against a stack started by scripts/faults.sh; write the report.
    Faults {
        #[arg(long, env = "AGENTQ_URL")]
        url: String,
        #[arg(long, env = "FAKE_MODEL_URL")]
        model_url: String,
        #[arg(long)]
        report: PathBuf,
        /// Tasks in the kill and flaky scenarios.
        #[arg(long, default_value_t = 20)]
        tasks: usize,
    },
    /// A scripted Anthropic Messages API.
    FakeModel {
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
}

/// `AGENTQ_LOCAL_STREAMS=off` provisions tables without their streams and runs no stream
/// event source (webhooks are then not delivered): for throughput benchmarks, since DynamoDB
/// Local serializes writes to a table with a stream.
fn streams_on() -> bool {
    std::env::var("AGENTQ_LOCAL_STREAMS").map_or(true, |v| v != "off")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Provision { visibility_timeout } => {
            let template = Template::load(&cli.template, &cli.stack)?
                .with_visibility_timeout(visibility_timeout)
                .with_streams(streams_on());
            let sdk = agentq::runtime::aws::sdk_config(&agentq::runtime::config::AwsTimeouts::TOOLS).await;
            let (sqs, dynamodb, s3) = (
                agentq::runtime::aws::sqs(&sdk),
                agentq::runtime::aws::dynamodb(&sdk),
                agentq::runtime::aws::s3(&sdk, true),
            );
            let done = agentq_local::provision::provision(&template, &sqs, &dynamodb, &s3).await?;
            for (k, v) in template.function_env(&done.refs) {
                println!("{k}={v}");
            }
            Ok(())
        }
        Command::Preflight { env_file } => {
            let env = agentq_local::runtime::read_env_file(&env_file)?;
            let config =
                agentq::runtime::config::Config::from_lookup(|k| env.get(k).filter(|v| !v.is_empty()).cloned())?;
            agentq::runtime::wiring::preflight(&config).map_err(|e| anyhow!("the functions would not start: {e}"))?;
            Ok(())
        }
        Command::CleanTests => {
            let sdk = agentq::runtime::aws::sdk_config(&agentq::runtime::config::AwsTimeouts::TOOLS).await;
            let (tables, queues) = agentq_local::provision::delete_prefixed(
                &agentq::runtime::aws::sqs(&sdk),
                &agentq::runtime::aws::dynamodb(&sdk),
                "test-",
            )
            .await?;
            tracing::info!(tables, queues, "deleted what earlier test runs left");
            Ok(())
        }
        Command::Serve { listen, lambda, pollers, schedule_secs } => {
            let template = Template::load(&cli.template, &cli.stack)?.with_streams(streams_on());
            serve(&template, listen, &lambda, pollers, Duration::from_secs(schedule_secs.max(1))).await
        }
        Command::Lambdas { listen, bin_dir, env_file, instances, max_instances, timeouts } => {
            let template = Template::load(&cli.template, &cli.stack)?;
            let env = agentq_local::runtime::read_env_file(&env_file)?;
            let overrides: HashMap<String, u64> = timeouts
                .iter()
                .map(|t| {
                    let (f, s) = t.split_once('=').ok_or_else(|| anyhow!("--timeout takes function=seconds"))?;
                    Ok((f.to_owned(), s.parse()?))
                })
                .collect::<anyhow::Result<_>>()?;
            let specs = template
                .function_settings()
                .into_iter()
                .map(|f| agentq_local::runtime::FunctionSpec {
                    binary: bin_dir.join(&f.binary),
                    env: env.clone(),
                    timeout: overrides.get(&f.binary).map_or(f.timeout, |s| Duration::from_secs(*s)),
                    memory_mb: f.memory_mb,
                    instances,
                    max_instances,
                    name: f.binary,
                })
                .collect();
            let router = agentq_local::runtime::Host::start(specs).router();
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            tracing::info!(%listen, "serving the Lambda Invoke API");
            axum::serve(listener, router).with_graceful_shutdown(shutdown()).await?;
            Ok(())
        }
        Command::Faults { url, model_url, report, tasks } => faults(url, model_url, report, tasks).await,
        Command::Run { url, timeout_secs, prompt } => run_task(&url, &prompt, Duration::from_secs(timeout_secs)).await,
        Command::FakeModel { listen, latency_ms } => {
            let knobs = agentq_local::fake_model::Knobs { latency_ms, ..Default::default() };
            let router = FakeModel::new(knobs).router();
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            tracing::info!(%listen, "fake model serving /v1/messages");
            axum::serve(listener, router).with_graceful_shutdown(shutdown()).await?;
            Ok(())
        }
    }
}

async fn serve(
    template: &Template,
    listen: std::net::SocketAddr,
    lambda: &str,
    pollers: usize,
    schedule_every: Duration,
) -> anyhow::Result<()> {
    let sdk = agentq::runtime::aws::sdk_config(&agentq::runtime::config::AwsTimeouts::TOOLS).await;
    let sqs = agentq::runtime::aws::sqs(&sdk);
    let http = agentq::net::client();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let queues: HashMap<_, _> = template.queues()?.into_iter().map(|q| (q.logical_id.clone(), q)).collect();
    // One delivery loop per function, serving its queues in the template's order (priority).
    let mut by_function: Vec<(String, Vec<QueueRef>, u32, u32)> = Vec::new();
    for source in template.sqs_sources()? {
        let q = queues.get(&source.queue_logical_id).ok_or_else(|| anyhow!("no queue {}", source.queue_logical_id))?;
        let url = sqs
            .get_queue_url()
            .queue_name(&q.name)
            .send()
            .await
            .with_context(|| format!("finding queue {} (run `agentq-local provision` first)", q.name))?
            .queue_url
            .unwrap_or_default();
        let attrs =
            sqs.get_queue_attributes().queue_url(&url).attribute_names(QueueAttributeName::QueueArn).send().await?;
        let arn = attrs.attributes.and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned()).unwrap_or_default();
        match by_function.iter_mut().find(|(f, ..)| *f == source.function) {
            Some((_, refs, _, concurrency)) => {
                refs.push(QueueRef { url, arn });
                *concurrency += source.max_concurrency;
            }
            None => by_function.push((
                source.function.clone(),
                vec![QueueRef { url, arn }],
                source.batch_size,
                source.max_concurrency,
            )),
        }
    }
    let mut deliveries = Vec::new();
    for (function, refs, batch_size, concurrency) in by_function {
        let n = pollers.min(concurrency as usize);
        tracing::info!(%function, queues = refs.len(), pollers = n, batch_size, "delivering, highest priority first");
        let fair = std::env::var("AGENTQ_LOCAL_FAIR").map_or(true, |v| v != "off");
        let delivery = Arc::new(Delivery::new(sqs.clone(), refs, batch_size, 1).with_fairness(fair));
        let invoker = Arc::new(LambdaInvoker::new(http.clone(), lambda, &function));
        deliveries.push(tokio::spawn(delivery.run(invoker, n, stop_rx.clone())));
    }

    // Scheduled functions run every `schedule_every` locally (a minute is long to wait at a
    // desk), with the event EventBridge sends.
    for scheduled in template.schedules() {
        let invoker = LambdaInvoker::new(http.clone(), lambda, &scheduled.function);
        let mut stop = stop_rx.clone();
        tracing::info!(function = %scheduled.function, every_s = schedule_every.as_secs(), aws = %scheduled.schedule, "scheduling");
        deliveries.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(schedule_every) => {
                        let event = serde_json::json!({
                            "version": "0", "id": ulid::Ulid::generate().to_string(), "detail-type": "Scheduled Event",
                            "source": "aws.events", "account": agentq_local::template::LOCAL_ACCOUNT,
                            "time": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                            "region": agentq_local::template::LOCAL_REGION, "resources": [], "detail": {}
                        });
                        if let Err(e) = agentq_local::deliver::Invoke::invoke(&invoker, event).await {
                            tracing::warn!(error = format!("{e:#}"), "scheduled invocation failed");
                        }
                    }
                }
            }
        }));
    }

    // Table streams feed their functions (the notifier) as Lambda's event source mapping does.
    let tables = template.tables()?;
    let dynamodb = agentq::runtime::aws::dynamodb(&sdk);
    for source in template.stream_sources()? {
        let table = tables
            .iter()
            .find(|t| t.logical_id == source.table_logical_id)
            .ok_or_else(|| anyhow!("no table {}", source.table_logical_id))?;
        // TRIM_HORIZON, as the template's event source starts: nothing written before the
        // poller started is missed (a restart gives records again; deliveries repeat their ids).
        let poller = agentq_local::streams::StreamPoller::open(
            agentq_local::streams::client(&sdk),
            &dynamodb,
            &table.name,
            source.filters.clone(),
            source.batch_size,
            true,
        )
        .await?;
        tracing::info!(function = %source.function, table = %table.name, "delivering the table's stream");
        let invoker = Arc::new(LambdaInvoker::new(http.clone(), lambda, &source.function));
        deliveries.push(tokio::spawn(poller.run(invoker, Duration::from_millis(200), stop_rx.clone())));
    }

    let router = Gateway::new(template.routes(), http, lambda).router();
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "gateway serving the HTTP API");
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown())
        .await?;
    let _ = stop_tx.send(true);
    for d in deliveries {
        let _ = d.await;
    }
    Ok(())
}

async fn faults(url: String, model_url: String, report: PathBuf, tasks: usize) -> anyhow::Result<()> {
    use agentq::store::TenantAdmin as _;
    use agentq_local::faults::{self, Harness};
    let config = agentq::runtime::config::Config::from_env()?;
    let sdk = agentq::runtime::aws::sdk_config(&agentq::runtime::config::AwsTimeouts::TOOLS).await;
    let store = agentq::runtime::wiring::store(&config, &sdk);
    // A tenant of the run's own, so its usage counters hold only this run's tasks.
    let tenant = format!("faults-{}", ulid::Ulid::generate().to_string().to_lowercase());
    let limits =
        agentq::domain::tenant::Limits { rate_per_sec: 500.0, burst: 500, max_running: 10_000, ..Default::default() };
    let now = agentq::now();
    store.put_tenant(&agentq::domain::tenant::Tenant { tenant_id: tenant.clone(), limits, created_at: now }).await?;
    let (key, record) = agentq::domain::tenant::new_key(&tenant, now);
    store.put_key(&record).await?;
    let h = Harness {
        http: agentq::net::builder().timeout(Duration::from_secs(30)).build()?,
        url,
        key: key.expose().to_owned(),
        tenant,
        model_url,
        sqs: agentq::runtime::aws::sqs(&sdk),
        s3: agentq::runtime::aws::s3(&sdk, true),
        bucket: config.bucket.clone().ok_or_else(|| anyhow!("AGENTQ_BUCKET is not set"))?,
        store,
        queues: agentq::runtime::wiring::queue_urls(&config)?,
        dlqs: config.dead_letter_urls.clone(),
    };
    let mut reports = Vec::new();
    let scenarios = [
        "worker killed",
        "duplicates",
        "flaky",
        "poison",
        "redrive",
        "stranded",
        "long run",
        "usage through redrive",
        "burst",
    ];
    for (run, name) in scenarios.into_iter().enumerate() {
        tracing::info!(scenario = name, "running");
        let r = match run {
            0 => faults::worker_killed(&h, tasks, 20).await?,
            1 => faults::duplicate_deliveries(&h, 100).await?,
            2 => faults::flaky_world(&h, tasks).await?,
            3 => faults::poison(&h).await?,
            4 => faults::dead_letter_and_redrive(&h).await?,
            5 => faults::stranded(&h, 5).await?,
            6 => faults::long_run(&h, config.max_receive_count).await?,
            7 => faults::usage_through_redrive(&h).await?,
            _ => faults::burst(&h, 40).await?,
        };
        tracing::info!(
            scenario = name,
            accepted = r.accepted,
            succeeded = r.succeeded,
            lost = r.lost,
            duplicate_runs = r.duplicate_runs,
            double_counted = r.double_counted,
            usage_drift = r.usage_drift,
            seconds = r.seconds,
            "done"
        );
        reports.push(r);
    }
    let text = faults::markdown(&reports, "scripts/faults.sh");
    std::fs::write(&report, &text).with_context(|| format!("writing {}", report.display()))?;
    println!("{text}");
    let bad: Vec<&str> = reports.iter().filter(|r| !r.clean()).map(|r| r.name.as_str()).collect();
    if !bad.is_empty() {
        return Err(anyhow!("lost, duplicated or double-counted tasks in: {}", bad.join(", ")));
    }
    Ok(())
}

async fn run_task(url: &str, prompt: &str, timeout: Duration) -> anyhow::Result<()> {
    let http = agentq::net::builder().timeout(Duration::from_secs(35)).build()?;
    let base = url.trim_end_matches('/');
    let response = http.post(format!("{base}/v1/tasks")).json(&serde_json::json!({"prompt": prompt})).send().await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.context("reading the submit response")?;
    if status != reqwest::StatusCode::ACCEPTED {
        return Err(anyhow!("submit answered {status}: {body}"));
    }
    let id = body["task_id"].as_str().ok_or_else(|| anyhow!("no task_id in {body}"))?.to_owned();
    eprintln!("submitted task {id}; waiting for it to finish");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let task: serde_json::Value =
            http.get(format!("{base}/v1/tasks/{id}")).send().await?.error_for_status()?.json().await?;
        match task["status"].as_str() {
            Some("succeeded") => {
                println!("{}", serde_json::to_string_pretty(&task)?);
                return Ok(());
            }
            Some("failed" | "cancelled") => {
                println!("{}", serde_json::to_string_pretty(&task)?);
                return Err(anyhow!("task {id} ended {}", task["status"]));
            }
            _ if tokio::time::Instant::now() > deadline => {
                return Err(anyhow!("task {id} still {} after {timeout:?}", task["status"]));
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn shutdown() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
