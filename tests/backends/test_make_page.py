"""`make_page`, the helper that gives every backend the same paging of unreadable runs."""

from __future__ import annotations

from durable_agent.backend import UnreadableRun, decode_cursor, make_page
from durable_agent.errors import CorruptRunError, SchemaVersionError
from tests.backends.conftest import at, header


def _bad(run_id: str) -> UnreadableRun:
    return UnreadableRun.from_error(run_id, CorruptRunError(run_id, None, "damaged"))


def test_an_unreadable_run_belongs_to_the_page_whose_part_of_the_order_holds_it() -> None:
    found = [header(f"r{i}", created_at=at(i)) for i in (9, 7, 5)]
    met = [
        ((at(8).timestamp(), "u8"), _bad("u8")),  # between r9 and r7: this page
        ((at(6).timestamp(), "u6"), _bad("u6")),  # after r7, the page's last run: next page
        (None, _bad("nowhere")),  # no known place: the page that met it
    ]
    page = make_page(found, limit=2, unreadable=met)
    assert [h.run_id for h in page.runs] == ["r9", "r7"]
    assert page.next_cursor is not None
    assert decode_cursor(page.next_cursor) == (at(7).timestamp(), "r7")
    assert [u.run_id for u in page.unreadable] == ["u8", "nowhere"]
    last = make_page(found[2:], limit=2, unreadable=met[1:2])
    assert (last.next_cursor, [u.run_id for u in last.unreadable]) == (None, ["u6"])


def test_without_a_next_page_every_unreadable_run_met_is_reported() -> None:
    page = make_page([], limit=5, unreadable=[((1.0, "a"), _bad("a")), (None, _bad("b"))])
    assert (page.runs, page.next_cursor) == ((), None)
    assert [u.run_id for u in page.unreadable] == ["a", "b"]


def test_the_reason_says_newer_version_for_a_schema_version_error() -> None:
    newer = UnreadableRun.from_error("r1", SchemaVersionError("r1", None, 9, 1))
    assert (newer.reason, "upgrade durable-agent" in newer.message) == ("newer_version", True)
    assert _bad("r2").reason == "corrupt"
