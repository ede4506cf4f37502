//! Logs, shared by every function: one JSON object per line, flat, so CloudWatch Logs
//! Insights (and `make logs`) can filter on any field. Each line carries the fields of every
//! span it happens in, so inside a task's work it names the `task_id`, `tenant_id`, the
//! Lambda `request_id` and the `trace_id` without repeating them at each call site.
//!
//! `AWS_LAMBDA_LOG_FORMAT=JSON` (set by `LoggingConfig` in AWS and by `make up`) selects JSON;
//! anything else gives readable text. `AWS_LAMBDA_LOG_LEVEL` (or `RUST_LOG`) sets the level.
//!
//! Content (prompts, results, tool inputs and outputs) is never logged unless
//! `AGENTQ_LOG_CONTENT=true`: lines carry lengths and short hashes instead.

use std::fmt;
use std::sync::OnceLock;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Installs the global subscriber, with `extra` layers (the OpenTelemetry one) beside the
/// log output, shaped by the environment. Functions get it through [`traces::init`].
fn init_with<L>(extra: Option<L>)
where
    L: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    install(extra, std::io::stdout, json);
}

/// Installs the global subscriber writing to `writer`, JSON lines if `json`.
fn install<L, W>(extra: Option<L>, writer: W, json: bool)
where
    L: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .map(|l| l.to_ascii_lowercase())
        .unwrap_or_else(|_| "info".into());
    // `Targets` rather than `EnvFilter`: the same `info,agentq::runtime::aws=debug` syntax
    // without span and field matching, which no one sets and which compiles a regex engine
    // into every function (BENCHMARKS.md, "the SDK's configuration from the environment").
    let filter = level.parse::<Targets>().unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    let output = if json {
        tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(writer)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().without_time().with_writer(writer).boxed()
    };
    // Spans and events below INFO never reach the tracer: the AWS SDK and hyper emit DEBUG and
    // TRACE events on every request whose fields (the client's whole configuration, among
    // them) would be formatted for it: a third of the functions' CPU before this filter (BENCHMARKS.md).
    let traced = extra.with_filter(LevelFilter::INFO);
    let _ = tracing_subscriber::registry().with(traced).with(output.with_filter(filter)).try_init();
}

/// Whether content may be logged (`AGENTQ_LOG_CONTENT=true`).
pub fn log_content() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("AGENTQ_LOG_CONTENT").is_ok_and(|v| v == "true" || v == "1"))
}

