// agentq console: a plain ES module with no build step and no dependencies, served by the
// status function under a strict Content-Security-Policy. It calls the public HTTP API with
// the tenant's API key, kept in sessionStorage (this tab, this session) only.
//
// Everything a model or a tool produced (prompts, answers, tool inputs and results, metadata)
// is untrusted: it only ever reaches the page as text (`textContent`, text nodes), never as
// HTML, so markup in it stays inert.

const KEY = "agentq.key";
const PAGE = 50;
const POLL_MS = 2000;
const FOLD = 1500;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const PALETTE = 6;
const STATUSES = ["queued", "running", "waiting_for_input", "succeeded", "failed", "cancelled"];

const main = document.getElementById("main");
const toast = document.getElementById("status");
let timers = [];

/** Builds an element: `attrs` may hold `class`, `text`, `on<event>` handlers and attributes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElementNS(
    attrs.svg ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml",
    tag,
  );
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false || k === "svg") continue;
    if (k === "text") node.textContent = String(v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k === "className" ? "class" : k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function say(message) {
  toast.textContent = message;
  setTimeout(() => { if (toast.textContent === message) toast.textContent = ""; }, 4000);
}

const key = () => sessionStorage.getItem(KEY);
const usd = (n) => `$${(n ?? 0).toFixed(n >= 1 ? 2 : 6)}`;
const when = (t) => (t ? new Date(t).toLocaleString() : "");
const ms = (n) => (n < 1000 ? `${n} ms` : `${(n / 1000).toFixed(1)} s`);
const ago = (a, b) => {
  const s = Math.max(0, (new Date(b) - new Date(a)) / 1000);
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
};

/** Calls the API; a 401 signs out, any other error carries the problem's words. */
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${key()}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (r.status === 401) {
    sessionStorage.removeItem(KEY);
    route();
    throw new Error("The API key was refused: sign in again.");
  }
  if (!r.ok) {
    const fields = data?.errors?.map((e) => `${e.field}: ${e.message}`).join("; ");
    throw new Error(fields || data?.detail || data?.title || `HTTP ${r.status}`);
  }
  return data;
}

function every(ms, fn) {
  const id = setInterval(fn, ms);
  timers.push(id);
}

function view(title, ...children) {
  timers.forEach(clearInterval);
  timers = [];
  toast.textContent = "";
  document.title = `${title} · agentq console`;
  main.replaceChildren(el("h1", { text: title }), ...children);
  main.focus();
}

function badge(status) {
  return el("span", { class: `badge s-${status}`, text: status.replaceAll("_", " ") });
}

/** Text that may be long: folded after FOLD characters, the rest shown on request. */
function longText(text, cls = "text") {
  if (text.length <= FOLD) return el("div", { class: cls, text });
  const box = el("div", { class: cls, text: `${text.slice(0, FOLD)}…` });
  const more = el("button", {
    type: "button", class: "secondary", text: `Show all ${text.length.toLocaleString()} characters`,
    onclick: () => { box.textContent = text; more.remove(); },
  });
  return el("div", {}, box, more);
}

function json(value) {
  return longText(JSON.stringify(value, null, 2), "text mono");
}

// Sign in -------------------------------------------------------------------------------

