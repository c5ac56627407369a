"""Baselines for lineage assignment that need no neural network, on the examples a growformer
model of the sarscov2 task sees (its split, its deduplication, its tokens).

Both read a genome as presence features: one per mutation of the vocabulary found in at
least ``min_count`` training examples (rarer mutations, and unknown ones, are dropped).

- `NearestNeighbour` (1-NN): the label of the training genome at the smallest Hamming
  distance between feature sets (ties: the first in training order), i.e. memorising the
  training set.
- `LogisticRegression`: a linear softmax over the features, full-batch L-BFGS with a small
  L2 penalty.

Features are sparse (a genome has ~30 mutations among thousands), so both fit and predict
the whole tree in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class Features:
    """Presence features of the ids in at least ``min_count`` training examples (special
    ids 0-3 excluded)."""

    def __init__(self, train_ids: Sequence[Sequence[int]], min_count: int) -> None:
        counts: dict[int, int] = {}
        for ids in train_ids:
            for i in set(ids):
                if i > 3:
                    counts[i] = counts.get(i, 0) + 1
        kept = sorted(i for i, n in counts.items() if n >= min_count)
        self.index = {token: f for f, token in enumerate(kept)}
        self.size = len(kept)

    def __call__(self, examples: Sequence[Sequence[int]]) -> Tensor:
        """(examples, size) sparse 0/1 matrix of the features present in each example."""
        rows, cols = [], []
        for row, ids in enumerate(examples):
            present = {self.index[i] for i in ids if i in self.index}
            rows += [row] * len(present)
            cols += sorted(present)
        indices = torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1)
        values = torch.ones(indices.shape[1])
        shape = (len(examples), self.size)
        return torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()


class NearestNeighbour:
    """1-NN under the Hamming distance between feature sets."""

    def __init__(
        self, train_ids: Sequence[Sequence[int]], labels: Tensor, *, min_count: int = 20
    ) -> None:
        self.features = Features(train_ids, min_count)
        train = self.features(train_ids)
        self.train_t = train.to_dense().T.contiguous()  # (features, examples)
        self.sizes = torch.sparse.sum(train, 1).to_dense()
        self.labels = labels

    def predict(self, test_ids: Sequence[Sequence[int]]) -> Tensor:
        out = []
        for start in range(0, len(test_ids), 1024):
            x = self.features(test_ids[start : start + 1024])
            # |a xor b| = |a| + |b| - 2 a.b: one sparse-dense product per chunk.
            shared = torch.sparse.mm(x, self.train_t)
            size = torch.sparse.sum(x, 1).to_dense() if x._nnz() else torch.zeros(x.shape[0])
            out.append(self.labels[(size[:, None] + self.sizes[None] - 2 * shared).argmin(1)])
        return torch.cat(out)


class LogisticRegression:
    """Softmax regression on presence features."""

    def __init__(
        self,
        train_ids: Sequence[Sequence[int]],
        labels: Tensor,
        num_labels: int,
        *,
        min_count: int = 20,
        l2: float = 1e-4,
        iterations: int = 300,
    ) -> None:
        self.features = Features(train_ids, min_count)
        x = self.features(train_ids)
        self.weight = torch.zeros(self.features.size, num_labels, requires_grad=True)
        self.bias = torch.zeros(num_labels, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [self.weight, self.bias],
            max_iter=iterations,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            logits = torch.sparse.mm(x, self.weight) + self.bias
            loss = torch.nn.functional.cross_entropy(logits, labels)
            loss = loss + l2 * self.weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)

    def predict(self, test_ids: Sequence[Sequence[int]]) -> Tensor:
        with torch.no_grad():
            return (torch.sparse.mm(self.features(test_ids), self.weight) + self.bias).argmax(1)
