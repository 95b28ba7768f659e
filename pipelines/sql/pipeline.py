"""Question -> SQL -> checked -> run -> Answer, with self-correction.

prompt (schema as DDL) -> generate (streamed) -> extract the SQL (a grouped query that shows only aggregates gets
its group keys in front) -> guard -> sandboxed run. On a missing query,
a refusal or an execution error, the error goes back to the model as a new turn, up to `max_retries` times;
every attempt is kept in the Answer. Retries are sampled: greedy decoding of the same prompt plus an error
message mostly writes the same query again.

With `constrain` (the default, on engines that support grammars), decoding follows the database's schema-scoped
grammar (pipelines/sql/grammar.py): the model can only write SQL that parses and names columns of the tables
its FROM brings in. Where the grammar dead-ends the engine decodes freely and the attempt says so.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from pipelines.engine import DEFAULT_ADAPTER, Engine, SamplingParams
from pipelines.errors import BadInput
from pipelines.profiles import recorded_dialect
from pipelines.sql.databases import Database
from pipelines.sql.extract import extract_sql, show_group_keys
from pipelines.sql.grammar import sql_grammar
from pipelines.sql.prompt import build_messages, retry_messages
from pipelines.sql.values import schema_with_values
from pipelines.sql.vote import choose

DEFAULT_MAX_RETRIES = 2
VOTE_CANDIDATES = 8  # all of Spider dev, app path: 40.2% against 30.1% greedy (README, "The shipped CPU adapter")
DEFAULT_PARAMS = SamplingParams(max_new_tokens=256)
# Retries sample around the greedy answer instead of repeating it; seeded, so a retry is reproducible.
RETRY_TEMPERATURE, RETRY_TOP_P = 0.7, 0.95


@dataclass
class Attempt:
    reply: str  # the model's whole reply
    sql: str | None  # what was extracted (and, once checked, normalised for the database)
    stage: str  # how far it got: "extract", "validate", "execute" or "done"
    error: str | None = None
    decoding: str = "greedy"  # "greedy", or "sampled (seed N)" for retries
    grammar: str | None = None  # "followed", "fell back" (dead end: decoded freely), or None (unconstrained)


@dataclass
class Timings:
    """Milliseconds, summed over attempts; ttft is the first attempt's time to first token."""

    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    generation_ms: float = 0.0
    validation_ms: float = 0.0
    execution_ms: float = 0.0
    total_ms: float = 0.0


@dataclass
class Answer:
    question: str
    database: str
    model: str
    adapter: str | None
    sql: str | None = None
    columns: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)
    row_count: int = 0
    truncated: bool = False
    executed: bool = False
    error: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    constrained: str = "off"  # "on", "off", or why it could not be on
    # With candidates > 1: {"candidates", "executed", "votes" (for the chosen result), "chosen" ("greedy" or
    # "sample N"), "sql" (each candidate's, in order)}
    vote: dict | None = None
    spoken: dict | None = None  # a spoken question: {"voice", "transcript", "audio_s", "transcription_ms"}

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Progress:
    """Streamed while the answer is being built: the attempt number and the reply so far."""

    attempt: int
    reply: str
    stage: str  # "generating", "validating", "executing"

    @property
    def sql(self) -> str:
        """The SQL in the reply so far (the reply itself until a query can be told apart from the text)."""
        return extract_sql(self.reply) or self.reply


def question_messages(question: str, database: Database, *, dialect: str | None = None,
                      value_hints: bool = True, audio=None) -> list:
    """The prompt for `question`: the schema (with value hints) and the dialect the model writes.

    With `audio` (16 kHz samples, for a speech-in engine) the user's turn is the audio itself, `<|audio|>` where
    the words would be, and the value hints are only those that need no question text (as `train-projector`
    trained on)."""
    if audio is None:
        schema_text = schema_with_values(database, question) if value_hints else database.schema.to_ddl()
        return build_messages(question, schema_text, dialect or database.dialect)
    from pipelines.speech.ultravox import AUDIO_MARKER

    schema_text = schema_with_values(database, "") if value_hints else database.schema.to_ddl()
    system, user = build_messages(AUDIO_MARKER, schema_text, dialect or database.dialect)
    return [system, {**user, "audio": audio}]


