//! Schedules: a task created on a clock (docs/schedules.md). The expression is EventBridge's:
//! `cron(minutes hours day-of-month month day-of-week year)` with Quartz weekdays (1 = SUN)
//! and `?` in one of the two day fields, or `rate(N minute|minutes|hour|hours|day|days)`, so
//! a schedule written for agentq reads the same as one written for EventBridge Scheduler.
//!
//! A tick is the instant the expression names. Each tick creates at most one task, under an
//! idempotency key made of the schedule and the tick, so a dispatcher that dies after creating
//! a tick's task and runs again finds the same task instead of making a second. Ticks missed
//! while nothing dispatched (a long outage) are not run one by one afterwards: the latest is
//! run once and the schedule moves on, as EventBridge Scheduler does without a flexible window.

use std::time::Duration;

use chrono::TimeZone as _;
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::domain::task::{Allowed, FieldError, RequestError, TaskId, TaskRequest};

/// Most schedules a tenant may have.
pub const MAX_SCHEDULES_PER_TENANT: usize = 100;
/// Runs a schedule lists, newest first; older ones are found by the tasks' `schedule_id`.
pub const KEPT_RUNS: usize = 50;
/// Upcoming runs an answer lists.
pub const NEXT_RUNS: usize = 5;
/// Longest `description`, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 256;

/// A schedule id: `sch_<ULID>`.
pub fn new_schedule_id() -> String {
    format!("sch_{}", ulid::Ulid::generate())
}

/// Whether `raw` has the form of a schedule id.
pub fn is_schedule_id(raw: &str) -> bool {
    raw.strip_prefix("sch_").is_some_and(|u| u.len() == 26 && ulid::Ulid::from_string(u).is_ok())
}

/// A parsed schedule expression.
#[derive(Debug, Clone)]
pub enum Expression {
    Cron(Box<Cron>),
    /// Every so often, counted from when the schedule was created (or resumed).
    Rate(Duration),
}

impl Expression {
    /// Parses EventBridge's syntax; the error says what is wrong in a client's words.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(inner) = text.strip_prefix("rate(").and_then(|t| t.strip_suffix(')')) {
            return parse_rate(inner).map(Self::Rate);
        }
        if let Some(inner) = text.strip_prefix("cron(").and_then(|t| t.strip_suffix(')')) {
            return parse_cron(inner).map(|c| Self::Cron(Box::new(c)));
        }
        Err("must be `cron(minutes hours day-of-month month day-of-week year)` or `rate(value unit)`".into())
    }

    /// The first tick strictly after `after`, in time zone `tz`; `anchor` is where a rate
    /// counts from. `None` if there is none (a cron whose years are past).
    pub fn next_after(&self, after: OffsetDateTime, anchor: OffsetDateTime, tz: Tz) -> Option<OffsetDateTime> {
        match self {
            Self::Rate(every) => {
                let every = every.as_millis() as i128;
                let since = (after - anchor).whole_milliseconds();
                let periods = if since < 0 { 1 } else { since / every + 1 };
                Some(anchor + time::Duration::milliseconds((periods * every) as i64))
            }
            Self::Cron(cron) => {
                let at = tz.timestamp_opt(after.unix_timestamp(), 0).single()?;
                let next = cron.find_next_occurrence(&at, false).ok()?;
                OffsetDateTime::from_unix_timestamp(next.timestamp()).ok()
            }
        }
    }

    /// The next `n` ticks after `after`.
    pub fn next_n(&self, after: OffsetDateTime, anchor: OffsetDateTime, tz: Tz, n: usize) -> Vec<OffsetDateTime> {
        let mut out = Vec::with_capacity(n);
        let mut at = after;
        while out.len() < n {
            let Some(next) = self.next_after(at, anchor, tz) else { break };
            out.push(next);
            at = next;
        }
        out
    }
}

