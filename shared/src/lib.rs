//! agentq's library: everything the Lambda functions share, in layers. A module may use the
//! layers below its own and never one above (a test in this file checks it):
//!
//! ```text
//!  runtime/    config (plain data, read once), AWS clients, wiring (config → parts)
//!  edge/       the HTTP functions' shared edge: errors → responses, auth, JSON shapes,
//!              read throttle
//!  usecases/   work over several adapters: the dead-letter sweep and redrive
//!  agent/      the agent loop and its tools (no AWS)
//!  llm/ store/ queue/ outbound/    adapters: model providers, DynamoDB (+ S3 blobs), SQS,
//!              guarded outbound HTTP (webhooks); behind small traits with in-memory fakes
//!  observe/ net/   logs, traces, EMF metrics; outbound HTTPS's one TLS stack
//!  domain/     tasks, tenants, usage and money, steps, secrets, backoff: plain types and rules
//! ```

pub mod agent;
pub mod domain;
pub mod edge;
pub mod llm;
pub mod net;
pub mod observe;
pub mod outbound;
pub mod queue;
pub mod runtime;
pub mod store;
pub mod usecases;

/// The current time, in UTC.
pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The current time in epoch milliseconds.
pub fn now_millis() -> i64 {
    (now().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Each top-level module's layer; a module may use only its own layer and those below.
    fn rank(module: &str) -> usize {
        match module {
            "domain" => 0,
            "observe" | "net" => 1,
            "llm" | "store" | "queue" | "outbound" => 2,
            "agent" => 3,
            "usecases" => 4,
            "edge" => 5,
            "runtime" => 6,
            other => panic!("module {other} has no layer: give it one in lib.rs"),
        }
    }

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The top-level modules `text` names as `crate::<module>`.
    fn uses(text: &str) -> Vec<&str> {
        text.match_indices("crate::")
            .map(|(i, _)| {
                let rest = &text[i + "crate::".len()..];
                &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
            })
            .filter(|m| *m != "now" && *m != "now_millis")
            .collect()
    }

    #[test]
    fn no_module_uses_a_layer_above_its_own() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        let mut upward = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            let Some((module, _)) = relative.split_once('/') else { continue };
            let text = std::fs::read_to_string(&file).unwrap();
            for used in uses(&text) {
                if rank(used) > rank(module) {
                    upward.push(format!("{relative} uses crate::{used}"));
                }
            }
            // Configuration is plain data: it knows the domain's types and nothing else.
            if relative == "runtime/config.rs" {
                upward.extend(
                    uses(&text).into_iter().filter(|u| *u != "domain").map(|u| format!("{relative} uses crate::{u}")),
                );
            }
        }
        upward.sort();
        upward.dedup();
        assert!(upward.is_empty(), "imports that run upward:\n{}", upward.join("\n"));
    }
}
