"""MovieLens-100K feature engineering: vocabularies with an OOV slot, feature tables, encoded rows.

Fields (categorical, one index each): user_id, age_bucket, gender, occupation, zip_prefix for the
user; item_id, year_bucket for the item. Dense: the item's genres as a multi-hot normalised to sum
to one, so the model's linear projection of it is the mean of the genre embeddings (a bag).
User and item id vocabularies come from the training split only: an id seen only in validation or
test gets the OOV embedding, as it would at serving time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.artifacts.feature_tables import FeatureTables
from models.movielens import MovieLens
from models.split import Split

# MovieLens-1M's age groups, applied to 100K's raw ages.
AGE_BUCKET_EDGES = (18, 25, 35, 45, 50, 56)
YEAR_BUCKET_WIDTH = 5
ZIP_PREFIX_CHARS = 3
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip
USER_FIELDS = ("user_id", "age_bucket", "gender", "occupation", "zip_prefix")
ITEM_FIELDS = ("item_id", "year_bucket")


class Vocabulary:
    """Tokens to indices; index 0 is the out-of-vocabulary slot."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.tokens: tuple[str, ...] = tuple(sorted(set(tokens)))
        self._index = {token: i + 1 for i, token in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens) + 1

    def encode(self, token: str) -> int:
        return self._index.get(token, 0)


@dataclass(frozen=True)
class EncodedDataset:
    tables: FeatureTables
    vocabularies: dict[str, Vocabulary]
    user_rows: npt.NDArray[np.int64]  # per interaction, a row of tables.user_categorical
    item_rows: npt.NDArray[np.int64]
    labels: npt.NDArray[np.float32]
    split: Split

    @property
    def vocabulary_sizes(self) -> dict[str, int]:
        return {name: len(self.vocabularies[name]) for name in self.tables.categorical_fields}

    def inputs(self, rows: npt.NDArray[np.int64]) -> dict[str, np.ndarray]:
        return self.tables.assemble(self.user_rows[rows], self.item_rows[rows])


def age_bucket(age: int) -> str:
    return str(int(np.searchsorted(AGE_BUCKET_EDGES, age, side="right")))


def year_bucket(year: int | None) -> str:
    return "" if year is None else str(year // YEAR_BUCKET_WIDTH * YEAR_BUCKET_WIDTH)


def genre_bag(genres: Iterable[str]) -> npt.NDArray[np.float32]:
    bag = np.array([g in set(genres) for g in GENRES], dtype=np.float32)
    total = bag.sum()
    return bag / total if total else bag


def encode(data: MovieLens, split: Split) -> EncodedDataset:
    users = sorted(data.users, key=int)
    items = sorted(data.items, key=int)
    user_tokens = {
        "user_id": {u: u for u in users},
        "age_bucket": {u: age_bucket(data.users[u].age) for u in users},
        "gender": {u: data.users[u].gender for u in users},
        "occupation": {u: data.users[u].occupation for u in users},
        "zip_prefix": {u: data.users[u].zip_code[:ZIP_PREFIX_CHARS] for u in users},
    }
    item_tokens = {
        "item_id": {i: i for i in items},
        "year_bucket": {i: year_bucket(data.items[i].release_year) for i in items},
    }
    vocabularies = {
        name: Vocabulary(t for t in tokens.values() if t)
        for name, tokens in {**user_tokens, **item_tokens}.items()
    }
    # Ids only from training interactions; side features are not labels and use every row.
    vocabularies["user_id"] = Vocabulary(data.user_ids[split.train])
    vocabularies["item_id"] = Vocabulary(data.item_ids[split.train])

    def table(keys: list[str], tokens: dict[str, dict[str, str]]) -> npt.NDArray[np.int64]:
        columns = [
            [0] + [vocabularies[name].encode(column[k]) for k in keys]
            for name, column in tokens.items()
        ]
        return np.array(columns, dtype=np.int64).T.copy()

    dense = np.zeros((len(items) + 1, len(GENRES)), dtype=np.float32)
    for row, item in enumerate(items, start=1):
        dense[row] = genre_bag(data.items[item].genres)
    tables = FeatureTables(
        user_ids=np.array(users),
        user_fields=USER_FIELDS,
        user_categorical=table(users, user_tokens),
        item_ids=np.array(items),
        item_fields=ITEM_FIELDS,
        item_categorical=table(items, item_tokens),
        dense_fields=tuple(f"genre:{g}" for g in GENRES),
        item_dense=dense,
    )
    return EncodedDataset(
        tables=tables,
        vocabularies=vocabularies,
        user_rows=tables.user_rows(data.user_ids),
        item_rows=tables.item_rows(data.item_ids),
        labels=data.labels,
        split=split,
    )
