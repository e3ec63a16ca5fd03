"""The inspector refuses what it must: no token, another origin, no CSRF token, read-only.

Plain HTTP against a real server (no browser needed). Each refusal is
checked to change nothing in the store; one request with everything right
shows the checks are not refusing everything.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping

import pytest

from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.ui import create_app
from durable_agent.ui._app import shown_url
from durable_agent.ui._security import check_bind, is_loopback
from tests.ui import scenario, server
from tests.ui.conftest import copy_store


def request(
    url: str,
    *,
    data: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    sent = urllib.request.Request(url, data=body, headers=dict(headers or {}))
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(sent, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def state_of(db: str, run_id: str) -> str:
    async def read() -> str:
        async with SqliteBackend(db.removeprefix("sqlite:///")) as store:
            return (await store.get_run(run_id)).state.value

    return asyncio.run(read())


def csrf_of(running: server.Server) -> str:
    _, page = request(f"{running.url}/", headers={"Authorization": f"Bearer {running.token}"})
    return page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


def test_every_page_needs_the_token(inspector: server.Server) -> None:
    status, _ = request(f"{inspector.url}/")
    assert status == 401
    status, _ = request(f"{inspector.url}/api/run?id={scenario.DONE}")
    assert status == 401
    status, _ = request(f"{inspector.url}/?token=wrong")
    assert status == 401


def test_the_token_url_sets_a_strict_cookie_and_leaves_the_address_bar(
    inspector: server.Server,
) -> None:
    sent = urllib.request.Request(inspector.login)
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirected:
        opener.open(sent, timeout=30)
    redirected.value.close()
    assert redirected.value.code == 303
    assert redirected.value.headers["location"] == "/"
    cookie = redirected.value.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()


def test_an_action_without_the_token_or_from_another_origin_changes_nothing(
    inspector: server.Server, module_store: str
) -> None:
    cancel = f"{inspector.url}/run/cancel?id={scenario.FAILED}"
    auth = {"Authorization": f"Bearer {inspector.token}"}
    csrf = csrf_of(inspector)
    attempts = [
        ({}, {"csrf": csrf}),  # no token
        ({**auth, "Origin": "http://evil.example"}, {"csrf": csrf}),
        ({**auth, "Sec-Fetch-Site": "cross-site"}, {"csrf": csrf}),
        (auth, {}),  # no CSRF token
        (auth, {"csrf": "0" * 64}),
    ]
    for headers, form in attempts:
        status, body = request(cancel, data=form, headers=headers)
        assert status in (401, 403), (headers, form, status, body)
        assert state_of(module_store, scenario.FAILED) == "ERROR"
    # Everything right: the same request goes through.
    own = {**auth, "Origin": inspector.url, "Accept": "application/json"}
    status, body = request(cancel, data={"csrf": csrf, "reason": "test"}, headers=own)
    assert status == 200, body
    assert json.loads(body)["ok"] is True
    assert state_of(module_store, scenario.FAILED) == "CANCELLED"


def test_api_run_gives_the_data_runs_show_json_prints(
    inspector: server.Server, module_store: str
) -> None:
    status, body = request(
        f"{inspector.url}/api/run?id={scenario.CRASHED}",
        headers={"Authorization": f"Bearer {inspector.token}"},
    )
    assert status == 200
    shown = subprocess.run(
        [sys.executable, "-m", "durable_agent", "runs", "show", scenario.CRASHED, "--json",
         "--db", module_store],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    page, cli = json.loads(body), json.loads(shown)
    for key in ("header", "events", "timeline", "markers", "usage", "requirements"):
        assert page[key] == cli[key], key
    assert [m["kind"] for m in page["markers"]] == ["crash"]


@pytest.fixture(scope="module")
def read_only(pristine_runs: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[server.Server, str]
]:
    db = copy_store(pristine_runs, tmp_path_factory.mktemp("ui-ro"))  # type: ignore[arg-type]
    running = server.start(db, extra=["--read-only"])
    yield running, db
    running.stop()


def test_read_only_shows_no_action_and_refuses_one(read_only: tuple[server.Server, str]) -> None:
    running, db = read_only
    auth = {"Authorization": f"Bearer {running.token}"}
    status, page = request(f"{running.url}/run?id={scenario.WAITING}", headers=auth)
    assert status == 200
    assert 'method="post"' not in page
    assert "read-only" in page
    csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    status, _ = request(
        f"{running.url}/run/decide?id={scenario.WAITING}",
        data={"csrf": csrf, "requirement": scenario.REQUIREMENT, "action": "confirm"},
        headers={**auth, "Origin": running.url},
    )
    assert status == 403
    assert state_of(db, scenario.WAITING) == "WAITING"


def test_a_read_only_viewer_may_watch_a_run_live(read_only: tuple[server.Server, str]) -> None:
    running, _ = read_only
    status, text = request(
        f"{running.url}/events/run?id={scenario.WAITING}&after=3",
        headers={"Authorization": f"Bearer {running.token}"},
    )
    assert status == 200
    assert "id: 4\nevent: run\n" in text  # the run's last event, after the seq given
    assert 'method=\\"post\\"' not in text  # the body it sends has no forms either
    assert "read-only: decide with" in text
    assert text.endswith('event: end\ndata: {"state": "WAITING"}\n\n')


def test_a_bind_beyond_loopback_without_a_token_refuses_to_start(tmp_path: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "durable_agent", "ui", "--host", "0.0.0.0", "--db", "memory://"],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
        env={k: v for k, v in __import__("os").environ.items() if k != "DURABLE_AGENT_UI_TOKEN"},
    )  # fmt: skip
    assert done.returncode == 1
    assert "--token" in done.stderr
    assert "inspector on" not in done.stderr  # it never got as far as serving


def test_the_bind_rule() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.5.0.1"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.org"):
        assert not is_loopback(host), host
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "a-token")
    with pytest.raises(Exception, match="--token"):
        check_bind("0.0.0.0", None)


def test_a_store_password_is_never_shown() -> None:
    assert shown_url("redis://:s3cret@localhost:6379/0") == "redis://:***@localhost:6379/0"
    assert "s3cret" not in create_app("redis://:s3cret@localhost:6379/0").state.inspector.store_label
    assert shown_url("sqlite:///runs.db") == "sqlite:///runs.db"


def test_importing_the_library_or_the_cli_loads_no_web_stack() -> None:
    code = (
        "import sys, durable_agent, durable_agent.cli\n"
        "print(sorted(m for m in ('starlette', 'jinja2', 'uvicorn', 'python_multipart')"
        " if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert done.stdout.strip() == "[]"


def test_a_missing_extra_names_the_install_command() -> None:
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None\n"
        "from durable_agent.ui import create_app\n"
        "try:\n"
        "    create_app('memory://')\n"
        "except Exception as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert "pip install 'durable-agent[ui]'" in done.stdout
