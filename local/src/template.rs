//! Reads template.yaml so the local stack is built from the same description as the deployed
//! one: queue and table settings, HTTP routes, SQS event sources, function environments.
//!
//! Only what the local stack needs is resolved: `!Ref` to parameters (their defaults) and to
//! resources (their local names or URLs), `!Sub` with `${AWS::StackName}`-style variables, and
//! `!GetAtt X.Arn` for queues.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use serde_yaml::Value;
use serde_yaml::value::TaggedValue;

/// Local stand-ins for the pseudo parameters CloudFormation supplies.
pub const LOCAL_REGION: &str = "us-east-1";
pub const LOCAL_ACCOUNT: &str = "000000000000";

/// A parsed template, bound to a stack name.
#[derive(Debug, Clone)]
pub struct Template {
    doc: Value,
    stack: String,
    /// Replaces the task queues' visibility timeout (a test setting).
    visibility_override: Option<u32>,
    /// Whether tables get their streams (and stream sources run).
    streams: bool,
}

/// An `AWS::SQS::Queue`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    pub logical_id: String,
    pub name: String,
    /// SQS attributes by name (`VisibilityTimeout`, `MessageRetentionPeriod`…), as strings.
    pub attributes: BTreeMap<String, String>,
    /// The dead-letter queue's logical id and the receive count that sends messages there.
    pub redrive: Option<(String, u32)>,
}

/// An `AWS::DynamoDB::Table`: its name and its key attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    pub logical_id: String,
    pub name: String,
    /// (attribute, type) pairs.
    pub attributes: Vec<(String, String)>,
    /// (attribute, HASH | RANGE) pairs.
    pub key_schema: Vec<(String, String)>,
    pub indexes: Vec<IndexSpec>,
    pub ttl_attribute: Option<String>,
    /// The stream's view type (`NEW_IMAGE`…), when the table has a stream.
    pub stream_view_type: Option<String>,
}

/// A global secondary index of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    pub name: String,
    /// (attribute, HASH | RANGE) pairs.
    pub key_schema: Vec<(String, String)>,
    /// `ALL`, `KEYS_ONLY` or `INCLUDE`.
    pub projection: String,
    /// The attributes an `INCLUDE` projection adds to the keys.
    pub non_key_attributes: Vec<String>,
}

/// An HTTP API route: a method and path template served by a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `None` for the `$default` route.
    pub method: Option<String>,
    pub path: Option<String>,
    /// The function's binary name (what `cargo lambda` invokes).
    pub function: String,
    /// Served by the function's URL in `RESPONSE_STREAM` mode rather than by the HTTP API:
    /// the response is streamed, and the route is the one the template's `Metadata.agentq`
    /// names for the local gateway.
    pub streaming: bool,
}

/// A function invoked on a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    pub function: String,
    /// The schedule expression, e.g. `rate(1 minute)`.
    pub schedule: String,
}

/// A DynamoDB stream event source.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSource {
    pub table_logical_id: String,
    pub function: String,
    pub batch_size: u32,
    /// Event filter patterns (EventBridge syntax); a record passes if any matches.
    pub filters: Vec<serde_json::Value>,
}

/// What Lambda gives one function: its deadline and its memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSettings {
    pub binary: String,
    pub timeout: std::time::Duration,
    pub memory_mb: u64,
}

/// An SQS event source mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsSource {
    pub queue_logical_id: String,
    pub function: String,
    pub batch_size: u32,
    pub max_concurrency: u32,
}

