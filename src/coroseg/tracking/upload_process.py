"""The uploader process: one per command, it sends the journals of the command's runs to MLflow.

Why a process and not a thread of the command: MLflow's import, opening the store (a new SQLite store
runs its migrations) and every upload are Python work that holds the GIL. In a thread it slowed the
training loop and the start-up on a 2-core machine (a small CPU training took 1.14x as long as with
`--no-tracking`); in its own process it runs on the core the training leaves free.

The command journals first (journal.py), then hands each entry to this process over a pipe; the process
feeds one `Uploader` (uploader.py) per run, marks what is sent in the record, and reports back on stdout.
It ignores Ctrl-C and SIGTERM (the command stops and then drains it); when the command ends or dies, its
stdin closes and it drains within the bound, then exits. What is left stays in the journal for
`coroseg sync`.

The pipe, one JSON object a line. To the process:
    {"op": "store", "tracking_uri": URI}     open the store now, before the first run needs it
    {"op": "follow", "record": DIR, "tracking_uri": URI, "experiment": NAME, "parent": DIR or null}
    {"op": "entry", "record": DIR, "entry": {...}}     a journal entry of that record
    {"op": "drain", "seconds": S}            send what is left within S seconds, then exit (EOF: the default)
From the process:
    {"record": DIR, "run_id": ID or null}    after the run's creation was tried, and once it succeeded
    {"told": TEXT}                           an upload failed: the command shows TEXT (once per command)
    {"say": TEXT}                            what the uploads decided (a registry alias): the command shows it
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from coroseg.tracking.sender import tell

GRACE_S = 5.0          # beyond the drain bound, for the process to exit before it is killed


@dataclass
class RunState:
    """What the command knows of one run being uploaded."""
    run_id: str | None = None
    opened: threading.Event = field(default_factory=threading.Event)   # its creation was tried


class UploadProcess:
    """The command's side: starts the process at once (it imports MLflow while the command loads data)."""

    def __init__(self, tracking_uri: str | None) -> None:
        self.runs: dict[str, RunState] = {}
        self.told = False
        self._lock = threading.Lock()
        self._draining = False
        # Its own session: a Ctrl-C at the terminal reaches the command, which stops and drains this. It
        # imports coroseg from where this process did (a notebook may have extended sys.path).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = subprocess.Popen([sys.executable, "-m", "coroseg.tracking.upload_process"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         start_new_session=True, env=env)
        self._reader = threading.Thread(target=self._read, name="coroseg-upload-replies", daemon=True)
        self._reader.start()
        self._send({"op": "store", "tracking_uri": tracking_uri})

    def follow(self, record_dir: Path, tracking_uri: str | None, experiment: str,
               parent_record: Path | None) -> RunState:
        key = _key(record_dir)
        with self._lock:
            state = self.runs.setdefault(key, RunState())
        self._send({"op": "follow", "record": key, "tracking_uri": tracking_uri, "experiment": experiment,
                    "parent": _key(parent_record) if parent_record else None})
        return state

    def submit(self, record_dir: Path, entry: dict[str, Any]) -> None:
        self._send({"op": "entry", "record": _key(record_dir), "entry": entry})

    def running(self) -> bool:
        return self._process.poll() is None

    def drain(self, seconds: float) -> None:
        """Let the process send what is left within `seconds`, then end it."""
        self._draining = True
        self._send({"op": "drain", "seconds": seconds})
        self._close_stdin()
        try:
            self._process.wait(seconds + GRACE_S)
        except subprocess.TimeoutExpired:           # stuck beyond its own bound: the journal keeps the rest
            self._process.kill()
            self._process.wait()
        self._reader.join(GRACE_S)
        for state in self.runs.values():
            state.opened.set()                      # nobody waits for a run any more

    # -- the pipe ------------------------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        """A dead process loses nothing: every entry is in the journal already."""
        try:
            with self._lock:
                self._process.stdin.write(json.dumps(message, default=str) + "\n")
                self._process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def _close_stdin(self) -> None:
        try:
            with self._lock:
                self._process.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def _read(self) -> None:
        for line in self._process.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if message.get("told"):
                self.told = True
                print(message["told"], file=sys.stderr, flush=True)
            if message.get("say"):
                tell(message["say"])
            if "record" in message:
                with self._lock:
                    state = self.runs.setdefault(message["record"], RunState())
                state.run_id = message.get("run_id") or state.run_id
                state.opened.set()
        for state in self.runs.values():            # the process ended: nothing more will come
            state.opened.set()
        code = self._process.wait()
        if code != 0 and not self._draining:
            print(f"coroseg: the uploader process ended early (exit {code}); the work goes on and the journal "
                  "keeps everything for `coroseg sync`", file=sys.stderr, flush=True)