fn parse_rate(inner: &str) -> Result<Duration, String> {
    let example = "must be `rate(value unit)` with a whole value ≥ 1 and a unit of minute(s), hour(s) or day(s), e.g. `rate(5 minutes)` or `rate(1 hour)`";
    let mut parts = inner.split_whitespace();
    let (Some(value), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(example.into());
    };
    let value: u64 = value.parse().ok().filter(|v| *v >= 1 && *v <= 100_000).ok_or_else(|| example.to_owned())?;
    let (seconds, plural) = match unit {
        "minute" => (60, false),
        "minutes" => (60, true),
        "hour" => (3600, false),
        "hours" => (3600, true),
        "day" => (86_400, false),
        "days" => (86_400, true),
        _ => return Err(example.into()),
    };
    // EventBridge is strict about this; so are we, so a schedule moves between the two.
    if plural != (value > 1) {
        return Err(format!("`rate({value} {unit})`: a value of 1 takes a singular unit and a larger one a plural"));
    }
    Ok(Duration::from_secs(value * seconds))
}

fn parse_cron(inner: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = inner.split_whitespace().collect();
    if fields.len() != 6 {
        return Err(format!(
            "a cron expression has 6 fields (minutes hours day-of-month month day-of-week year), not {}",
            fields.len()
        ));
    }
    let (dom, dow) = (fields[2], fields[4]);
    if (dom == "?") == (dow == "?") {
        return Err("exactly one of day-of-month and day-of-week must be `?` (e.g. `cron(0 9 ? * MON-FRI *)`)".into());
    }
    // Seconds are not part of EventBridge's syntax: every tick is on the minute.
    let pattern = format!("0 {}", fields.join(" "));
    CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Required)
        .alternative_weekdays(true)
        .sloppy_ranges(true)
        .build()
        .parse(&pattern)
        .map_err(|e| format!("is not a valid cron expression: {e}"))
}

/// Parses an IANA time zone name (`Europe/Paris`, `UTC`).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| format!("`{name}` is not an IANA time zone name (e.g. `Europe/Paris`, `UTC`)"))
}

/// What a tick does while the task of the previous one is still open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The tick is skipped (recorded as such).
    #[default]
    Skip,
    /// The tick creates its task anyway.
    Allow,
}

/// Whether a schedule creates tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleState {
    #[default]
    Active,
    Paused,
}

/// Why a tick created no task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// `overlap`, `concurrency_limited`, `budget_exhausted`, `invalid_task`, `tenant_missing`,
    /// `enqueue_failed`.
    pub code: String,
    pub message: String,
}

/// One tick of a schedule: the task it created, or why it created none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRun {
    /// The tick.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Skipped>,
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub schedule_id: String,
    pub tenant_id: String,
    /// The expression as the client wrote it.
    pub schedule: String,
    pub timezone: String,
    pub overlap: Overlap,
    pub state: ScheduleState,
    /// The body each tick submits, as given (checked when the schedule was created, and again
    /// at each tick: the deployment's models and tools may have changed since).
    pub task: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Where a rate counts from: creation, or the last resume.
    #[serde(with = "time::serde::rfc3339")]
    pub anchor: OffsetDateTime,
    /// The next tick; none while paused or once the expression has no more.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub next_run_at: Option<OffsetDateTime>,
    /// The latest [`KEPT_RUNS`] ticks, newest first.
    #[serde(default)]
    pub runs: Vec<ScheduleRun>,
    /// Bumped by every write, so two writers cannot both move a schedule on.
    #[serde(default)]
    pub version: u64,
}

impl ScheduleRecord {
    /// The expression (it was valid when stored).
    pub fn expression(&self) -> Option<Expression> {
        Expression::parse(&self.schedule).ok()
    }

    pub fn tz(&self) -> Tz {
        parse_timezone(&self.timezone).unwrap_or(Tz::UTC)
    }