function login() {
  const input = el("input", { id: "key", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const form = el("form", { class: "form", onsubmit: async (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    try {
      await api("GET", "/v1/tasks?limit=1");
      location.hash = "#/tasks";
      route();
    } catch (err) {
      say(err.message);
    }
  } },
  el("label", { for: "key" }, "API key", input),
  el("p", { class: "meta", text: "Kept for this browser tab only, and sent only to this agentq API." }),
  el("div", {}, el("button", { type: "submit", text: "Sign in" })));
  view("Sign in", form);
}

// Tasks ---------------------------------------------------------------------------------

function tasks() {
  const state = { status: "", cursors: [""], page: 0, search: "" };
  const statusSelect = el("select", { id: "filter-status", onchange: () => { state.status = statusSelect.value; state.cursors = [""]; state.page = 0; load(); } },
    el("option", { value: "", text: "All" }), STATUSES.map((s) => el("option", { value: s, text: s.replaceAll("_", " ") })));
  const search = el("input", { id: "search", type: "search", placeholder: "Task id or metadata", oninput: () => { state.search = search.value.trim(); render(); } });
  const body = el("tbody");
  const older = el("button", { type: "button", class: "secondary", text: "Older", onclick: () => { state.page += 1; load(); } });
  const newer = el("button", { type: "button", class: "secondary", text: "Newer", onclick: () => { state.page -= 1; load(); } });
  const open = el("button", { type: "button", class: "secondary", text: "Open task", onclick: () => { location.hash = `#/tasks/${encodeURIComponent(state.search)}`; } });
  let page = [];

  function render() {
    const q = state.search.toLowerCase();
    const shown = page.filter((t) => !q || t.task_id.toLowerCase().includes(q) || JSON.stringify(t.metadata ?? {}).toLowerCase().includes(q));
    body.replaceChildren(...shown.map((t) => el("tr", { "data-task": t.task_id },
      el("td", { class: "mono" }, el("a", { href: `#/tasks/${t.task_id}`, text: t.task_id })),
      el("td", {}, badge(t.status), t.held ? " held" : ""),
      el("td", { text: when(t.created_at) }),
      el("td", { class: "num", text: `${t.progress.step}/${t.progress.max_steps}` }),
      el("td", { text: t.model ?? "" }),
      el("td", { class: "num", text: usd(t.usage.cost_usd) }),
      el("td", {}, TERMINAL.has(t.status) ? "" : el("button", {
        type: "button", class: "danger", text: "Cancel", "aria-label": `Cancel task ${t.task_id}`,
        onclick: () => cancel(t.task_id).then(load),
      })),
    )));
    if (!shown.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "empty", text: page.length ? "No task on this page matches." : "No tasks." })));
    open.hidden = !/^[0-9A-Za-z]{26}$/.test(state.search);
  }

  async function load() {
    const q = new URLSearchParams({ limit: PAGE });
    if (state.status) q.set("status", state.status);
    if (state.cursors[state.page]) q.set("cursor", state.cursors[state.page]);
    try {
      const data = await api("GET", `/v1/tasks?${q}`);
      page = data.tasks;
      state.cursors[state.page + 1] = data.next_cursor;
      older.disabled = !data.next_cursor;
      newer.disabled = state.page === 0;
      render();
    } catch (err) {
      say(err.message);
    }
  }

  view("Tasks",
    el("div", { class: "filters" },
      el("label", { for: "filter-status" }, "Status", statusSelect),
      el("label", { for: "search" }, "Search this page", search), open),
    el("table", {}, el("caption", { class: "sr-only", text: "Your tasks, newest first" }),
      el("thead", {}, el("tr", {}, ["Task", "Status", "Created", "Steps", "Model"].map((h) => el("th", { scope: "col", text: h })),
        el("th", { scope: "col", class: "num", text: "Cost" }), el("th", { scope: "col" }, el("span", { class: "sr-only", text: "Actions" })))),
      body),
    el("div", { class: "actions" }, newer, older));
  load();
  // Live: the first page follows the API while it is shown.
  every(POLL_MS * 2, () => { if (state.page === 0) load(); });
}

async function cancel(id) {
  try {
    await api("DELETE", `/v1/tasks/${encodeURIComponent(id)}`);
    say(`Cancel requested for ${id}.`);
  } catch (err) {
    say(err.message);
  }
}

// One task ------------------------------------------------------------------------------

async function allSteps(id) {
  const steps = [];
  let cursor = "";
  for (let i = 0; i < 20; i += 1) {
    const q = new URLSearchParams({ limit: 200 });
    if (cursor) q.set("cursor", cursor);
    const page = await api("GET", `/v1/tasks/${encodeURIComponent(id)}/steps?${q}`);
    steps.push(...page.steps);
    if (!page.next_cursor) break;
    cursor = page.next_cursor;
  }
  return steps;
}

