"""The web console in a real browser: Debian's chromium driven by Playwright.

Skipped, saying why, when chromium is missing (``make browser`` installs it; CI runs
it) or when Playwright is not installed. Playwright never downloads a browser here:
it launches ``/usr/bin/chromium`` (or ``$CHROMIUM``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import approval_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from podium.server.config import Settings
from tests.integration.conftest import LOOPBACK_AGENTS, StartServer, static_agents
from tests.integration.runs_helpers import create_definition, start_run, wait_for_run, wait_until

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="Playwright is not installed (pip install -e '.[dev]')"
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None,
        reason=f"no chromium at {CHROMIUM}: run `make browser` (apt-get install chromium) "
        "or set CHROMIUM to a Chromium binary",
    ),
]
expect = playwright_api.expect
WAIT_MS = 20_000
"""How long the page's actions and assertions wait. Playwright's default for assertions
(5 s) is short for a run to finish and the page to show it while the rest of the suite
loads both cores."""
expect.set_options(timeout=WAIT_MS)

GATED_STEPS: list[dict[str, Any]] = [
    {"id": "draft", "agent": "echo", "input": {"text": "notes"}},
    {
        "id": "review",
        "agent": "echo",
        "dependsOn": ["draft"],
        "checkpoint": {"when": "WHEN_BEFORE", "prompt": "Publish?"},
    },
    {"id": "publish", "agent": "echo", "dependsOn": ["review"]},
]


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            page.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page
            assert errors == [], f"JavaScript errors: {errors}"
        finally:
            await browser.close()


@dataclass(frozen=True)
class Console:
    """A server's console and a stub of the server (:func:`console`)."""

    url: str
    """The console's base URL (ends with ``/``)."""
    stub: pb_grpc.OrchestrationServiceAsyncStub


@pytest.fixture
async def console(
    start_server: StartServer, example_agents: ExampleAgents
) -> AsyncIterator[Console]:
    """A server with the console, authentication off and the echo and sleeper example
    agents, with a stub of its gRPC port."""
    server = await start_server(
        console_address="127.0.0.1:0", agents=static_agents(example_agents, "sleeper", "echo")
    )
    assert server.gateway is not None
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield Console(server.gateway.url, pb_grpc.OrchestrationServiceStub(channel))


@pytest.fixture
async def secured_console(start_server: StartServer) -> tuple[str, str]:
    """A server with the console and authentication on: its URL and a viewer's key."""
    server = await start_server(auth="required", console_address="127.0.0.1:0")
    assert server.gateway is not None
    key = (await server.engine.api_keys.create("default", "viewer", "console")).key
    return server.gateway.url, key


def _node(page: Any, step_id: str) -> Any:
    return page.locator(f'svg.dag g.node[data-step="{step_id}"]')


async def _pending_approval(stub: pb_grpc.OrchestrationServiceAsyncStub, run_id: str) -> str:
    found: list[str] = []

    async def pending() -> bool:
        answer = await stub.ListApprovals(
            pb.ListApprovalsRequest(run_id=run_id, states=[approval_pb2.Approval.STATE_PENDING])
        )
        found[:] = [approval.id for approval in answer.approvals]
        return bool(found)

    await wait_until(pending, "a pending approval")
    return found[0]


async def _finished_after_decision(
    stub: pb_grpc.OrchestrationServiceAsyncStub, run_id: str, page: Any
) -> run_pb2.Run:
    """The run once it finished on the server after a decision made on ``page``; if it
    does not finish, the failure shows what the page shows (a refused decision's
    message, the card as it was)."""
    try:
        return await wait_for_run(stub, run_id, within=WAIT_MS / 1000)
    except AssertionError as exc:
        shown = await page.locator("main").inner_text()
        raise AssertionError(f"{exc}\nthe page shows:\n{shown}") from None


