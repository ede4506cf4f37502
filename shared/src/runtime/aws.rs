//! AWS clients, built once per cold start and shared by every invocation.

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::runtime::config::AwsTimeouts;

/// The SDK configuration from the standard sources: region, credentials, and endpoints such
/// as `AWS_ENDPOINT_URL_DYNAMODB` (how the local emulators are reached, with no code here
/// knowing about them), with every call bounded by `timeouts`, over the process's one TLS
/// stack ([`crate::net`]).
pub async fn sdk_config(timeouts: &AwsTimeouts) -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(timeouts.connect)
        .operation_attempt_timeout(timeouts.attempt)
        .operation_timeout(timeouts.operation)
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(crate::net::sdk_client())
        .timeout_config(timeouts)
        .load()
        .await
}

/// Counts every request a client sends (each attempt: retries are billed too) into the
/// invocation's metrics (`AwsRequests` by service), so requests per task are measured, not
/// estimated.
#[derive(Debug)]
struct CountRequests;

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            crate::observe::metrics::count_request(m.service(), m.name());
        }
        Ok(())
    }
}

pub fn dynamodb(config: &SdkConfig) -> aws_sdk_dynamodb::Client {
    let conf =
        aws_sdk_dynamodb::config::Builder::from(config).interceptor(CountRequests).interceptor(CountCapacity).build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

pub fn sqs(config: &SdkConfig) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::config::Builder::from(config).interceptor(CountRequests).build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// S3 with path-style addressing when `AGENTQ_S3_PATH_STYLE=true` (LocalStack), from config
/// rather than by guessing.
pub fn s3(config: &SdkConfig, path_style: bool) -> aws_sdk_s3::Client {
    let conf =
        aws_sdk_s3::config::Builder::from(config).force_path_style(path_style).interceptor(CountRequests).build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Asks DynamoDB for the capacity each request consumes (`ReturnConsumedCapacity: INDEXES`,
/// which costs nothing) and counts it into the invocation's metrics (`DynamoDbWriteUnits`,
/// `DynamoDbReadUnits`), so the bench measures what a task costs rather than estimating it
/// from item sizes. At DEBUG (`agentq::runtime::aws=debug`) each request's units are logged
/// with the part its table and each index took: where a task's bill goes. (A write refused by
/// its condition consumes units too, and is not seen.)
///
/// A transaction's table units are counted as at least two per action: DynamoDB bills two
/// write units per action and KB, and reports that; DynamoDB Local reports only twice its
/// largest item (a transaction of three small puts: 2 units, not 6), so without this floor
/// every local figure would hide most of what transactions cost. In AWS the floor never binds.
#[derive(Debug)]
struct CountCapacity;

/// For each operation the stores use: ask for the total on its input, read it off its output
/// as read or write units.
macro_rules! capacity_of {
    ($input:expr, $output:expr, $floor:expr, $($op:ident :: $in:ident / $out:ident => $write:literal, $units:expr);+ $(;)?) => {{
        use aws_sdk_dynamodb::operation::*;
        if let Some(input) = $input {
            $(if let Some(i) = input.downcast_mut::<$op::$in>() {
                i.return_consumed_capacity = Some(aws_sdk_dynamodb::types::ReturnConsumedCapacity::Indexes);
            })+
        }
        if let Some(output) = $output {
            $(if let Some(o) = output.downcast_ref::<$op::$out>() {
                let consumed: fn(&$op::$out) -> Vec<&Consumed> = $units;
                return Some(($write, units(stringify!($out), &consumed(o), $floor)));
            })+
        }
        None
    }};
}

type Consumed = aws_sdk_dynamodb::types::ConsumedCapacity;

fn total(c: &Option<Consumed>) -> Vec<&Consumed> {
    c.iter().collect()
}

fn sum(c: &Option<Vec<Consumed>>) -> Vec<&Consumed> {
    c.iter().flatten().collect()
}

/// How many actions the transaction being sent holds (kept between serialization and the
/// answer, which no longer carries the input).
#[derive(Debug, Clone, Copy)]
struct TransactActions(usize);

impl aws_smithy_types::config_bag::Storable for TransactActions {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

/// The units of `consumed` (one entry per table a request touched), the table's part at least
/// `floor`, logged at DEBUG by where they went: the table, and each global secondary index.
fn units(operation: &str, consumed: &[&Consumed], floor: f64) -> f64 {
    let table: f64 = consumed.iter().filter_map(|c| c.table.as_ref()?.capacity_units).sum();
    let total = consumed.iter().filter_map(|c| c.capacity_units).sum::<f64>() + (floor - table).max(0.0);
    if tracing::enabled!(tracing::Level::DEBUG) {
        let table = table.max(floor);
        let mut indexes = std::collections::BTreeMap::<&str, f64>::new();
        for (name, c) in consumed.iter().flat_map(|c| c.global_secondary_indexes.iter().flatten()) {
            *indexes.entry(name).or_default() += c.capacity_units.unwrap_or(0.0);
        }
        tracing::debug!(operation, total, table, ?indexes, "dynamodb capacity");
    }
    total
}

/// Marks `input` to return its consumed capacity; reads `output`'s: (is a write, units), a
/// transaction's table units at least `floor`.
fn capacity(
    input: Option<&mut aws_smithy_runtime_api::client::interceptors::context::Input>,
    output: Option<&aws_smithy_runtime_api::client::interceptors::context::Output>,
    floor: f64,
) -> Option<(bool, f64)> {
    capacity_of!(input, output, floor,
        get_item::GetItemInput / GetItemOutput => false, |o| total(&o.consumed_capacity);
        query::QueryInput / QueryOutput => false, |o| total(&o.consumed_capacity);
        scan::ScanInput / ScanOutput => false, |o| total(&o.consumed_capacity);
        batch_get_item::BatchGetItemInput / BatchGetItemOutput => false, |o| sum(&o.consumed_capacity);
        transact_get_items::TransactGetItemsInput / TransactGetItemsOutput => false, |o| sum(&o.consumed_capacity);
        put_item::PutItemInput / PutItemOutput => true, |o| total(&o.consumed_capacity);
        update_item::UpdateItemInput / UpdateItemOutput => true, |o| total(&o.consumed_capacity);
        delete_item::DeleteItemInput / DeleteItemOutput => true, |o| total(&o.consumed_capacity);
        batch_write_item::BatchWriteItemInput / BatchWriteItemOutput => true, |o| sum(&o.consumed_capacity);
        transact_write_items::TransactWriteItemsInput / TransactWriteItemsOutput => true, |o| sum(&o.consumed_capacity);
    )
}

impl Intercept for CountCapacity {
    fn name(&self) -> &'static str {
        "CountCapacity"
    }

    fn modify_before_serialization(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextMut<
            '_,
        >,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input_mut();
        if let Some(t) =
            input.downcast_ref::<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput>()
        {
            cfg.interceptor_state().store_put(TransactActions(t.transact_items().len()));
        }
        capacity(Some(input), None, 0.0);
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::AfterDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let floor = cfg.load::<TransactActions>().map_or(0.0, |a| 2.0 * a.0 as f64);
        if let Some((write, units)) = context.output_or_error().ok().and_then(|o| capacity(None, Some(o), floor)) {
            crate::observe::metrics::count_capacity(write, units);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::types::{Capacity, ConsumedCapacity};

    use super::units;

    fn consumed(table: f64, index: f64) -> ConsumedCapacity {
        ConsumedCapacity::builder()
            .table_name("t")
            .capacity_units(table + index)
            .table(Capacity::builder().capacity_units(table).build())
            .global_secondary_indexes("open", Capacity::builder().capacity_units(index).build())
            .build()
    }

    #[test]
    fn a_transaction_counts_at_least_two_units_per_action_on_its_table() {
        // Three small puts as DynamoDB Local reports them (2 units), and an index write.
        assert_eq!(units("TransactWriteItemsOutput", &[&consumed(2.0, 1.0)], 6.0), 7.0);
        // As DynamoDB reports them, the floor changes nothing.
        assert_eq!(units("TransactWriteItemsOutput", &[&consumed(8.0, 1.0)], 6.0), 9.0);
        assert_eq!(units("PutItemOutput", &[&consumed(1.0, 0.0)], 0.0), 1.0);
    }
}