/** The task's starts, waits and resumptions, from its event log (the hand-offs between
 * invocations a timeline shows). */
async function invocations(id) {
  const marks = [];
  let after = 0;
  let waitedAt = 1;
  for (let i = 0; i < 20; i += 1) {
    const page = await api("GET", `/v1/tasks/${encodeURIComponent(id)}/events?after=${after}&limit=500`);
    for (const e of page.events) {
      // Each mark goes before the first model step after it.
      if (e.type === "task.started") {
        marks.push({ type: e.type, time: e.time, before: (e.data?.spent?.steps ?? 0) + 1, attempt: e.data?.attempt });
      } else if (e.type === "task.waiting_for_input") {
        waitedAt = (e.data?.pending?.[0]?.step ?? 0) + 1;
        marks.push({ type: e.type, time: e.time, before: waitedAt });
      } else if (e.type === "task.resumed") {
        marks.push({ type: e.type, time: e.time, before: waitedAt });
      }
    }
    if (page.next_after === undefined) break;
    after = page.next_after;
  }
  return marks;
}

function markItem(m, n) {
  const what = {
    "task.started": n === 0 ? "Started" : `Handed to a new invocation (start ${n + 1}${m.attempt ? `, attempt ${m.attempt}` : ""})`,
    "task.waiting_for_input": "Waiting for a decision",
    "task.resumed": "Resumed after the decisions",
  }[m.type];
  return el("li", { class: "mark", "data-mark": m.type }, el("span", { class: "meta", text: `${what} · ${when(m.time)}` }));
}

/** Steps in order, each start or wait placed before the first step it preceded. */
function timelineItems(steps, marks) {
  const items = [];
  let starts = 0;
  let m = 0;
  const place = (upTo) => {
    while (m < marks.length && marks[m].before <= upTo) {
      items.push(markItem(marks[m], marks[m].type === "task.started" ? starts++ : starts));
      m += 1;
    }
  };
  for (const s of steps) {
    if (s.kind === "model") place(s.step);
    // A wait comes between the answer that asked for approval and its decisions.
    while (s.kind === "decision" && m < marks.length && marks[m].type === "task.waiting_for_input" && marks[m].before <= s.step + 1) {
      items.push(markItem(marks[m], starts));
      m += 1;
    }
    items.push(stepItem(s));
  }
  place(Infinity);
  return items;
}

function block(b) {
  if (b.type === "text") return longText(b.text ?? "");
  if (b.type === "tool_use") return el("div", {}, el("div", { class: "meta", text: `Tool request: ${b.name} (${b.id})` }), json(b.input));
  return el("div", {}, el("div", { class: "meta", text: b.type }), json(b));
}

function stepItem(s) {
  const inherited = s.inherited ? " · inherited" : "";
  if (s.kind === "model") {
    const u = s.usage;
    const tools = s.content.filter((b) => b.type === "tool_use").map((b) => b.name);
    const how = [
      s.latency_ms !== undefined ? ms(s.latency_ms) : "",
      s.attempts > 1 ? `${s.attempts} attempts` : "",
      s.passed_over?.length ? `after ${s.passed_over.join(", ")} failed` : "",
    ].filter(Boolean).map((t) => ` · ${t}`).join("");
    return el("li", { class: "model", "data-step": s.step },
      el("details", { open: true },
        el("summary", {}, `Step ${s.step}: ${s.model} answered`,
          el("span", { class: "meta", text: ` · ${s.stop_reason}${tools.length ? ` → ${tools.join(", ")}` : ""} · ${u.input_tokens} in / ${u.output_tokens} out${u.cache_read_input_tokens ? ` / ${u.cache_read_input_tokens} cached` : ""} · ${usd(u.cost_usd)}${how}${inherited}` })),
        s.content.map(block)));
  }
  if (s.kind === "tool") {
    return el("li", { class: s.is_error ? "tool error" : "tool", "data-step": s.step },
      el("details", { open: s.content.length <= FOLD },
        el("summary", {}, `Tool ${s.name} ${s.is_error ? "failed" : "returned"}`,
          el("span", { class: "meta", text: ` · step ${s.step} · ${s.tool_use_id}${s.duration_ms !== undefined ? ` · ${ms(s.duration_ms)}` : ""} · ${s.content.length.toLocaleString()} characters${inherited}` })),
        longText(s.content, "text mono")));
  }
  return el("li", { class: "decision", "data-step": s.step },
    el("details", { open: true },
      el("summary", {}, `Decision: ${s.action} ${s.name}`, el("span", { class: "meta", text: ` · step ${s.step} · by ${s.by} · ${when(s.at)}${inherited}` })),
      s.message ? longText(s.message) : null,
      s.input ? json(s.input) : null));
}

