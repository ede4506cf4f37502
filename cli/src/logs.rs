//! `agentq logs TASK_ID`: one task's story from the local stack's logs (`make up` keeps every
//! component's output under `.run/`), across submit and worker, in time order.
//!
//! A line belongs to the task when it names the task's id, or the task's trace id (the submit
//! lines written before the task had an id, such as a failed authentication, carry only that).
//! Lines that are not JSON (the emulators', the local runtime's) are skipped. In AWS the same
//! question is a CloudWatch Logs Insights query; docs/observability.md has it.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::CliError;

/// Fields every line has, shown in the line's prefix rather than after it.
const PREFIX_FIELDS: &[&str] = &[
    "timestamp",
    "level",
    "target",
    "function",
    "message",
    "task_id",
    "tenant_id",
    "trace_id",
    "request_id",
    "xray_trace_id",
];

/// One line of the story.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// RFC 3339; sorts as time.
    pub timestamp: String,
    pub line: Map<String, Value>,
}

/// Reads every `*.log` file in `dir` and returns the task's lines, oldest first.
pub fn story(dir: &Path, task_id: &str) -> std::io::Result<Vec<Entry>> {
    let mut lines = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read(&file)?;
        lines.extend(String::from_utf8_lossy(&text).lines().filter_map(parse));
    }
    Ok(select(lines, task_id))
}

/// A JSON log line (or an EMF metrics record) as an object with a timestamp.
fn parse(raw: &str) -> Option<Entry> {
    let start = raw.find('{')?;
    let Ok(Value::Object(line)) = serde_json::from_str::<Value>(&raw[start..]) else { return None };
    let timestamp = match line.get("timestamp") {
        Some(Value::String(t)) => t.clone(),
        // An EMF record: milliseconds since the epoch.
        _ => {
            let ms = line.get("_aws")?.get("Timestamp")?.as_i64()?;
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
            t.format(&time::format_description::well_known::Rfc3339).ok()?
        }
    };
    Some(Entry { timestamp, line })
}

/// The lines of one task: those naming it, and those naming its trace.
fn select(lines: Vec<Entry>, task_id: &str) -> Vec<Entry> {
    let names_task = |e: &Entry| e.line.get("task_id").and_then(Value::as_str) == Some(task_id);
    let traces: Vec<String> = lines
        .iter()
        .filter(|e| names_task(e))
        .filter_map(|e| e.line.get("trace_id").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let mut mine: Vec<Entry> = lines
        .into_iter()
        .filter(|e| {
            names_task(e)
                || e.line.get("trace_id").and_then(Value::as_str).is_some_and(|t| traces.iter().any(|x| x == t))
        })
        .collect();
    mine.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
    mine
}

/// One line for a person: time, function, level, message, then the other fields.
pub fn render(e: &Entry) -> String {
    let get = |k: &str| e.line.get(k).and_then(Value::as_str).unwrap_or("");
    let time = e.timestamp.get(11..23).unwrap_or(&e.timestamp);
    let (level, message) =
        if e.line.contains_key("_aws") { ("METRIC", "metrics") } else { (get("level"), get("message")) };
    let mut out = format!("{time} {:<8} {level:<6} {message}", get("function"));
    for (k, v) in &e.line {
        if PREFIX_FIELDS.contains(&k.as_str()) || k == "_aws" {
            continue;
        }
        match v {
            Value::String(s) => out.push_str(&format!(" {k}={s}")),
            Value::Null => {}
            other => out.push_str(&format!(" {k}={other}")),
        }
    }
    out
}

pub fn run(dir: Option<PathBuf>, task_id: &str, json: bool) -> Result<(), CliError> {
    let dir = dir.ok_or_else(|| {
        CliError::Usage("no log directory: run `make up` in this checkout first, or pass --dir".into())
    })?;
    let entries = story(&dir, task_id)
        .map_err(|e| CliError::Unavailable(format!("reading the logs in {}: {e}", dir.display())))?;
    if entries.is_empty() {
        return Err(CliError::Rejected(format!("no log lines for task {task_id} in {}", dir.display())));
    }
    let trace = entries.iter().find_map(|e| e.line.get("trace_id").and_then(Value::as_str));
    if !json {
        out!("task {task_id}{}", trace.map(|t| format!(" · trace {t}")).unwrap_or_default());
    }
    for e in &entries {
        if json {
            out!("{}", Value::Object(e.line.clone()));
        } else {
            out!("{}", render(e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(raw: &[&str]) -> Vec<Entry> {
        raw.iter().filter_map(|l| parse(l)).collect()
    }

    #[test]
    fn a_story_keeps_the_tasks_lines_and_its_traces_in_time_order() {
        let all = lines(&[
            r#"{"timestamp":"2026-01-01T00:00:02Z","level":"INFO","function":"worker","message":"task claimed","task_id":"T1","trace_id":"abc"}"#,
            r#"{"timestamp":"2026-01-01T00:00:01Z","level":"INFO","function":"submit","message":"task accepted","task_id":"T1","trace_id":"abc"}"#,
            r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","function":"submit","message":"authenticated","trace_id":"abc"}"#,
            r#"{"timestamp":"2026-01-01T00:00:01Z","level":"INFO","function":"submit","message":"task accepted","task_id":"T2","trace_id":"def"}"#,
            "not json at all",
            r#"{"_aws":{"Timestamp":1767225603000},"TasksFinished":1.0,"status":"succeeded","task_id":"T1"}"#,
        ]);
        let story = select(all, "T1");
        let messages: Vec<String> = story.iter().map(render).collect();
        assert_eq!(story.len(), 4, "{messages:#?}");
        assert!(messages[0].contains("authenticated"));
        assert!(messages[1].contains("task accepted"));
        assert!(messages[2].contains("task claimed"));
        assert!(messages[3].contains("METRIC") && messages[3].contains("TasksFinished=1.0"), "{}", messages[3]);
    }

    #[test]
    fn a_line_renders_its_time_function_level_message_and_other_fields() {
        let e = &lines(&[
            r#"{"timestamp":"2026-01-01T10:11:12.345678Z","level":"WARN","function":"worker","message":"model call failed","task_id":"T","model":"m","attempt":2}"#,
        ])[0];
        assert_eq!(render(e), "10:11:12.345 worker   WARN   model call failed attempt=2 model=m");
    }
}
