"""Uploaded files become a DuckDB database in the session's own temporary folder.

CSV/TSV and Parquet become one table named after the file; SQLite becomes all its tables (with primary and
foreign keys where the data honours them); a DuckDB file is copied. The kind is sniffed from the content, not the
name. Parsing an untrusted file is done in a child process with memory and time limits, so a file that crashes
a reader cannot take the app down; the result is then opened only by the read-only sandbox.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.sql.schema import quote_identifier, reserved_words

DEFAULT_MAX_UPLOAD_MB = 200
DEFAULT_MAX_IMPORT_MB = 1024  # the database an upload becomes: a small Parquet file can expand a thousandfold
SESSION_PREFIX = "voxql-session-"
STALE_SESSION_S = 48 * 3600  # folders left by a crashed app are swept after this
IMPORT_TIMEOUT_S = 300.0
IMPORT_MEMORY_BYTES = 4 * 2**30  # the importer's address-space limit
SQLITE_BATCH_ROWS = 50_000
REPO_ROOT = Path(__file__).resolve().parents[2]


# -- session folders -----------------------------------------------------------------------------------------------
_LIVE_SESSION_DIRS: set[str] = set()  # made by this process and not removed yet: removed at exit


def new_session_dir() -> Path:
    """A private (0700) temporary folder for one session's files; old ones left behind are swept first."""
    _sweep_stale_sessions()
    path = tempfile.mkdtemp(prefix=SESSION_PREFIX)
    _LIVE_SESSION_DIRS.add(path)
    return Path(path)


def remove_session_dir(path: str | Path | None) -> None:
    """Delete a session folder made by `new_session_dir` (anything else is left alone)."""
    if not path:
        return
    path = Path(path)
    if path.name.startswith(SESSION_PREFIX) and path.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(path, ignore_errors=True)
        _LIVE_SESSION_DIRS.discard(str(path))


def remove_all_session_dirs() -> None:
    """At exit: every session's folder goes with the app (their pages cannot come back to them)."""
    for path in list(_LIVE_SESSION_DIRS):
        remove_session_dir(path)


atexit.register(remove_all_session_dirs)


def _sweep_stale_sessions() -> None:
    cutoff = time.time() - STALE_SESSION_S
    for folder in Path(tempfile.gettempdir()).glob(f"{SESSION_PREFIX}*"):
        try:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


# -- import --------------------------------------------------------------------------------------------------------
def max_upload_bytes() -> int:
    try:
        return int(float(os.environ.get("VOXQL_MAX_UPLOAD_MB") or DEFAULT_MAX_UPLOAD_MB) * 2**20)
    except ValueError:
        return DEFAULT_MAX_UPLOAD_MB * 2**20


def max_import_bytes() -> int:
    try:
        return int(float(os.environ.get("VOXQL_MAX_IMPORT_MB") or DEFAULT_MAX_IMPORT_MB) * 2**20)
    except ValueError:
        return DEFAULT_MAX_IMPORT_MB * 2**20


def sniff(path: str | Path) -> str:
    """"sqlite", "parquet", "duckdb" or "csv" from the first bytes; BadInput for anything else."""
    with open(path, "rb") as handle:
        head = handle.read(65536)
    if not head:
        raise BadInput("the file is empty")
    if head.startswith(b"SQLite format 3\x00"):
        return "sqlite"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head[8:12] == b"DUCK":
        return "duckdb"
    known = {b"PK\x03\x04": "a ZIP or Excel file", b"\x1f\x8b": "a gzip file", b"%PDF": "a PDF",
             b"\x89PNG": "an image", b"\xff\xd8\xff": "an image"}
    for magic, what in known.items():
        if head.startswith(magic):
            raise BadInput(f"this looks like {what}; upload CSV, Parquet, SQLite or DuckDB (export sheets as CSV)")
    if b"\x00" in head:
        raise BadInput("unsupported binary file; upload CSV, Parquet, SQLite or DuckDB")
    if not head.strip():
        raise BadInput("the file is empty (only blank lines)")
    return "csv"


def table_name(path: str | Path) -> str:
    """A plain SQL name from the file name: `Sales 2024 (final).csv` -> `sales_2024_final`."""
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", Path(path).name.split(".")[0]).strip("_").lower()[:63] or "data"
    if name[0].isdigit():
        name = f"t_{name}"
    return f"{name}_table" if name in reserved_words() else name