function pendingPanel(task) {
  const rows = task.pending.map((p, i) => {
    const choice = el("select", { id: `decision-${i}`, "data-call": p.tool_use_id, onchange: () => { edited.hidden = choice.value !== "edit"; } },
      el("option", { value: "approve", text: "Approve" }), el("option", { value: "reject", text: "Reject" }),
      el("option", { value: "edit", text: "Edit the input, then run" }));
    const message = el("input", { id: `message-${i}`, type: "text", placeholder: "What the model is told (for a rejection)" });
    const input = el("textarea", { id: `input-${i}`, class: "mono", spellcheck: "false" });
    input.value = JSON.stringify(p.input, null, 2);
    const edited = el("label", { for: `input-${i}`, hidden: true }, "Input to run the tool on (JSON)", input);
    return { p, choice, message, input, node: el("div", { class: "pending", "data-call": p.tool_use_id },
      el("div", {}, el("strong", { text: `${p.name}` }), el("span", { class: "meta", text: ` · step ${p.step} · ${p.tool_use_id}` })),
      json(p.input),
      el("div", { class: "row" }, el("label", { for: `decision-${i}` }, "Decision", choice), el("label", { for: `message-${i}` }, "Message", message)),
      edited) };
  });
  const send = el("button", { type: "button", id: "send-decisions", text: "Send decisions", onclick: async () => {
    send.disabled = true;
    let decisions;
    try {
      decisions = rows.map(({ p, choice, message, input }) => ({
        tool_use_id: p.tool_use_id, action: choice.value, ...(message.value ? { message: message.value } : {}),
        ...(choice.value === "edit" ? { input: JSON.parse(input.value) } : {}),
      }));
    } catch (err) {
      say(`The edited input is not JSON: ${err.message}`);
      send.disabled = false;
      return;
    }
    try {
      await api("POST", `/v1/tasks/${encodeURIComponent(task.task_id)}/input`, { decisions });
      say("Decisions sent: the task runs on.");
    } catch (err) {
      say(err.message);
      send.disabled = false;
    }
  } });
  return el("section", { "aria-label": "Pending tool calls" },
    el("h2", { text: `Waiting for a decision${task.waiting_until ? ` (until ${when(task.waiting_until)})` : ""}` }),
    rows.map((r) => r.node), send);
}

function forkForm(task, steps) {
  const modelSteps = steps.filter((s) => s.kind === "model").map((s) => s.step);
  const from = el("select", { id: "fork-step" }, el("option", { value: 0, text: "the start (a rerun)" }),
    modelSteps.map((n) => el("option", { value: n, text: `after step ${n}` })));
  const message = el("input", { id: "fork-message", type: "text", placeholder: "Optional: a message for the next turn" });
  return el("details", {}, el("summary", { text: "Fork from a step" }),
    el("div", { class: "row" }, el("label", { for: "fork-step" }, "From", from), el("label", { for: "fork-message" }, "Message", message),
      el("button", { type: "button", text: "Fork", onclick: async () => {
        const body = { from_step: Number(from.value), ...(message.value ? { edit: { message: message.value } } : {}) };
        try {
          const made = await api("POST", `/v1/tasks/${encodeURIComponent(task.task_id)}/fork`, body);
          location.hash = `#/tasks/${made.task_id}`;
        } catch (err) {
          say(err.message);
        }
      } })));
}

