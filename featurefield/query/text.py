"""Text queries for teachers with a text encoder (``clip``): similarity, LERF relevancy, masks, 3D.

Similarity (F3RM): the cosine between L2-normalized features ``f`` and text embeddings ``t``.

Relevancy (LERF): for a positive phrase ``p`` and negative phrases ``n_1..n_N`` (the canonical
"object", "things", "stuff", "texture" plus the user's), the pairwise softmax
``softmax(tau * [cos(f, p), cos(f, n_j)])[0]`` with temperature ``tau = 10``, minimised over ``j``.
Because ``softmax([a, b])[0] = sigmoid(a - b)`` is decreasing in ``b``, the minimum is
``sigmoid(tau * (cos(f, p) - max_j cos(f, n_j)))``, computed that way here. A relevancy above 0.5
means the positive beats every negative.

Folding. Where the field decodes linearly (``f = e @ W + b`` with ``e`` the ``E``-dimensional rendered
embedding), a query never needs the ``D``-dimensional feature map. Cosine needs ``||f||`` too, which
a linear projection to one channel cannot give; but ``f`` always lies in the row space of
``A = [W; b]`` (``[E + 1, D]``), so with ``Q`` (``[D, r]``, ``r <= E + 1``) an orthonormal basis of it,
``||f|| = ||f @ Q||`` exactly. The field is asked to render ``f @ [Q | T^T]``: ``r + T`` channels,
folded by the field into its embedding space, instead of ``D``. Mode ``"embedding"`` does the same
maths on the rendered embedding itself (``f . t = [e, 1] @ (A t)``, ``||f||^2 = [e, 1] A A^T [e, 1]``),
and ``"full"`` decodes the whole feature map (the only way for fields without a linear decoder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError
from featurefield.fields.base import FeatureField, Render

#: LERF's canonical negative phrases.
CANONICAL_NEGATIVES = ("object", "things", "stuff", "texture")
#: LERF's softmax temperature (applied to cosine similarities).
TEMPERATURE = 10.0

Mode = Literal["auto", "folded", "embedding", "full"]


def _normalize(x: Tensor, dim: int = -1) -> Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-8)


def check_phrases(phrases: Sequence[str], what: str = "text") -> list[str]:
    """Strip phrases; an empty one is a user error."""
    out = [str(p).strip() for p in phrases]
    if any(not p for p in out):
        raise FeatureFieldError(f"empty {what} phrase; give a non-empty phrase such as --text 'red mug'")
    return out


def negative_phrases(positives: Sequence[str], negatives: Sequence[str] = (), canonical: bool = True) -> list[str]:
    """User negatives, then the canonical ones, without duplicates or phrases that are also positive."""
    seen = set(positives)
    out = []
    for n in [*negatives, *(CANONICAL_NEGATIVES if canonical else ())]:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def encode_phrases(teacher, phrases: Sequence[str]) -> Tensor:
    """L2-normalized text embeddings ``[T, D]`` float32 from a teacher with a text encoder."""
    if not getattr(teacher, "has_text", False):
        raise FeatureFieldError(f"teacher {getattr(teacher, 'name', teacher)!r} has no text encoder; "
                                "text queries need a run trained with one (clip)")
    phrases = check_phrases(phrases)
    with torch.no_grad():
        emb = teacher.encode_text(list(phrases))
    return _normalize(emb.float())


def text_similarity(features: Tensor | Render, text_emb: Tensor, teacher: str | None = None) -> Tensor:
    """Cosine similarity of every feature with every text embedding.

    Args:
        features: ``[D, H, W]`` features, or a :class:`Render` whose ``features[teacher]`` (``[H, W, D]``)
            is used (``teacher`` may be omitted when it holds one teacher).
        text_emb: ``[T, D]`` text embeddings (normalized here).
    Returns:
        ``[T, H, W]`` cosine similarities in [-1, 1].
    """
    if isinstance(features, Render):
        if teacher is None:
            if len(features.features) != 1:
                raise ValueError("text_similarity: name the teacher of a Render holding several")
            teacher = next(iter(features.features))
        features = features.features[teacher].permute(2, 0, 1)
    f = _normalize(features.float(), dim=0)
    t = _normalize(text_emb.float().to(f.device))
    return torch.einsum("td,dhw->thw", t, f)


def lerf_relevancy(positive_sim: Tensor, negative_sim: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """LERF relevancy from cosine similarities.

    Args:
        positive_sim: ``[P, ...]`` similarity with each positive phrase.
        negative_sim: ``[N, ...]`` similarity with each negative phrase (``N >= 1``).
    Returns:
        ``[P, ...]``: ``min_j softmax(temperature * [pos, neg_j])[0]`` in (0, 1).
    """
    if negative_sim.shape[0] == 0:
        raise ValueError("LERF relevancy needs at least one negative phrase")
    worst = negative_sim.amax(0, keepdim=True)
    return torch.sigmoid(temperature * (positive_sim - worst))


def _row_basis(W: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``A = [W; b]`` ``[E + 1, D]`` and an orthonormal basis ``Q [D, r]`` of its row space."""
    A = torch.cat([W.float(), b.float().reshape(1, -1)], 0)
    Q, R = torch.linalg.qr(A.T)  # A^T = Q R, Q [D, E + 1] orthonormal columns
    keep = R.diagonal().abs() > 1e-6 * R.diagonal().abs().max().clamp_min(1e-30)
    return A, Q[:, keep] if keep.any() else Q[:, :1]