def ask_stream(
    question: str,
    database: Database,
    engine: Engine,
    *,
    adapter=DEFAULT_ADAPTER,
    max_retries: int = DEFAULT_MAX_RETRIES,
    params: SamplingParams = DEFAULT_PARAMS,
    constrain: bool = True,
    value_hints: bool = True,
    dialect: str | None = None,
    audio=None,
    candidates: int | None = None,
) -> Iterator[Progress | Answer]:
    """Yield Progress while working and the Answer last.

    `value_hints` adds values of the text columns (frequent ones, and those the question names) under the schema.
    `dialect` is the SQL dialect the model writes (default: the one its adapter recorded, see
    `pipelines.profiles.recorded_dialect`, else the database's own). Spider-trained adapters write SQLite: their
    SQL is parsed as SQLite and runs as the guard's DuckDB rendering of it.
    `audio` (16 kHz samples) asks a spoken question end to end, on an engine with `audio_input` (Ultravox);
    `question` is then only the Answer's label.
    `candidates` > 1 votes by execution: after the greedy reply, candidates - 1 sampled replies are generated in
    one batch and run, and one is chosen by `pipelines.sql.vote.choose` (what of the question it uses, then how
    many clean candidates return its rows, then how many in all; ties go to the greedy reply's). Default (None):
    `default_candidates(engine)`.
    """
    started = time.perf_counter()
    if candidates is None:
        candidates = default_candidates(engine)
    if audio is not None and not engine.capabilities.audio_input:
        raise BadInput(f"{engine.info.model} takes text only: a spoken question needs a speech-in model (Ultravox)")
    adapter = engine.resolve_adapter(adapter)
    answer = Answer(question=question, database=database.name, model=engine.info.model,
                    adapter=engine.info.adapters.get(adapter) if adapter else None)
    dialect = dialect or recorded_dialect(answer.adapter) or database.dialect
    if constrain and not engine.capabilities.grammar:
        answer.constrained = f"unavailable: the {engine.info.engine} engine does not support grammars"
    elif constrain:
        params = dataclasses.replace(params, grammar=sql_grammar(database.schema))
        answer.constrained = "on"
    messages = question_messages(question, database, dialect=dialect, value_hints=value_hints, audio=audio)
    generated_tokens, decode_s = 0, 0.0
    for attempt_number in range(1, max_retries + 2):
        attempt_params, decoding = params, "greedy"
        if attempt_number > 1:
            attempt_params = dataclasses.replace(params, temperature=RETRY_TEMPERATURE, top_p=RETRY_TOP_P,
                                                 seed=attempt_number)
            decoding = f"sampled (seed {attempt_number})"
        stream = engine.stream(messages, attempt_params, adapter=adapter)
        reply = ""
        for piece in stream:
            reply += piece
            yield Progress(attempt_number, reply, "generating")
        generation = stream.generation
        answer.timings.generation_ms += (stream.finished_at - stream.started) * 1000
        if answer.timings.ttft_ms is None:
            answer.timings.ttft_ms = stream.ttft_ms
        if stream.tokens_per_s:
            generated_tokens += generation.completion_tokens - 1
            decode_s += (generation.completion_tokens - 1) / stream.tokens_per_s

        attempt = _extract_and_check(reply, database, answer, dialect)
        attempt.decoding, attempt.grammar = decoding, generation.grammar
        if attempt.stage == "validate" and attempt.error is None:
            yield Progress(attempt_number, reply, "executing")
            attempt = _execute(attempt, database, answer)
        if attempt_number == 1 and candidates > 1 and database.can_execute:
            yield Progress(attempt_number, reply, f"voting over {candidates} candidates")
            attempt = _vote(attempt, generation.completion_tokens, messages, params, candidates, database, engine,
                            adapter, answer, dialect)
        answer.attempts.append(attempt)
        if attempt.error is None:
            answer.error = None
            break
        answer.error = attempt.error
        if attempt.error.startswith("busy:"):  # the sandbox is full: another query from the model would not help
            break
        messages = retry_messages(messages, reply, attempt.error, dialect)

    answer.timings.tokens_per_s = generated_tokens / decode_s if decode_s > 0 else None
    answer.timings.total_ms = (time.perf_counter() - started) * 1000
    yield answer