/** A rerun is a fork from step 0: a new task with the same prompt and settings. */
async function rerun(id) {
  try {
    const made = await api("POST", `/v1/tasks/${encodeURIComponent(id)}/fork`, { from_step: 0 });
    location.hash = `#/tasks/${made.task_id}`;
  } catch (err) {
    say(err.message);
  }
}

function task(id) {
  const facts = el("dl", { class: "facts" });
  const actions = el("div", { class: "actions" });
  const pending = el("div");
  const result = el("section", { "aria-label": "Result" });
  const timeline = el("ol", { class: "timeline", "aria-label": "Timeline" });
  let lastSeen = "";

  async function load() {
    let t;
    let steps;
    let marks;
    try {
      t = await api("GET", `/v1/tasks/${encodeURIComponent(id)}`);
      [steps, marks] = await Promise.all([allSteps(id), invocations(id)]);
    } catch (err) {
      say(err.message);
      return;
    }
    const seen = `${t.updated_at}/${t.status}/${steps.length}/${marks.length}`;
    if (seen === lastSeen) return;
    lastSeen = seen;
    const fact = (k, v) => (v === null || v === undefined || v === "" ? [] : [el("dt", { text: k }), el("dd", {}, v)]);
    const models = Object.keys(t.usage_by_model ?? {});
    facts.replaceChildren(
      ...fact("Status", el("span", { id: "task-status" }, badge(t.status), t.cancel_requested ? " (cancel requested)" : "")),
      ...fact("Model", models.length > 1 ? models.join(", ") : t.model),
      ...fact("Created", when(t.created_at)),
      ...fact(TERMINAL.has(t.status) ? "Took" : "Running for", ago(t.created_at, TERMINAL.has(t.status) ? t.updated_at : new Date())),
      ...fact("Steps", `${t.progress.step} of at most ${t.progress.max_steps}`),
      ...fact("Cost", el("span", { id: "task-cost", text: usd(t.usage.cost_usd) })),
      ...fact("Tokens", `${t.usage.input_tokens} in, ${t.usage.output_tokens} out, ${t.usage.cache_read_input_tokens} cache read, ${t.usage.cache_creation_input_tokens} cache write`),
      ...fact("Priority", t.priority),
      ...fact("Trace id", t.trace_id ? el("span", { class: "mono", text: t.trace_id }) : null),
      ...fact("Forked from", t.parent ? el("a", { href: `#/tasks/${t.parent.task_id}`, text: `${t.parent.task_id} (step ${t.parent.from_step})` }) : null),
      ...fact("Forks", t.forks?.length ? t.forks.map((f) => el("a", { href: `#/tasks/${f.task_id}`, text: `${f.task_id} ` })) : null),
      ...fact("Schedule", t.schedule_id),
      ...fact("Metadata", t.metadata ? json(t.metadata) : null),
      ...fact("Error", t.error ? `${t.error.code}: ${t.error.message}` : null),
    );
    actions.replaceChildren(
      TERMINAL.has(t.status) ? "" : el("button", { type: "button", class: "danger", id: "cancel", text: "Cancel task", onclick: () => cancel(id).then(load) }),
      TERMINAL.has(t.status) ? el("button", { type: "button", class: "secondary", id: "rerun", text: "Rerun", onclick: () => rerun(id) }) : "",
      forkForm(t, steps),
    );
    pending.replaceChildren(t.status === "waiting_for_input" && t.pending?.length ? pendingPanel(t) : "");
    result.replaceChildren(...(t.result ? [el("h2", { text: "Result" }), el("div", { id: "result" }, longText(t.result.text)), t.result.json !== undefined ? json(t.result.json) : ""] : []));
    timeline.replaceChildren(...(steps.length || marks.length ? timelineItems(steps, marks) : [el("li", { class: "empty", text: "No steps yet." })]));
  }

  view(`Task ${id}`, facts, actions, pending, result, el("h2", { text: "Timeline" }), timeline);
  load();
  every(POLL_MS, load);
}

// Usage ---------------------------------------------------------------------------------

const isoDay = (d) => d.toISOString().slice(0, 10);

