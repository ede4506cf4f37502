"""The console, end to end in a real browser (Debian's Chromium, headless, driven by
Playwright) against the stack `make up` started: sign in with the dev key, submit a task whose
prompt, tool input, tool result and answer all carry markup, watch it finish and read its
timeline (the markup stays text), approve a pending tool call, cancel a waiting task from the
list, and see the usage page show this month's cost as the API counts it. Screenshots of the
main pages are saved to the directory given.

    python tests/browser/console.py URL API_KEY SCREENSHOT_DIR
"""

import json
import os
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import expect, sync_playwright

URL, KEY, SHOTS = sys.argv[1], sys.argv[2], sys.argv[3]
CHROMIUM = os.environ.get("AGENTQ_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google on a closed network.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PAYLOAD = "<img src=x onerror=window.__xss=1><script>window.__xss=2</script>"
TIMEOUT = 90_000


def api(path, body=None):
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


# For a task that stays `queued`: the CLI (to hold the dev tenant's line), its table, and the fake
# model's address (to slow the task that holds the slot). Given by scripts/smoke.sh.
CLI, TABLE, FAKE = (os.environ.get(k) for k in ("AGENTQ_CLI", "AGENTQ_TABLE", "AGENTQ_FAKE_MODEL"))


def tenants(*args):
    env = {**os.environ, "AGENTQ_TABLE": TABLE}
    out = subprocess.run([CLI, "--json", "tenants", *args], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fake_model(knobs):
    req = urllib.request.Request(f"{FAKE}/control", data=json.dumps(knobs).encode(),
                                 headers={"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=10).close()


def cancel_a_queued_task(page):
    """A task held in its tenant's line (cap 1, over_cap hold, the slot taken by a slow task)
    is `queued`; the list cancels it. The tenant's settings and the fake model are put back."""
    before = tenants("get", "dev")["limits"]
    try:
        tenants("set", "dev", "--max-running", "1", "--over-cap", "hold")
        fake_model({"latency_ms": 8000})
        time.sleep(6)  # the API's per-instance cache of the tenant (AGENTQ_AUTH_CACHE_SECS, 5)
        slow = api("/v1/tasks", {"prompt": "What is 2 * 3?"})["task_id"]
        held = api("/v1/tasks", {"prompt": "What is 3 * 4?"})
        assert held.get("held") is True, held
        page.goto(f"{URL}/console#/tasks")
        row = page.locator(f'tr[data-task="{held["task_id"]}"]')
        expect(row).to_contain_text("queued", timeout=TIMEOUT)
        row.get_by_role("button", name=f"Cancel task {held['task_id']}").click()
        expect(row).to_contain_text("cancelled", timeout=TIMEOUT)
        expect(page.locator(f'tr[data-task="{slow}"]')).to_contain_text("succeeded", timeout=TIMEOUT)
    finally:
        fake_model({"latency_ms": 0})
        tenants("set", "dev", "--max-running", str(before["max_running"]), "--over-cap", before.get("over_cap", "reject"))


def usd(v):
    """As the console writes an amount."""
    return f"${v:.2f}" if v >= 1 else f"${v:.6f}"


def submit(page, prompt, approve_tools=""):
    page.goto(f"{URL}/console#/submit")
    page.get_by_label("Prompt").fill(prompt)
    if approve_tools:
        page.get_by_label("Tools that need approval").fill(approve_tools)
    page.get_by_role("button", name="Submit task").click()
    page.wait_for_url("**/console#/tasks/*")
    return page.url.rsplit("/", 1)[1]


def status_is(page, status):
    expect(page.locator("#task-status")).to_contain_text(status.replace("_", " "), timeout=TIMEOUT)


def main():
    os.makedirs(SHOTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))

        # The page and its policy; signing in.
        response = page.goto(f"{URL}/console")
        csp = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "default-src 'none'" in csp, csp
        page.get_by_label("API key").fill(KEY)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Tasks")).to_be_visible()

        # Every control of the submit form is labelled.
        page.goto(f"{URL}/console#/submit")
        expect(page.get_by_role("heading", name="Submit a task")).to_be_visible()
        unlabelled = page.evaluate(
            "[...document.querySelectorAll('main input, main select, main textarea')].filter(e => !e.labels.length).map(e => e.id)")
        assert not unlabelled, f"controls without a label: {unlabelled}"
        page.screenshot(path=f"{SHOTS}/submit.png")

        # A task whose every part carries markup: it runs, and the markup stays text.
        echo = submit(page, f'Please call demo__echo with {json.dumps({"text": PAYLOAD})}')
        status_is(page, "succeeded")
        expect(page.locator(".timeline li.model")).to_have_count(2, timeout=TIMEOUT)
        expect(page.locator(".timeline li.tool")).to_have_count(1)
        expect(page.locator("#result")).to_contain_text(PAYLOAD)
        expect(page.locator(".timeline li.tool")).to_contain_text(PAYLOAD)
        expect(page.locator(".timeline li.tool")).to_contain_text(" ms")  # how long the tool ran
        expect(page.locator(".timeline li.model").first).to_contain_text("demo__echo")
        assert page.evaluate("window.__xss") is None, "markup from a task ran in the page"
        assert page.locator("main img, main script").count() == 0, "markup from a task became elements"
        expect(page.locator("#task-cost")).not_to_have_text("$0.000000")
        page.screenshot(path=f"{SHOTS}/task.png", full_page=True)

        # Rerun: a fork from step 0 opens on its own page and runs the same prompt again.
        page.get_by_role("button", name="Rerun").click()
        page.wait_for_url(lambda u: u.endswith("#/tasks/" + echo) is False and "#/tasks/" in u)
        status_is(page, "succeeded")
        expect(page.locator("#result")).to_contain_text(PAYLOAD)
        expect(page.get_by_text("Forked from")).to_be_visible()

        # A tool call that needs approval: approved in the page, the task finishes.
        approved = submit(page, "What is 6 * 7?", approve_tools="calculator")
        status_is(page, "waiting_for_input")
        expect(page.get_by_role("region", name="Pending tool calls")).to_contain_text("calculator")
        page.screenshot(path=f"{SHOTS}/approval.png", full_page=True)
        page.get_by_role("button", name="Send decisions").click()
        status_is(page, "succeeded")
        expect(page.locator("#result")).to_contain_text("42")
        expect(page.locator(".timeline li.decision")).to_contain_text("approve")
        # The wait and the new invocation after the decisions are on the timeline too.
        expect(page.locator('.timeline li[data-mark="task.waiting_for_input"]')).to_have_count(1)
        expect(page.locator('.timeline li[data-mark="task.started"]')).to_have_count(2)

        # An edit: the tool runs on the corrected input.
        submit(page, "What is 6 * 9?", approve_tools="calculator")
        status_is(page, "waiting_for_input")
        page.get_by_label("Decision").select_option("edit")
        page.get_by_label("Input to run the tool on (JSON)").fill('{"expression": "6 * 7"}')
        page.get_by_role("button", name="Send decisions").click()
        status_is(page, "succeeded")
        expect(page.locator("#result")).to_contain_text("42")
        expect(page.locator(".timeline li.decision")).to_contain_text("edit")

        # Cancel from the list: a task waiting for a decision.
        waiting = submit(page, "What is 7 * 8?", approve_tools="calculator")
        status_is(page, "waiting_for_input")
        page.goto(f"{URL}/console#/tasks")
        row = page.locator(f'tr[data-task="{waiting}"]')
        expect(row).to_be_visible(timeout=TIMEOUT)
        expect(page.locator(f'tr[data-task="{echo}"]')).to_contain_text("succeeded")
        page.screenshot(path=f"{SHOTS}/tasks.png", full_page=True)
        row.get_by_role("button", name=f"Cancel task {waiting}").click()
        expect(row).to_contain_text("cancelled", timeout=TIMEOUT)

        if CLI and TABLE and FAKE:
            cancel_a_queued_task(page)

        # Usage: this month's cost as the API counts it (read again while other work may still
        # be ending), today's bar in the chart.
        today = api("/v1/usage")["to"]
        page.goto(f"{URL}/console#/usage")
        shown = page.locator("#month-cost")
        expect(shown).to_be_visible(timeout=TIMEOUT)
        for _ in range(30):
            month = api(f"/v1/usage?from={today[:8]}01&to={today}")["total"]["usage"]["cost_usd"]
            if shown.text_content() == usd(month):
                break
            page.wait_for_timeout(1000)
        assert month > 0 and shown.text_content() == usd(month), (shown.text_content(), month)
        expect(page.locator(f'rect.bar-cost[data-date="{today}"]')).to_have_count(1)
        # Today's cost by model: the fake model answers as the deployment's first model.
        day = api(f"/v1/usage?from={today}&to={today}")["days"][0]
        by_model = day.get("cost_by_model", {})
        # (Tasks that ended before agentq counted costs by model are in the total only.)
        assert by_model and sum(by_model.values()) <= day["usage"]["cost_usd"] + 1e-9, day
        expect(page.locator(f'rect[class^="bar-model-"][data-date="{today}"]')).to_have_count(len(by_model))
        page.screenshot(path=f"{SHOTS}/usage.png", full_page=True)

        # The keyboard reaches the navigation.
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.tagName") == "A"

        browser.close()
        assert not errors, f"the page logged errors: {errors}"
    print(f"console: passed ({echo}, {approved}, {waiting}); screenshots in {SHOTS}")


if __name__ == "__main__":
    main()
