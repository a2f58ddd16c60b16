"""The audit's methods, on image features and pixels (NumPy, scikit-learn, torch's matrix products): out-of-sample
class probabilities, confident learning's label issues, nearest neighbours, perceptual hashes, near-duplicates and
outliers.

They are the published methods cleanlab implements, written here on scikit-learn because cleanlab is AGPL-3.0
and its Datalab needs Hugging Face `datasets` (docs/data.md, "Auditing the data"):
- label issues: confident learning (Northcutt, Jiang & Chuang 2021, JAIR 70), the `confident_learning` filter:
  per-class thresholds t_j = the mean probability of class j over the images labelled j; an image is an issue
  when its confident class (the likeliest class whose probability reaches its threshold) is not its label;
  ranked by self-confidence, the probability of its own label (cleanlab's default ranking);
- outliers: the mean cosine distance to the k nearest other images (cleanlab's OutOfDistribution on features),
  flagged beyond Tukey's far-out fence, the third quartile plus `iqr` interquartile ranges;
- near-duplicates: a perceptual hash (the 8 x 8 low frequencies of a 32 x 32 DCT, pHash; imagededup's PHash)
  within a few bits catches resized and re-encoded copies, and a feature distance far below the set's usual
  nearest-neighbour distance (cleanlab's near_duplicate rule: a fraction of the median) catches the rest.
"""

from __future__ import annotations

import numpy as np

HASH_BITS = 64


def out_of_sample_probabilities(features: np.ndarray, labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Class probabilities of every image from a logistic regression that never saw it (stratified K-fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, features, labels, cv=split, method="predict_proba")


def confident_learning(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is an issue, suggested class, self-confidence) per image, by confident learning's per-class thresholds."""
    classes = probabilities.shape[1]
    thresholds = np.array([probabilities[labels == j, j].mean() if (labels == j).any() else 1.0
                           for j in range(classes)])
    above = probabilities >= thresholds[None, :] - 1e-12
    confident = np.where(above, probabilities, -1.0).argmax(1)
    has_confident = above.any(1)
    suggested = np.where(has_confident, confident, probabilities.argmax(1))
    issue = has_confident & (confident != labels)
    return issue, suggested, probabilities[np.arange(len(labels)), labels]


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (cosine similarity is then a dot product)."""
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def nearest(unit: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine distances) of each row's k nearest other rows, nearest first: exact, brute force by blocks
    of rows (memory: block x N floats), with torch's matrix product and top-k on all cores."""
    import torch

    n = len(unit)
    k = min(k, n - 1)
    rows = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        similarity = rows[start:start + block] @ rows.T
        own = torch.arange(similarity.shape[0])
        similarity[own, start + own] = -float("inf")  # not its own neighbour
        found, where = similarity.topk(k, dim=1)
        indices[start:start + block] = where.numpy()
        distances[start:start + block] = (1 - found).numpy()
    return indices, distances


def perceptual_hash(gray32: np.ndarray) -> np.ndarray:
    """pHash of a 32 x 32 greyscale image: the 8 x 8 lowest DCT frequencies above their median (DC aside), 64 bools."""
    from scipy.fft import dctn

    low = dctn(np.asarray(gray32, dtype=np.float64), norm="ortho")[:8, :8].ravel()
    return low > np.median(low[1:])


def hash_pairs(hashes: np.ndarray, within: int, block: int = 2048) -> list[tuple[int, int, int]]:
    """(i, j, differing bits) for every pair i < j whose hashes (N x 64 bools) differ in at most `within` bits."""
    packed = np.packbits(np.asarray(hashes, dtype=bool), axis=1).view(np.uint64).ravel()
    found = []
    for start in range(0, len(packed), block):
        bits = np.bitwise_count(packed[start:start + block, None] ^ packed[None, :])
        for a, b in zip(*np.nonzero(bits <= within)):
            i, j = start + int(a), int(b)
            if i < j:
                found.append((i, j, int(bits[a, b])))
    return found


def near_duplicate_pairs(indices: np.ndarray, distances: np.ndarray, ratio: float, hashes: np.ndarray | None,
                         hash_within: int) -> dict[tuple[int, int], float]:
    """{(i, j): cosine distance} for pairs i < j that are near-duplicates: among each other's nearest neighbours at
    a feature distance below `ratio` x the set's median nearest-neighbour distance, or with perceptual hashes at
    most `hash_within` bits apart (then any feature distance)."""
    limit = ratio * float(np.median(distances[:, 0])) if len(distances) else 0.0
    pairs: dict[tuple[int, int], float] = {}
    for i, (row, gaps) in enumerate(zip(indices, distances)):
        for j, gap in zip(row, gaps):
            if gap <= limit:
                pairs[(min(i, int(j)), max(i, int(j)))] = float(gap)
    if hashes is not None:
        for i, j, _ in hash_pairs(hashes, hash_within):
            pairs.setdefault((i, j), float("nan"))  # its distance is filled in by the caller
    return pairs


def outlier_scores(distances: np.ndarray) -> np.ndarray:
    """Each image's mean cosine distance to its k nearest other images (higher: more unlike the rest)."""
    return distances.mean(1)


def far_out(scores: np.ndarray, iqr: float) -> float:
    """Tukey's fence: the third quartile plus `iqr` interquartile ranges (3: "far out")."""
    first, third = np.percentile(scores, [25, 75])
    return float(third + iqr * (third - first))