/// What a log line may say about some content: the content itself when content logging is
/// on, otherwise its length and a short hash (enough to tell two apart, not to read them).
pub fn content(text: &str) -> String {
    if log_content() {
        return text.to_owned();
    }
    let hash: String = Sha256::digest(text.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("[{} chars, sha256 {hash}]", text.chars().count())
}

/// One flat JSON object per event: time, level, target, message, the event's fields, and the
/// fields of every span in scope (innermost wins).
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = Map::new();
        let now = time::OffsetDateTime::now_utc();
        line.insert(
            "timestamp".into(),
            Value::String(now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()),
        );
        line.insert("level".into(), Value::String(event.metadata().level().to_string()));
        line.insert("target".into(), Value::String(event.metadata().target().to_owned()));
        // Read once: the environment is the same for every line of the process.
        static FUNCTION: OnceLock<Option<String>> = OnceLock::new();
        if let Some(function) = FUNCTION.get_or_init(|| std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok()) {
            line.insert("function".into(), Value::String(function.clone()));
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else { continue };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields.as_str()) {
                    for (k, v) in fields {
                        let k = match k.as_str() {
                            // The runtime's own span names these in camelCase.
                            "requestId" => "request_id".to_owned(),
                            "xrayTraceId" => "xray_trace_id".to_owned(),
                            _ => k,
                        };
                        line.insert(k, v);
                    }
                }
            }
        }
        event.record(&mut Fields(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole cause chain: the top line of an SDK error says only "service error".
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        self.0.insert(field.name().to_owned(), Value::String(text));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_summarized_unless_content_logging_is_on() {
        let s = content("a secret prompt");
        assert!(!s.contains("secret"), "{s}");
        assert!(s.starts_with("[15 chars, sha256 "), "{s}");
    }
}

/// Traces: OpenTelemetry spans from `tracing` spans, with trace ids X-Ray understands.
pub mod traces {
    use std::collections::HashMap;

    use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator};
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use opentelemetry_aws::trace::{XrayIdGenerator, XrayPropagator};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::{Layer, Registry};

    /// Keeps the tracer provider alive; [`Tracing::flush`] exports what is pending before a
    /// Lambda invocation ends (the environment may be frozen right after).
    #[derive(Debug, Clone)]
    pub struct Tracing {
        provider: SdkTracerProvider,
        /// An exporter is configured (without one there is nothing to flush).
        exporting: bool,
    }

    impl Tracing {
        /// Exports the spans still pending.
        pub async fn flush(&self) {
            if !self.exporting {
                return;
            }
            let provider = self.provider.clone();
            // The exporter may block on I/O: keep it off the async workers.
            match tokio::task::spawn_blocking(move || provider.force_flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not export spans"),
                Err(e) => tracing::warn!(error = %e, "span export panicked"),
            }
        }

        /// Runs one invocation's work, then exports its spans and writes its metrics: Lambda
        /// may freeze the process as soon as the answer is sent.
        pub async fn invocation<T>(&self, work: impl Future<Output = T>) -> T {
            let out = work.await;
            self.flush().await;
            crate::observe::metrics::flush_stdout();
            out
        }
    }

    /// The exporter the environment asks for: OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is set; X-Ray's daemon when running in Lambda with active tracing
    /// (`AWS_XRAY_DAEMON_ADDRESS`); none otherwise (trace ids still flow through logs and
    /// messages).
    fn provider() -> (SdkTracerProvider, bool) {
        let builder = SdkTracerProvider::builder().with_id_generator(XrayIdGenerator::default());
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
            // The exporter builds its own reqwest client, which needs the TLS provider.
            crate::net::install_tls();
            match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
                Ok(exporter) => return (builder.with_batch_exporter(exporter).build(), true),
                Err(e) => eprintln!("agentq: OTLP exporter not started: {e}"),
            }
        }
        if let Some(addr) = std::env::var("AWS_XRAY_DAEMON_ADDRESS").ok().and_then(|a| a.parse().ok()) {
            match opentelemetry_aws::xray_exporter::daemon_client::XrayDaemonClient::new(addr) {
                Ok(client) => {
                    let exporter = opentelemetry_aws::xray_exporter::XrayExporter::new(client);
                    return (builder.with_batch_exporter(exporter).build(), true);
                }
                Err(e) => eprintln!("agentq: X-Ray exporter not started: {e}"),
            }
        }
        (builder.build(), false)
    }

    fn layer(provider: &SdkTracerProvider) -> impl Layer<Registry> + Send + Sync + 'static {
        opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(XrayPropagator::default()),
        ]));
        tracing_opentelemetry::layer().with_tracer(provider.tracer("agentq"))
    }

    /// Logs and traces for a function: call once, first thing in `main`.
    pub fn init() -> Tracing {
        let (provider, exporting) = provider();
        super::init_with(Some(layer(&provider)));
        Tracing { provider, exporting }
    }

    /// Logs (JSON lines to `writer`) and traces (to `exporter`, span by span): for tests
    /// that look at what a run left behind.
    pub fn init_for_tests<W>(exporter: impl SpanExporter + 'static, writer: W) -> Tracing
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let provider = SdkTracerProvider::builder()
            .with_id_generator(XrayIdGenerator::default())
            .with_simple_exporter(exporter)
            .build();
        super::install(Some(layer(&provider)), writer, true);
        Tracing { provider, exporting: true }
    }

    struct Headers<'a>(&'a HashMap<String, String>);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(&key.to_ascii_lowercase()).map(String::as_str)
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }

    struct Out<'a>(&'a mut HashMap<String, String>);

    impl Injector for Out<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_owned(), value);
        }
    }

    /// Makes `span` a child of the trace context in `headers` (`traceparent`, or X-Ray's
    /// `x-amzn-trace-id`; lowercase keys), if there is one, and returns its trace id.
    pub fn continue_trace(span: &tracing::Span, headers: &HashMap<String, String>) -> String {
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        trace_id(span)
    }

    /// The trace id of `span`, hex (empty without tracing).
    pub fn trace_id(span: &tracing::Span) -> String {
        let id = span.context().span().span_context().trace_id();
        if id == opentelemetry::trace::TraceId::INVALID { String::new() } else { id.to_string() }
    }

    /// The headers that carry `span`'s trace context onward (`traceparent`, X-Ray's header).
    pub fn headers_for(span: &tracing::Span) -> HashMap<String, String> {
        let mut out = HashMap::new();
        let cx = span.context();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Out(&mut out)));
        out
    }
}
