"""The web console in headless Chromium (issue 18), run by ops/console-test against a live `tally serve`.

Seeds accounts with the tally CLI and request logs through the gateway's ingest route, then drives
the console as a user and as an admin, checking each thing the page shows against what the API
answers. Every wait is on an observable condition (WebDriverWait), never a fixed sleep.

Environment (set by ops/console-test): TALLY_BIN, DATABASE_URL, CONSOLE_BASE, CONSOLE_GATEWAY_SECRET,
CONSOLE_SCREENSHOTS, CONSOLE_DOWNLOADS, CONSOLE_SERVER_LOG. The price sheet is loaded before the server starts.
"""

import datetime as dt
import json
import os
import random
import re
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

BASE = os.environ["CONSOLE_BASE"]
TALLY = os.environ["TALLY_BIN"]
SHOTS = os.environ["CONSOLE_SCREENSHOTS"]
DOWNLOADS = os.environ["CONSOLE_DOWNLOADS"]
WAIT = 30  # seconds: generous, the machine may be loaded

# ------------------------------------------------------------------------------ the API and the CLI


def cli(*args):
    """Runs the tally CLI (same database) and parses its --json answer."""
    done = subprocess.run([TALLY, *args], capture_output=True, text=True)
    assert done.returncode == 0, f"tally {' '.join(args)}: {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1]) if "--json" in args else done.stdout