def _key(record_dir: Path) -> str:
    return str(Path(record_dir).resolve())


# -- the process ------------------------------------------------------------------------------------------
class _Worker:
    def __init__(self, out: TextIO) -> None:
        from coroseg.tracking.uploader import FailureReport, Uploader, drain_seconds

        self.Uploader, self.drain_seconds = Uploader, drain_seconds
        self.out = out
        self.uploaders: dict[str, Any] = {}
        self.report: FailureReport | None = None
        self._out_lock = threading.Lock()

    def say(self, **message: Any) -> None:
        with self._out_lock:
            self.out.write(json.dumps(message) + "\n")
            self.out.flush()

    def handle(self, message: dict[str, Any]) -> bool:
        """Carry out one message; False once the process should drain and end."""
        op = message.get("op")
        if op == "store":
            _open_store(message.get("tracking_uri"))
        elif op == "follow":
            self._follow(message)
        elif op == "entry":
            uploader = self.uploaders.get(message["record"])
            if uploader is not None:
                uploader.submit(message["entry"])
        elif op == "drain":
            self.drain(float(message.get("seconds", self.drain_seconds())))
            return False
        return True

    def _follow(self, message: dict[str, Any]) -> None:
        from coroseg.tracking.journal import Journal
        from coroseg.tracking.uploader import FailureReport

        record = message["record"]
        if self.report is None:                     # the command's first run: its record is the one named
            self.report = FailureReport(Path(record), lambda text: self.say(told=text))
        parent = self.uploaders.get(message.get("parent") or "")
        uploader = self.Uploader(Journal(Path(record)), message.get("tracking_uri"), message.get("experiment", ""),
                                 self.report, (lambda: parent.run_id) if parent else None,
                                 on_opened=lambda run_id: self.say(record=record, run_id=run_id),
                                 say=lambda text: self.say(say=text))
        self.uploaders[record] = uploader
        uploader.start()

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for uploader in list(self.uploaders.values()):
            uploader.drain(deadline)


def _open_store(tracking_uri: str | None) -> None:
    """Import MLflow and open the store ahead of the first run (errors surface again when it is created)."""
    from coroseg.tracking.store import prepare_store

    try:
        prepare_store(tracking_uri)
    except Exception:  # noqa: BLE001 - reported by the uploader that needs the store
        pass


def main() -> None:
    # Stopping is the command's to decide: it closes our stdin, and we drain.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from coroseg import mlflow_env

    mlflow_env.apply()
    inbox: queue.Queue[str | None] = queue.Queue()      # read at once, so that the command never waits on the pipe
    threading.Thread(target=_read_lines, args=(sys.stdin, inbox), daemon=True).start()
    # Here, once, before any uploader thread: MLflow imported by several threads at once can fail half-initialised.
    import mlflow.entities  # noqa: F401
    from mlflow import MlflowClient  # noqa: F401
    worker = _Worker(sys.stdout)
    while (line := inbox.get()) is not None:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not worker.handle(message):
            break
    else:                                            # the command ended without a word (killed)
        worker.drain(worker.drain_seconds())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)     # uploader threads stuck on a server that never answers are left behind, by design


def _read_lines(stream: TextIO, inbox: "queue.Queue[str | None]") -> None:
    for line in stream:
        inbox.put(line)
    inbox.put(None)


if __name__ == "__main__":
    main()
