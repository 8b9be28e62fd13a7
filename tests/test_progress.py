"""What a run shows while it goes: a live display on a terminal, plain lines elsewhere, nothing of Beam's.

Every run here is the real command on the project's sample layout (two images, one of
them an index of two platforms): small enough that a run takes a second or two.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from imagepush.pipeline.progress import size
from imagepush.transforms import audit
from imagepush.transforms.engine.progress import EventTail, EventWriter, Outcome, ProgressEvent

IMAGEPUSH = str(Path(sys.executable).with_name("imagepush"))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PLAIN = re.compile(
    r"imagepush: progress: (?P<done>\d+)/(?P<total>\d+) images done; (?P<blobs_done_images>\d+) with blobs done; "
    r"blobs (?P<blobs>\d+)/(?P<planned>\d+); (?P<bytes>[\d.]+ [KMG]?B) copied at [\d.]+ [KMG]?B/s; ETA (?:-|\d+\S*)"
    r"(?P<stores>(?:; .*)?)$"
)


def _sync(tmp_path: Path, layout: Path, dest: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [IMAGEPUSH, "sync", f"oci:{layout}", f"oci:{tmp_path / dest}", "--audit", str(tmp_path / f"{dest}.parquet"),
         *extra],
        capture_output=True, text=True, timeout=120,
    )


def _audit_totals(url: Path) -> tuple[int, int]:
    rows = audit.read(str(url)).to_pylist()
    return sum(r["blobs_copied"] for r in rows), sum(r["bytes_copied"] for r in rows)


def test_progress_events_from_many_writers_are_read_as_whole_lines_and_add_up(tmp_path):
    first, second = EventWriter(str(tmp_path)), EventWriter(str(tmp_path))
    tail = EventTail(str(tmp_path))
    first.report(ProgressEvent(blobs_done=1, bytes_done=10, registry_levels={"r.example": (3, 8)}))
    second.report(ProgressEvent(outcomes=[Outcome("oci:a:x", "oci:b:x", "oci:b", "copied")]))
    being_written = tmp_path / "other.events.jsonl"
    being_written.write_bytes(b'{"blobs_done": 5')  # a line still being written is not read yet
    events = tail.read()
    assert sorted(e.blobs_done for e in events) == [0, 1]
    assert [o for e in events for o in e.outcomes] == [Outcome("oci:a:x", "oci:b:x", "oci:b", "copied")]
    assert [e.registry_levels for e in events if e.registry_levels] == [{"r.example": (3, 8)}]
    first.report(ProgressEvent(blobs_copied=2))
    with open(being_written, "ab") as f:
        f.write(b', "bytes_done": 7}\n')
    assert sorted((e.blobs_copied, e.blobs_done, e.bytes_done) for e in tail.read()) == [(0, 5, 7), (2, 0, 0)]
    first.close(), second.close()


def _on_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal: the screen's text, escapes removed."""
    controller, terminal = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="200")
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True)
    os.close(terminal)
    screen = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(controller, 65536)
        except OSError:  # the terminal closed: the command is done
            break
        if not data:
            break
        screen += data
    os.close(controller)
    return proc.wait(timeout=60), ANSI.sub("", screen.decode(errors="replace"))


def test_a_sync_on_a_terminal_shows_a_live_display_of_images_done_of_the_total_and_bytes(tmp_path, layout):
    code, screen = _on_a_terminal([IMAGEPUSH, "sync", f"oci:{layout}", f"oci:{tmp_path / 'out'}",
                                   "--audit", str(tmp_path / "a.parquet")])
    assert code == 0, screen
    _, nbytes = _audit_totals(tmp_path / "a.parquet")
    assert "2/2 images done" in screen
    assert f"blobs 7/7; {size(nbytes)} copied at " in screen
    assert f"oci:{tmp_path / 'out'}: 2 done" in screen
    assert f"imagepush: oci:{layout}:demo/multi:1.0 -> oci:{tmp_path / 'out'}:demo/multi:1.0: copied" in screen
    # The summary: a table per destination, then the run's line.
    assert re.search(rf"oci:{re.escape(str(tmp_path / 'out'))} +│ +2 +│ +{re.escape(size(nbytes))}", screen), screen
    assert "2 images to 1 destination: 2 copied" in screen


def test_off_a_terminal_progress_is_a_plain_line_every_interval_with_every_figure(tmp_path, layout):
    proc = _sync(tmp_path, layout, "out", "--engine", "beam", "--progress-interval", "0.05")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("imagepush: progress:")]
    assert len(lines) >= 2, proc.stderr
    found = [PLAIN.match(line) for line in lines]
    assert all(found), lines
    assert {m["total"] for m in found} == {"2"}
    blobs, nbytes = _audit_totals(tmp_path / "out.parquet")
    last = found[-1]
    assert (last["done"], last["blobs_done_images"], last["blobs"], last["planned"], last["bytes"]) == \
        ("2", "2", str(blobs), str(blobs), size(nbytes))
    assert last["stores"] == f"; oci:{tmp_path / 'out'}: 2 done"
    outcomes = [line for line in proc.stderr.splitlines() if not line.startswith("imagepush: progress:")]
    assert sorted(outcomes) == [f"imagepush: oci:{layout}:demo/{name}:1.0 -> oci:{tmp_path / 'out'}:demo/{name}:1.0: "
                                "copied" for name in ("app", "multi")]


def test_quiet_shows_no_progress_and_no_outcome_lines(tmp_path, layout):
    proc = _sync(tmp_path, layout, "out", "--engine", "beam", "--progress-interval", "0.05", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("2 images to 1 destination: 2 copied;")


@pytest.fixture(scope="module")
def multi_processing_sync(tmp_path_factory, layout):
    tmp_path = tmp_path_factory.mktemp("multi")
    proc = _sync(tmp_path, layout, "out", "--engine", "beam", "--direct_running_mode=multi_processing",
                 "--direct_num_workers=2", "--progress-interval", "0.05")
    assert proc.returncode == 0, proc.stderr
    return tmp_path, proc


def test_under_multi_processing_the_workers_progress_reaches_the_launcher(multi_processing_sync):
    tmp_path, proc = multi_processing_sync
    found = [m for m in map(PLAIN.match, proc.stderr.splitlines()) if m]
    assert found, proc.stderr
    blobs, nbytes = _audit_totals(tmp_path / "out.parquet")
    last = found[-1]
    assert (last["done"], last["total"], last["blobs"], last["bytes"]) == ("2", "2", str(blobs), size(nbytes))
    assert last["stores"] == f"; oci:{tmp_path / 'out'}: 2 done"


def test_under_multi_processing_no_beam_worker_logging_reaches_the_users_stderr(multi_processing_sync):
    _, proc = multi_processing_sync
    assert [line for line in proc.stderr.splitlines() if not line.startswith("imagepush: ")] == []