async def test_a_running_run_page_updates_its_dag_live(console: Console, page: Any) -> None:
    stub = console.stub
    steps: list[dict[str, Any]] = [
        {"id": "slow", "agent": "sleeper", "input": {"seconds": 3}},
        {"id": "after", "agent": "echo", "dependsOn": ["slow"]},
    ]
    await create_definition(stub, "browser-live", steps)
    # The runs list shows a run started after it was opened (WatchRuns over SSE).
    await page.goto(f"{console.url}runs")
    await expect(page.locator("p.muted")).to_have_text("No runs match.")
    await page.evaluate("window.notReloaded = true")
    run = (await start_run(stub, "browser-live")).run
    row = page.locator(f'tr[data-run="{run.id}"]')
    await expect(row).to_have_attribute("data-state", "STATE_RUNNING")
    assert await page.evaluate("window.notReloaded") is True
    await row.locator("a").click()
    await expect(_node(page, "slow")).to_have_attribute("data-state", "RUNNING")
    await expect(_node(page, "after")).to_have_attribute("data-state", "PENDING")
    await page.evaluate("window.notReloaded = true")
    # No reload: the event stream moves the graph, the badge and the log.
    await expect(_node(page, "after")).to_have_attribute("data-state", "SUCCEEDED")
    await expect(_node(page, "slow")).to_have_attribute("data-state", "SUCCEEDED")
    await expect(page.locator(".run-header .badge")).to_have_text("SUCCEEDED")
    await expect(page.locator("ol.events li").last).to_contain_text("RUN_COMPLETED")
    assert await page.evaluate("window.notReloaded") is True
    # The sleeper's progress events were streamed to the log too.
    assert await page.locator("ol.events li", has_text="STEP_PROGRESS").count() >= 2
    # The runs list shows it, and a state filter applies.
    await page.click("header a[data-nav=runs]")
    await expect(page.locator(f'tr[data-run="{run.id}"]')).to_have_attribute(
        "data-state", "STATE_SUCCEEDED"
    )
    await page.select_option("select[name=state]", "FAILED")
    await page.click("form.filters button")
    await expect(page.locator("p.muted")).to_have_text("No runs match.")
    assert "state=FAILED" in page.url


async def test_approving_a_checkpoint_in_the_browser_finishes_the_run(
    console: Console, page: Any
) -> None:
    stub = console.stub
    await create_definition(stub, "browser-gated", GATED_STEPS)
    run = (await start_run(stub, "browser-gated")).run
    approval_id = await _pending_approval(stub, run.id)
    await page.goto(f"{console.url}runs/{run.id}")
    await expect(_node(page, "review")).to_have_attribute("data-state", "AWAITING_APPROVAL")
    card = page.locator(f'.approval[data-approval="{approval_id}"]')
    await expect(card).to_contain_text("Publish?")
    await card.locator("textarea[name=comment]").fill("looks good")
    await card.locator("button.approve").click()
    finished = await _finished_after_decision(stub, run.id, page)
    assert finished.state == run_pb2.Run.STATE_SUCCEEDED
    await expect(page.locator(".run-header .badge")).to_have_text("SUCCEEDED")
    await expect(_node(page, "publish")).to_have_attribute("data-state", "SUCCEEDED")
    await expect(card).to_have_count(0)
    decided = await stub.GetApproval(pb.GetApprovalRequest(approval_id=approval_id))
    assert decided.approval.decision == approval_pb2.DECISION_APPROVE
    assert decided.approval.comment == "looks good"


async def test_a_comment_being_typed_survives_the_run_page_following_its_run(
    console: Console, page: Any
) -> None:
    """The run page refreshes on each event of its run, the approvals page on each event
    of any run; an approval card being typed in keeps its focus and every key typed on
    both, while steps of another branch start and end."""
    stub = console.stub
    ticks: list[dict[str, Any]] = [
        {
            "id": f"tick{k}",
            "agent": "sleeper",
            "input": {"seconds": 0.3},
            **({"dependsOn": [f"tick{k - 1}"]} if k > 1 else {}),
        }
        for k in range(1, 21)
    ]
    await create_definition(
        stub,
        "browser-typing",
        [{"id": "review", "agent": "echo", "checkpoint": {"when": "WHEN_BEFORE"}}, *ticks],
        execution={"concurrency": {"max_parallel": 2}},
    )
    run = (await start_run(stub, "browser-typing")).run
    approval_id = await _pending_approval(stub, run.id)
    card = f'.approval[data-approval="{approval_id}"]'
    text = "looks good to me, ship it"

    async def type_while(field: Any, progress: Callable[[], Awaitable[int]], what: str) -> None:
        """Type ``text`` into ``field`` for 2.5 s while ``progress`` goes up by 3 or more:
        the field keeps its focus and every key."""
        await field.click()
        before = await progress()
        await page.keyboard.type(text, delay=100)
        assert await progress() >= before + 3, f"no {what} while typing"
        await expect(field).to_be_focused()
        await expect(field).to_have_value(text)

    async def ticks_done() -> int:
        steps = (await stub.GetRun(pb.GetRunRequest(run_id=run.id))).run.steps
        return sum(s.state == run_pb2.StepRun.STATE_SUCCEEDED for s in steps)

    await page.goto(f"{console.url}runs/{run.id}")
    events = page.locator("ol.events li")
    await type_while(page.locator(f"{card} textarea[name=comment]"), events.count, "events shown")
    await page.goto(f"{console.url}approvals")
    await type_while(page.locator(f"{card} input[name=answer]"), ticks_done, "steps ended")


