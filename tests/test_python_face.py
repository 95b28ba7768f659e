"""`import pipelines` is the Python face: the names a script needs, the same functions the CLI calls."""

import subprocess
import sys

import pipelines


def test_exports_are_the_functions_the_cli_uses():
    from pipelines.engine import get_engine
    from pipelines.sql.databases import open_database
    from pipelines.sql.pipeline import ask
    from pipelines.training.sql_sft import evaluate_adapter, train_sql

    assert pipelines.ask is ask and pipelines.open_database is open_database and pipelines.get_engine is get_engine
    assert pipelines.train_sql is train_sql and pipelines.evaluate_adapter is evaluate_adapter
    assert set(pipelines.__all__) >= {"ask", "open_database", "get_engine", "transcribe_file", "train_sql",
                                      "evaluate_adapter"}


def test_import_is_light_and_unknown_names_fail_clearly():
    code = "import sys, pipelines; print('torch' in sys.modules, 'gradio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["False", "False"]
    try:
        pipelines.no_such_thing
    except AttributeError as error:
        assert "no_such_thing" in str(error)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_a_script_asks_a_question_end_to_end(tmp_path, shop_db, tiny_llama_dir, taught_adapter_dir):
    from tests.conftest import TAUGHT_QUESTION

    database = pipelines.open_database(shop_db, tmp_path)
    engine = pipelines.get_engine(str(tiny_llama_dir), str(taught_adapter_dir), engine="transformers")
    answer = pipelines.ask(TAUGHT_QUESTION, database, engine, constrain=False)
    assert answer.executed and answer.rows == [[50]]  # shop_db has 50 customers
