"""Locust users for a running server: rank with candidates, whole-catalog rank, score, V2 infer.

    pip install locust
    locust -f locustfile.py --headless -u 50 -r 10 -t 1m --host http://127.0.0.1:8000 \\
        --csv results/locust

Stand-alone: it needs locust only, and takes user ids, item ids and real feature rows from the
server itself (GET /v1/examples, once per process), so it runs from any machine that reaches the
server. Task weights and think times are options (`--rank-weight 6`, `--think-min 0.5`, ...) or
environment variables (`RECSYS_LOCUST_RANK_WEIGHT`, ...); `--tags rank` runs one kind only. Every
answer is checked: a 200 with the wrong shape is a failure.
"""

from __future__ import annotations

import json
import random
import urllib.request
from typing import Any, ClassVar

from locust import FastHttpUser, between, events, tag, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

WEIGHTS = {"rank": 6, "catalog": 1, "score": 2, "v2": 1}  # by tag
TASKS = {"rank": "rank", "catalog": "rank_catalog", "score": "score", "v2": "v2_infer"}
CANDIDATES = 100
K = 10


@events.init_command_line_parser.add_listener
def add_options(parser: LocustArgumentParser) -> None:
    for name, weight in WEIGHTS.items():
        variable = f"RECSYS_LOCUST_{name.upper()}_WEIGHT"
        parser.add_argument(f"--{name}-weight", type=int, default=weight, env_var=variable,
                            help=f"relative weight of the {name} task")  # fmt: skip
    parser.add_argument("--think-min", type=float, default=0.5, env_var="RECSYS_LOCUST_THINK_MIN")
    parser.add_argument("--think-max", type=float, default=2.0, env_var="RECSYS_LOCUST_THINK_MAX")
    parser.add_argument("--example-rows", type=int, default=256, env_var="RECSYS_LOCUST_ROWS",
                        help="feature rows fetched to build bodies from")  # fmt: skip


@events.init.add_listener
def configure(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    weights = {name: getattr(options, f"{name}_weight") for name in WEIGHTS}
    RecommendationUser.tasks = [getattr(RecommendationUser, TASKS[n]) for n, w in weights.items()
                                for _ in range(w)]  # fmt: skip
    RecommendationUser.wait_time = between(options.think_min, options.think_max)
    RecommendationUser.example_rows = options.example_rows


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        document: dict[str, Any] = json.loads(answer.read())
    return document


def fetch_examples(host: str, rows: int) -> dict[str, Any]:
    """Ids and feature rows (GET /v1/examples) and the inputs' V2 datatypes (model metadata)."""
    base = host.rstrip("/")
    examples = get_json(f"{base}/v1/examples?rows={rows}&ids=100000")
    metadata = get_json(f"{base}/v2/models/{examples['model_name']}")
    examples["datatypes"] = {i["name"]: i["datatype"] for i in metadata["inputs"]}
    return examples


class RecommendationUser(FastHttpUser):
    wait_time = between(0.5, 2.0)
    example_rows = 256
    examples: ClassVar[dict[str, Any] | None] = None  # fetched once, shared by all users

    def on_start(self) -> None:
        cls = type(self)
        if cls.examples is None:
            cls.examples = fetch_examples(self.host or "", self.example_rows)
        examples = cls.examples
        self.model_name: str = examples["model_name"]
        self.user_ids: list[str] = examples["user_ids"]
        self.item_ids: list[str] = examples["item_ids"]
        self.inputs: dict[str, list[list[float]]] = examples["inputs"]
        self.datatypes: dict[str, str] = examples["datatypes"]
        self.rows = len(next(iter(self.inputs.values())))

    def check_ranking(self, body: dict[str, Any], candidates: list[str] | None, name: str) -> None:
        with self.client.post("/v1/rank", json=body, name=name, catch_response=True) as answer:
            if answer.status_code != 200:
                answer.failure(f"status {answer.status_code}: {answer.text[:200]}")
                return
            items = answer.json().get("items", [])
            scores = [item.get("score") for item in items]
            if len(items) != K:
                answer.failure(f"{len(items)} items, expected {K}")
            elif not all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores):
                answer.failure(f"scores not probabilities: {scores}")
            elif scores != sorted(scores, reverse=True):
                answer.failure("items not in descending score order")
            elif candidates is not None and not {i.get("item_id") for i in items} <= set(
                candidates
            ):
                answer.failure("an item that was not a candidate")

    @tag("rank")
    @task
    def rank(self) -> None:
        candidates = random.sample(self.item_ids, min(CANDIDATES, len(self.item_ids)))
        body = {"user_id": random.choice(self.user_ids), "candidates": candidates, "k": K}
        self.check_ranking(body, candidates, "/v1/rank [candidates]")

    @tag("catalog")
    @task
    def rank_catalog(self) -> None:
        body = {"user_id": random.choice(self.user_ids), "k": K}
        self.check_ranking(body, None, "/v1/rank [catalog]")

    def feature_rows(self, rows: int) -> dict[str, list[list[float]]]:
        """`rows` of the server's example rows, from a random offset."""
        start = random.randrange(self.rows)
        picked = [(start + i) % self.rows for i in range(rows)]
        return {name: [values[i] for i in picked] for name, values in self.inputs.items()}

    @tag("score")
    @task
    def score(self) -> None:
        body = self.feature_rows(rows := random.randint(1, 64))
        with self.client.post("/v1/score", json=body, catch_response=True) as answer:
            if answer.status_code != 200:
                answer.failure(f"status {answer.status_code}: {answer.text[:200]}")
                return
            scores = answer.json().get("scores", [])
            if len(scores) != rows or not all(0.0 <= s <= 1.0 for s in scores):
                answer.failure(f"{len(scores)} scores for {rows} rows, or not probabilities")

    @tag("v2")
    @task
    def v2_infer(self) -> None:
        inputs = self.feature_rows(rows := random.randint(1, 64))
        body = {
            "inputs": [
                {"name": name, "shape": [rows, len(values[0])], "datatype": self.datatypes[name],
                 "data": [v for row in values for v in row]}
                for name, values in inputs.items()
            ]
        }  # fmt: skip
        path = f"/v2/models/{self.model_name}/infer"
        with self.client.post(path, json=body, name="/v2 infer", catch_response=True) as answer:
            if answer.status_code != 200:
                answer.failure(f"status {answer.status_code}: {answer.text[:200]}")
                return
            outputs = answer.json().get("outputs", [])
            if len(outputs) != 1 or outputs[0].get("shape", [None])[0] != rows:
                answer.failure(f"outputs {str(outputs)[:200]} do not have {rows} rows")