async def test_a_deep_link_follows_the_run_across_a_server_restart(
    database_url: str, example_agents: ExampleAgents, page: Any
) -> None:
    def settings(console_address: str) -> Settings:
        return Settings.from_env(
            {},
            database_url=database_url,
            listen_address="127.0.0.1:0",
            console_address=console_address,
            auth="disabled",
            shutdown_grace_seconds=0.0,
            poll_interval_seconds=0.2,
            agent_allowed_networks=LOOPBACK_AGENTS,
            agents=static_agents(example_agents, "echo"),
        )

    first = PodiumServer(settings("127.0.0.1:0"))
    await first.start()
    try:
        assert first.gateway is not None
        console_address = first.gateway.address
        async with grpc.aio.insecure_channel(first.address) as channel:
            stub: pb_grpc.OrchestrationServiceAsyncStub = pb_grpc.OrchestrationServiceStub(channel)
            await create_definition(stub, "browser-restart", GATED_STEPS)
            run = (await start_run(stub, "browser-restart")).run
            await _pending_approval(stub, run.id)
        url = f"{first.gateway.url}runs/{run.id}"
        await page.goto(url)
        await expect(_node(page, "review")).to_have_attribute("data-state", "AWAITING_APPROVAL")
        await expect(page.locator("ol.events li", has_text="STEP_AWAITING_APPROVAL")).to_have_count(
            1
        )
    finally:
        await first.stop(0)

    second = PodiumServer(settings(console_address))  # same console port, new gRPC port
    await second.start()
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            approval_id = await _pending_approval(stub, run.id)
            # The open page reconnects by itself and resumes after the last event seen.
            await stub.DecideApproval(
                pb.DecideApprovalRequest(
                    approval_id=approval_id, decision=approval_pb2.DECISION_APPROVE
                )
            )
            await expect(page.locator(".run-header .badge")).to_have_text("SUCCEEDED")
            await expect(page.locator("ol.events li").last).to_contain_text("RUN_COMPLETED")
            sequences = await page.locator("ol.events li").evaluate_all(
                "items => items.map(item => Number(item.dataset.sequence))"
            )
            assert sequences == sorted(set(sequences)), "an event was shown twice"
            # And the deep link itself works after the restart (a reload replays the log).
            await page.reload()
            await expect(page.locator(".run-header .badge")).to_have_text("SUCCEEDED")
            await expect(_node(page, "publish")).to_have_attribute("data-state", "SUCCEEDED")
            await expect(page.locator("ol.events li")).to_have_count(len(sequences))
    finally:
        await second.stop(0)


async def test_the_console_needs_no_sign_in_while_authentication_is_off(
    console: Console, page: Any
) -> None:
    await page.goto(f"{console.url}agents")
    await expect(page.locator('tr[data-agent="echo"]')).to_contain_text("echo")
    await expect(page.locator("form.login")).to_have_count(0)
    # The sign-in page stores a key in the HttpOnly cookie; scripts cannot read it.
    await page.goto(f"{console.url}login")
    await page.fill("input[name=key]", "pk_test_0123456789abcdef")
    await page.click("form.login button")
    await expect(page.locator("main h1")).to_have_text("Runs")
    cookies = await page.context.cookies()
    session = [c for c in cookies if c["name"] == "podium_session"]
    assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""
    await expect(page.locator("#signout")).to_be_visible()
    await page.click("#signout")
    # Signed out once the page hides the button again (after the session's DELETE).
    await expect(page.locator("#signout")).to_be_hidden()
    assert [c for c in await page.context.cookies() if c["name"] == "podium_session"] == []