/** A bar chart as SVG: one bar per day, stacked series, a `<title>` per bar for its value. */
function chart(label, days, series, format) {
  const w = 720, h = 200, pad = 28;
  const totals = days.map((d) => series.reduce((a, s) => a + s.value(d), 0));
  const max = Math.max(...totals, 1e-12);
  const bw = (w - pad) / days.length;
  const svg = el("svg", { svg: true, class: "chart", viewBox: `0 0 ${w} ${h + 20}`, role: "img", "aria-label": label });
  days.forEach((d, i) => {
    let y = h;
    for (const s of series) {
      const v = s.value(d);
      const bh = (v / max) * (h - pad);
      if (v > 0) {
        y -= bh;
        svg.append(el("rect", { svg: true, class: s.cls, x: pad + i * bw + 2, y, width: Math.max(bw - 4, 1), height: Math.max(bh, 1), "data-date": d.date, "data-value": v },
          el("title", { svg: true, text: `${d.date} ${s.name}: ${format(v)}` })));
      }
    }
    if (i % Math.ceil(days.length / 7) === 0) svg.append(el("text", { svg: true, x: pad + i * bw, y: h + 14, text: d.date.slice(5) }));
  });
  svg.append(el("text", { svg: true, x: 0, y: 12, text: format(max) }));
  return svg;
}

async function usage() {
  const today = new Date();
  const from = new Date(today);
  from.setUTCDate(from.getUTCDate() - 13);
  const monthStart = `${isoDay(today).slice(0, 8)}01`;
  const summary = el("p");
  const charts = el("div");
  const top = el("tbody");
  view("Usage", summary, charts, el("h2", { text: "Top tasks by cost (latest 300)" }),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Task" }), el("th", { scope: "col", text: "Status" }), el("th", { scope: "col", class: "num", text: "Cost" }))), top));

  async function load() {
    try {
      const [report, month] = await Promise.all([
        api("GET", `/v1/usage?from=${isoDay(from)}&to=${isoDay(today)}`),
        api("GET", `/v1/usage?from=${monthStart}&to=${isoDay(today)}`),
      ]);
      const byDate = new Map(report.days.map((d) => [d.date, d]));
      const days = [];
      for (let d = new Date(from); d <= today; d.setUTCDate(d.getUTCDate() + 1)) {
        const date = isoDay(d);
        days.push(byDate.get(date) ?? { date, tasks: { succeeded: 0, failed: 0, cancelled: 0 }, usage: { cost_usd: 0 } });
      }
      const models = [...new Set(days.flatMap((d) => Object.keys(d.cost_by_model ?? {})))].sort();
      const t = month.total;
      const budget = month.monthly_budget_usd;
      summary.replaceChildren("This month: ", el("strong", { id: "month-cost", text: usd(t.usage.cost_usd) }),
        budget ? ` of a ${usd(budget)} budget (${((100 * t.usage.cost_usd) / budget).toFixed(1)} %)` : " (no monthly budget)",
        ` over ${t.tasks.succeeded + t.tasks.failed + t.tasks.cancelled} finished tasks (${t.tasks.succeeded} succeeded, ${t.tasks.failed} failed, ${t.tasks.cancelled} cancelled).`,
        budget ? el("label", { for: "budget-meter" }, "Spent of this month's budget",
          el("meter", { id: "budget-meter", class: "meter", min: 0, max: budget, high: budget * 0.8, value: Math.min(t.usage.cost_usd, budget) })) : "");
      charts.replaceChildren(
        el("h2", { text: "Cost per day" }),
        chart("Cost per day, last 14 days", days, [{ name: "cost", cls: "bar-cost", value: (d) => d.usage.cost_usd }], usd),
        el("h2", { text: "Cost per day, by model" }),
        el("div", { class: "legend" }, models.map((m, i) => el("span", { class: `l-model-${i % PALETTE}`, text: m }))),
        chart("Cost per day by model, last 14 days", days,
          models.map((m, i) => ({ name: m, cls: `bar-model-${i % PALETTE}`, value: (d) => d.cost_by_model?.[m] ?? 0 })), usd),
        el("h2", { text: "Finished tasks per day, by status" }),
        el("div", { class: "legend" }, el("span", { class: "l-ok", text: "succeeded" }), el("span", { class: "l-failed", text: "failed" }), el("span", { class: "l-cancelled", text: "cancelled" })),
        chart("Finished tasks per day by status, last 14 days", days, [
          { name: "succeeded", cls: "bar-ok", value: (d) => d.tasks.succeeded },
          { name: "failed", cls: "bar-failed", value: (d) => d.tasks.failed },
          { name: "cancelled", cls: "bar-cancelled", value: (d) => d.tasks.cancelled },
        ], (v) => String(Math.round(v))));
      const recent = [];
      let cursor = "";
      for (let i = 0; i < 3; i += 1) {
        const page = await api("GET", `/v1/tasks?limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
        recent.push(...page.tasks);
        if (!page.next_cursor) break;
        cursor = page.next_cursor;
      }
      recent.sort((a, b) => b.usage.cost_usd - a.usage.cost_usd);
      top.replaceChildren(...recent.slice(0, 10).map((t) => el("tr", {},
        el("td", { class: "mono" }, el("a", { href: `#/tasks/${t.task_id}`, text: t.task_id })),
        el("td", {}, badge(t.status)), el("td", { class: "num", text: usd(t.usage.cost_usd) }))));
    } catch (err) {
      say(err.message);
    }
  }
  load();
  every(POLL_MS * 5, load);
}

