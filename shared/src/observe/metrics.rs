//! Metrics in CloudWatch Embedded Metric Format: JSON lines on stdout that CloudWatch turns
//! into metrics, with no API call and no agent. Each record is one EMF document: its metric
//! values, its dimensions (always low-cardinality: function, status, model, tool, reason…) and
//! its properties (searchable, not dimensions: tenant, task id). Records are buffered and
//! written once per invocation, before the invocation ends ([`flush`]).
//!
//! Written here rather than through the `metrics` facade (and a crate such as
//! metrics_cloudwatch_embedded) because a facade's global recorder aggregates by dimension
//! and cannot carry per-record properties like the tenant; names are documented in
//! docs/observability.md.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use serde_json::{Map, Value, json};

/// CloudWatch units used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    /// Dollars and tokens have no CloudWatch unit.
    None,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::None => "None",
        }
    }
}

struct Sink {
    namespace: String,
    function: String,
    records: Vec<Value>,
    /// AWS requests made since the last flush, by service and operation.
    requests: std::collections::BTreeMap<(String, String), u64>,
    /// DynamoDB read and write units consumed since the last flush.
    capacity: (f64, f64),
}

fn sink() -> &'static Mutex<Sink> {
    static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();
    SINK.get_or_init(|| {
        Mutex::new(Sink {
            namespace: std::env::var("AGENTQ_METRICS_NAMESPACE").unwrap_or_else(|_| "agentq".into()),
            function: std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "local".into()),
            records: Vec::new(),
            requests: Default::default(),
            capacity: (0.0, 0.0),
        })
    })
}

/// One EMF record under construction.
#[must_use = "a record is kept only when `emit` is called"]
pub struct Record {
    dimensions: Vec<(&'static str, String)>,
    values: Vec<(&'static str, f64, Unit)>,
    properties: Map<String, Value>,
}

/// Starts a record.
pub fn record() -> Record {
    Record { dimensions: Vec::new(), values: Vec::new(), properties: Map::new() }
}

impl Record {
    /// A dimension: keep its values few (a status, a model id), never an id.
    pub fn dimension(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.dimensions.push((name, value.into()));
        self
    }

    pub fn value(mut self, name: &'static str, value: f64, unit: Unit) -> Self {
        self.values.push((name, value, unit));
        self
    }

    /// A property: searchable in the logs, not a dimension.
    pub fn property(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.properties.insert(name.to_owned(), value.into());
        self
    }

    /// Buffers the record until the next [`flush`].
    pub fn emit(self) {
        let mut sink = sink().lock().expect("poisoned");
        let function = sink.function.clone();
        let mut doc = self.properties;
        doc.insert("function".into(), Value::String(function));
        // Each metric is published under the function alone and with every other dimension,
        // so a dashboard can show both the total and the split.
        let mut with: Vec<&str> = vec!["function"];
        for (name, value) in &self.dimensions {
            doc.insert((*name).to_owned(), Value::String(value.clone()));
            with.push(name);
        }
        let dimension_sets = if with.len() > 1 { json!([["function"], with]) } else { json!([["function"]]) };
        let metrics: Vec<Value> =
            self.values.iter().map(|(name, _, unit)| json!({"Name": name, "Unit": unit.as_str()})).collect();
        for (name, value, _) in &self.values {
            doc.insert((*name).to_owned(), json!(value));
        }
        let timestamp = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        doc.insert(
            "_aws".into(),
            json!({"Timestamp": timestamp, "CloudWatchMetrics": [{"Namespace": sink.namespace, "Dimensions": dimension_sets, "Metrics": metrics}]}),
        );
        sink.records.push(Value::Object(doc));
    }
}

/// Writes the buffered records, one line each, and forgets them.
pub fn flush(mut out: impl Write) {
    requests_to_records();
    let records = std::mem::take(&mut sink().lock().expect("poisoned").records);
    for r in records {
        let _ = writeln!(out, "{r}");
    }
    let _ = out.flush();
}

/// Counts one AWS request (one HTTP attempt: what AWS bills), written with the invocation's
/// other metrics as `AwsRequests` by service, with the count of each operation a property.
pub fn count_request(service: &str, operation: &str) {
    *sink().lock().expect("poisoned").requests.entry((service.to_owned(), operation.to_owned())).or_default() += 1;
}

/// Counts DynamoDB capacity consumed (what on-demand mode bills), written with the
/// invocation's other metrics as `DynamoDbWriteUnits` and `DynamoDbReadUnits`.
pub fn count_capacity(write: bool, units: f64) {
    let mut sink = sink().lock().expect("poisoned");
    if write { sink.capacity.1 += units } else { sink.capacity.0 += units }
}

fn requests_to_records() {
    let (read, write) = std::mem::take(&mut sink().lock().expect("poisoned").capacity);
    if read + write > 0.0 {
        record().value("DynamoDbReadUnits", read, Unit::Count).value("DynamoDbWriteUnits", write, Unit::Count).emit();
    }
    let requests = std::mem::take(&mut sink().lock().expect("poisoned").requests);
    let mut by_service: std::collections::BTreeMap<String, (u64, Map<String, Value>)> = Default::default();
    for ((service, operation), n) in requests {
        let entry = by_service.entry(service).or_default();
        entry.0 += n;
        entry.1.insert(operation, json!(n));
    }
    for (service, (total, operations)) in by_service {
        record()
            .dimension("service", service)
            .value("AwsRequests", total as f64, Unit::Count)
            .property("operations", Value::Object(operations))
            .emit();
    }
}

/// Writes the buffered records to stdout (CloudWatch reads them from the function's log).
pub fn flush_stdout() {
    flush(std::io::stdout().lock());
}

/// The buffered records, taken (for tests).
pub fn take() -> Vec<Value> {
    requests_to_records();
    std::mem::take(&mut sink().lock().expect("poisoned").records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_an_emf_document_with_dimensions_and_properties() {
        record()
            .dimension("status", "succeeded")
            .value("TasksFinished", 1.0, Unit::Count)
            .value("TaskCostUsd", 0.25, Unit::None)
            .property("tenant_id", "acme")
            .emit();
        let mut out = Vec::new();
        flush(&mut out);
        // Other tests emit into the same process-wide buffer: find this one's record.
        let doc: Value = out
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
            .find(|d| d.get("TasksFinished").is_some())
            .expect("the record was flushed");
        assert_eq!(doc["TasksFinished"], 1.0);
        assert_eq!(doc["status"], "succeeded");
        assert_eq!(doc["tenant_id"], "acme");
        let cw = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "agentq");
        assert_eq!(cw["Dimensions"], json!([["function"], ["function", "status"]]));
        assert_eq!(cw["Metrics"][1], json!({"Name": "TaskCostUsd", "Unit": "None"}));
        assert!(doc["_aws"]["Timestamp"].as_i64().unwrap() > 0);
    }
}
