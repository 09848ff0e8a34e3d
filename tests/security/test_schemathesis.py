"""schemathesis against the OpenAPI schema of a running service, with a valid token: no
request it generates may get a 5xx. Bounded for CI; the README gives the longer run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.conftest import World, build_world

EXAMPLES = int(os.environ.get("MEDSHARD_FUZZ_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = build_world(tmp_path_factory.mktemp("fuzz"))
    yield w
    w.svc.process.stop()
    for node in w.dep.nodes:
        node.stop()


@pytest.mark.parametrize("who", ["doc-a", "admin"])
def test_no_generated_request_gets_a_server_error(
    fuzz_world: World, who: str, tmp_path: Path
) -> None:
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st),
        "run",
        f"{fuzz_world.svc.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {fuzz_world.tokens[who]}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "20261130",
        # one worker: CPython 3.11's AST converter keeps its recursion depth in a global, so two
        # fuzzer threads parsing at once crash it ("AST constructor recursion depth mismatch",
        # CPython gh-106905), a fault of the fuzzer's process that is not the server's
        "--workers",
        "1",
        "--exclude-path",
        "/api/auth/logout",  # would end the session the run uses
        "--exclude-path-regex",
        "/erase$",  # an admin run would crypto-shred the world's patients
        # the fuzzer's own data-generation health checks time out on a loaded machine; they
        # judge the generator, not the server (a server error still fails the run)
        "--suppress-health-check",
        "too_slow,filter_too_much",
        "--no-color",
        "--request-timeout",
        "30",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    output = result.stdout + result.stderr
    tail = output if len(output) < 12000 else f"{output[:6000]}\n[...]\n{output[-6000:]}"
    assert result.returncode == 0, tail
    import re

    summary = re.search(r"(\d+) generated, (\d+) passed", tail)
    assert summary is not None and summary[1] == summary[2] and int(summary[1]) > 100, tail
    assert fuzz_world.get(None, "/healthz").status_code == 200