def import_upload(path: str | Path, session_dir: str | Path) -> Path:
    """A DuckDB file inside `session_dir` holding the upload's data; BadInput with a one-line reason otherwise."""
    path, session_dir = Path(path), Path(session_dir)
    if not path.is_file():
        raise BadInput(f"no such file: {path.name}")
    size, limit = path.stat().st_size, max_upload_bytes()
    if size > limit:
        raise BadInput(f"the file is {size / 2**20:.1f} MB; the limit is {limit / 2**20:.1f} MB "
                       "(VOXQL_MAX_UPLOAD_MB)")
    kind = sniff(path)
    session_dir.mkdir(parents=True, exist_ok=True)
    target = _free_name(session_dir, table_name(path))
    partial = target.with_name(target.name + ".partial")
    try:
        _convert_in_child(kind, path, partial)
        _check_result(partial)
        partial.replace(target)
    except BadInput as error:  # readers name the files they read: the user sees the file's name, not our folders
        raise BadInput(without_paths(str(error))) from None
    finally:
        partial.unlink(missing_ok=True)
        partial.with_name(partial.name + ".wal").unlink(missing_ok=True)
    return target


# Two or more /segments after a space, quote or bracket (not "a/b"); a name with spaces keeps its tail anyway.
_ABSOLUTE_PATH = re.compile(r"(?<![\w/])(?:[A-Za-z]:)?(?:[/\\][\w.\-+@%~]+){2,}")


def without_paths(message: str) -> str:
    """`message` with every absolute path cut to its last part, so no server folder is shown to a user."""
    return _ABSOLUTE_PATH.sub(lambda match: re.split(r"[/\\]", match.group(0))[-1], message)


def _free_name(folder: Path, stem: str) -> Path:
    candidate, n = folder / f"{stem}.duckdb", 1
    while candidate.exists():
        n += 1
        candidate = folder / f"{stem}_{n}.duckdb"
    return candidate


