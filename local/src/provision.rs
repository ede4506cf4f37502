//! Creates the template's queues and tables in the emulators, idempotently: running it twice
//! changes nothing.

use std::collections::HashMap;

use anyhow::{Context as _, anyhow};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::template::{QueueSpec, TableSpec, Template};

/// What was created: the physical value of `!Ref` for each logical id (a queue's URL, a
/// table's name), and each queue's ARN.
#[derive(Debug, Clone, Default)]
pub struct Provisioned {
    pub refs: HashMap<String, String>,
    pub arns: HashMap<String, String>,
}

/// Creates every queue, table and bucket of `template`.
pub async fn provision(
    template: &Template,
    sqs: &aws_sdk_sqs::Client,
    dynamodb: &aws_sdk_dynamodb::Client,
    s3: &aws_sdk_s3::Client,
) -> anyhow::Result<Provisioned> {
    let mut out = Provisioned::default();
    let mut queues = template.queues()?;
    // Dead-letter queues first: the queues that redrive into them need their ARNs.
    queues.sort_by_key(|q| q.redrive.is_some());
    for q in &queues {
        let dlq_arn = match &q.redrive {
            Some((dlq, _)) => {
                Some(out.arns.get(dlq).cloned().ok_or_else(|| anyhow!("{}: DLQ {dlq} not created", q.name))?)
            }
            None => None,
        };
        let (url, arn) = create_queue(sqs, q, dlq_arn.as_deref()).await?;
        out.refs.insert(q.logical_id.clone(), url);
        out.arns.insert(q.logical_id.clone(), arn);
    }
    for t in template.tables()? {
        create_table(dynamodb, &t).await?;
        out.refs.insert(t.logical_id.clone(), t.name.clone());
    }
    for (id, name) in template.buckets()? {
        create_bucket(s3, &name).await?;
        out.refs.insert(id, name);
    }
    Ok(out)
}

/// Creates a bucket, or finds it.
pub async fn create_bucket(s3: &aws_sdk_s3::Client, name: &str) -> anyhow::Result<()> {
    match s3.create_bucket().bucket(name).send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()) =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow!("CreateBucket {name}: {}", aws_sdk_s3::error::DisplayErrorContext(&e))),
    }
}

/// Creates a queue (or finds it) with the spec's attributes; returns its URL and ARN.
pub async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    q: &QueueSpec,
    dlq_arn: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let mut req = sqs.create_queue().queue_name(&q.name);
    for (k, v) in &q.attributes {
        req = req.attributes(QueueAttributeName::from(k.as_str()), v);
    }
    if let (Some(arn), Some((_, count))) = (dlq_arn, &q.redrive) {
        let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": count}).to_string();
        req = req.attributes(QueueAttributeName::RedrivePolicy, policy);
    }
    let url = match req.send().await {
        Ok(out) => out.queue_url.ok_or_else(|| anyhow!("CreateQueue returned no URL"))?,
        // The queue exists with other attributes (an older template): bring them up to date.
        Err(e) if e.code() == Some("QueueAlreadyExists") || e.code() == Some("QueueNameExists") => {
            let url = sqs.get_queue_url().queue_name(&q.name).send().await?.queue_url.unwrap_or_default();
            let mut set = sqs.set_queue_attributes().queue_url(&url);
            for (k, v) in &q.attributes {
                set = set.attributes(QueueAttributeName::from(k.as_str()), v);
            }
            set.send().await.map_err(|e| anyhow!("SetQueueAttributes {}: {}", q.name, DisplayErrorContext(&e)))?;
            url
        }
        Err(e) => return Err(anyhow!("CreateQueue {}: {}", q.name, DisplayErrorContext(&e))),
    };
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| anyhow!("GetQueueAttributes {}: {}", q.name, DisplayErrorContext(&e)))?;
    let arn = attrs
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| anyhow!("{} has no ARN", q.name))?;
    Ok((url, arn))
}

/// What an index projects, as the template says.
fn projection(index: &crate::template::IndexSpec) -> Projection {
    let kind = ProjectionType::from(index.projection.as_str());
    let non_key = (kind == ProjectionType::Include).then(|| index.non_key_attributes.clone());
    Projection::builder().projection_type(kind).set_non_key_attributes(non_key).build()
}

/// An existing table made from an older template: add the indexes it lacks.
async fn add_missing_indexes(dynamodb: &aws_sdk_dynamodb::Client, t: &TableSpec) -> anyhow::Result<()> {
    let present: Vec<String> = describe(dynamodb, &t.name)
        .await?
        .and_then(|d| d.global_secondary_indexes)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.index_name)
        .collect();
    for index in t.indexes.iter().filter(|i| !present.contains(&i.name)) {
        let name = &index.name;
        let keys = index
            .key_schema
            .iter()
            .map(|(a, k)| KeySchemaElement::builder().attribute_name(a).key_type(KeyType::from(k.as_str())).build())
            .collect::<Result<Vec<_>, _>>()?;
        let create = aws_sdk_dynamodb::types::CreateGlobalSecondaryIndexAction::builder()
            .index_name(name)
            .set_key_schema(Some(keys))
            .projection(projection(index))
            .build()?;
        let mut update = dynamodb.update_table().table_name(&t.name).global_secondary_index_updates(
            aws_sdk_dynamodb::types::GlobalSecondaryIndexUpdate::builder().create(create).build(),
        );
        for (attr, kind) in &t.attributes {
            update = update.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr)
                    .attribute_type(ScalarAttributeType::from(kind.as_str()))
                    .build()?,
            );
        }
        update
            .send()
            .await
            .map_err(|e| anyhow!("UpdateTable {} (adding {name}): {}", t.name, DisplayErrorContext(&e)))?;
        tracing::info!(table = %t.name, index = %name, "added a missing index");
    }
    Ok(())
}

