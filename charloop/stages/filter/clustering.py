"""k-means++ on L2-normalised embeddings, and the most cohesive cluster (the identity anchor)."""

from __future__ import annotations

import numpy as np


def kmeans(points: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Cluster labels for ``points`` (rows) with k-means++ seeding; deterministic for a seed."""
    n = len(points)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centroids = [points[rng.integers(n)]]
    for _ in range(1, k):
        distances = np.min([np.sum((points - c) ** 2, axis=1) for c in centroids], axis=0)
        total = distances.sum()
        probabilities = distances / total if total > 0 else np.full(n, 1 / n)
        centroids.append(points[rng.choice(n, p=probabilities)])
    centers = np.array(centroids)
    labels = np.zeros(n, dtype=int)
    for step in range(iterations):
        distances = ((points[:, None, :] - centers[None]) ** 2).sum(-1)
        new_labels = distances.argmin(1)
        if step > 0 and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for j in range(k):
            if np.any(labels == j):
                centers[j] = points[labels == j].mean(0)
    return labels


def cohesive_anchor(
    embeddings: np.ndarray, cluster_divisor: int, min_cluster_size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """The normalised centroid of the tightest large-enough cluster.

    The Chosen One's rule: k = n // divisor clusters, ignore clusters smaller than
    ``min_cluster_size``, keep the one with the smallest mean distance to its centroid.

    Returns:
        (anchor vector, cluster label of every row, label of the anchor cluster)
    """
    labels = kmeans(embeddings, max(1, len(embeddings) // cluster_divisor), seed)
    best, best_spread = 0, np.inf
    sizes = np.bincount(labels)
    floor = min(min_cluster_size, int(sizes.max()))
    for label in np.flatnonzero(sizes >= floor):
        members = embeddings[labels == label]
        spread = float(np.linalg.norm(members - members.mean(0), axis=1).mean())
        if spread < best_spread:
            best, best_spread = int(label), spread
    centroid = embeddings[labels == best].mean(0)
    return centroid / max(float(np.linalg.norm(centroid)), 1e-12), labels, best