    /// The first tick after `after`.
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        self.expression()?.next_after(after, self.anchor, self.tz())
    }

    /// The upcoming ticks an answer lists (none while paused).
    pub fn upcoming(&self) -> Vec<OffsetDateTime> {
        match (self.state, self.next_run_at, self.expression()) {
            (ScheduleState::Active, Some(next), Some(e)) => {
                let mut runs = vec![next];
                runs.extend(e.next_n(next, self.anchor, self.tz(), NEXT_RUNS - 1));
                runs
            }
            _ => Vec::new(),
        }
    }

    /// The task the latest tick created, if it created one.
    pub fn last_task(&self) -> Option<TaskId> {
        self.runs.iter().find_map(|r| r.task_id)
    }

    /// Records `run` and moves an active schedule to its first tick after `now` (ticks missed
    /// in between are not run).
    pub fn record(&mut self, run: ScheduleRun, now: OffsetDateTime) {
        self.runs.insert(0, run);
        self.runs.truncate(KEPT_RUNS);
        if self.state == ScheduleState::Active {
            self.next_run_at = self.next_after(now);
        }
        self.updated_at = now;
    }

    /// Pauses or resumes; a resumed schedule's next tick is counted from `now`.
    pub fn set_state(&mut self, state: ScheduleState, now: OffsetDateTime) {
        if state == self.state {
            return;
        }
        self.state = state;
        self.updated_at = now;
        match state {
            ScheduleState::Paused => self.next_run_at = None,
            ScheduleState::Active => {
                self.anchor = now;
                self.next_run_at = self.next_after(now);
            }
        }
    }

    /// The idempotency key of a tick's task: one task per schedule and tick.
    pub fn tick_key(&self, tick: OffsetDateTime) -> String {
        format!("schedule:{}:{}", self.schedule_id, tick.unix_timestamp())
    }
}