async def test_a_wrong_api_key_is_refused_with_a_clear_message(
    secured_console: tuple[str, str], page: Any
) -> None:
    url, key = secured_console
    await page.goto(f"{url}runs")
    form = page.locator("form.login")
    await expect(form).to_be_visible()
    await form.locator("input[name=key]").fill("pdm_000000000000_" + "A" * 43)
    await form.locator("button").click()
    await expect(form.locator(".error")).to_have_text(
        "The API key was refused: the API key is not valid"
    )
    await form.locator("input[name=key]").fill(key)
    await form.locator("button").click()
    await expect(page.locator("main h1")).to_have_text("Runs")
    await expect(page.locator("p.muted")).to_have_text("No runs match.")
    assert page.url == f"{url}runs"


async def test_definitions_show_each_version_and_its_graph(console: Console, page: Any) -> None:
    stub = console.stub
    await create_definition(stub, "browser-versions", [{"id": "only", "agent": "echo"}])
    await create_definition(stub, "browser-versions", GATED_STEPS)
    await page.goto(f"{console.url}definitions")
    await page.click("a[href='/definitions/browser-versions']")
    await expect(page.locator("main h1")).to_have_text("browser-versions v2")
    await expect(page.locator("svg.dag g.node")).to_have_count(3)
    await expect(_node(page, "review")).to_contain_text("checkpoint BEFORE")
    await page.click(".versions a[data-version='1']")
    await expect(page.locator("main h1")).to_have_text("browser-versions v1")
    await expect(page.locator("svg.dag g.node")).to_have_count(1)
    await expect(page.locator(".versions a")).to_have_text(["v2", "v1"])
    assert page.url.endswith("/definitions/browser-versions?version=1")


async def test_the_usage_page_and_a_run_page_show_the_usage_agents_reported(
    console: Console, page: Any
) -> None:
    """Two echo steps report 12+8 tokens (0.02 USD, model m-large) and 5+5 tokens
    (0.001 USD, model m-small): /usage grouped by agent shows echo's 17+13 tokens over 2
    attempts, by model one row each, the totals agree, the address keeps the choice across
    a reload; the run page shows the run's total usage."""
    large = {"input_tokens": 12, "output_tokens": 8, "cost_usd": 0.02, "model": "m-large"}
    small = {"input_tokens": 5, "output_tokens": 5, "cost_usd": 0.001, "model": "m-small"}
    stub = console.stub
    steps: list[dict[str, Any]] = [
        {"id": "a", "agent": "echo", "input": {"usage": large}},
        {"id": "b", "agent": "echo", "dependsOn": ["a"], "input": {"usage": small}},
    ]
    await create_definition(stub, "browser-usage", steps)
    run = (await start_run(stub, "browser-usage")).run
    finished = await wait_for_run(stub, run.id)
    assert finished.state == run_pb2.Run.STATE_SUCCEEDED

    await page.goto(f"{console.url}runs")
    await page.click("header a[data-nav=usage]")
    await expect(page.locator("main h1")).to_have_text("Usage")
    await expect(page.locator("header a[data-nav=usage]")).to_have_class("active")
    await page.select_option("select[name=by]", "agent")
    table = page.locator('table.usage[data-by="agent"]')
    echo = table.locator('tbody tr[data-key="echo"]')
    await expect(echo.locator("[data-col=input]")).to_have_text("17")
    await expect(echo.locator("[data-col=output]")).to_have_text("13")
    await expect(echo.locator("[data-col=cost]")).to_have_text("$0.0210")
    await expect(echo.locator("[data-col=attempts]")).to_have_text("2")
    await expect(table.locator("tbody tr")).to_have_count(1)
    assert "by=agent" in page.url
    # Grouped by model: one row per model, the total unchanged.
    await page.select_option("select[name=by]", "model")
    table = page.locator('table.usage[data-by="model"]')
    await expect(table.locator("tbody tr")).to_have_count(2)
    await expect(table.locator('tr[data-key="m-large"] [data-col=input]')).to_have_text("12")
    await expect(table.locator('tr[data-key="m-small"] [data-col=output]')).to_have_text("5")
    await expect(table.locator("tfoot [data-col=input]")).to_have_text("17")
    await expect(table.locator("tfoot [data-col=cost]")).to_have_text("$0.0210")
    # The deep link keeps the range and grouping after a reload.
    await page.select_option("select[name=days]", "7")
    await expect(page.locator('select[name="days"]')).to_have_value("7")
    await page.reload()
    await expect(page.locator('table.usage[data-by="model"] tbody tr')).to_have_count(2)
    await expect(page.locator("select[name=days]")).to_have_value("7")
    assert page.url.endswith("/usage?days=7&by=model")
    # The run page: the total usage of the run (no budget, no cache hit: neither shown).
    await page.goto(f"{console.url}runs/{run.id}")
    await expect(page.locator(".run-usage .usage-total")).to_have_text(
        "Usage 17 in · 13 out · $0.0210"
    )
    await expect(page.locator(".run-usage .budget")).to_have_count(0)