/// Creates a table (or finds it) and turns on its TTL.
pub async fn create_table(dynamodb: &aws_sdk_dynamodb::Client, t: &TableSpec) -> anyhow::Result<()> {
    let keys = |schema: &[(String, String)]| -> anyhow::Result<Vec<KeySchemaElement>> {
        schema
            .iter()
            .map(|(name, kind)| {
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(KeyType::from(kind.as_str()))
                    .build()
                    .map_err(Into::into)
            })
            .collect()
    };
    let mut req = dynamodb
        .create_table()
        .table_name(&t.name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_key_schema(Some(keys(&t.key_schema)?));
    for (name, kind) in &t.attributes {
        req = req.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::from(kind.as_str()))
                .build()?,
        );
    }
    for index in &t.indexes {
        req = req.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(&index.name)
                .set_key_schema(Some(keys(&index.key_schema)?))
                .projection(projection(index))
                .build()?,
        );
    }
    if let Some(view) = &t.stream_view_type {
        req = req.stream_specification(stream_spec(view)?);
    }
    match req.send().await {
        Ok(_) => {}
        Err(e) if e.code() == Some("ResourceInUseException") => {
            add_missing_indexes(dynamodb, t).await?;
            enable_stream(dynamodb, t).await?;
        }
        Err(e) => return Err(anyhow!("CreateTable {}: {}", t.name, DisplayErrorContext(&e))),
    }
    if let Some(attr) = &t.ttl_attribute {
        let spec = TimeToLiveSpecification::builder().attribute_name(attr).enabled(true).build()?;
        match dynamodb.update_time_to_live().table_name(&t.name).time_to_live_specification(spec).send().await {
            Ok(_) => {}
            // Already enabled.
            Err(e) if e.code() == Some("ValidationException") => {}
            Err(e) => {
                return Err(anyhow!("UpdateTimeToLive {}: {}", t.name, DisplayErrorContext(&e)))
                    .context("enabling TTL");
            }
        }
    }
    Ok(())
}

async fn describe(
    dynamodb: &aws_sdk_dynamodb::Client,
    name: &str,
) -> anyhow::Result<Option<aws_sdk_dynamodb::types::TableDescription>> {
    let described = dynamodb
        .describe_table()
        .table_name(name)
        .send()
        .await
        .map_err(|e| anyhow!("DescribeTable {name}: {}", DisplayErrorContext(&e)))?;
    Ok(described.table)
}

fn stream_spec(view: &str) -> anyhow::Result<StreamSpecification> {
    Ok(StreamSpecification::builder().stream_enabled(true).stream_view_type(StreamViewType::from(view)).build()?)
}

/// Turns on the template's stream on a table made without one (by an older template, or by
/// a test that did not need it).
pub async fn enable_stream(dynamodb: &aws_sdk_dynamodb::Client, t: &TableSpec) -> anyhow::Result<()> {
    let Some(view) = &t.stream_view_type else { return Ok(()) };
    let enabled =
        describe(dynamodb, &t.name).await?.and_then(|d| d.stream_specification).is_some_and(|s| s.stream_enabled);
    if !enabled {
        dynamodb
            .update_table()
            .table_name(&t.name)
            .stream_specification(stream_spec(view)?)
            .send()
            .await
            .map_err(|e| anyhow!("UpdateTable {} (stream): {}", t.name, DisplayErrorContext(&e)))?;
    }
    Ok(())
}

/// Deletes every table and queue whose name starts with `prefix`; returns how many of each.
pub async fn delete_prefixed(
    sqs: &aws_sdk_sqs::Client,
    dynamodb: &aws_sdk_dynamodb::Client,
    prefix: &str,
) -> anyhow::Result<(usize, usize)> {
    let mut tables = 0;
    let mut start: Option<String> = None;
    loop {
        let out = dynamodb
            .list_tables()
            .set_exclusive_start_table_name(start.take())
            .send()
            .await
            .map_err(|e| anyhow!("ListTables: {}", DisplayErrorContext(&e)))?;
        for name in out.table_names().iter().filter(|n| n.starts_with(prefix)) {
            dynamodb
                .delete_table()
                .table_name(name)
                .send()
                .await
                .map_err(|e| anyhow!("DeleteTable {name}: {}", DisplayErrorContext(&e)))?;
            tables += 1;
        }
        match out.last_evaluated_table_name {
            Some(next) => start = Some(next),
            None => break,
        }
    }
    let mut queues = 0;
    let out = sqs
        .list_queues()
        .queue_name_prefix(prefix)
        .max_results(1000)
        .send()
        .await
        .map_err(|e| anyhow!("ListQueues: {}", DisplayErrorContext(&e)))?;
    for url in out.queue_urls() {
        sqs.delete_queue()
            .queue_url(url)
            .send()
            .await
            .map_err(|e| anyhow!("DeleteQueue {url}: {}", DisplayErrorContext(&e)))?;
        queues += 1;
    }
    Ok((tables, queues))
}