def http(method, path, token=None, body=None, raw=False):
    """Calls Tally; answers (status, headers, parsed JSON or text)."""
    data = None
    headers = {}
    if token:
        headers["Authorization"] = "Bearer " + token
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(BASE + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, answer_headers, text = response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        status, answer_headers, text = error.code, error.headers, error.read().decode()
    if raw:
        return status, answer_headers, text
    return status, answer_headers, json.loads(text) if text else None


def api_data(path, token):
    status, _, body = http("GET", path, token)
    assert status == 200 and body["success"], f"GET {path}: {status} {body}"
    return body["data"]


def usd(units):
    """Tally's Money.formatUSD with the console's '$' and thousands separators: 1 unit = 2 micro-USD."""
    micros = units * 2
    whole, fraction = divmod(abs(micros), 1_000_000)
    return ("-$" if micros < 0 else "$") + f"{whole:,}.{fraction:06d}"


def month_of(moment):
    return moment.strftime("%Y-%m")


def previous_month(month):
    year, number = map(int, month.split("-"))
    return f"{year - 1}-12" if number == 1 else f"{year}-{number - 1:02d}"


# ------------------------------------------------------------------------------ seed


class Seed:
    """Accounts made with the CLI, and request logs ingested over HTTP as the gateway sends them."""

    def __init__(self):
        self.root = cli("admin", "create-user", "--username", "root", "--root", "--json")
        self.alice = cli("admin", "create-user", "--username", "alice", "--json")
        self.bob = cli("admin", "create-user", "--username", "bob", "--json")
        cli("admin", "topup", "--user", str(self.alice["id"]), "--amount", "25000000", "--reason", "opening balance",
            "--idempotency-key", "seed-alice")
        cli("admin", "topup", "--user", str(self.bob["id"]), "--amount", "5000000", "--reason", "opening balance",
            "--idempotency-key", "seed-bob")
        for group, description in [("vip", "VIP: 20% off"), ("svip", "Super VIP: 40% off")]:
            cli("admin", "group", "add", "--name", group, "--description", description, "--rpm-limit", "600", "--json")
        self.channel_of = {}  # model → the id of the channel that served it
        for name, groups, models in [("openai-main", "default,vip", "gpt-4o,gpt-4o-mini,text-embedding-3-small"),
                                     ("anthropic", "default,vip,svip", "claude-sonnet-4,claude-3-5-haiku"),
                                     ("deepseek", "default", "deepseek-chat")]:
            channel = cli("admin", "channel", "add", "--name", name, "--group", groups, "--models", models, "--json")
            self.channel_of.update({model: channel["id"] for model in models.split(",")})
        self.alice_key = cli("admin", "create-key", "--user", str(self.alice["id"]), "--name", "production",
                             "--unlimited", "--json")["key"]
        self.bob_key = cli("admin", "create-key", "--user", str(self.bob["id"]), "--name", "laptop",
                           "--quota", "2000000", "--json")["key"]
        self.ingest()

    def ingest(self):
        """A previous month with usage on most days and this month up to now, for alice; a little for bob."""
        now = dt.datetime.now(dt.timezone.utc)
        rng = random.Random(18)
        models = [("gpt-4o", 1.0), ("gpt-4o-mini", 0.4), ("claude-sonnet-4", 0.8), ("deepseek-chat", 0.3)]
        month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        previous_start = (month_start - dt.timedelta(days=1)).replace(day=1)
        lines = []
        day = previous_start
        while day < now:
            if rng.random() < 0.85:
                for _ in range(rng.randint(2, 7)):
                    created = day + dt.timedelta(seconds=rng.randint(0, 86_399))
                    if created > now - dt.timedelta(seconds=60):
                        continue
                    model, weight = rng.choice(models)
                    lines.append(self.line(created, self.alice_key, model, int(rng.randint(2_000, 60_000) * weight),
                                           rng.randint(200, 4_000), status=500 if rng.random() < 0.05 else 200))
            day += dt.timedelta(days=1)
        # Bob's two requests fall in this month whatever the hour (the export of this month lists him).
        for third in (1, 2):
            created = month_start + (now - month_start) * third / 3
            lines.append(self.line(created, self.bob_key, "gpt-4o-mini", 12_000, 900))
        # One request in the last minutes, so its tid is on the first page of alice's logs.
        lines.append(self.line(now - dt.timedelta(seconds=30), self.alice_key, "gpt-4o", 5_000, 700))
        body = "\n".join(json.dumps(line) for line in lines)
        status, _, answer = http("POST", "/gateway/v1/logs", os.environ["CONSOLE_GATEWAY_SECRET"], body)
        assert status == 200, f"ingest: {status} {answer}"
        assert answer["rejected"] == [] and answer["accepted"] == len(lines), f"ingest: {str(answer)[:600]}"
        self.latest_tid = lines[-1]["tid"]

    def line(self, created, key, model, prompt, completion, status=200):
        tid = "%032x" % random.getrandbits(128)
        line = {"request_id": "console-%032x" % random.getrandbits(128), "tid": tid,
                "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", "key": key, "model": model,
                "channel_id": self.channel_of[model], "status": status, "duration_ms": 900,
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
        if status >= 400:
            line["error"] = "upstream_error"
        return line


# ------------------------------------------------------------------------------ the browser


class Console:
    """One headless Chromium on the console, with helpers that wait for what the page shows."""

    def __init__(self):
        os.makedirs(DOWNLOADS, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1280,900", "--lang=en-US", "--force-device-scale-factor=1"]:
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        options.add_experimental_option("prefs", {"download.default_directory": DOWNLOADS,
                                                  "download.prompt_for_download": False})
        self.driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": DOWNLOADS})
        # The page re-renders tables as answers arrive: an element read mid-render is looked up again.
        self.wait = WebDriverWait(self.driver, WAIT, ignored_exceptions=[StaleElementReferenceException])
        self.browser_log = []

    def quit(self):
        self.driver.quit()

    def open(self, fragment=""):
        self.driver.get(BASE + "/console/" + fragment)
        self.wait.until(lambda d: d.execute_script("return document.readyState") == "complete")

    def find(self, css):
        return self.wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def text(self, css):
        return self.find(css).text.strip()

    def wait_text(self, css, expected):
        """Waits until the element's text is `expected` (or matches it, when it is a compiled pattern)."""
        def matches(driver):
            elements = driver.find_elements(By.CSS_SELECTOR, css)
            if not elements or not elements[0].is_displayed():
                return False
            text = elements[0].text.strip()
            return bool(expected.search(text)) if hasattr(expected, "search") else text == expected
        try:
            self.wait.until(matches)
        except Exception:
            found = self.driver.find_elements(By.CSS_SELECTOR, css)
            raise AssertionError(f"{css}: expected {expected!r}, page shows {found[0].text if found else None!r}")
        return self.driver.find_element(By.CSS_SELECTOR, css).text.strip()

    def click(self, css):
        element = self.wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, css)))
        element.click()
        return element

    def fill(self, css, value):
        element = self.find(css)
        element.clear()
        element.send_keys(value)

    def go(self, view):
        self.click(f'#nav a[href="#{view}"]')
        self.find(f"#view-{view}")

    def sign_in(self, token, keyboard=False):
        self.open()
        field = self.find("#signin-token")
        if keyboard:
            # Focus is on the token field when the page opens: type it and press Enter.
            self.wait.until(lambda d: d.switch_to.active_element == field)
            ActionChains(self.driver).send_keys(token).send_keys(Keys.ENTER).perform()
        else:
            field.send_keys(token)
            self.click("#signin-submit")

    def sign_out(self):
        self.click("#sign-out")
        self.find("#view-signin")
        assert self.driver.execute_script("return sessionStorage.length") == 0, "the token stayed in sessionStorage"

    def error(self):
        """The error box: message, code and tid."""
        self.find("#error")
        return {"message": self.text("#error-message"), "code": self.text("#error-code"),
                "tid": self.text("#error-tid")}

    def rows(self, table):
        """The cells' text of a table's rows, read in one script so a re-render cannot go stale under it."""
        return self.driver.execute_script("""
            return Array.from(document.querySelectorAll(`#${arguments[0]} tbody tr:not(.empty)`),
                row => Array.from(row.cells, cell => cell.textContent.trim().replace(/\\s+/g, ' ')));""", table)

    def chart_data(self):
        """The chart's labels and values, read from the Chart.js instance drawn on the page."""
        return self.wait.until(lambda d: d.execute_script("""
            const chart = window.Chart && Chart.getChart(document.getElementById('usage-chart'));
            return chart ? {labels: chart.data.labels, values: chart.data.datasets[0].data} : null;"""))

    def download(self, button_css, name_pattern):
        before = set(os.listdir(DOWNLOADS))
        self.click(button_css)

        def finished(_):
            fresh = [name for name in set(os.listdir(DOWNLOADS)) - before
                     if re.fullmatch(name_pattern, name) and not name.endswith(".crdownload")]
            return fresh[0] if fresh else False
        name = self.wait.until(finished)
        with open(os.path.join(DOWNLOADS, name), encoding="utf-8") as file:
            return file.read()

    def shot(self, name):
        """A PNG of the whole page as it is now, 1280 px wide (the viewport is made as tall as the page)."""
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": 1280, "height": min(max(height, 600), 3200), "deviceScaleFactor": 1,
                                     "mobile": False})
        try:
            self.driver.save_screenshot(os.path.join(SHOTS, name + ".png"))
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def collect_log(self):
        self.browser_log += self.driver.get_log("browser")

    def holds(self, text):
        """Whether the page has `text` anywhere: in its markup or in a field's value (which markup omits)."""
        return text in self.driver.page_source or self.driver.execute_script(
            "return Array.from(document.querySelectorAll('input, textarea'), field => field.value)"
            ".some(value => value.includes(arguments[0]))", text)

    def no_horizontal_overflow(self, what):
        overflow = self.driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{what} is {overflow}px wider than a 360px screen"