def _convert_in_child(kind: str, source: Path, target: Path) -> None:
    """Run `convert` in a child process with limits: a reader bug or a bomb of a file fails only the child."""
    env = {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": str(target.parent), "TMPDIR": str(target.parent),
           "MALLOC_ARENA_MAX": "2"}
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pipelines.sql.uploads import _child_main; "
            "sys.exit(_child_main(*sys.argv[2:]))")
    command = [sys.executable, "-I", "-c", code, str(REPO_ROOT), kind, str(source.resolve()), str(target.resolve()),
               str(max_import_bytes())]
    try:
        done = subprocess.run(command, env=env, cwd=target.parent, capture_output=True, text=True,
                              timeout=IMPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BadInput(f"reading the file took longer than {IMPORT_TIMEOUT_S:.0f} s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    reply = json.loads(lines[-1]) if lines else {}
    if reply.get("error"):
        raise BadInput(reply["error"])
    if done.returncode != 0 or not reply.get("ok"):
        raise BadInput(f"the {_KIND_NAMES[kind]} file could not be read (its reader failed: exit code "
                       f"{done.returncode}); is it complete and not corrupt?")


_KIND_NAMES = {"csv": "CSV", "parquet": "Parquet", "sqlite": "SQLite", "duckdb": "DuckDB"}


def _child_main(kind: str, source: str, target: str, max_bytes: str = str(DEFAULT_MAX_IMPORT_MB * 2**20)) -> int:
    """Entry point of the import child: limits first, then convert; one JSON line on stdout.

    RLIMIT_FSIZE caps every file the child writes, so the database cannot grow past `max_bytes` however well
    the upload was compressed; a write past it fails (EFBIG; SIGXFSZ is ignored so it is an error, not a kill).
    """
    too_big = (f"the imported database would be larger than {int(max_bytes) / 2**20:.0f} MB "
               "(VOXQL_MAX_IMPORT_MB)")
    try:
        import resource
        import signal

        resource.setrlimit(resource.RLIMIT_AS, (IMPORT_MEMORY_BYTES, IMPORT_MEMORY_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(max_bytes), int(max_bytes)))
    except (ImportError, ValueError, OSError):
        pass
    try:
        convert(kind, Path(source), Path(target))
    except OSError as error:
        print(json.dumps({"error": too_big if error.errno == errno.EFBIG else
                          f"could not write the imported database: {error.strerror}"}))
        return 1
    except BadInput as error:
        print(json.dumps({"error": str(error)}))
        return 1
    except MemoryError:
        print(json.dumps({"error": "the file needs more memory to import than is allowed"}))
        return 1
    except Exception as error:  # noqa: BLE001 - any reader failure is the file's problem, said in one line
        message = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        if "File too large" in message:
            message = too_big
        else:
            message = f"could not read the {_KIND_NAMES[kind]} file: {message}"
        print(json.dumps({"error": message}))
        return 1
    print(json.dumps({"ok": True}))
    return 0


def convert(kind: str, source: Path, target: Path) -> None:
    """Convert in this process (trusted files, or inside the import child)."""
    if kind == "sqlite":
        sqlite_to_duckdb(source, target)
    elif kind == "duckdb":
        shutil.copyfile(source, target)
    else:
        _read_file_into_duckdb(kind, source, target)


def _read_file_into_duckdb(kind: str, source: Path, target: Path) -> None:
    import duckdb

    name = quote_identifier(table_name(source))
    con = duckdb.connect(str(target))
    try:
        # DuckDB may read exactly this one file and nothing else; settings in this order, locked last.
        con.execute(f"SET allowed_paths = [{_sql_string(str(source))}]")
        for setting in ("enable_external_access = false", "autoload_known_extensions = false",
                        "autoinstall_known_extensions = false", "threads = 2", "memory_limit = '2GB'",
                        "lock_configuration = true"):
            con.execute(f"SET {setting}")
        if kind == "parquet":
            reader = "read_parquet(?)"
        else:
            reader = "read_csv(?)" if _is_utf8(source) else "read_csv(?, encoding = 'latin-1')"
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM {reader}", [str(source)])
    except duckdb.Error as error:
        message = str(error).strip().splitlines()[0]
        if "File too large" in message:
            raise OSError(errno.EFBIG, "File too large") from None
        raise BadInput(f"could not read the {_KIND_NAMES[kind]} file: {message[:300]}") from None
    finally:
        con.close()


def _is_utf8(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start > len(head) - 4  # a character cut at the end of the sample is fine
    return True


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _check_result(database: Path) -> None:
    """The new database must open in the sandbox, hold at least one table with columns, define no macro named
    like a built-in function (`lower`, `range`: in DuckDB the file's macro wins over the built-in), and have no
    view whose query the sandbox would refuse (one reading `duckdb_databases()` would show server paths)."""
    from pipelines.sql.sandbox import SandboxLimits, introspect_in_sandbox
    from pipelines.sql.sandbox_worker import builtin_function_names

    try:
        found = introspect_in_sandbox(database, SandboxLimits(timeout_s=30))
    except BadInput as error:
        raise BadInput(str(error).replace("cannot open the database", "the database could not be opened")) from None
    if not found["columns"]:
        raise BadInput("the file holds no tables")
    shadowing = sorted(name for name in found["macros"] if name.lower() in builtin_function_names())
    if shadowing:
        raise BadInput(f"the DuckDB file defines macros named like built-in functions ({', '.join(shadowing[:5])}),"
                       " which would change what queries mean; drop them (DROP MACRO ...) and upload it again")
    if found["refused_views"]:
        name, reason = sorted(found["refused_views"].items())[0]
        raise BadInput(f"the DuckDB file has a view that reads what queries may not: {name} ({reason}); drop it "
                       "and upload the file again")


# -- SQLite -> DuckDB through Python's sqlite3 (the DuckDB sqlite extension cannot be downloaded here) -------------
def sqlite_to_duckdb(sqlite_path: str | Path, duckdb_path: str | Path) -> None:
    """Copy every table of a SQLite file into a new DuckDB file, keeping PRIMARY/FOREIGN KEYs the data honours.

    SQLite is dynamically typed, so a column's DuckDB type comes from the values it actually holds (integers
    only: BIGINT; numbers: DOUBLE; anything textual: VARCHAR). Constraints the data breaks (duplicate keys,
    dangling references) are dropped, not the rows.
    """
    import duckdb

    sqlite_path, duckdb_path = Path(sqlite_path), Path(duckdb_path)
    duckdb_path.unlink(missing_ok=True)
    try:
        source = sqlite3.connect(f"file:{sqlite_path.resolve()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise BadInput(f"could not open the SQLite file: {error}") from None
    source.text_factory = lambda raw: raw.decode("utf-8", "replace")
    con = duckdb.connect(str(duckdb_path))
    try:
        tables = _sqlite_tables(source)
        if not tables:
            raise BadInput("the SQLite file holds no tables")
        created: dict[str, dict] = {}  # lower name -> name, primary key and column types of tables copied so far
        for table in _dependency_order(tables):
            _copy_table(source, con, table, created)
    except sqlite3.DatabaseError as error:
        raise BadInput(f"could not read the SQLite file: {error}") from None
    finally:
        con.close()
        source.close()


def _sqlite_tables(source: sqlite3.Connection) -> list[dict]:
    names = [row[0] for row in source.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]
    tables = []
    for name in names:
        quoted = _sqlite_quote(name)
        # table_xinfo, not table_info: generated columns are listed too (hidden 2 or 3) and are copied with the
        # values SQLite computes for them; hidden 1 is a virtual table's own hidden column.
        info = [row[:6] for row in source.execute(f"PRAGMA table_xinfo({quoted})").fetchall() if row[6] != 1]
        if not info:  # cid, name, type, notnull, default, pk
            continue
        fks: dict[int, dict] = {}
        for fk_id, _, ref_table, column, ref_column, *_ in source.execute(f"PRAGMA foreign_key_list({quoted})"):
            fk = fks.setdefault(fk_id, {"ref_table": ref_table, "columns": [], "ref_columns": []})
            fk["columns"].append(column)
            fk["ref_columns"].append(ref_column)
        tables.append({
            "name": name,
            "columns": [(row[1], row[2] or "") for row in info],
            "pk": [row[1] for row in sorted(info, key=lambda r: r[5]) if row[5] > 0],
            "fks": list(fks.values()),
        })
    return tables


def _dependency_order(tables: list[dict]) -> list[dict]:
    """Referenced tables first (DuckDB checks a FOREIGN KEY against rows already there); cycles keep file order."""
    by_name = {t["name"].lower(): t for t in tables}
    ordered: list[dict] = []
    state: dict[str, str] = {}

    def visit(table: dict) -> None:
        key = table["name"].lower()
        if state.get(key):
            return
        state[key] = "visiting"
        for fk in table["fks"]:
            ref = by_name.get(str(fk["ref_table"]).lower())
            if ref is not None and ref is not table:
                visit(ref)
        state[key] = "done"
        ordered.append(table)

    for table in tables:
        visit(table)
    return ordered


def _copy_table(source: sqlite3.Connection, con, table: dict, created: dict[str, dict]) -> None:
    import duckdb

    name, quoted_src = table["name"], _sqlite_quote(table["name"])
    types = _column_types(source, quoted_src, table["columns"])
    fks = _usable_foreign_keys(source, table, types, created)
    attempts = []  # fewer constraints after each failure: the rows always make it
    for attempt in ((table["pk"], fks), (table["pk"], []), ([], [])):
        if attempt not in attempts:
            attempts.append(attempt)
    for pk, foreign_keys in attempts:
        try:
            con.execute(_create_sql(name, table["columns"], types, pk, foreign_keys))
        except duckdb.Error:
            continue  # a constraint DuckDB does not accept
        try:
            _insert_rows(source, con, name, quoted_src, [c for c, _ in table["columns"]], types)
        except duckdb.ConstraintException:
            con.execute(f"DROP TABLE {_quoted(name)}")
            continue
        created[name.lower()] = {"name": name, "pk": pk,
                                 "types": {c.lower(): t for (c, _), t in zip(table["columns"], types)}}
        return
    raise BadInput(f"could not copy table {name!r}")


def _usable_foreign_keys(source, table: dict, types: list[str], created: dict[str, dict]) -> list[dict]:
    """Foreign keys DuckDB can keep: onto the whole primary key of a table already copied, with equal types.

    SQLite lets a text column reference an integer key (Spider does this a lot); when every value of the
    referencing column is an integer written as text, the column becomes BIGINT (in `types`) to keep the key.
    """
    usable = []
    index = {column.lower(): i for i, (column, _) in enumerate(table["columns"])}
    for fk in table["fks"]:
        ref = created.get(str(fk["ref_table"]).lower())
        if ref is None or not ref["pk"] or len(fk["columns"]) != len(ref["pk"]) or \
                any(str(c).lower() not in index for c in fk["columns"]):
            continue  # self-references and keyless or missing tables cannot be referenced
        ref_columns = [column or key for column, key in zip(fk["ref_columns"], ref["pk"])]
        if [c.lower() for c in ref_columns] != [k.lower() for k in ref["pk"]]:
            continue
        wanted = [ref["types"][c.lower()] for c in ref_columns]
        positions = [index[str(c).lower()] for c in fk["columns"]]
        if all(types[p] == w or (w == "BIGINT" and _integers_as_text(source, table, p)) for p, w in
               zip(positions, wanted)):
            for p, w in zip(positions, wanted):
                types[p] = w
            usable.append({"columns": fk["columns"], "ref_table": ref["name"], "ref_columns": ref_columns})
    return usable


def _integers_as_text(source, table: dict, position: int) -> bool:
    column = _sqlite_quote(table["columns"][position][0])
    bad = source.execute(
        f"SELECT count(*) FROM {_sqlite_quote(table['name'])} WHERE {column} IS NOT NULL AND NOT "
        f"(typeof({column}) = 'integer' OR (typeof({column}) = 'text' AND CAST(CAST({column} AS INTEGER) AS TEXT) "
        f"= {column}))").fetchone()[0]
    return bad == 0


def _create_sql(name: str, columns: list, types: list[str], pk: list[str], fks: list[dict]) -> str:
    parts = [f"{_quoted(column)} {kind}" for (column, _), kind in zip(columns, types)]
    if pk:
        parts.append(f"PRIMARY KEY ({', '.join(map(_quoted, pk))})")
    for fk in fks:
        parts.append(f"FOREIGN KEY ({', '.join(map(_quoted, fk['columns']))}) REFERENCES "
                     f"{_quoted(fk['ref_table'])} ({', '.join(map(_quoted, fk['ref_columns']))})")
    return f"CREATE TABLE {_quoted(name)} ({', '.join(parts)})"


def _column_types(source: sqlite3.Connection, table: str, columns: list[tuple[str, str]]) -> list[str]:
    """The DuckDB type that holds every value each column actually has (one scan of the table)."""
    storage = ("integer", "real", "text", "blob")
    flags: list = []
    for start in range(0, len(columns), 400):  # SQLite allows at most 2,000 result columns
        probes = [f"max(typeof({_sqlite_quote(column)}) = '{kind}')"
                  for column, _ in columns[start:start + 400] for kind in storage]
        flags += source.execute(f"SELECT {', '.join(probes)} FROM {table}").fetchone()
    types = []
    for i, (_, declared) in enumerate(columns):
        kinds = {kind for kind, flag in zip(storage, flags[4 * i:4 * i + 4]) if flag}
        if not kinds:  # no values: go by the declared type's affinity
            upper = declared.upper()
            numeric = any(k in upper for k in ("REAL", "FLOA", "DOUB", "NUM", "DEC"))
            types.append("BIGINT" if "INT" in upper else "DOUBLE" if numeric else "VARCHAR")
        elif kinds == {"integer"}:
            types.append("BIGINT")
        elif kinds <= {"integer", "real"}:
            types.append("DOUBLE")
        else:
            types.append("BLOB" if kinds == {"blob"} else "VARCHAR")
    return types


def _insert_rows(source, con, name: str, quoted_src: str, columns: list[str], types: list[str]) -> None:
    import pyarrow as pa

    arrow_types = {"BIGINT": pa.int64(), "DOUBLE": pa.float64(), "VARCHAR": pa.string(), "BLOB": pa.binary()}
    converters = {"BIGINT": int, "DOUBLE": float, "BLOB": bytes,
                  "VARCHAR": lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)}
    select = ", ".join(_sqlite_quote(c) for c in columns)
    cursor = source.execute(f"SELECT {select} FROM {quoted_src}")
    target = _quoted(name)
    while batch := cursor.fetchmany(SQLITE_BATCH_ROWS):
        arrays = []
        for i, kind in enumerate(types):
            convert = converters[kind]
            arrays.append(pa.array([None if row[i] is None else convert(row[i]) for row in batch],
                                   type=arrow_types[kind]))
        chunk = pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(columns))])
        con.register("voxql_chunk", chunk)
        try:
            con.execute(f"INSERT INTO {target} SELECT * FROM voxql_chunk")
        finally:
            con.unregister("voxql_chunk")


def _sqlite_quote(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def _quoted(name: str) -> str:
    """A DuckDB identifier, always quoted: a SQLite file's names may be DuckDB keywords (Spider has a table `show`)."""
    return '"' + str(name).replace('"', '""') + '"'
