//! The local DynamoDB stream event source: what Lambda's event source mapping does with a
//! table's stream in AWS, for a stack with no Lambda service. It reads every shard of the
//! table's stream (DynamoDB Local serves the Streams API), in order, parents before children;
//! turns each record into the JSON Lambda sends; keeps those the template's filter patterns
//! pass; and invokes the function with up to `batch_size` of them. A batch the function fails
//! (an error, or any `batchItemFailures`) is given again on the next poll, as the real event
//! source retries from the failed record; nothing after it is read until it succeeds.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use aws_sdk_dynamodbstreams::error::DisplayErrorContext;
use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::deliver::Invoke;
use crate::template::LOCAL_REGION;

/// A DynamoDB Streams client for the emulator: `AWS_ENDPOINT_URL_DYNAMODB_STREAMS`, else the
/// DynamoDB endpoint (DynamoDB Local serves both).
pub fn client(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodbstreams::Client {
    let mut config = aws_sdk_dynamodbstreams::config::Builder::from(sdk);
    if let Ok(url) =
        std::env::var("AWS_ENDPOINT_URL_DYNAMODB_STREAMS").or_else(|_| std::env::var("AWS_ENDPOINT_URL_DYNAMODB"))
    {
        config = config.endpoint_url(url);
    }
    aws_sdk_dynamodbstreams::Client::from_conf(config.build())
}

/// Whether `record` (Lambda's JSON) matches an event filter `pattern`: every field the
/// pattern names must hold one of the values it lists (a value, or `{"prefix": …}`).
pub fn matches(pattern: &Value, record: &Value) -> bool {
    match pattern {
        Value::Object(fields) => fields.iter().all(|(k, p)| matches(p, &record[k.as_str()])),
        Value::Array(options) => options.iter().any(|o| match o {
            Value::Object(rule) => match rule.get("prefix").and_then(Value::as_str) {
                Some(prefix) => record.as_str().is_some_and(|s| s.starts_with(prefix)),
                None => false,
            },
            value => value == record,
        }),
        value => value == record,
    }
}

/// A stream record as Lambda delivers it.
fn lambda_record(r: &Record, stream_arn: &str) -> Value {
    let image = |i: Option<&HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>>| {
        i.map(|m| serde_json::to_value(serde_dynamo::Item::from(m.clone())).unwrap_or(Value::Null))
    };
    let change = r.dynamodb.as_ref();
    let mut dynamodb = json!({
        "ApproximateCreationDateTime": change.and_then(|c| c.approximate_creation_date_time).map(|t| t.as_secs_f64()),
        "Keys": image(change.and_then(|c| c.keys.as_ref())),
        "SequenceNumber": change.and_then(|c| c.sequence_number.clone()),
        "SizeBytes": change.and_then(|c| c.size_bytes),
        "StreamViewType": change.and_then(|c| c.stream_view_type.as_ref()).map(|v| v.as_str().to_owned()),
    });
    if let Some(new) = image(change.and_then(|c| c.new_image.as_ref())) {
        dynamodb["NewImage"] = new;
    }
    if let Some(old) = image(change.and_then(|c| c.old_image.as_ref())) {
        dynamodb["OldImage"] = old;
    }
    json!({
        "eventID": r.event_id,
        "eventName": r.event_name.as_ref().map(|n| n.as_str().to_owned()),
        "eventVersion": r.event_version,
        "eventSource": "aws:dynamodb",
        "awsRegion": LOCAL_REGION,
        "eventSourceARN": stream_arn,
        "dynamodb": dynamodb,
    })
}

#[derive(Debug, Default)]
struct Shard {
    parent: Option<String>,
    iterator: Option<String>,
    /// The last sequence number handed to the function successfully.
    last: Option<String>,
    /// Read and not yet accepted by the function.
    pending: Vec<Value>,
    /// Closed and read to its end.
    done: bool,
    /// Its last read asked for records the stream no longer keeps; it was moved to its oldest.
    trimmed: bool,
}

/// One table's stream, feeding one function.
pub struct StreamPoller {
    client: aws_sdk_dynamodbstreams::Client,
    stream_arn: String,
    filters: Vec<Value>,
    batch_size: usize,
    shards: HashMap<String, Shard>,
    /// Read shards from their start (`TRIM_HORIZON`) rather than from now.
    from_start: bool,
}

impl StreamPoller {
    /// The stream of `table` (which must have one). `from_start` reads what the stream holds
    /// already; otherwise only records written from now on are delivered.
    pub async fn open(
        client: aws_sdk_dynamodbstreams::Client,
        dynamodb: &aws_sdk_dynamodb::Client,
        table: &str,
        filters: Vec<Value>,
        batch_size: u32,
        from_start: bool,
    ) -> anyhow::Result<Self> {
        let described = dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| anyhow!("DescribeTable {table}: {}", aws_sdk_dynamodb::error::DisplayErrorContext(&e)))?;
        let stream_arn = described
            .table
            .and_then(|t| t.latest_stream_arn)
            .with_context(|| format!("table {table} has no stream (run `agentq-local provision`)"))?;
        Ok(Self {
            client,
            stream_arn,
            filters,
            batch_size: batch_size.clamp(1, 10_000) as usize,
            shards: HashMap::new(),
            from_start,
        })
    }

    /// Learns of new shards.
    async fn discover(&mut self) -> anyhow::Result<()> {
        let mut start: Option<String> = None;
        loop {
            let out = self
                .client
                .describe_stream()
                .stream_arn(&self.stream_arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(|e| anyhow!("DescribeStream: {}", DisplayErrorContext(&e)))?;
            let Some(description) = out.stream_description else { return Ok(()) };
            for shard in description.shards.unwrap_or_default() {
                let Some(id) = shard.shard_id else { continue };
                if self.shards.contains_key(&id) {
                    continue;
                }
                // A shard that appears after the first look is new: read it from its start.
                let kind = if self.from_start || !self.shards.is_empty() {
                    ShardIteratorType::TrimHorizon
                } else {
                    ShardIteratorType::Latest
                };
                let iterator = self.iterator(&id, kind, None).await?;
                self.shards.insert(id, Shard { parent: shard.parent_shard_id, iterator, ..Shard::default() });
            }
            match description.last_evaluated_shard_id {
                Some(last) => start = Some(last),
                None => break,
            }
        }
        // Later discoveries start new shards from their beginning.
        self.from_start = true;
        Ok(())
    }

    async fn iterator(
        &self,
        shard: &str,
        kind: ShardIteratorType,
        after: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        let out = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.stream_arn)
            .shard_id(shard)
            .shard_iterator_type(kind)
            .set_sequence_number(after.map(str::to_owned))
            .send()
            .await
            .map_err(|e| anyhow!("GetShardIterator: {}", DisplayErrorContext(&e)))?;
        Ok(out.shard_iterator)
    }

    /// Reads what each ready shard has next, and hands each shard's batch to `invoker`.
    /// Returns how many records the function accepted.
    pub async fn poll_once(&mut self, invoker: &dyn Invoke) -> anyhow::Result<usize> {
        self.discover().await?;
        let mut accepted = 0;
        let ids: Vec<String> = self.shards.keys().cloned().collect();
        for id in ids {
            let parent_done =
                self.shards[&id].parent.as_ref().is_none_or(|p| self.shards.get(p).is_none_or(|s| s.done));
            if !parent_done || self.shards[&id].done {
                continue;
            }
            if self.shards[&id].pending.is_empty() {
                // One shard that cannot be read must not stop the others.
                if let Err(e) = self.read(&id).await {
                    tracing::warn!(shard = %id, error = format!("{e:#}"), "stream poll failed");
                    continue;
                }
            }
            let shard = self.shards.get_mut(&id).expect("a known shard");
            while !shard.pending.is_empty() {
                let take = shard.pending.len().min(self.batch_size);
                let batch: Vec<Value> = shard.pending[..take].to_vec();
                let ok = match invoker.invoke(json!({"Records": batch})).await {
                    Ok(answer) => answer["batchItemFailures"].as_array().is_none_or(|f| f.is_empty()),
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "stream batch failed");
                        false
                    }
                };
                if !ok {
                    // Given again next time, before anything after it.
                    break;
                }
                shard.last = batch.last().and_then(|r| r["dynamodb"]["SequenceNumber"].as_str().map(str::to_owned));
                shard.pending.drain(..take);
                accepted += take;
            }
        }
        Ok(accepted)
    }

    /// Reads one page of a shard into its pending records (the ones the filters pass).
    async fn read(&mut self, id: &str) -> anyhow::Result<()> {
        let Some(iterator) = self.shards[id].iterator.clone() else {
            self.shards.get_mut(id).expect("a known shard").done = true;
            return Ok(());
        };
        let out = match self.client.get_records().shard_iterator(&iterator).limit(1000).send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_expired_iterator_exception()) => {
                // Iterators last 15 minutes: pick up after the last record handed over.
                let last = self.shards[id].last.clone();
                let kind = if last.is_some() {
                    ShardIteratorType::AfterSequenceNumber
                } else {
                    ShardIteratorType::TrimHorizon
                };
                let fresh = self.iterator(id, kind, last.as_deref()).await?;
                self.shards.get_mut(id).expect("a known shard").iterator = fresh;
                return Ok(());
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_trimmed_data_access_exception()) => {
                // Past the stream's retention (an old shard of a table kept from an earlier
                // run): read on from the oldest record kept; if even that is refused, from
                // the newest.
                let shard = self.shards.get_mut(id).expect("a known shard");
                let kind = if shard.trimmed {
                    tracing::warn!(shard = %id, "a stream shard's oldest records are refused too; reading from its newest");
                    ShardIteratorType::Latest
                } else {
                    ShardIteratorType::TrimHorizon
                };
                shard.trimmed = !shard.trimmed;
                let fresh = self.iterator(id, kind, None).await?;
                self.shards.get_mut(id).expect("a known shard").iterator = fresh;
                return Ok(());
            }
            Err(e) => return Err(anyhow!("GetRecords: {}", DisplayErrorContext(&e))),
        };
        let records: Vec<Value> = out
            .records
            .unwrap_or_default()
            .iter()
            .map(|r| lambda_record(r, &self.stream_arn))
            .filter(|r| self.filters.is_empty() || self.filters.iter().any(|p| matches(p, r)))
            .collect();
        let shard = self.shards.get_mut(id).expect("a known shard");
        shard.trimmed = false;
        shard.pending.extend(records);
        shard.iterator = out.next_shard_iterator;
        Ok(())
    }

    /// Polls until `stop`, pausing `every` when a poll found nothing.
    pub async fn run(mut self, invoker: std::sync::Arc<dyn Invoke>, every: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            let found = match self.poll_once(invoker.as_ref()).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "stream poll failed");
                    0
                }
            };
            if found == 0 {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            } else if *stop.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_values_and_prefixes_like_lambdas() {
        let pattern: Value = serde_json::from_str(
            r#"{"eventName": ["INSERT"], "dynamodb": {"Keys": {"sk": {"S": [{"prefix": "EVT#"}]}}}}"#,
        )
        .unwrap();
        let record = |name: &str, sk: &str| json!({"eventName": name, "dynamodb": {"Keys": {"sk": {"S": sk}}}});
        assert!(matches(&pattern, &record("INSERT", "EVT#000001")));
        assert!(!matches(&pattern, &record("MODIFY", "EVT#000001")));
        assert!(!matches(&pattern, &record("INSERT", "META")));
        assert!(!matches(&pattern, &json!({"eventName": "INSERT"})));
    }
}