# ------------------------------------------------------------------------------ the checks

checks = []


def check(name):
    def register(function):
        checks.append((name, function))
        return function
    return register


@check("a user signs in with the keyboard and sees the balance, used quota and requests the API reports")
def user_overview(console, seed):
    console.sign_in(seed.alice["access_token"], keyboard=True)
    me = api_data("/api/user/self", seed.alice["access_token"])
    console.wait_text("#balance-usd", usd(me["quota"]))
    console.wait_text("#balance-units", f"{me['quota']:,} units")
    console.wait_text("#used-usd", usd(me["used_quota"]))
    console.wait_text("#request-count", f"{me['request_count']:,}")
    assert me["used_quota"] > 0 and me["request_count"] > 0, me
    assert seed.alice["access_token"] not in console.driver.current_url
    assert console.driver.execute_script("return sessionStorage.getItem('tally.console.token')") == \
        seed.alice["access_token"]
    # A view named in the address is one of the page's own (#constructor reached Object's and
    # showed "TypeError: action is not a function" over an empty page).
    console.open("#constructor")
    console.wait_text("#balance-usd", usd(me["quota"]))
    assert not console.driver.find_element(By.ID, "error").is_displayed(), "#constructor showed an error"


def export_days(month, token):
    status, _, text = http("GET", f"/api/usage/self?month={month}&by=day&format=jsonl", token, raw=True)
    assert status == 200, text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def expect_chart_matches_export(console, month, token):
    console.wait_text("#usage-month", month)
    days = {row["day"]: row["quota"] for row in export_days(month, token)}
    assert days, f"no usage in {month}: the seed should have made some"

    def drawn(_):
        data = console.chart_data()
        return data if data["labels"] and data["labels"][0].startswith(month) else False
    data = console.wait.until(drawn)
    year, number = map(int, month.split("-"))
    days_in_month = (dt.date(year + number // 12, number % 12 + 1, 1) - dt.timedelta(days=1)).day
    assert data["labels"] == [f"{month}-{day:02d}" for day in range(1, days_in_month + 1)], data["labels"]
    drawn_days = dict(zip(data["labels"], data["values"]))
    expected = {label: days.get(label, 0) for label in data["labels"]}
    assert drawn_days == expected, f"chart {drawn_days} != export {expected}"
    total = sum(days.values())
    console.wait_text("#usage-total", f"{usd(total)} ({total:,} units)")


@check("the month's chart is drawn with the day totals of the usage export, and month navigation redraws it")
def usage_chart(console, seed):
    token = seed.alice["access_token"]
    this_month = month_of(dt.datetime.now(dt.timezone.utc))
    expect_chart_matches_export(console, this_month, token)
    assert console.find("#usage-next").get_attribute("disabled") is not None, "next month of this month is future"
    console.shot("overview")
    console.click("#usage-prev")
    last_month = previous_month(this_month)
    expect_chart_matches_export(console, last_month, token)
    status, _, text = http("GET", f"/api/usage/self?month={last_month}&by=model&format=jsonl", token, raw=True)
    by_model = [json.loads(line) for line in text.splitlines() if line.strip()]
    console.wait.until(lambda _: len(console.rows("usage-models")) == len(by_model))
    shown = {row[0]: row[4] for row in console.rows("usage-models")}
    assert shown == {row["model"]: f"{row['quota']:,}" for row in by_model}, shown
    csv_file = console.download("#usage-csv", r"usage-.*\.csv")
    _, _, api_csv = http("GET", f"/api/usage/self?month={last_month}&by=day%2Cmodel&format=csv", token, raw=True)
    assert csv_file == api_csv, "the downloaded CSV differs from the API's"
    console.click("#usage-next")
    console.wait_text("#usage-month", this_month)


@check("a new key is shown in full once, with a copy button, then only masked; disabling it stops it")
def create_and_disable_key(console, seed):
    token = seed.alice["access_token"]
    console.go("keys")
    console.wait.until(lambda _: any(row[0] == "production" for row in console.rows("keys-table")))
    console.fill("#key-name", "ci-runner")
    console.click("#key-unlimited")  # limited from now on
    console.fill("#key-quota", "1500000")
    console.wait_text("#key-quota-usd", "= $3.000000")
    console.fill("#key-models", "gpt-4o-mini,deepseek-chat")
    console.click("#key-models-on")
    console.fill("#key-ips", "203.0.113.0/24\n127.0.0.1")
    console.click("#key-submit")
    full_key = console.wait.until(lambda d: d.find_element(By.ID, "new-key-value").get_attribute("value") or False)
    assert re.fullmatch(r"sk-[0-9A-Za-z]{48}", full_key), full_key
    assert console.find("#new-key-copy").text == "Copy"
    console.wait.until(lambda _: any(row[0] == "ci-runner" for row in console.rows("keys-table")))
    console.shot("keys-new-key")
    row = next(row for row in console.rows("keys-table") if row[0] == "ci-runner")
    assert row[1] == "sk-\u2026" + full_key[-6:], row
    assert row[2] == "Enabled" and row[3] == "$3.000000" and row[7] == "gpt-4o-mini, deepseek-chat", row
    assert row[8] == "203.0.113.0/24, 127.0.0.1", row
    listed = next(key for key in api_data("/api/token/?page_size=100", token)["items"] if key["name"] == "ci-runner")
    assert listed["remain_quota"] == 1_500_000 and not listed["unlimited_quota"], listed
    status, _, _ = http("GET", "/v1/models", full_key)
    assert status == 200, "the key the page showed does not work"
    # Dismissed, the key is gone from the page, and a reload never shows it again.
    assert console.holds(full_key)
    console.click("#new-key-done")
    assert not console.holds(full_key), "the key is still in the page after it was dismissed"
    console.open("#keys")
    console.wait.until(lambda _: any(row[0] == "ci-runner" for row in console.rows("keys-table")))
    assert not console.holds(full_key), "the key is shown again"
    # Renamed while it spent (here another tab lowers what it has left): saving keeps what it has
    # left now, not what the form loaded (the console sent that back, undoing the spending).
    console.click(f'#keys-table tr[data-key-id="{listed["id"]}"] button[aria-label="Edit key ci-runner"]')
    console.wait.until(lambda d: d.find_element(By.ID, "key-quota").get_attribute("value") == "1500000")
    status, _, body = http("PUT", "/api/token/", token, {"id": listed["id"], "remain_quota": 1_000_000})
    assert status == 200, (status, body)
    console.fill("#key-name", "ci-runner-2")
    console.click("#key-submit")
    console.wait.until(lambda _: any(row[0] == "ci-runner-2" for row in console.rows("keys-table")))
    renamed = api_data(f"/api/token/{listed['id']}", token)
    assert renamed["remain_quota"] == 1_000_000 and not renamed["unlimited_quota"], renamed
    # Disable it.
    console.click(f'#keys-table tr[data-key-id="{listed["id"]}"] button[aria-label="Disable key ci-runner-2"]')
    console.wait_text(f'#keys-table tr[data-key-id="{listed["id"]}"] td.status', "Disabled")
    assert api_data(f"/api/token/{listed['id']}", token)["status"] == 2
    status, _, body = http("GET", "/v1/models", full_key)
    assert status == 401 and body["error"]["code"] == "invalid_token", (status, body)
    console.shot("keys")


@check("a key's expiry reads in the keys table as the form took it: the browser's local time, labelled so")
def key_expiry_in_local_time(console, seed):
    token = seed.alice["access_token"]
    # A browser at UTC+8 (no daylight saving): the table once showed the expiry in UTC, 8 hours
    # before the time typed in the form (2026-12-31 00:00 read 2026-12-30 16:00:00).
    console.driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Shanghai"})
    try:
        console.open("#keys")
        console.wait.until(lambda _: any(row[0] == "production" for row in console.rows("keys-table")))
        header = console.driver.find_element(By.CSS_SELECTOR, "#keys-table thead th:nth-child(6)").text.strip()
        assert header == "Expires (your local time)", header
        year = dt.datetime.now(dt.timezone.utc).year + 1
        console.fill("#key-name", "nightly")
        # A datetime-local field's typed format depends on the locale: the value is set as the picker sets it.
        console.driver.execute_script("arguments[0].value = arguments[1]", console.find("#key-expiry"),
                                      f"{year}-12-31T00:00")
        console.click("#key-submit")
        console.wait.until(lambda _: any(row[0] == "nightly" for row in console.rows("keys-table")))
        console.click("#new-key-done")
        listed = next(key for key in api_data("/api/token/?page_size=100", token)["items"] if key["name"] == "nightly")
        at_utc8 = dt.datetime(year, 12, 31, tzinfo=dt.timezone(dt.timedelta(hours=8)))
        assert listed["expired_time"] == int(at_utc8.timestamp()), listed
        row = next(row for row in console.rows("keys-table") if row[0] == "nightly")
        assert row[5] == f"{year}-12-31 00:00:00", row
        # The form reads it back the same way.
        console.click(f'#keys-table tr[data-key-id="{listed["id"]}"] button[aria-label="Edit key nightly"]')
        console.wait.until(
            lambda d: d.find_element(By.ID, "key-expiry").get_attribute("value") == f"{year}-12-31T00:00")
        console.click("#key-cancel")
    finally:
        console.driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": ""})


@check("renaming a key whose group is no longer offered keeps the key in its group")
def rename_keeps_unoffered_group(console, seed):
    token = seed.alice["access_token"]
    cli("admin", "group", "add", "--name", "legacy", "--description", "Retired plan", "--json")
    cli("admin", "create-key", "--user", str(seed.alice["id"]), "--name", "archive", "--group", "legacy",
        "--unlimited", "--json")
    # The admin retires the group: the key keeps it, but /api/group no longer offers it to alice.
    status, _, body = http("PUT", "/api/admin/groups/legacy", seed.root["access_token"], {"selectable": False})
    assert status == 200 and body["success"], (status, body)
    assert "legacy" not in api_data("/api/group", token)
    listed = next(item for item in api_data("/api/token/?page_size=100", token)["items"] if item["name"] == "archive")
    assert listed["group"] == "legacy", listed
    # Made at the command line while the page was on its keys already (opening the same view does
    # not load it again): the page is reloaded, and signs in again from its session.
    console.open("#keys")
    console.driver.refresh()
    console.wait.until(lambda _: any(row[0] == "archive" for row in console.rows("keys-table")))
    row = next(row for row in console.rows("keys-table") if row[0] == "archive")
    assert row[6] == "legacy", row
    # The form shows the key's group (the select once read '' — the account's group — and saving
    # sent "group": "", moving the key to alice's group).
    console.click(f'#keys-table tr[data-key-id="{listed["id"]}"] button[aria-label="Edit key archive"]')
    console.wait.until(lambda d: d.find_element(By.ID, "key-name").get_attribute("value") == "archive")
    chosen = console.driver.execute_script(
        "const select = document.getElementById('key-group');"
        "return [select.value, select.selectedOptions[0] ? select.selectedOptions[0].textContent : null];")
    assert chosen[0] == "legacy" and "no longer offered" in (chosen[1] or ""), chosen
    console.fill("#key-name", "archive-2")
    console.click("#key-submit")
    console.wait.until(lambda _: any(row[0] == "archive-2" for row in console.rows("keys-table")))
    renamed = api_data(f"/api/token/{listed['id']}", token)
    assert renamed["name"] == "archive-2" and renamed["group"] == "legacy", renamed
    row = next(row for row in console.rows("keys-table") if row[0] == "archive-2")
    assert row[6] == "legacy", row
    # Back to creating a key, the retired group is not offered.
    offered = console.driver.execute_script(
        "return Array.from(document.getElementById('key-group').options, option => option.value);")
    assert "legacy" not in offered, offered


@check("the logs list the user's requests, and a tid search finds the one logged under it")
def logs_and_tid_search(console, seed):
    token = seed.alice["access_token"]
    console.go("logs")
    console.wait.until(lambda _: len(console.rows("logs-table")) == 10)
    console.fill("#logs-tid", seed.latest_tid.upper())
    console.find("#logs-tid").send_keys(Keys.ENTER)
    console.wait.until(lambda _: [row[7][:32] for row in console.rows("logs-table")] == [seed.latest_tid])
    expected = api_data(f"/api/log/self?tid={seed.latest_tid}", token)["items"]
    row = console.rows("logs-table")[0]
    assert len(expected) == 1 and row[2] == expected[0]["model_name"] == "gpt-4o", (row, expected)
    assert row[5] == usd(expected[0]["quota"]), row
    console.fill("#logs-tid", "not-a-tid")
    console.find("#logs-tid").send_keys(Keys.ENTER)
    assert console.error()["message"] == "A tid is 32 hexadecimal characters."
    console.click("#logs-all")
    console.wait.until(lambda _: len(console.rows("logs-table")) == 10)
    assert not console.driver.find_element(By.ID, "error").is_displayed(), "a stale error stayed on screen"
    console.shot("logs")


@check("a user does not see the admin sections, and signing out forgets the token")
def user_is_not_admin(console, seed):
    links = [link.text for link in console.driver.find_elements(By.CSS_SELECTOR, "#nav a") if link.is_displayed()]
    assert links == ["Overview", "API keys", "Logs"], links
    console.open("#users")
    console.find("#view-overview")
    console.sign_out()


@check("at 360 px every user view fits the screen (no sideways scrolling of the page)")
def narrow_screen(console, seed):
    console.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 360, "height": 780, "deviceScaleFactor": 1, "mobile": True})
    try:
        console.sign_in(seed.alice["access_token"])
        console.find("#view-overview")
        console.wait.until(lambda _: console.chart_data()["labels"])
        console.no_horizontal_overflow("the overview")
        console.driver.save_screenshot(os.path.join(SHOTS, "overview-360px.png"))
        for view in ["keys", "logs"]:
            console.open("#" + view)
            console.wait.until(lambda _: console.rows(f"{view}-table"))
            console.no_horizontal_overflow(f"the {view} view")
        console.sign_out()
        console.no_horizontal_overflow("the sign-in view")
    finally:
        console.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def bob_quota(seed):
    return api_data(f"/api/user/{seed.bob['id']}", seed.root["access_token"])["quota"]


