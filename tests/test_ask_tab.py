"""Ask tab handlers called directly: what a second question, a model line and a result frame show."""

from types import SimpleNamespace

import gradio as gr

from components import ask
from components.common import sql_model_markdown
from pipelines.engine import EngineInfo
from pipelines.profiles import resolve_profile


def test_a_second_question_while_one_runs_is_queued_with_a_note(monkeypatch):
    request = SimpleNamespace(session_hash="s1")
    assert isinstance(ask.ask_note("How many singers?", request), type(gr.skip()))  # nothing running: no note
    monkeypatch.setitem(ask._ANSWERING, "s1", "How many singers?")
    note = ask.ask_note("Average age?", request)
    assert note.startswith("Queued:") and "Average age?" in note and "How many singers?" in note
    assert isinstance(ask.ask_note("Average age?", SimpleNamespace(session_hash="other")), type(gr.skip()))


def test_empty_results_and_duckdb_names_read_plainly():
    assert list(ask.results_frame([], []).columns) == ["no result yet"]
    frame = ask.results_frame(["count_star()", "count_star()"], [[1, 2]])
    assert list(frame.columns) == ["count(*)", "count(*)_2"]


def test_model_line_names_the_picked_adapter_by_its_short_name():
    profile = resolve_profile("cpu")
    info = EngineInfo(model="/cache/models/tiny", adapters={"default": "/cache/adapters/spider-lora",
                                                            "mine": "/tmp/runs/run-7/adapter"},
                      default_adapter="default", engine="transformers 5.x + PEFT", device="cpu", dtype="float32")
    line = sql_model_markdown(profile, info)
    assert "spider-lora" in line and "transformers 5.x + PEFT" in line and "/cache" not in line
    mine = sql_model_markdown(profile, info, adapter="mine")
    assert "adapter" in mine and "/tmp" not in mine
    assert "none (base model only)" in sql_model_markdown(profile, info, adapter="base")


def test_bound_handlers_keep_their_name_parameters_and_request_hint():
    """bind_context: Gradio names the API parameters after the handler's and injects gr.Request by its hint."""
    import inspect

    from gradio import utils

    from components.common import bind_context

    ctx = ask.AskContext(resolve_profile("cpu"), {})
    bound = bind_context(ask.upload_file, ctx)
    assert bound.__name__ == "upload_file"
    assert list(inspect.signature(bound).parameters) == ["file", "session", "request"]
    assert [name for name, *_ in utils.get_function_params(bound)] == ["file", "session"]  # request: injected
    streaming = bind_context(ask.compare_answers, ctx)
    assert inspect.isgeneratorfunction(streaming)
    assert "type a question first" in next(streaming("", "shop", "base", True, True, {}))[2]


def test_the_attempts_say_how_the_vote_chose(shop_db):
    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.sql.pipeline import vote_on_candidates

    everyone = "SELECT count(*) FROM customers"
    answer = vote_on_candidates("How many customers are in France?", DuckDBDatabase(shop_db),
                                [everyone, everyone, "SELECT count(*) FROM customers WHERE country = 'France'"])
    text = ask._attempts(answer)
    assert "Voted over 3 candidates (3 ran): 1 gave this result; chosen: the sample 2 reply." in text
    assert "It uses 2 of what the question names" in text


def test_an_answer_stops_streaming_once_another_database_is_picked(monkeypatch):
    """The browser test's race, step by step: a step of the old question that finishes after the switch shows
    nothing."""
    def steps(ctx, question, database, *rest):
        for sql in ("SELECT", "SELECT count(*)", "SELECT count(*) FROM customers"):
            yield (sql, "Generating…", *[gr.skip()] * 8)

    monkeypatch.setattr(ask, "_answer_stream", steps)
    ctx, session = ask.AskContext(resolve_profile("cpu"), {}), {}
    stream = ask.ask_question(ctx, "How many customers?", "shop", "default", True, True, session, [], None)
    next(stream)  # the previous answer cleared
    assert next(stream)[0] == "SELECT" and session["picked"] == "shop"
    session["picked"] = "world_1"  # what pick_database does
    assert list(stream) == []