/// Parses `POST /v1/schedules`: `{"schedule", "timezone"?, "overlap"?, "description"?, "task"}`.
pub fn parse_schedule(
    body: &[u8],
    allowed: &Allowed,
    tenant_id: &str,
    now: OffsetDateTime,
) -> Result<ScheduleRecord, RequestError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| RequestError::NotJson(e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(RequestError::Invalid(vec![FieldError::new("", "the body must be a JSON object")]));
    };
    let mut errors = Vec::new();
    let expression = match fields.remove("schedule") {
        Some(Value::String(s)) => {
            Expression::parse(&s).map(|e| (s, e)).map_err(|m| errors.push(FieldError::new("schedule", m))).ok()
        }
        None => {
            errors.push(FieldError::new("schedule", "is required, e.g. `cron(0 9 ? * MON-FRI *)` or `rate(1 hour)`"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new("schedule", "must be a string"));
            None
        }
    };
    let timezone = match fields.remove("timezone") {
        None | Some(Value::Null) => Some(("UTC".to_owned(), Tz::UTC)),
        Some(Value::String(name)) => {
            parse_timezone(&name).map(|tz| (name, tz)).map_err(|m| errors.push(FieldError::new("timezone", m))).ok()
        }
        Some(_) => {
            errors.push(FieldError::new("timezone", "must be an IANA time zone name"));
            None
        }
    };
    let overlap = match fields.remove("overlap") {
        None | Some(Value::Null) => Overlap::Skip,
        Some(v) => serde_json::from_value(v).unwrap_or_else(|_| {
            errors.push(FieldError::new("overlap", "must be `skip` or `allow`"));
            Overlap::Skip
        }),
    };
    let description = match fields.remove("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if d.chars().count() <= MAX_DESCRIPTION_CHARS => Some(d),
        Some(_) => {
            errors.push(FieldError::new(
                "description",
                format!("must be a string of at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
            None
        }
    };
    let task = match fields.remove("task") {
        Some(Value::Object(task)) => {
            check_task(&task, allowed).map_err(|e| errors.extend(e)).ok();
            Some(task)
        }
        None => {
            errors
                .push(FieldError::new("task", "is required: the body each tick submits, as `POST /v1/tasks` takes it"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new("task", "must be an object, as `POST /v1/tasks` takes it"));
            None
        }
    };
    let mut unknown: Vec<_> = fields.keys().cloned().collect();
    unknown.sort();
    errors.extend(unknown.into_iter().map(|k| FieldError::new(k, "is not a known field")));
    let (Some((schedule, expression)), Some((timezone, tz)), Some(task), true) =
        (expression, timezone, task, errors.is_empty())
    else {
        return Err(RequestError::Invalid(errors));
    };
    let Some(next) = expression.next_after(now, now, tz) else {
        return Err(RequestError::Invalid(vec![FieldError::new("schedule", "has no tick after now")]));
    };
    Ok(ScheduleRecord {
        schedule_id: new_schedule_id(),
        tenant_id: tenant_id.to_owned(),
        schedule,
        timezone,
        overlap,
        state: ScheduleState::Active,
        task,
        description,
        created_at: now,
        updated_at: now,
        anchor: now,
        next_run_at: Some(next),
        runs: Vec::new(),
        version: 0,
    })
}

/// Checks a tick's body as a submit would, its errors named under `task.`.
pub fn check_task(task: &Map<String, Value>, allowed: &Allowed) -> Result<TaskRequest, Vec<FieldError>> {
    check_task_with(task, allowed, TaskRequest::parse)
}

/// [`check_task`] of a schedule's stored task, at a tick: checked in full when the schedule
/// was written, so its output schema is not compiled again ([`TaskRequest::parse_stored`]).
/// What the deployment allows is checked again: its models and tools may have changed since.
pub fn check_stored_task(task: &Map<String, Value>, allowed: &Allowed) -> Result<TaskRequest, Vec<FieldError>> {
    check_task_with(task, allowed, TaskRequest::parse_stored)
}

fn check_task_with(
    task: &Map<String, Value>,
    allowed: &Allowed,
    parse: impl Fn(&[u8], &Allowed) -> Result<TaskRequest, RequestError>,
) -> Result<TaskRequest, Vec<FieldError>> {
    let within =
        |e: FieldError| FieldError::new(format!("task.{}", e.field).trim_end_matches('.').to_owned(), e.message);
    if task.contains_key("webhook") {
        return Err(vec![FieldError::new(
            "task.webhook",
            "is not taken in a schedule: register an endpoint (POST /v1/webhooks)",
        )]);
    }
    match parse(Value::Object(task.clone()).to_string().as_bytes(), allowed) {
        Ok(request) => Ok(request),
        Err(RequestError::Invalid(errors)) => Err(errors.into_iter().map(within).collect()),
        Err(RequestError::NotJson(m)) => Err(vec![FieldError::new("task", m)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn next(expr: &str, after: OffsetDateTime, tz: &str) -> Vec<OffsetDateTime> {
        Expression::parse(expr).unwrap().next_n(after, after, parse_timezone(tz).unwrap(), 3)
    }

    #[test]
    fn a_weekday_cron_skips_the_weekend_in_its_time_zone() {
        // 2026-12-04 is a Friday; 09:00 in Paris is 08:00 UTC in winter.
        let runs = next("cron(0 9 ? * MON-FRI *)", datetime!(2026-12-04 10:00 UTC), "Europe/Paris");
        assert_eq!(
            runs,
            vec![datetime!(2026-12-07 08:00 UTC), datetime!(2026-12-08 08:00 UTC), datetime!(2026-12-09 08:00 UTC)]
        );
    }

    #[test]
    fn cron_weekdays_count_from_sunday_as_eventbridge_does() {
        // 1 = Sunday: 2026-12-06.
        let runs = next("cron(30 12 ? * 1 *)", datetime!(2026-12-02 00:00 UTC), "UTC");
        assert_eq!(runs[0], datetime!(2026-12-06 12:30 UTC));
        let every_15 = next("cron(0/15 * * * ? *)", datetime!(2026-12-02 00:07 UTC), "UTC");
        assert_eq!(
            every_15,
            vec![datetime!(2026-12-02 00:15 UTC), datetime!(2026-12-02 00:30 UTC), datetime!(2026-12-02 00:45 UTC)]
        );
        let last_day = next("cron(0 0 L * ? *)", datetime!(2026-12-02 00:00 UTC), "UTC");
        assert_eq!(last_day[0], datetime!(2026-12-31 00:00 UTC));
        // The second Monday (2 = MON) of December 2026 is the 14th.
        let second_monday = next("cron(0 8 ? * 2#2 *)", datetime!(2026-12-02 00:00 UTC), "UTC");
        assert_eq!(second_monday[0], datetime!(2026-12-14 08:00 UTC));
        // The weekday nearest 2027-01-02 (a Saturday) is Friday 1 January.
        let nearest = next("cron(0 8 2W * ? *)", datetime!(2026-12-31 00:00 UTC), "UTC");
        assert_eq!(nearest[0], datetime!(2027-01-01 08:00 UTC));
    }

    #[test]
    fn a_rate_counts_from_its_anchor_and_never_returns_the_present() {
        let anchor = datetime!(2026-12-02 10:00:30 UTC);
        let e = Expression::parse("rate(5 minutes)").unwrap();
        assert_eq!(e.next_after(anchor, anchor, Tz::UTC), Some(datetime!(2026-12-02 10:05:30 UTC)));
        assert_eq!(
            e.next_after(datetime!(2026-12-02 10:05:30 UTC), anchor, Tz::UTC),
            Some(datetime!(2026-12-02 10:10:30 UTC))
        );
        assert_eq!(
            e.next_after(datetime!(2026-12-02 11:01 UTC), anchor, Tz::UTC),
            Some(datetime!(2026-12-02 11:05:30 UTC))
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (bad, says) in [
            ("rate(1 minutes)", "singular"),
            ("rate(5 minute)", "plural"),
            ("rate(0 hours)", "value ≥ 1"),
            ("rate(5 weeks)", "unit"),
            ("cron(0 9 * * MON *)", "`?`"),
            ("cron(0 9 ? * ? *)", "`?`"),
            ("cron(0 9 * * ?)", "6 fields"),
            ("cron(0 25 * * ? *)", "not a valid cron"),
            ("every day", "must be"),
        ] {
            let e = Expression::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_schedule_body_is_checked_whole_and_its_task_as_a_submit() {
        let now = datetime!(2026-12-02 10:00 UTC);
        let parse = |b: Value| parse_schedule(b.to_string().as_bytes(), &Allowed::default(), "t", now);
        let ok = parse(json!({"schedule": "rate(1 hour)", "task": {"prompt": "hi"}})).unwrap();
        assert_eq!(
            (ok.timezone.as_str(), ok.overlap, ok.next_run_at),
            ("UTC", Overlap::Skip, Some(datetime!(2026-12-02 11:00 UTC)))
        );
        assert_eq!(ok.upcoming().len(), NEXT_RUNS);
        let Err(RequestError::Invalid(errors)) = parse(json!({
            "schedule": "cron(0 9 * * MON *)", "timezone": "Mars/Olympus", "overlap": "queue",
            "task": {"prompt": "", "webhook": null}, "extra": 1
        })) else {
            panic!("accepted")
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["schedule", "timezone", "overlap", "task.webhook", "extra"]);
        let Err(RequestError::Invalid(errors)) = parse(json!({"schedule": "rate(1 hour)", "task": {"prompt": ""}}))
        else {
            panic!("accepted")
        };
        assert_eq!(errors[0].field, "task.prompt");
        let Err(RequestError::Invalid(errors)) =
            parse(json!({"schedule": "cron(0 0 1 1 ? 2020)", "task": {"prompt": "late"}}))
        else {
            panic!("accepted")
        };
        assert!(errors[0].message.contains("no tick"));
    }

    #[test]
    fn a_recorded_tick_moves_past_missed_ones_and_a_resume_restarts_the_count() {
        let created = datetime!(2026-12-02 10:00 UTC);
        let mut s = parse_schedule(
            br#"{"schedule":"rate(1 minute)","task":{"prompt":"x"}}"#,
            &Allowed::default(),
            "t",
            created,
        )
        .unwrap();
        let tick = s.next_run_at.unwrap();
        s.record(
            ScheduleRun { at: tick, task_id: Some(TaskId::new()), skipped: None },
            datetime!(2026-12-02 10:07:10 UTC),
        );
        assert_eq!(s.next_run_at, Some(datetime!(2026-12-02 10:08 UTC)));
        assert!(s.last_task().is_some());
        s.set_state(ScheduleState::Paused, datetime!(2026-12-02 10:07:30 UTC));
        assert_eq!((s.next_run_at, s.upcoming()), (None, vec![]));
        s.set_state(ScheduleState::Active, datetime!(2026-12-02 10:09:20 UTC));
        assert_eq!(s.next_run_at, Some(datetime!(2026-12-02 10:10:20 UTC)));
        assert_eq!(s.tick_key(tick), format!("schedule:{}:{}", s.schedule_id, tick.unix_timestamp()));
    }
}