@check("an admin finds a user, sees its balance, keys and statement; a top-up sent twice with one key credits once")
def admin_top_up(console, seed):
    root = seed.root["access_token"]
    console.sign_in(root)
    console.go("users")
    console.wait.until(lambda _: len(console.rows("users-table")) == 3)
    console.fill("#users-keyword", "bo")
    console.find("#users-keyword").send_keys(Keys.ENTER)
    console.wait.until(lambda _: [row[1] for row in console.rows("users-table")] == ["bob"])
    console.click(f'#users-table button[aria-label="Open user bob"]')
    before = bob_quota(seed)
    console.wait_text("#ud-balance-usd", usd(before))
    console.wait.until(lambda _: [row[0] for row in console.rows("ud-keys")] == ["laptop"])
    assert console.rows("ud-keys")[0][1] == "sk-\u2026" + seed.bob_key[-6:]
    month = month_of(dt.datetime.now(dt.timezone.utc))
    statement = api_data(f"/api/admin/statements/{seed.bob['id']}/{month}", root)
    console.wait_text("#st-charges", "$" + statement["charges_usd"])
    console.wait_text("#st-closing", "$" + statement["closing_balance_usd"])

    # Twice with the same idempotency key: the second answer is the first one replayed.
    console.fill("#topup-amount", "1250000")
    console.fill("#topup-reason", "invoice 2026-118")
    key = console.text("#topup-key")
    assert re.fullmatch(r"console-[0-9a-f]{32}", key), key
    console.click("#topup-submit")
    console.wait_text("#topup-result", re.compile(r"^Credited \$2\.500000 \(1,250,000 units\)"))
    console.wait_text("#ud-balance-usd", usd(before + 1_250_000))
    console.click("#topup-submit")
    console.wait_text("#topup-result", re.compile(r"^Already credited"))
    assert console.text("#topup-key") == key
    assert bob_quota(seed) == before + 1_250_000, "the replay credited again"

    # A double click on a new top-up: both requests carry one key, one credit.
    console.fill("#topup-amount", "500000")
    second_key = console.text("#topup-key")
    assert second_key != key, "a new amount must make a new idempotency key"
    ActionChains(console.driver).double_click(console.find("#topup-submit")).perform()
    console.wait_text("#ud-balance-usd", usd(before + 1_750_000))
    credits = api_data(f"/api/admin/statements/{seed.bob['id']}/{month}", root)["credits"]
    amounts = sorted(credit["amount"] for credit in credits if credit["kind"] == "topup")
    assert amounts == [500_000, 1_250_000, 5_000_000], f"credits this month: {credits}"
    assert bob_quota(seed) == before + 1_750_000
    console.wait.until(lambda _: len(console.rows("st-credits-table")) == 3)
    console.shot("admin-user")