def text_scores(field: FeatureField, camera: Cameras, teacher: str, text_emb: Tensor, mode: Mode = "auto",
                background: Tensor | None = None, colour: bool = True) -> tuple[Tensor, Render]:
    """Cosine similarity ``[T, H, W]`` between the field's features at ``camera`` and ``text_emb [T, D]``.

    With a linear decoder ``f = [e, 1] @ A`` (``A = [W; b]``, ``[E + 1, D]``) neither mode decodes
    ``D`` channels per pixel: ``f . t = [e, 1] @ (A t)`` and ``|f| = |[e, 1] @ (A Q)|`` for an
    orthonormal basis ``Q [D, r]`` of A's row space, so each pixel needs ``r + T`` numbers.

    Args:
        mode: ``"embedding"`` (linear decoder: rasterize the ``E`` embedding channels, then one
            ``[E + 1, r + T]`` matmul per pixel), ``"folded"`` (linear decoder: fold ``[AQ, At]`` into the
            per-Gaussian channels and rasterize those ``r + T``), ``"full"`` (decode ``D`` channels),
            or ``"auto"`` (embedding when the decoder is linear: fewest rasterized channels for
            ``T >= 1``; else full).
        colour: also render colour and depth (for display); ``False`` is the fast path.
    Returns:
        The similarities and the render they came from (``rgb``, ``alpha`` and ``depth`` for display).
    """
    lin = field.linear_decoder(teacher)
    if mode == "auto":
        mode = "embedding" if lin is not None else "full"
    if mode in ("folded", "embedding") and lin is None:
        raise ValueError(f"mode {mode!r} needs a linear decoder; the {field.kind} field has none for {teacher!r}")
    t = _normalize(text_emb.float())
    if mode == "full":
        r = field.render(camera, background=background, features=True, colour=colour)
        return text_similarity(field.decode(r, teacher), t), r
    W, b = (x.float() for x in lin)
    t = t.to(W.device)
    A, Q = _row_basis(W, b)
    if mode == "folded":
        P = torch.cat([Q, t.T], 1)  # [D, r + T]
        r = field.render(camera, background=background, features=False, colour=colour,
                         projection=(teacher, P, torch.zeros(P.shape[1], device=P.device)))
        proj = r.projected.float()
        k = Q.shape[1]
        norm = proj[..., :k].norm(dim=-1)
        dots = proj[..., k:]
    else:  # embedding
        r = field.render(camera, background=background, features=True, colour=colour)
        e = r.embedding.float()  # [H, W, E]
        B = torch.cat([A @ Q, A @ t.T], 1)  # [E + 1, r + T]
        proj = torch.addmm(B[-1], e.reshape(-1, e.shape[-1]), B[:-1]).reshape(*e.shape[:2], -1)
        k = Q.shape[1]
        norm = proj[..., :k].norm(dim=-1)
        dots = proj[..., k:]
    cos = dots / norm[..., None].clamp_min(1e-8)
    return cos.permute(2, 0, 1), r


@dataclass
class TextQuery:
    """The answer to a text query at one view.

    Attributes:
        positives, negatives: the phrases.
        similarity: ``[P, H, W]`` cosine similarity with each positive.
        relevancy: ``[P, H, W]`` LERF relevancy of each positive.
        render: the render the scores came from.
    """

    positives: list[str]
    negatives: list[str]
    similarity: Tensor
    relevancy: Tensor
    render: Render | None = dc_field(default=None, repr=False)

    def masks(self, threshold: float = 0.5) -> Tensor:
        """``[P, H, W]`` bool: relevancy above ``threshold``."""
        return self.relevancy > threshold


def _phrase_embeddings(teacher, positives, negatives, canonical: bool) -> tuple[Tensor, Tensor, list[str], list[str]]:
    if isinstance(positives, Tensor):
        if not isinstance(negatives, Tensor):
            raise ValueError("give negatives as a [N, D] tensor when positives are embeddings")
        return _normalize(positives.float()), _normalize(negatives.float()), [], []
    positives = check_phrases(positives)
    if not positives:
        raise FeatureFieldError("a text query needs at least one phrase (--text 'red mug')")
    negs = negative_phrases(positives, check_phrases(negatives, "negative"), canonical)
    if not negs:
        raise FeatureFieldError("LERF relevancy needs at least one negative phrase")
    emb = encode_phrases(teacher, positives + negs)
    return emb[: len(positives)], emb[len(positives):], positives, negs