def default_candidates(engine: Engine) -> int:
    """How many candidates an answer votes over unless told: VOTE_CANDIDATES where samples are cheap (they decode
    together), else 1 (the greedy reply alone)."""
    return VOTE_CANDIDATES if engine.capabilities.cheap_samples else 1


def _vote(greedy: Attempt, greedy_tokens: int, messages: list, params: SamplingParams, candidates: int, database: Database,
          engine: Engine, adapter: str | None, answer: Answer, dialect: str) -> Attempt:
    """Sample candidates - 1 more replies in one batch, run each, and choose among all of them
    (`pipelines.sql.vote.choose`). Returns the chosen candidate's attempt; `answer` holds its result."""
    started = time.perf_counter()
    # A batch lasts as long as its longest row: a sample far longer than the greedy reply is rambling, so it is
    # cut (and, cut, does not run).
    longest = min(params.max_new_tokens, 2 * greedy_tokens + 16)
    sample_params = dataclasses.replace(params, temperature=RETRY_TEMPERATURE, top_p=RETRY_TOP_P,
                                        n=candidates - 1, seed=1, max_new_tokens=longest)
    [samples] = engine.generate([messages], sample_params, adapter=adapter)
    answer.timings.generation_ms += (time.perf_counter() - started) * 1000
    tried = [(greedy, answer if greedy.error is None else None)]
    for number, generation in enumerate(samples, 1):
        scratch = Answer(answer.question, answer.database, answer.model, answer.adapter)
        attempt = _run_candidate(_extract_and_check(generation.text, database, scratch, dialect), database, scratch,
                                 answer)
        attempt.decoding, attempt.grammar = f"sampled (vote {number})", generation.grammar
        tried.append((attempt, scratch if attempt.error is None else None))
    return _choose(tried, database, answer)


def vote_on_candidates(question: str, database: Database, sqls: list[str | None], *,
                       dialect: str | None = None) -> Answer:
    """Check and run recorded candidate queries (the greedy reply's first) and choose among them as a vote does,
    without a model: `eval-spider --revote` measures a change to the guard or the choice on a recorded run."""
    answer = Answer(question, database.name, model="(recorded candidates)", adapter=None)
    started = time.perf_counter()
    tried = []
    for number, sql in enumerate(sqls):
        scratch = Answer(question, database.name, answer.model, None)
        attempt = Attempt("", None, "extract", "the reply contains no SQL query") if not sql else \
            _check(sql, show_group_keys(sql, dialect or database.dialect), database, scratch, dialect)
        attempt = _run_candidate(attempt, database, scratch, answer)
        attempt.decoding = "greedy" if number == 0 else f"sampled (vote {number})"
        tried.append((attempt, scratch if attempt.error is None else None))
    answer.attempts.append(_choose(tried, database, answer))
    answer.error = answer.attempts[-1].error
    answer.sql = answer.sql or answer.attempts[-1].sql  # none ran: the chosen (greedy) query and its error, as ask's
    answer.timings.total_ms = (time.perf_counter() - started) * 1000
    return answer


