//! CPU a function's process spends on one DynamoDB request, by how the request is made: the
//! client as the functions build it (`agentq::runtime::aws::dynamodb`), the SDK's client with
//! its defaults on the same configuration, and the same `GetItem` as a bare HTTP request
//! (no SDK, no signing: the floor an HTTP client sets). Each variant runs `N` sequential reads
//! of one item on a one-thread runtime, as the functions run, twice; the process's CPU time is
//! read from `/proc/self/stat` around each run.
//!
//! ```sh
//! # the emulators up (`make up` or `bash scripts/emulators.sh start`), a table with a
//! # `TENANT#dev`/`META` item (`make up` creates both), the environment `make up` uses:
//! cargo run --profile profiling -p agentq-shared --example request_cpu -- 3000 agentq-tasks
//! ```

use std::collections::HashMap;
use std::time::Instant;

use aws_sdk_dynamodb::types::AttributeValue;

/// User plus system CPU time of this process, in ms (clock ticks of 10 ms).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("a Linux /proc");
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    ticks * 10.0
}

fn report(name: &str, n: usize, cpu: f64, wall: std::time::Duration) {
    println!(
        "{name:<40} {:>5.0} µs CPU, {:>5.0} µs wall a request",
        cpu * 1000.0 / n as f64,
        wall.as_micros() as f64 / n as f64
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let table = args.next().unwrap_or_else(|| "agentq-tasks".into());
    let conf = agentq::runtime::aws::function_sdk_config(&agentq::runtime::config::AwsTimeouts::TOOLS)?;
    let clients = [
        ("the functions' client", agentq::runtime::aws::dynamodb(&conf)),
        ("the SDK's client, defaults", aws_sdk_dynamodb::Client::new(&conf)),
    ];
    let key = HashMap::from([
        ("pk".to_owned(), AttributeValue::S("TENANT#dev".into())),
        ("sk".to_owned(), AttributeValue::S("META".into())),
    ]);
    let url = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")?;
    let http = agentq::net::builder().build()?;
    let body = format!(r#"{{"TableName":"{table}","Key":{{"pk":{{"S":"TENANT#dev"}},"sk":{{"S":"META"}}}}}}"#);
    for round in 1..=2 {
        println!("round {round}, {n} GetItems each");
        for (name, client) in &clients {
            let get = || client.get_item().table_name(&table).set_key(Some(key.clone())).send();
            for _ in 0..50 {
                get().await?;
            }
            let (t0, c0) = (Instant::now(), cpu_ms());
            for _ in 0..n {
                get().await?;
            }
            report(name, n, cpu_ms() - c0, t0.elapsed());
        }
        let (t0, c0) = (Instant::now(), cpu_ms());
        for _ in 0..n {
            let response = http
                .post(&url)
                .header("content-type", "application/x-amz-json-1.0")
                .header("x-amz-target", "DynamoDB_20120810.GetItem")
                // DynamoDB Local wants the header, not a valid signature.
                .header(
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
                )
                .body(body.clone())
                .send()
                .await?
                .error_for_status()?;
            response.bytes().await?;
        }
        report("bare HTTP (reqwest), unsigned", n, cpu_ms() - c0, t0.elapsed());
    }
    Ok(())
}