@torch.no_grad()
def relevancy_map(field: FeatureField, camera: Cameras, teacher, positives: Sequence[str] | Tensor,
                  negatives: Sequence[str] | Tensor = (), *, canonical_negatives: bool = True, mode: Mode = "auto",
                  background: Tensor | None = None, temperature: float = TEMPERATURE) -> TextQuery:
    """Similarity and LERF relevancy of phrases at one view.

    Args:
        teacher: the text teacher (a :class:`~featurefield.teachers.base.Teacher` with ``encode_text``),
            or its name when ``positives``/``negatives`` are already embeddings ``[P, D]``/``[N, D]``.
        positives: phrases (or embeddings). negatives: extra negative phrases (or embeddings).
        canonical_negatives: add LERF's "object", "things", "stuff", "texture".
        mode: see :func:`text_scores`.
    """
    name = teacher if isinstance(teacher, str) else teacher.name
    pos, neg, pos_names, neg_names = _phrase_embeddings(teacher, positives, negatives, canonical_negatives)
    sims, r = text_scores(field, camera, name, torch.cat([pos, neg]), mode=mode, background=background)
    p = len(pos)
    return TextQuery(pos_names, neg_names, sims[:p], lerf_relevancy(sims[:p], sims[p:], temperature), r)


# ---------------------------------------------------------------------------------------------- 3D
@dataclass
class PointQuery:
    """Per-point (per-Gaussian for splats) answer to a text query.

    Attributes:
        points: :meth:`FeatureField.points_with_features` output (canonical frame, with features).
        similarity, relevancy: ``[P, M]`` for ``P`` positives and ``M`` points.
    """

    positives: list[str]
    negatives: list[str]
    points: dict[str, Tensor]
    similarity: Tensor
    relevancy: Tensor

    def select(self, threshold: float = 0.5, positive: int = 0, min_opacity: float = 0.1) -> Tensor:
        """``[M]`` bool: points whose relevancy for ``positive`` exceeds ``threshold`` and that are not
        nearly transparent."""
        keep = self.relevancy[positive] > threshold
        if "opacity" in self.points:
            keep &= self.points["opacity"].reshape(-1).to(keep.device) >= min_opacity
        return keep


@torch.no_grad()
def point_relevancy(field: FeatureField, teacher, positives: Sequence[str] | Tensor,
                    negatives: Sequence[str] | Tensor = (), *, canonical_negatives: bool = True,
                    max_points: int = 1_000_000, temperature: float = TEMPERATURE, chunk: int = 65536) -> PointQuery:
    """LERF relevancy of every Gaussian (or sampled NeRF point) for the positives."""
    name = teacher if isinstance(teacher, str) else teacher.name
    pos, neg, pos_names, neg_names = _phrase_embeddings(teacher, positives, negatives, canonical_negatives)
    pts = field.points_with_features(name, max_points=max_points)
    feats = pts["features"]
    t = torch.cat([pos, neg]).to(feats.device)
    sims = torch.cat([_normalize(feats[i:i + chunk].float()) @ t.T for i in range(0, feats.shape[0], chunk)]
                     or [feats.new_zeros(0, len(t), dtype=torch.float32)], 0).T  # a field with no points: [P+N, 0]
    p = len(pos)
    return PointQuery(pos_names, neg_names, pts, sims[:p], lerf_relevancy(sims[:p], sims[p:], temperature))


def export_selection_ply(path: Path, points: dict[str, Tensor], keep: Tensor, normalization,
                         extra: dict[str, Tensor] | None = None, with_features: bool = False) -> Path:
    """Write the kept points as a PLY in the scene's WORLD frame (atomic).

    Args:
        points: canonical-frame points (``xyz``, ``rgb``, ``opacity``, ``features``, ``ids``).
        keep: ``[M]`` bool. normalization: the run's :class:`~featurefield.data.scene.Normalization`.
        extra: more per-point ``[M]`` values to store (e.g. ``{"relevancy": ...}``).
    """
    from featurefield.export import write_point_cloud

    keep = keep.to(points["xyz"].device)
    xyz = normalization.to_world(points["xyz"][keep].float())
    props = {k: v[keep.to(v.device)].float() for k, v in (extra or {}).items()}
    if "opacity" in points:
        props["opacity"] = points["opacity"].reshape(-1)[keep.to(points["opacity"].device)].float()
    if "ids" in points:
        props["gid"] = points["ids"][keep.to(points["ids"].device)].to(torch.int32)
    rgb = points["rgb"][keep.to(points["rgb"].device)] if "rgb" in points else None
    feats = points["features"][keep.to(points["features"].device)] if with_features and "features" in points else None
    return write_point_cloud(Path(path), xyz, rgb, feats, props)
