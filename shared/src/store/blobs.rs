//! Where content too large for a DynamoDB item goes: S3 (LocalStack's locally), under
//! `tasks/<task id>/…`, with a pointer in the item. Clients never see the difference.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;

/// Text longer than this (in bytes) is kept outside its item. Well under DynamoDB's 400 KB
/// item limit, so a record holding a spilled prompt's pointer, a result and its usage fits.
pub const INLINE_LIMIT: usize = 64 * 1024;

#[async_trait]
pub trait Blobs: Send + Sync {
    async fn put(&self, key: &str, data: Vec<u8>) -> anyhow::Result<()>;
    async fn get(&self, key: &str) -> anyhow::Result<Vec<u8>>;
}

/// A bucket in S3.
#[derive(Debug, Clone)]
pub struct S3Blobs {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Blobs {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self { client, bucket: bucket.into() }
    }
}

#[async_trait]
impl Blobs for S3Blobs {
    async fn put(&self, key: &str, data: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| anyhow!("PutObject {key}: {}", DisplayErrorContext(&e)))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| anyhow!("GetObject {key}: {}", DisplayErrorContext(&e)))?;
        Ok(out.body.collect().await.context("reading an object")?.into_bytes().to_vec())
    }
}

/// Blobs in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryBlobs(Mutex<HashMap<String, Vec<u8>>>);

#[async_trait]
impl Blobs for MemoryBlobs {
    async fn put(&self, key: &str, data: Vec<u8>) -> anyhow::Result<()> {
        self.0.lock().expect("poisoned").insert(key.to_owned(), data);
        Ok(())
    }

    async fn get(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        self.0.lock().expect("poisoned").get(key).cloned().ok_or_else(|| anyhow!("no blob {key}"))
    }
}
