"""The real Gradio app, launched on localhost and driven through gradio_client."""

import tempfile
from pathlib import Path

import pytest
from gradio_client import Client

import app
from pipelines.profiles import resolve_profile
from tests.conftest import TAUGHT_QUESTION


@pytest.fixture(scope="module")
def profile(tiny_llama_dir, taught_adapter_dir):
    # resolve_profile reads the dialect from the adapter it is given (the taught one writes SQLite)
    return resolve_profile("cpu", sql_model=str(tiny_llama_dir), sql_adapter=str(taught_adapter_dir))


@pytest.fixture(scope="module")
def client(profile):
    demo = app.build_app(profile)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def test_question_to_table_end_to_end(client):
    sql, status, results, bar, line, timings, history, model_status, attempts, _queued = client.predict(
        TAUGHT_QUESTION, "shop", "default", True, True, api_name="/ask")
    assert sql.lower() == "select count(*) as customers from customers"
    assert status == "1 row(s)."
    assert results["headers"] == ["customers"] and results["data"] == [[5000]]
    assert "first token" in timings and "attempts 1" in timings
    assert history["data"][-1][2] == TAUGHT_QUESTION
    assert "adapter" in model_status and "cpu" in model_status
    assert "/" not in model_status  # the adapter's short name, never its folder


def test_base_model_failure_is_shown_plainly(client):
    sql, status, *_ = client.predict(TAUGHT_QUESTION, "shop", "base", True, True, api_name="/ask")
    assert status.startswith("**Error:**") and "after 3 attempts" in status


def test_run_sql_with_a_chart(client):
    query = "SELECT c.country, sum(o.total) AS revenue FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY ALL"
    sql, status, results, bar, line, *_ = client.predict(query, "shop", api_name="/run_sql")
    assert results["headers"] == ["country", "revenue"] and len(results["data"]) == 10
    assert bar["visible"] and bar["value"]["mark"] == "bar" and not line["visible"]  # categories -> bars


def test_run_sql_refuses_writes(client):
    _, status, *_ = client.predict("DELETE FROM orders", "shop", api_name="/run_sql")
    assert status.startswith("**Error:** refused:")
    _, _, results, *_ = client.predict("SELECT count(*) AS n FROM orders", "shop", api_name="/run_sql")
    assert results["data"] == [[120000]]


def test_time_series_gets_a_line_chart(client):
    query = "SELECT date_trunc('month', created_at) AS month, sum(total) AS revenue FROM orders GROUP BY 1 ORDER BY 1"
    _, _, _, bar, line, *_ = client.predict(query, "shop", api_name="/run_sql")
    assert line["visible"] and line["value"]["mark"] == "line" and not bar["visible"]


def test_database_picker_shows_schema_and_examples(client):
    ddl, description, examples, *_ = client.predict("world_1", api_name="/pick_database")
    assert "CREATE TABLE city" in ddl and "Spider" in description


def test_switching_database_clears_the_previous_answer(client):
    _, _, results, *_ = client.predict("SELECT count(*) FROM orders", "shop", api_name="/run_sql")
    assert results["headers"] == ["count(*)"]  # not DuckDB's `count_star()`
    _, _, _, queued, sql, status, results, bar, line, timings, attempts = client.predict(
        "concert_singer", api_name="/pick_database")
    assert (queued, sql, status, timings, attempts) == ("", "", "", "", "")
    assert results["headers"] == ["no result yet"] and results["data"] in ([], [[""]])
    assert not bar["visible"] and not line["visible"]


def test_bar_charts_start_at_zero(client):
    query = "SELECT * FROM (VALUES ('a', 100), ('b', 90)) t(name, n)"
    _, _, _, bar, *_ = client.predict(query, "shop", api_name="/run_sql")
    assert bar["visible"] and bar["y_lim"] == [0.0, None]


def test_a_refused_upload_leaves_no_folder_and_no_server_path(client, tmp_path):
    from gradio_client import handle_file

    from pipelines.sql.uploads import SESSION_PREFIX

    def session_folders():
        return {p.name for p in Path(tempfile.gettempdir()).glob(f"{SESSION_PREFIX}*")}

    before = session_folders()
    corrupt = tmp_path / "broken.parquet"
    corrupt.write_bytes(b"PAR1" + b"\0" * 64)
    picker, box, message = client.predict(handle_file(str(corrupt)), api_name="/upload")
    assert message.startswith("**Error:**") and box is None
    assert "/tmp" not in message and str(tmp_path) not in message
    assert session_folders() == before


def test_compare_streams_base_and_adapter(client):
    outputs = client.predict(TAUGHT_QUESTION, "shop", "default", True, True, api_name="/compare")
    base_sql, base_status, _, tuned_sql, tuned_status, tuned_results = outputs  # (the accordion is layout)
    assert tuned_sql.lower() == "select count(*) as customers from customers"
    assert tuned_results["data"] == [[5000]]
    assert base_status.startswith("**Error:**")


def test_pasted_schema_mode(client):
    ddl = "CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR);"
    picker, message = client.predict(ddl, api_name="/use_schema")
    assert picker["value"] == "pasted schema" and ["pasted schema", "pasted schema"] in picker["choices"]
    assert message == ""
    _, message = client.predict("CREATE TABLE broken (", api_name="/use_schema")
    assert message.startswith("**Error:** could not parse")


def test_the_api_is_named_and_a_script_can_use_it_by_keyword(client, tmp_path):
    """What the README's API section shows: named endpoints and parameters (no /lambda, no param_N or value_N),
    and a session across calls (an upload, then SQL on it)."""
    from gradio_client import handle_file

    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/ask", "/run_sql", "/compare", "/upload", "/use_schema", "/pick_database", "/transcribe", "/train",
            "/cancel_training", "/train_progress", "/evaluate_adapter", "/load_adapter"} <= set(info)
    assert not [name for name in info if name.startswith("/lambda")]
    names = [p["parameter_name"] for e in info.values() for p in e["parameters"]]
    labels = [r["label"] for e in info.values() for r in e["returns"]]
    assert not [n for n in names if n.startswith("param_")] and not [l for l in labels if l.startswith("value_")]

    csv = tmp_path / "rainfall.csv"
    csv.write_text("city,mm\nBergen,2250\nCairo,18\n")
    picker, _, message = client.predict(file=handle_file(str(csv)), api_name="/upload")
    assert picker["value"] == "rainfall" and "rainfall" in message
    _, status, result, *_ = client.predict(sql="SELECT city FROM rainfall WHERE mm > 100", database="rainfall",
                                           api_name="/run_sql")
    assert result["headers"] == ["city"] and result["data"] == [["Bergen"]]
    sql, status, result, *_ = client.predict(question=TAUGHT_QUESTION, database="shop", adapter="default",
                                             constrain=True, value_hints=True, api_name="/ask")
    assert result["data"] == [[5000]]
    assert client.predict(preset="CPU quick", api_name="/train_preset")[5] == 768
    _, message = client.predict(adapter="no-such-adapter", api_name="/load_adapter")
    assert message.startswith("**Error:**")
