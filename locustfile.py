"""Locust users for a running server: rank with candidates, whole-catalog rank, score, V2 infer.

    locust -f locustfile.py --headless -u 50 -r 10 -t 1m --host http://127.0.0.1:8000 \\
        --csv results/locust

User and item ids come from the model repository the server serves (`--repository`, default
the settings' one). Task weights and think times are options (`--rank-weight 6`,
`--think-min 0.5`, ...) or environment variables (`RECSYS_LOCUST_RANK_WEIGHT`, ...); `--tags rank`
runs one kind only. Every answer is checked: a 200 with the wrong shape is a failure.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
from locust import FastHttpUser, between, events, tag, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

from config import load_settings
from models.feature_tables import CATEGORICAL_INPUT, DENSE_INPUT
from models.repository import ModelVersion, open_version

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
    parser.add_argument("--repository", default="", env_var="RECSYS_MODEL__REPOSITORY",
                        help="model repository to take ids from (default: settings)")  # fmt: skip


@events.init.add_listener
def configure(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    weights = {name: getattr(options, f"{name}_weight") for name in WEIGHTS}
    RecommendationUser.tasks = [getattr(RecommendationUser, TASKS[n]) for n, w in weights.items()
                                for _ in range(w)]  # fmt: skip
    RecommendationUser.wait_time = between(options.think_min, options.think_max)
    settings = load_settings()
    root = Path(options.repository or settings.model.repository)
    RecommendationUser.version = open_version(root, settings.model.name, settings.model.version)


class RecommendationUser(FastHttpUser):
    wait_time = between(0.5, 2.0)
    version: ModelVersion

    def on_start(self) -> None:
        tables = self.version.tables
        self.user_ids = [str(u) for u in tables.user_ids]
        self.item_ids = [str(i) for i in tables.item_ids]
        self.rng = np.random.default_rng()

    def check_ranking(self, body: dict[str, Any], candidates: list[str] | None, name: str) -> None:
        with self.client.post("/v1/rank", json=body, name=name, catch_response=True) as answer:
            if answer.status_code != 200:
                answer.failure(f"status {answer.status_code}: {answer.text[:200]}")
                return
            items = answer.json().get("items", [])
            scores = [item.get("score") for item in items]
            allowed = set(candidates) if candidates is not None else set(self.item_ids)
            if len(items) != K:
                answer.failure(f"{len(items)} items, expected {K}")
            elif not all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores):
                answer.failure(f"scores not probabilities: {scores}")
            elif scores != sorted(scores, reverse=True):
                answer.failure("items not in descending score order")
            elif not all(item.get("item_id") in allowed for item in items):
                answer.failure("an item that was not a candidate")

    @tag("rank")
    @task
    def rank(self) -> None:
        candidates = random.sample(self.item_ids, CANDIDATES)
        body = {"user_id": random.choice(self.user_ids), "candidates": candidates, "k": K}
        self.check_ranking(body, candidates, "/v1/rank [candidates]")

    @tag("catalog")
    @task
    def rank_catalog(self) -> None:
        body = {"user_id": random.choice(self.user_ids), "k": K}
        self.check_ranking(body, None, "/v1/rank [catalog]")

    def feature_rows(self, rows: int) -> dict[str, np.ndarray]:
        tables = self.version.tables
        users = self.rng.integers(1, len(tables.user_ids) + 1, rows)
        items = self.rng.integers(1, len(tables.item_ids) + 1, rows)
        return tables.assemble(users, items)

    @tag("score")
    @task
    def score(self) -> None:
        inputs = self.feature_rows(rows := random.randint(1, 64))
        body = {key: inputs[key].tolist() for key in (CATEGORICAL_INPUT, DENSE_INPUT)}
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
        manifest = self.version.manifest
        body = {
            "inputs": [
                {"name": CATEGORICAL_INPUT, "shape": list(inputs[CATEGORICAL_INPUT].shape),
                 "datatype": "INT64", "data": inputs[CATEGORICAL_INPUT].ravel().tolist()},
                {"name": DENSE_INPUT, "shape": list(inputs[DENSE_INPUT].shape),
                 "datatype": "FP32", "data": inputs[DENSE_INPUT].ravel().tolist()},
            ]
        }  # fmt: skip
        path = f"/v2/models/{manifest.model_name}/infer"
        with self.client.post(path, json=body, name="/v2 infer", catch_response=True) as answer:
            if answer.status_code != 200:
                answer.failure(f"status {answer.status_code}: {answer.text[:200]}")
                return
            outputs = answer.json().get("outputs", [])
            if len(outputs) != 1 or outputs[0].get("shape", [None])[0] != rows:
                answer.failure(f"outputs {str(outputs)[:200]} do not have {rows} rows")