async def test_a_run_paused_by_its_budget_shows_it_and_a_raised_budget_finishes_it(
    console: Console, page: Any
) -> None:
    """a -> b -> c, 10 tokens each, budget 15 tokens: the paused run's page shows the
    budget exceeded (20 / 15 tokens) with a link to its budget approval, whose card takes
    a higher limit; approving with 100 tokens finishes the run (30 / 100, not exceeded)."""
    ten = {"input_tokens": 6, "output_tokens": 4, "cost_usd": 0.01, "model": "m"}
    steps: list[dict[str, Any]] = [
        {"id": "a", "agent": "echo", "input": {"usage": ten}},
        {"id": "b", "agent": "echo", "dependsOn": ["a"], "input": {"usage": ten}},
        {"id": "c", "agent": "echo", "dependsOn": ["b"], "input": {"usage": ten}},
    ]
    stub = console.stub
    await create_definition(stub, "browser-budget", steps, execution={"budget": {"max_tokens": 15}})
    run = (await start_run(stub, "browser-budget")).run
    paused = await wait_for_run(stub, run.id, [run_pb2.Run.STATE_PAUSED])
    approval_id = paused.budget.approval_id
    assert approval_id
    await page.goto(f"{console.url}runs/{run.id}")
    budget = page.locator(".run-usage .budget")
    await expect(budget).to_have_attribute("data-exceeded", "true")
    await expect(budget).to_contain_text("20 / 15 tokens")
    await expect(budget.locator(".flag")).to_have_text("EXCEEDED")
    # The link goes to the budget approval's card, further down this page.
    card = page.locator(f"#approval-{approval_id}")
    await expect(card).to_contain_text("BUDGET")
    await page.set_viewport_size({"width": 1000, "height": 300})
    await expect(card).not_to_be_in_viewport()
    await page.click(f'a.budget-approval[data-approval="{approval_id}"]')
    assert page.url.endswith(f"/runs/{run.id}")
    await expect(card).to_be_in_viewport()
    await card.locator("input[name=budgetMaxTokens]").fill("100")
    await card.locator("button.approve").click()
    finished = await _finished_after_decision(stub, run.id, page)
    assert finished.budget.max_tokens == 100
    await expect(page.locator(".run-header .badge")).to_have_text("SUCCEEDED")
    await expect(budget).to_have_attribute("data-exceeded", "false")
    await expect(budget).to_contain_text("30 / 100 tokens")
    await expect(page.locator("a.budget-approval")).to_have_count(0)


async def test_the_usage_page_asks_for_a_key_and_comes_back_to_itself(
    secured_console: tuple[str, str], page: Any
) -> None:
    """With authentication on, /usage shows the sign-in form (GetUsage answered
    UNAUTHENTICATED); a viewer's key brings the page back, its choices intact."""
    url, key = secured_console
    await page.goto(f"{url}usage?days=1&by=definition")
    form = page.locator("form.login")
    await expect(form).to_be_visible()
    await form.locator("input[name=key]").fill(key)
    await form.locator("button").click()
    await expect(page.locator("main h1")).to_have_text("Usage")
    await expect(page.locator('table.usage[data-by="definition"]')).to_be_visible()
    await expect(page.locator("select[name=days]")).to_have_value("1")
    await expect(page.locator("main p.muted").last).to_have_text("No step attempts in this range.")
    await expect(page.locator("table.usage tfoot [data-col=input]")).to_have_text("0")