@check("an admin suspends a user, whose sign-in is then refused with the catalog's message and a tid")
def admin_suspends(console, seed):
    console.driver.execute_script("window.confirm = () => true")
    console.click("#ud-suspend")
    console.wait_text("#ud-status", "Suspended")
    assert api_data(f"/api/user/{seed.bob['id']}", seed.root["access_token"])["status"] == 2
    console.sign_out()
    console.sign_in(seed.bob["access_token"])
    error = console.error()
    assert error["message"] == "Account suspended." and error["code"] == "account_suspended", error
    assert re.fullmatch(r"[0-9a-f]{32}", error["tid"]), error
    assert console.text("#error-status") == "403"
    assert console.find("#error-tid-copy").is_displayed()
    assert console.find("#view-signin").is_displayed()
    assert not console.driver.find_element(By.ID, "nav").is_displayed()
    assert console.driver.execute_script("return sessionStorage.length") == 0
    console.shot("signin-suspended")
    # The API says the same.
    status, _, body = http("GET", "/api/user/self", seed.bob["access_token"])
    assert status == 403 and body["message"] == error["message"], body


@check("an admin sees channels, groups, the price sheet in force and its versions, and downloads the month's export")
def admin_catalogue(console, seed):
    root = seed.root["access_token"]
    console.sign_in(root)
    console.go("channels")
    console.wait.until(lambda _: sorted(row[1] for row in console.rows("channels-table")) ==
                       ["anthropic", "deepseek", "openai-main"])
    groups = [row[0] for row in console.rows("groups-table")]
    assert groups == [group["name"] for group in api_data("/api/admin/groups", root)], groups
    console.shot("admin-channels")
    console.go("prices")
    pricing = api_data("/api/pricing", root)
    console.wait_text("#prices-in-force", re.compile(rf"^Price version {pricing['price_version_id']} is in force"))
    shown = {row[0]: (row[2], row[3]) for row in console.rows("prices-table")}
    gpt = next(model for model in pricing["models"] if model["model"] == "gpt-4o")["prices"]["default"]
    assert shown["gpt-4o"] == (gpt["input"], gpt["output"]), shown["gpt-4o"]
    assert len(console.rows("versions-table")) == len(api_data("/api/admin/prices", root))
    console.shot("admin-prices")
    console.go("export")
    month = month_of(dt.datetime.now(dt.timezone.utc))
    assert console.find("#export-month").get_attribute("value") == month
    exported = console.download("#export-submit", rf"usage-{month}-user\.csv")
    _, _, api_csv = http("GET", f"/api/admin/exports/usage?month={month}&by=user&format=csv", root, raw=True)
    assert exported == api_csv and "alice" in exported and "bob" in exported, exported
    console.shot("admin-export")
    console.sign_out()
    console.shot("signin")


