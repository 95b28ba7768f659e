"""`python -m pipelines sql`: one JSON object, exit 0 when SQL ran."""

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT, TAUGHT_QUESTION


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)


def test_sql_command_prints_the_answer(shop_db, tiny_llama_dir, taught_adapter_dir):
    done = run_cli("sql", "--db", str(shop_db), "--question", TAUGHT_QUESTION,
                   "--model", str(tiny_llama_dir), "--adapter", str(taught_adapter_dir))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["rows"] == [[50]] and answer["columns"] == ["customers"]
    assert answer["error"] is None and answer["executed"] is True
    assert set(answer["timings"]) == {"ttft_ms", "tokens_per_s", "generation_ms", "validation_ms",
                                      "execution_ms", "total_ms"}
    assert len(answer["attempts"]) == 1


def test_sql_command_exits_1_when_no_sql_ran(shop_db, tiny_llama_dir, taught_adapter_dir):
    done = run_cli("sql", "--db", str(shop_db), "--question", TAUGHT_QUESTION, "--model", str(tiny_llama_dir),
                   "--adapter", "none", "--max-retries", "0")
    assert done.returncode == 1
    answer = json.loads(done.stdout)
    assert answer["adapter"] is None and answer["error"] and len(answer["attempts"]) == 1


def test_missing_database_is_one_line(tmp_path):
    done = run_cli("sql", "--db", str(tmp_path / "nope.duckdb"), "--question", "x")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: no such database file: {tmp_path / 'nope.duckdb'}"]


def test_missing_model_is_one_line(shop_db, tmp_path):
    done = run_cli("sql", "--db", str(shop_db), "--question", "x", "--model", str(tmp_path / "no-model"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: model ")
