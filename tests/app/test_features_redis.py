"""/v1/rank with its rows read from a real Redis at request time (`[features] source = "redis"`):
the built-in model published there scores as from its tables, a changed row and a new seen item
count on the next request, malformed rows and a Redis killed under load degrade (counted,
reported, every request answered) and recover once it is back, in one process and with workers."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from models.artifacts.feature_rows import KeyLayout
from models.artifacts.repository import open_version
from tests import debian, docs_text
from tests.app.servers import free_port, running_server, wait_for
from tests.conftest import MODEL_NAME, ROOT, run_cli

pytestmark = pytest.mark.timeout(300)
DEVICES = [{"name": "cpu", "backend": "onnxruntime-cpu"}]
KEYS = KeyLayout("recsys", MODEL_NAME)
CANDIDATES = [1, 50, 100, 181, 258, 7, 300]


def start_redis(port: int) -> subprocess.Popen[bytes]:
    command = [debian.binary("redis-server", "redis-server"), "--port", str(port),
               "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    wait_for(lambda: answers_ping(client), 20, "redis-server answering PING")
    return process


def answers_ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def publish(repository: Path, port: int) -> None:
    result = run_cli("--repository", str(repository), "publish-features",
                     "--redis", f"redis://127.0.0.1:{port}/0")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "user rows" in result.stdout and "seen-item sets written" in result.stdout


@pytest.fixture(scope="module")
def store(built_repository: Path) -> Iterator[tuple[int, redis.Redis]]:
    port = free_port()
    process = start_redis(port)
    publish(built_repository, port)
    try:
        yield port, redis.Redis(port=port)
    finally:
        process.kill()
        process.wait()


def redis_settings(port: int, **extra: str) -> dict[str, str]:
    return {"FEATURES__SOURCE": "redis", "FEATURES__REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "ADMISSION__DEFAULT_TIMEOUT_MS": "10000", **extra}  # fmt: skip


@pytest.fixture(scope="module")
def redis_app(
    built_repository: Path, store: tuple[int, redis.Redis], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("redis-app") / "server.log"
    # No item cache here: the tests change item rows and expect the next request to see them.
    settings = redis_settings(store[0], FEATURES__ITEM_CACHE_ENTRIES="0")
    with running_server(built_repository, settings, log, DEVICES) as (_, url):
        yield url


def rank(
    url: str, user: object, candidates: list[int] | None = None, **body: object
) -> dict[str, Any]:
    payload = {"user_id": user, "k": 1000, **body}
    if candidates is not None:
        payload["candidates"] = candidates
    response = httpx.post(f"{url}/v1/rank", json=payload, timeout=30)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def scores(answer: dict[str, Any]) -> dict[str, float]:
    return {item["item_id"]: item["score"] for item in answer["items"]}


def fallbacks(url: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        (s.labels["side"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "recsys_feature_fallbacks_total"
    }


def direct_scores(repository: Path, variant: str, user_row: np.ndarray,
                  items: list[str]) -> dict[str, float]:  # fmt: skip
    """ONNX Runtime run directly on a user's row and the items' rows from the tables."""
    version = open_version(repository, MODEL_NAME, None)
    tables = version.tables
    rows = tables.item_rows(items)
    categorical = np.concatenate(
        [np.broadcast_to(user_row, (len(rows), len(user_row))), tables.item_categorical[rows]],
        axis=1,
    ).astype(np.int64)
    session = ort.InferenceSession(str(version.variant_path(variant)),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    out = session.run(None, {"categorical": categorical, "dense": tables.item_dense[rows]})[0]
    return dict(zip(items, map(float, out), strict=True))


def close(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and max(abs(a[i] - b[i]) for i in a) < 1e-5


def test_the_built_model_scores_from_redis_as_from_its_tables(
    redis_app: str, built_repository: Path
) -> None:
    tables = open_version(built_repository, MODEL_NAME, None).tables
    for user in (196, "13", 999_999):
        answer = rank(redis_app, user, CANDIDATES)
        row = tables.user_categorical[tables.user_rows([str(user)])[0]]
        assert answer["user_known"] is (user != 999_999) and "degraded" not in answer
        expected = direct_scores(built_repository, answer["variants"]["cpu"], row,
                                 [str(i) for i in CANDIDATES])  # fmt: skip
        assert close(scores(answer), expected)
    # The whole catalog without the items the user saw in training, as its tables say.
    version = open_version(built_repository, MODEL_NAME, None)
    indptr, seen_rows = version.load_seen_items() or (None, None)
    assert indptr is not None and seen_rows is not None
    user_row = int(tables.user_rows(["405"])[0])
    seen = {str(tables.item_ids[r - 1]) for r in seen_rows[indptr[user_row] : indptr[user_row + 1]]}
    catalog = set(scores(rank(redis_app, 405, exclude_seen=True)))  # the top 1000
    left = {str(i) for i in tables.item_ids} - seen
    assert seen and catalog <= left and len(catalog) == min(1000, len(left))


def test_a_changed_row_and_a_new_seen_item_count_on_the_next_request(
    redis_app: str, store: tuple[int, redis.Redis], built_repository: Path
) -> None:
    _, client = store
    user = "196"
    fresh_item = next(str(i) for i in CANDIDATES if not client.sismember(KEYS.seen(user), str(i)))
    kept = [i for i in CANDIDATES if str(i) != fresh_item]
    before = rank(redis_app, user, CANDIDATES, exclude_seen=True)
    assert fresh_item in scores(before)
    # The user's features change (another user's row), and they see one more item.
    new_row = client.get(KEYS.user("13"))
    assert isinstance(new_row, bytes) and new_row != client.get(KEYS.user(user))
    client.set(KEYS.user(user), new_row)
    client.sadd(KEYS.seen(user), fresh_item)
    after = rank(redis_app, user, CANDIDATES, exclude_seen=True)
    assert fresh_item not in scores(after)
    # Scored on the new row: ONNX Runtime run directly on it gives the same scores.
    left = [str(i) for i in kept if not client.sismember(KEYS.seen(user), str(i))]
    user_row = np.frombuffer(new_row, dtype="<i8")
    got = scores(after)
    assert close(got, direct_scores(built_repository, after["variants"]["cpu"], user_row, left))
    assert max(abs(got[i] - scores(before)[i]) for i in left) > 1e-4  # the row did change them


def test_malformed_rows_are_an_error_for_their_entity_not_the_request(
    redis_app: str, store: tuple[int, redis.Redis]
) -> None:
    _, client = store
    before = fallbacks(redis_app)
    client.set(KEYS.user("7"), b"not a row")
    client.set(KEYS.item("258"), b"\x00" * 12)
    client.set(KEYS.item("300"), np.full(20, 10**9, dtype="<i8").tobytes()[: 8 * 5] + b"\0" * 76)
    client.delete(KEYS.seen("7"))
    client.set(KEYS.seen("7"), b"a string, not a set")
    answer = rank(redis_app, 7, CANDIDATES, exclude_seen=True)
    assert answer["user_known"] is False
    assert {"258", "300"} <= set(answer["unknown_items"])
    assert len(answer["items"]) == len(CANDIDATES)  # seen items could not be read: none dropped
    assert answer["degraded"] == ["seen"]
    after = fallbacks(redis_app)
    for side in ("user", "item", "seen"):
        assert after.get((side, "malformed"), 0) > before.get((side, "malformed"), 0), side


def test_redis_killed_under_load_degrades_then_recovers(
    built_repository: Path, tmp_path: Path
) -> None:
    port = free_port()
    process = start_redis(port)
    publish(built_repository, port)
    answers: list[tuple[int, dict[str, Any]]] = []
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(3000):  # bounded: about 20 s at most
                if stop.is_set():
                    return
                r = client.post("/v1/rank", json={"user_id": 196, "candidates": CANDIDATES,
                                                   "k": 3, "exclude_seen": True})  # fmt: skip
                answers.append((r.status_code, r.json()))
                time.sleep(0.005)

    settings = redis_settings(port, FEATURES__TIMEOUT_MS="50")
    with running_server(built_repository, settings, tmp_path / "server.log", DEVICES) as (_, url):
        worker = threading.Thread(target=load, args=(url,))
        worker.start()
        try:
            wait_for(lambda: len(answers) > 20, 30, "answers with Redis up")
            process.send_signal(signal.SIGKILL)
            process.wait()
            wait_for(lambda: "degraded" in answers[-1][1], 30, "a degraded answer with Redis down")
            down = len(answers)
            wait_for(lambda: len(answers) > down + 20, 30, "answers keep coming with Redis down")
            process = start_redis(port)
            publish(built_repository, port)
            wait_for(lambda: "degraded" not in answers[-1][1], 30, "full answers once it is back")
            back = len(answers)
            wait_for(lambda: len(answers) > back + 20, 30, "answers after the restart")
        finally:
            stop.set()
            worker.join()
            process.kill()
            process.wait()
        counted = fallbacks(url)
    assert all(status == 200 for status, _ in answers), {s for s, _ in answers}
    degraded = [a for _, a in answers if "degraded" in a]
    assert degraded and all(a["user_known"] is False for a in degraded)
    assert answers[-1][1]["user_known"] is True
    assert sum(v for (side, reason), v in counted.items() if side == "user" and reason != "miss")


def test_workers_read_redis_too(
    built_repository: Path, store: tuple[int, redis.Redis], redis_app: str, tmp_path: Path
) -> None:
    settings = redis_settings(store[0], SERVER__WORKERS="2", SERVER__ENGINE="process",
                              FEATURES__ITEM_CACHE_ENTRIES="0")  # fmt: skip
    with running_server(built_repository, settings, tmp_path / "server.log", DEVICES) as (_, url):
        for user in (405, "13"):
            a, b = rank(url, user, CANDIDATES), rank(redis_app, user, CANDIDATES)
            assert a["user_known"] == b["user_known"] and "degraded" not in a
            assert max(abs(scores(a)[i] - scores(b)[i]) for i in scores(b)) < 1e-5


def test_the_documented_writer_counts_on_the_next_request(
    redis_app: str, store: tuple[int, redis.Redis], built_repository: Path
) -> None:
    """docs/features.md's Python example, run as shown against this Redis."""
    port, client = store
    page = ROOT / "docs" / "features.md"
    block = next(b for b in docs_text.blocks(page) if b.language == "python")
    code = block.body.replace("127.0.0.1:6379", f"127.0.0.1:{port}")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    # (Items 258 and 300 may hold the malformed rows another test wrote.)
    answer = rank(redis_app, 196, [1, 50, 100, 181, 7], exclude_seen=True)
    assert "50" not in scores(answer) and answer["user_known"] is True
    written = client.get(KEYS.user("196"))
    assert isinstance(written, bytes)
    row = np.frombuffer(written, dtype="<i8")
    assert row.tolist() == [108, 5, 2, 4, 216]
    expected = direct_scores(built_repository, answer["variants"]["cpu"], row, list(scores(answer)))
    assert close(scores(answer), expected)