@check("the browser reported no CSP violation and no script error; no secret reached the server log")
def clean_browser_and_logs(console, seed):
    console.collect_log()
    # The log is really read: the suspended user's refused sign-in is in it.
    assert any("status of 403" in entry["message"] for entry in console.browser_log), console.browser_log[:5]
    problems = [entry["message"] for entry in console.browser_log
                if "Content Security Policy" in entry["message"] or "Uncaught" in entry["message"]
                or (entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"])]
    assert not problems, "\n".join(problems)
    with open(os.environ["CONSOLE_SERVER_LOG"], encoding="utf-8", errors="replace") as file:
        server_log = file.read()
    for secret in [seed.root["access_token"], seed.alice["access_token"], seed.bob["access_token"], seed.alice_key]:
        assert secret not in server_log, "a secret reached the server log"


@check("after everything the console did, tally audit finds the books balanced")
def books_balance(console, seed):
    done = subprocess.run([TALLY, "audit"], capture_output=True, text=True)
    assert done.returncode == 0, f"tally audit: {done.stdout}{done.stderr}"


def main():
    seed = Seed()
    console = Console()
    passed = failed = 0
    try:
        for name, function in checks:
            started = time.monotonic()
            try:
                function(console, seed)
                passed += 1
                print(f"ok   {name} ({time.monotonic() - started:.1f}s)", flush=True)
            except Exception:
                failed += 1
                print(f"FAIL {name}", flush=True)
                traceback.print_exc()
                console.collect_log()
                try:
                    console.driver.save_screenshot(os.path.join(SHOTS, f"failure-{passed + 1}.png"))
                except Exception:
                    pass
                break  # the checks build on each other: one failure makes the rest meaningless
    finally:
        console.quit()
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed == len(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