def _run_candidate(attempt: Attempt, database: Database, scratch: Answer, answer: Answer) -> Attempt:
    """Run a checked candidate into `scratch`, adding its time to `answer`'s."""
    if attempt.error is None:
        attempt = _execute(attempt, database, scratch)
    answer.timings.validation_ms += scratch.timings.validation_ms
    answer.timings.execution_ms += scratch.timings.execution_ms
    return attempt


def _choose(tried: list[tuple[Attempt, Answer | None]], database: Database, answer: Answer) -> Attempt:
    """Pick among (attempt, its result or None) with `pipelines.sql.vote.choose`; `answer` takes the winner's rows."""
    started = time.perf_counter()
    choice = choose([a.sql for a, _ in tried], [_result_key(r) if r is not None else None for _, r in tried],
                    answer.question, database)
    answer.timings.validation_ms += (time.perf_counter() - started) * 1000
    attempt, result = tried[choice.index]
    answer.vote = {"candidates": len(tried), "executed": sum(1 for _, r in tried if r is not None),
                   "votes": choice.votes, "clean_votes": choice.clean_votes, "grounding": choice.grounding,
                   "chosen": "greedy" if choice.index == 0 else f"sample {choice.index}",
                   "sql": [a.sql for a, _ in tried]}
    if result is not None and result is not answer:
        answer.sql, answer.columns, answer.rows = result.sql, result.columns, result.rows
        answer.row_count, answer.truncated, answer.executed = result.row_count, result.truncated, True
    return attempt


def _result_key(answer: Answer) -> tuple:
    """What two candidates must share to count as the same answer: their rows, in any order (then the row count)."""
    return len(answer.columns), tuple(sorted(repr(row) for row in answer.rows)), answer.row_count


def _extract_and_check(reply: str, database: Database, answer: Answer, dialect: str) -> Attempt:
    sql = extract_sql(reply)
    if sql is None:
        return Attempt(reply, None, "extract", "the reply contains no SQL query")
    return _check(reply, show_group_keys(sql, dialect), database, answer, dialect)


def _check(reply: str, sql: str, database: Database, answer: Answer, dialect: str | None = None) -> Attempt:
    checked_at = time.perf_counter()
    verdict = database.check(sql, dialect)
    answer.timings.validation_ms += (time.perf_counter() - checked_at) * 1000
    answer.sql = verdict.normalized or sql
    if not verdict.allowed:
        return Attempt(reply, sql, "validate", f"refused: {verdict.reason}")
    return Attempt(reply, answer.sql, "validate")


def _execute(attempt: Attempt, database: Database, answer: Answer) -> Attempt:
    if not database.can_execute:  # schema-only mode: a valid query is the answer
        attempt.stage = "done"
        return attempt
    result = database.run(attempt.sql)
    answer.timings.execution_ms += result.elapsed_ms
    if not result.ok:
        attempt.stage, attempt.error = "execute", f"{result.error.kind}: {result.error.message}"
        return attempt
    answer.columns, answer.rows, answer.row_count = result.columns, result.rows, result.row_count
    answer.truncated, answer.executed = result.truncated, True
    attempt.stage = "done"
    return attempt


def ask(question: str, database: Database, engine: Engine, **kwargs) -> Answer:
    """The same as `ask_stream`, for callers that only want the Answer (CLI, evaluation)."""
    *_, answer = ask_stream(question, database, engine, **kwargs)
    return answer


def run_sql(sql: str, database: Database) -> Answer:
    """Check and run SQL a person wrote or edited (the "Run SQL" button): no model involved."""
    started = time.perf_counter()
    answer = Answer(question="", database=database.name, model="(typed by hand)", adapter=None)
    if not sql.strip():
        attempt = Attempt(sql, None, "extract", "type a SQL query first")
    else:
        attempt = _check(sql, sql.strip(), database, answer)
    if attempt.error is None:
        attempt = _execute(attempt, database, answer)
    answer.attempts.append(attempt)
    answer.error = attempt.error
    answer.timings.total_ms = (time.perf_counter() - started) * 1000
    return answer
