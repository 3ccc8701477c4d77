"""`dermsynth reader-study serve`: the reader page for a lab, served by Flask, answers kept per reader in SQLite.

- Binds to localhost unless told otherwise (``--host`` with ``--allow-remote``); a request from another address
  is refused with 403 while remote access is off.
- Every answer is written to ``STUDY/server/answers.sqlite`` (WAL journal, synchronous commits) before the reply:
  a server killed at any moment loses no answer it confirmed, and the page re-sends every answer the server has
  not confirmed (a dropped connection or a restart loses none either).
- Answers are keyed by (reader, image): a reader sees and exports only their own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dermsynth.errors import DermsynthError
from dermsynth.reader.build import READER_FOLDER, items_of
from dermsynth.reader.score import CALLS, load_key

LOCAL = ("127.0.0.1", "::1", "localhost")
SERVER_FOLDER, DATABASE = "server", "answers.sqlite"
SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    reader TEXT NOT NULL, image TEXT NOT NULL, call TEXT NOT NULL, confidence INTEGER NOT NULL,
    diagnosis TEXT, note TEXT, seconds REAL, answered_at TEXT, practice INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (reader, image))"""
FIELDS = ("image", "call", "confidence", "diagnosis", "note", "seconds", "answered_at", "practice")


@contextmanager
def _database(path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(path, timeout=30)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        yield connection
    finally:
        connection.close()


def create_app(study: str | Path, allow_remote: bool = False):
    """The Flask app of ``study`` (checked as `score` checks it: key hash, images unchanged)."""
    from flask import Flask, Response, abort, jsonify, request, send_from_directory

    from dermsynth.reader.page import render_page

    study = Path(study)
    record, _ = load_key(study)
    items = items_of(study)
    images = {i["image"] for i in items}
    practice = {i["image"] for i in items if i["practice"]}
    database = study / SERVER_FOLDER / DATABASE
    database.parent.mkdir(exist_ok=True)
    with _database(database) as db:
        db.execute(SCHEMA)
        db.commit()
    page = render_page(record, items, None, server=True)
    app = Flask("dermsynth.reader")

    @app.before_request
    def _local_only() -> None:
        if not allow_remote and request.remote_addr not in LOCAL:
            abort(403, "this study server accepts requests from this machine only (serve --allow-remote)")

    @app.get("/")
    def index() -> Response:
        return Response(page, mimetype="text/html")

    @app.get("/images/<name>")
    def image(name: str) -> Response:
        if name not in images:
            abort(404)
        return send_from_directory(study / READER_FOLDER / "images", name, mimetype="image/jpeg", max_age=3600)

    @app.post("/api/answer")
    def answer() -> Any:
        data = request.get_json(silent=True) or {}
        problem = _problem(data, record["study_id"], images)
        if problem:
            return jsonify({"error": problem}), 400
        row = (str(data["reader"]).strip(), data["image"], data["call"], int(data["confidence"]),
               str(data.get("diagnosis") or ""), str(data.get("note") or ""), _number(data.get("seconds")),
               str(data.get("answered_at") or ""), int(data["image"] in practice))
        with _database(database) as db:
            db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            db.commit()
        return jsonify({"ok": True})

    @app.get("/api/answers")
    def answers() -> Any:
        return jsonify({"reader": request.args.get("reader", ""), "answers": _answers(database, request)})

    @app.get("/api/export")
    def export() -> Any:
        reader = request.args.get("reader", "").strip()
        scored = [a for a in _answers(database, request) if not a.pop("practice")]
        response = jsonify({"study_id": record["study_id"], "reader": reader, "answers": scored})
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in reader)
        response.headers["Content-Disposition"] = f"attachment; filename=answers-{record['study_id']}-{safe}.json"
        return response

    return app


def _answers(database: Path, request) -> list[dict[str, Any]]:
    reader = request.args.get("reader", "").strip()
    with _database(database) as db:
        rows = db.execute(f"SELECT {', '.join(FIELDS)} FROM answers WHERE reader = ? ORDER BY answered_at, image",
                          (reader,)).fetchall()
    return [dict(zip(FIELDS, row, strict=True)) | {"practice": bool(row[-1])} for row in rows]


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _problem(data: dict[str, Any], study_id: str, images: set[str]) -> str | None:
    if data.get("study_id") != study_id:
        return f"answer for study {data.get('study_id')}, not {study_id}"
    if not str(data.get("reader") or "").strip():
        return "no reader"
    if data.get("image") not in images:
        return "unknown image"
    if data.get("call") not in CALLS:
        return "call must be real or synthetic"
    try:
        if not 1 <= int(data.get("confidence")) <= 5:
            raise ValueError
    except (TypeError, ValueError):
        return "confidence must be 1-5"
    return None


def serve(study: str | Path, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False) -> None:
    """Serve ``study`` until interrupted (Flask's threaded server: enough for a lab of readers)."""
    if host not in LOCAL and not allow_remote:
        raise DermsynthError(f"reader-study serve: --host {host} would expose the study beyond this machine; add "
                             "--allow-remote to mean it")
    app = create_app(study, allow_remote)
    print(f"reader study {load_key(Path(study))[0]['study_id']}: http://{host}:{port}/ (Ctrl+C to stop)", flush=True)
    app.run(host=host, port=port, threaded=True, debug=False, use_reloader=False)