// Submit --------------------------------------------------------------------------------

function submit() {
  const field = (id, label, input) => el("label", { for: id }, label, input);
  const prompt = el("textarea", { id: "prompt", required: true });
  const priority = el("select", { id: "priority" }, ["default", "high", "low"].map((p) => el("option", { value: p, text: p })));
  const model = el("input", { id: "model", type: "text", placeholder: "the deployment's first" });
  const tools = el("input", { id: "tools", type: "text", placeholder: "all; or a comma list" });
  const approve = el("input", { id: "approve-tools", type: "text", placeholder: "none; or a comma list" });
  const budget = el("input", { id: "max-cost", type: "number", min: "0", step: "any", placeholder: "the deployment's default" });
  const webhook = el("input", { id: "webhook", type: "url", placeholder: "https://…" });
  const list = (v) => v.split(",").map((s) => s.trim()).filter(Boolean);
  const form = el("form", { class: "form", onsubmit: async (e) => {
    e.preventDefault();
    const body = { prompt: prompt.value, priority: priority.value };
    if (model.value.trim()) body.model = model.value.trim();
    if (tools.value.trim()) body.tools = list(tools.value);
    if (approve.value.trim()) body.approval = { tools: list(approve.value) };
    if (budget.value) body.max_cost_usd = Number(budget.value);
    if (webhook.value.trim()) body.webhook = { url: webhook.value.trim() };
    try {
      const made = await api("POST", "/v1/tasks", body);
      location.hash = `#/tasks/${made.task_id}`;
    } catch (err) {
      say(err.message);
    }
  } },
  field("prompt", "Prompt", prompt),
  el("div", { class: "row" }, field("priority", "Priority", priority), field("model", "Model", model), field("max-cost", "Budget (USD)", budget)),
  el("div", { class: "row" }, field("tools", "Tools", tools), field("approve-tools", "Tools that need approval", approve)),
  field("webhook", "Webhook URL", webhook),
  el("div", {}, el("button", { type: "submit", id: "submit-task", text: "Submit task" })));
  view("Submit a task", form);
}

// Routing -------------------------------------------------------------------------------

function route() {
  document.getElementById("logout").hidden = !key();
  if (!key()) return login();
  const [, page, id] = location.hash.split("/");
  if (page === "tasks" && id) return task(decodeURIComponent(id));
  if (page === "usage") return usage();
  if (page === "submit") return submit();
  return tasks();
}

document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.hash = "";
  route();
});
window.addEventListener("hashchange", route);
route();