impl Template {
    pub fn load(path: &Path, stack: &str) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, stack)
    }

    pub fn parse(text: &str, stack: &str) -> anyhow::Result<Self> {
        let doc: Value = serde_yaml::from_str(text).context("parsing the template")?;
        Ok(Self { doc, stack: stack.to_owned(), visibility_override: None, streams: true })
    }

    /// The same template without table streams, so without their event sources (the
    /// throughput benchmark's setting: DynamoDB Local serializes every write to a table with a
    /// stream, at ~20 ms each, which deployed DynamoDB does not).
    pub fn with_streams(mut self, streams: bool) -> Self {
        self.streams = streams;
        self
    }

    /// The same template with the task queues' visibility timeout replaced.
    pub fn with_visibility_timeout(mut self, secs: Option<u32>) -> Self {
        self.visibility_override = secs;
        self
    }

    fn resources(&self, kind: &str) -> impl Iterator<Item = (&str, &Value)> {
        self.doc["Resources"]
            .as_mapping()
            .into_iter()
            .flatten()
            .filter(move |(_, r)| r["Type"].as_str() == Some(kind))
            .filter_map(|(id, r)| Some((id.as_str()?, r)))
    }

    /// The default of a parameter.
    pub fn parameter(&self, name: &str) -> Option<String> {
        scalar(&self.doc["Parameters"][name]["Default"])
    }

    /// Resolves a property value. `refs` gives the physical value of `!Ref <resource>`.
    pub fn resolve(&self, v: &Value, refs: &HashMap<String, String>) -> anyhow::Result<String> {
        if let Some(s) = scalar(v) {
            return Ok(s);
        }
        let Value::Tagged(tagged) = v else { bail!("cannot resolve {v:?}") };
        let TaggedValue { tag, value } = tagged.as_ref();
        if tag == "!Join" {
            let parts = value.as_sequence().ok_or_else(|| anyhow!("!Join takes [delimiter, [values]]"))?;
            let (Some(delimiter), Some(Value::Sequence(items))) = (parts.first().and_then(Value::as_str), parts.get(1))
            else {
                bail!("!Join takes [delimiter, [values]]");
            };
            let resolved = items.iter().map(|i| self.resolve(i, refs)).collect::<anyhow::Result<Vec<_>>>()?;
            return Ok(resolved.join(delimiter));
        }
        let arg = value.as_str().ok_or_else(|| anyhow!("{tag} takes a string here"))?;
        match tag.to_string().as_str() {
            "!Ref" => self.variable(arg, refs),
            "!Sub" => {
                let mut out = String::new();
                let mut rest = arg;
                while let Some(start) = rest.find("${") {
                    let end = rest[start..].find('}').ok_or_else(|| anyhow!("unclosed ${{ in {arg:?}"))? + start;
                    out.push_str(&rest[..start]);
                    out.push_str(&self.variable(&rest[start + 2..end], refs)?);
                    rest = &rest[end + 1..];
                }
                out.push_str(rest);
                Ok(out)
            }
            "!GetAtt" => {
                let (id, attr) =
                    arg.split_once('.').ok_or_else(|| anyhow!("!GetAtt {arg} needs Resource.Attribute"))?;
                let queue = self.queues()?.into_iter().find(|q| q.logical_id == id);
                match (queue, attr) {
                    (Some(q), "Arn") => Ok(format!("arn:aws:sqs:{LOCAL_REGION}:{LOCAL_ACCOUNT}:{}", q.name)),
                    _ => bail!("!GetAtt {arg} is not supported locally"),
                }
            }
            other => bail!("{other} is not supported locally"),
        }
    }

    fn variable(&self, name: &str, refs: &HashMap<String, String>) -> anyhow::Result<String> {
        match name {
            "AWS::StackName" => Ok(self.stack.clone()),
            "AWS::Region" => Ok(LOCAL_REGION.into()),
            "AWS::AccountId" => Ok(LOCAL_ACCOUNT.into()),
            _ => refs
                .get(name)
                .cloned()
                .or_else(|| self.parameter(name))
                .ok_or_else(|| anyhow!("{name} has no local value (a parameter without a default?)")),
        }
    }

    pub fn queues(&self) -> anyhow::Result<Vec<QueueSpec>> {
        let none = HashMap::new();
        self.resources("AWS::SQS::Queue")
            .map(|(id, r)| {
                let p = &r["Properties"];
                let name = self.resolve(&p["QueueName"], &none).with_context(|| format!("{id}.QueueName"))?;
                let mut attributes = BTreeMap::new();
                for key in
                    ["VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds"]
                {
                    if !p[key].is_null() {
                        attributes.insert(key.to_owned(), self.resolve(&p[key], &none)?);
                    }
                }
                let redrive = match p.get("RedrivePolicy") {
                    None => None,
                    Some(rp) => {
                        let Value::Tagged(t) = &rp["deadLetterTargetArn"] else {
                            bail!("{id}: deadLetterTargetArn must be !GetAtt")
                        };
                        let target = t
                            .value
                            .as_str()
                            .and_then(|s| s.strip_suffix(".Arn"))
                            .ok_or_else(|| anyhow!("{id}: bad DLQ"))?;
                        let count = self.resolve(&rp["maxReceiveCount"], &none)?.parse().context("maxReceiveCount")?;
                        Some((target.to_owned(), count))
                    }
                };
                if let (Some(secs), true) = (self.visibility_override, redrive.is_some()) {
                    attributes.insert("VisibilityTimeout".to_owned(), secs.to_string());
                }
                Ok(QueueSpec { logical_id: id.to_owned(), name, attributes, redrive })
            })
            .collect()
    }

    /// `AWS::S3::Bucket`s as (logical id, name). A bucket the template leaves unnamed (as it
    /// should: names are global) is named locally after the stack and its logical id.
    pub fn buckets(&self) -> anyhow::Result<Vec<(String, String)>> {
        let none = HashMap::new();
        self.resources("AWS::S3::Bucket")
            .map(|(id, r)| {
                let name = match &r["Properties"]["BucketName"] {
                    Value::Null => format!("{}-{}", self.stack, id).to_ascii_lowercase(),
                    v => self.resolve(v, &none)?,
                };
                Ok((id.to_owned(), name))
            })
            .collect()
    }

    pub fn tables(&self) -> anyhow::Result<Vec<TableSpec>> {
        let none = HashMap::new();
        let pairs = |v: &Value, a: &str, b: &str| -> Vec<(String, String)> {
            v.as_sequence().into_iter().flatten().filter_map(|e| Some((scalar(&e[a])?, scalar(&e[b])?))).collect()
        };
        self.resources("AWS::DynamoDB::Table")
            .map(|(id, r)| {
                let p = &r["Properties"];
                let ttl = &p["TimeToLiveSpecification"];
                Ok(TableSpec {
                    logical_id: id.to_owned(),
                    name: self.resolve(&p["TableName"], &none).with_context(|| format!("{id}.TableName"))?,
                    attributes: pairs(&p["AttributeDefinitions"], "AttributeName", "AttributeType"),
                    key_schema: pairs(&p["KeySchema"], "AttributeName", "KeyType"),
                    indexes: p["GlobalSecondaryIndexes"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| {
                            Some(IndexSpec {
                                name: scalar(&i["IndexName"])?,
                                key_schema: pairs(&i["KeySchema"], "AttributeName", "KeyType"),
                                projection: scalar(&i["Projection"]["ProjectionType"]).unwrap_or_else(|| "ALL".into()),
                                non_key_attributes: i["Projection"]["NonKeyAttributes"]
                                    .as_sequence()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(scalar)
                                    .collect(),
                            })
                        })
                        .collect(),
                    ttl_attribute: (ttl["Enabled"].as_bool() == Some(true))
                        .then(|| scalar(&ttl["AttributeName"]))
                        .flatten(),
                    stream_view_type: scalar(&p["StreamSpecification"]["StreamViewType"]).filter(|_| self.streams),
                })
            })
            .collect()
    }

    /// Each serverless function's logical id, binary name and definition.
    fn functions(&self) -> impl Iterator<Item = (&str, String, &Value)> {
        self.resources("AWS::Serverless::Function").filter_map(|(id, r)| {
            let binary = scalar(&r["Metadata"]["BuildProperties"]["Binary"])?;
            Some((id, binary, r))
        })
    }

    fn events<'a>(r: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        r["Properties"]["Events"]
            .as_mapping()
            .into_iter()
            .flatten()
            .map(|(_, e)| e)
            .filter(move |e| e["Type"].as_str() == Some(kind))
            .map(|e| &e["Properties"])
    }

    /// The HTTP API's routes, and those of streaming function URLs (`Metadata.agentq.Routes`,
    /// `"GET /path"` each).
    pub fn routes(&self) -> Vec<Route> {
        let api = self.functions().flat_map(|(_, function, r)| {
            Self::events(r, "HttpApi").map(move |p| Route {
                method: scalar(&p["Method"]).map(|m| m.to_ascii_uppercase()),
                path: scalar(&p["Path"]),
                function: function.clone(),
                streaming: false,
            })
        });
        let urls = self.functions().flat_map(|(_, function, r)| {
            let streaming = r["Properties"]["FunctionUrlConfig"]["InvokeMode"].as_str() == Some("RESPONSE_STREAM");
            r["Metadata"]["agentq"]["Routes"].as_sequence().into_iter().flatten().filter_map(move |line| {
                let (method, path) = line.as_str()?.split_once(' ')?;
                Some(Route {
                    method: Some(method.to_ascii_uppercase()),
                    path: Some(path.to_owned()),
                    function: function.clone(),
                    streaming,
                })
            })
        });
        api.chain(urls).collect()
    }

    pub fn sqs_sources(&self) -> anyhow::Result<Vec<SqsSource>> {
        let none = HashMap::new();
        let mut out = Vec::new();
        for (id, function, r) in self.functions() {
            for p in Self::events(r, "SQS") {
                let Value::Tagged(t) = &p["Queue"] else { bail!("{id}: SQS Queue must be !GetAtt Q.Arn") };
                let queue =
                    t.value.as_str().and_then(|s| s.strip_suffix(".Arn")).ok_or_else(|| anyhow!("{id}: bad queue"))?;
                let batch_size = match &p["BatchSize"] {
                    Value::Null => 10,
                    v => self.resolve(v, &none)?.parse()?,
                };
                let max_concurrency = match &p["ScalingConfig"]["MaximumConcurrency"] {
                    Value::Null => 2,
                    v => self.resolve(v, &none)?.parse()?,
                };
                out.push(SqsSource {
                    queue_logical_id: queue.to_owned(),
                    function: function.clone(),
                    batch_size,
                    max_concurrency,
                });
            }
        }
        Ok(out)
    }

    /// Every DynamoDB stream event source: the function, the table, and the filter patterns.
    pub fn stream_sources(&self) -> anyhow::Result<Vec<StreamSource>> {
        let none = HashMap::new();
        let mut out = Vec::new();
        if !self.streams {
            return Ok(out);
        }
        for (id, function, r) in self.functions() {
            for p in Self::events(r, "DynamoDB") {
                let Value::Tagged(t) = &p["Stream"] else { bail!("{id}: Stream must be !GetAtt Table.StreamArn") };
                let table = t
                    .value
                    .as_str()
                    .and_then(|s| s.strip_suffix(".StreamArn"))
                    .ok_or_else(|| anyhow!("{id}: bad stream"))?;
                let batch_size = match &p["BatchSize"] {
                    Value::Null => 100,
                    v => self.resolve(v, &none)?.parse()?,
                };
                let filters = p["FilterCriteria"]["Filters"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| scalar(&f["Pattern"]))
                    .map(|pattern| {
                        serde_json::from_str(&pattern).with_context(|| format!("{id}: filter pattern {pattern}"))
                    })
                    .collect::<anyhow::Result<_>>()?;
                out.push(StreamSource {
                    table_logical_id: table.to_owned(),
                    function: function.clone(),
                    batch_size,
                    filters,
                });
            }
        }
        Ok(out)
    }

    /// Every function's binary name, timeout and memory: its own, or the global one, a
    /// parameter's default where it names one (`!Ref`).
    pub fn function_settings(&self) -> Vec<FunctionSettings> {
        let setting = |r: &Value, name: &str, default: u64| {
            [&r["Properties"][name], &self.doc["Globals"]["Function"][name]]
                .into_iter()
                .find(|v| !v.is_null())
                .and_then(|v| self.resolve(v, &HashMap::new()).ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        self.functions()
            .map(|(_, binary, r)| FunctionSettings {
                // Lambda's defaults: 3 s, 128 MB.
                timeout: std::time::Duration::from_secs(setting(r, "Timeout", 3)),
                memory_mb: setting(r, "MemorySize", 128),
                binary,
            })
            .collect()
    }

    pub fn schedules(&self) -> Vec<Scheduled> {
        self.functions()
            .flat_map(|(_, function, r)| {
                // An EventBridge rule (`Schedule`) or an EventBridge Scheduler schedule (`ScheduleV2`).
                let rules = Self::events(r, "Schedule").filter_map(|p| scalar(&p["Schedule"]));
                let schedules = Self::events(r, "ScheduleV2").filter_map(|p| scalar(&p["ScheduleExpression"]));
                rules
                    .chain(schedules)
                    .map(|schedule| Scheduled { function: function.clone(), schedule })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The environment every function gets (the global variables and each function's own,
    /// merged), with references resolved through `refs`. Secrets (`NoEcho` parameters) and
    /// values with no local meaning are left out for the caller to supply.
    pub fn function_env(&self, refs: &HashMap<String, String>) -> BTreeMap<String, String> {
        let globals = self.doc["Globals"]["Function"]["Environment"]["Variables"].as_mapping().into_iter().flatten();
        let own = self
            .functions()
            .flat_map(|(_, _, r)| r["Properties"]["Environment"]["Variables"].as_mapping().into_iter().flatten());
        globals
            .chain(own)
            .filter(|(_, v)| !self.is_secret(v))
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), self.resolve(v, refs).ok()?)))
            .collect()
    }

    /// A `!Ref` to a `NoEcho` parameter: a secret the caller supplies, never the template.
    fn is_secret(&self, v: &Value) -> bool {
        let Value::Tagged(t) = v else { return false };
        t.tag == "!Ref" && t.value.as_str().is_some_and(|p| self.doc["Parameters"][p]["NoEcho"].as_bool() == Some(true))
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        Template::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"), "agentq").unwrap()
    }

    #[test]
    fn queues_resolve_with_their_dead_letter_queue() {
        let queues = template().queues().unwrap();
        let tasks = queues.iter().find(|q| q.name == "agentq-tasks").unwrap();
        let (dlq, count) = tasks.redrive.clone().unwrap();
        assert!((3..=5).contains(&count), "maxReceiveCount {count}");
        assert!(queues.iter().any(|q| q.logical_id == dlq && q.name == "agentq-tasks-dlq"));
    }

    #[test]
    fn the_visibility_timeout_is_at_least_six_times_the_worker_timeout() {
        let t = template();
        let sources = t.sqs_sources().unwrap();
        let queues = t.queues().unwrap();
        for s in sources {
            let q = queues.iter().find(|q| q.logical_id == s.queue_logical_id).unwrap();
            let visibility: u64 = q.attributes["VisibilityTimeout"].parse().unwrap();
            let (_, _, f) = t.functions().find(|(_, b, _)| *b == s.function).unwrap();
            let timeout: u64 = scalar(&f["Properties"]["Timeout"]).unwrap().parse().unwrap();
            assert!(visibility >= 6 * timeout, "{}: {visibility} < 6 × {timeout}", q.name);
        }
    }

    #[test]
    fn each_function_has_its_own_timeout_and_memory_or_the_global_ones_with_parameters_resolved() {
        let t = Template::parse(
            "Parameters:\n  Slow: {Type: Number, Default: 900}\n\
             Globals:\n  Function: {Timeout: 10, MemorySize: 256}\n\
             Resources:\n\
             \x20 A: {Type: AWS::Serverless::Function, Metadata: {BuildProperties: {Binary: a}}, Properties: {}}\n\
             \x20 B: {Type: AWS::Serverless::Function, Metadata: {BuildProperties: {Binary: b}}, Properties: {Timeout: !Ref Slow, MemorySize: 512}}\n",
            "s",
        )
        .unwrap();
        let settings = t.function_settings();
        let of = |b: &str| settings.iter().find(|s| s.binary == b).unwrap().clone();
        assert_eq!((of("a").timeout.as_secs(), of("a").memory_mb), (10, 256));
        assert_eq!((of("b").timeout.as_secs(), of("b").memory_mb), (900, 512));
    }

    #[test]
    fn the_table_has_a_ttl_and_the_task_keys() {
        let tables = template().tables().unwrap();
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].name, "agentq-tasks");
        assert_eq!(tables[0].key_schema, [("pk".into(), "HASH".into()), ("sk".into(), "RANGE".into())]);
        assert_eq!(tables[0].ttl_attribute.as_deref(), Some("expires_at"));
    }

    #[test]
    fn functions_are_traced_and_every_alarm_notifies_the_topic() {
        let t = template();
        assert_eq!(t.doc["Globals"]["Function"]["Tracing"].as_str(), Some("Active"));
        let alarms: Vec<_> = t.resources("AWS::CloudWatch::Alarm").collect();
        assert!(alarms.len() >= 5, "{} alarms", alarms.len());
        for (id, alarm) in alarms {
            let actions = alarm["Properties"]["AlarmActions"].as_sequence().unwrap();
            let to_topic =
                actions.iter().any(|a| matches!(a, Value::Tagged(t) if t.value.as_str() == Some("AlarmTopic")));
            assert!(to_topic, "{id} does not notify AlarmTopic");
        }
    }

    #[test]
    fn the_sweeper_the_reconciler_and_the_scheduler_run_on_a_schedule() {
        let s = template().schedules();
        assert_eq!(
            s,
            [
                Scheduled { function: "dlq".into(), schedule: "rate(1 minute)".into() },
                Scheduled { function: "reconciler".into(), schedule: "rate(1 minute)".into() },
                Scheduled { function: "scheduler".into(), schedule: "cron(* * * * ? *)".into() },
            ]
        );
    }

    #[test]
    fn routes_name_their_functions() {
        let routes = template().routes();
        let find = |m: &str, p: &str| {
            routes
                .iter()
                .find(|r| r.method.as_deref() == Some(m) && r.path.as_deref() == Some(p))
                .map(|r| r.function.as_str())
        };
        assert_eq!(find("POST", "/v1/tasks"), Some("submit"));
        assert_eq!(find("GET", "/v1/tasks/{id}"), Some("status"));
        assert_eq!(find("GET", "/ready"), Some("submit"));
        assert!(routes.iter().any(|r| r.path.is_none() && r.function == "submit"), "a $default route");
    }

    #[test]
    fn function_env_resolves_refs_and_leaves_out_secrets() {
        let refs = HashMap::from([
            ("TasksTable".to_owned(), "agentq-tasks".to_owned()),
            ("TaskQueue".to_owned(), "http://q".to_owned()),
            ("HighPriorityDeadLetterQueue".to_owned(), "http://dh".to_owned()),
            ("TaskDeadLetterQueue".to_owned(), "http://d".to_owned()),
            ("LowPriorityDeadLetterQueue".to_owned(), "http://dl".to_owned()),
        ]);
        let env = template().function_env(&refs);
        assert_eq!(env["AGENTQ_TABLE"], "agentq-tasks");
        assert_eq!(env["AGENTQ_QUEUE_URL"], "http://q");
        assert_eq!(env["AGENTQ_MODELS"], "anthropic:claude-sonnet-4-5,anthropic:claude-haiku-4-5");
        assert!(!env.contains_key("ANTHROPIC_API_KEY") && !env.contains_key("AGENTQ_TOOL_SIGNING_SECRET"));
        assert_eq!(env["AGENTQ_DLQ_URLS"].split(',').count(), 3, "!Join resolves");
    }

    #[test]
    fn the_notifiers_stream_filters_pass_appended_events_and_new_tasks_only() {
        let sources = template().stream_sources().unwrap();
        let notifier = sources.iter().find(|s| s.function == "notifier").expect("the notifier reads the stream");
        let record = |name: &str, pk: &str, sk: &str| serde_json::json!({"eventName": name, "dynamodb": {"Keys": {"pk": {"S": pk}, "sk": {"S": sk}}}});
        let passes = |r: &serde_json::Value| notifier.filters.iter().any(|p| crate::streams::matches(p, r));
        assert!(passes(&record("INSERT", "TASK#01J", "EVT#000002")));
        assert!(passes(&record("INSERT", "TASK#01J", "META")), "a new task: its first event");
        assert!(!passes(&record("MODIFY", "TASK#01J", "META")), "a task's later writes");
        assert!(!passes(&record("INSERT", "TENANT#acme", "META")));
        assert!(!passes(&record("INSERT", "TASK#01J", "STEP#00001#TOOL#t")));
    }
}
