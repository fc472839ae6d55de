"""Measurements the chapters make on top of the methods: coverage curves, brute-force optima,
and how much of the objects a question names survives pruning.

Taught in ``notebooks/01_motivation_failures`` and ``notebooks/03_submodular_selection``.
Shapes: ``B`` rows, ``N`` tokens, ``T`` picks, ``K`` objects.
"""

from __future__ import annotations

import itertools

import torch

from ._checks import check_budget, check_ndim

__all__ = ["prefix_objective", "brute_force_optimum", "object_recall", "objects_reached"]


def prefix_objective(importance: torch.Tensor, similarity: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """Facility-location objective of every prefix of the picks: ``f(picks[:t])`` for ``t = 1..T``.

    Greedy facility location, Top-K, DPP MAP and max-min diversity all pick one token at a
    time, so one run gives the whole coverage curve.

    Args:
        importance: ``(B, N)``; similarity: ``(B, N, N)``; picks: ``(B, T)`` long (``-1``: none).
    Returns:
        ``(B, T)`` float64.
    """
    check_ndim("picks", picks, 2, "(B, T)")
    B, N = importance.shape
    r = importance.double()
    K = similarity.double()
    cur = torch.zeros(B, N, dtype=torch.float64, device=importance.device)
    out = torch.zeros(B, picks.shape[1], dtype=torch.float64, device=importance.device)
    rows = torch.arange(B, device=importance.device)
    for t in range(picks.shape[1]):
        valid = picks[:, t] >= 0
        row = K[rows, picks[:, t].clamp(min=0)]
        cur = torch.where(valid[:, None], torch.maximum(cur, row), cur)
        out[:, t] = (r * cur).sum(-1)
    return out


def brute_force_optimum(importance: torch.Tensor, similarity: torch.Tensor, budget: int) -> tuple[float, tuple]:
    """The best facility-location value over every subset of ``budget`` tokens (small ``N`` only).

    Args:
        importance: ``(N,)``; similarity: ``(N, N)``.
    Returns:
        ``(value, subset)``.
    """
    budget = check_budget(budget)
    N = importance.shape[0]
    if N > 24:
        raise ValueError(f"brute force over N = {N} tokens is too large (at most 24)")
    r, K = importance.double(), similarity.double()
    best = (-1.0, ())
    for subset in itertools.combinations(range(N), min(budget, N)):
        value = float((r * K[list(subset)].max(0).values).sum())
        if value > best[0]:
            best = (value, subset)
    return best


def object_recall(keep_mask: torch.Tensor, object_masks: torch.Tensor) -> torch.Tensor:
    """Share of each object's patches that were kept.

    Args:
        keep_mask: ``(N,)`` bool; object_masks: ``(K, N)`` bool (patches each object covers).
    Returns:
        ``(K,)`` float in ``[0, 1]`` (0 for an object with no patch).
    """
    return row_object_recall(keep_mask[None], object_masks[None])  # one image is one row


def objects_reached(keep_mask: torch.Tensor, object_masks: torch.Tensor) -> torch.Tensor:
    """``(K,)`` bool: whether at least one patch of each object was kept."""
    return row_objects_reached(keep_mask[None], object_masks[None])


# ---------------------------------------------------------------------------------------------
# Submodular selection (notebooks/03_submodular_selection): the guarantee, certificates and
# coverage curves; per-row budgets (notebooks/05_video_and_multicrop).
# ---------------------------------------------------------------------------------------------

__all__ += [
    "tight_instance",
    "direction",
    "greedy_guarantee",
    "random_facility_instances",
    "brute_force_optima",
    "approximation_ratios",
    "online_bound",
    "coverage_fraction",
    "method_picks",
    "coverage_curves",
    "importance_share",
    "kept_clusters",
    "kept_spacing",
    "stack_rows",
    "row_object_masks",
    "row_object_recall",
    "row_objects_reached",
    "moving_objects",
    "asked_objects",
    "allocation_study",
]


def greedy_guarantee(budget: int) -> float:
    """Nemhauser, Wolsey and Fisher's bound for ``T`` greedy picks: ``1 - (1 - 1/T) ** T``.

    It falls towards ``1 - 1/e`` (about 0.632) as ``T`` grows; one pick is optimal.
    """
    T = check_budget(budget)
    return 1.0 - (1.0 - 1.0 / T) ** T


def tight_instance(budget: int, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy's worst case for ``T = budget`` picks (maximum coverage as facility location):
    ``(r (1, N), K (1, N, N))`` with ``N = 2T + T(T + 1)``, where greedy's coverage over the
    optimum's approaches :func:`greedy_guarantee` as ``eps`` goes to 0.

    Tokens ``0..T-1`` are greedy's picks ``G_1..G_T`` and ``T..2T-1`` the optimum's ``O_1..O_T``
    (both weightless, except that ``G_i`` covers itself with weight ``eps``, which breaks greedy's
    ties towards them); then ``T x (T + 1)`` weighted tokens: ``O_j`` covers its ``T + 1`` parts;
    part ``i < T`` of every ``O_j`` weighs ``(1/T)(1/T)(1 - 1/T)^i`` and is covered by ``G_(i+1)``
    too; the last part weighs ``(1/T)(1 - 1/T)^T``. ``K`` is 0/1 (who covers whom, the identity on
    the diagonal)."""
    T = check_budget(budget)
    N = 2 * T + T * (T + 1)
    r, K = torch.zeros(N), torch.eye(N)
    for j in range(T):
        for i in range(T + 1):
            e = 2 * T + j * (T + 1) + i
            r[e] = (1 / T) * ((1 / T) * (1 - 1 / T) ** i if i < T else (1 - 1 / T) ** T)
            K[T + j, e] = 1.0
            if i < T:
                K[i, e] = 1.0
    r[:T] = eps
    return r[None], K[None]


def direction(values) -> str:
    """``"grows"`` when every step of ``values`` is up, ``"falls"`` when every step is down, else
    ``"goes up and down"``."""
    steps = [b - a for a, b in zip(values, values[1:])]
    return "grows" if all(s > 0 for s in steps) else "falls" if all(s < 0 for s in steps) else "goes up and down"


def random_facility_instances(
    count: int, num_tokens: int, kind: str = "features", dim: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random small facility-location instances ``(r (B, N), K (B, N, N))`` for brute-force checks.

    Kinds:

    - ``features``: EADP's own similarity ``(cos + 1) / 2`` of ``dim``-wide Gaussian features
      around a few cluster centres, with uniform importance (the shape of real instances).
    - ``uniform``: every ``K[i, j]`` (``i != j``) uniform in ``[0, 1]``, ``K[i, i] = 1``, uniform
      importance. Not a cosine similarity, still a valid (monotone submodular) instance.
    - ``sparse``: like ``uniform`` but most entries 0 and importance heavy-tailed, the kind of
      instance on which greedy can be fooled by a locally attractive first pick.
    """
    from .select import coverage_similarity

    if kind not in ("features", "uniform", "sparse"):
        raise ValueError(f"kind must be features, uniform or sparse, got {kind!r}")
    g = torch.Generator().manual_seed(seed)
    B, N = count, num_tokens
    if kind == "features":
        centres = torch.randn(B, 3, dim, generator=g) * 1.5
        assign = torch.randint(0, 3, (B, N), generator=g)
        f = torch.gather(centres, 1, assign[..., None].expand(B, N, dim)) + torch.randn(B, N, dim, generator=g)
        return torch.rand(B, N, generator=g), coverage_similarity(f)
    K = torch.rand(B, N, N, generator=g)
    r = torch.rand(B, N, generator=g)
    if kind == "sparse":
        K = K * (torch.rand(B, N, N, generator=g) < 0.25)
        r = r**4
    K = torch.where(torch.eye(N, dtype=torch.bool), torch.ones(()), K)
    return r, K


def brute_force_optima(importance: torch.Tensor, similarity: torch.Tensor, budget: int,
                       chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`brute_force_optimum` for a batch of small instances, vectorised over subsets.

    Args:
        importance: ``(B, N)``; similarity: ``(B, N, N)``; ``N <= 24``.
    Returns:
        ``values (B,)`` float64 and ``subsets (B, T)`` long (the first best subset in
        lexicographic order, as :func:`brute_force_optimum`).
    """
    budget = check_budget(budget)
    check_ndim("importance", importance, 2, "(B, N)")
    B, N = importance.shape
    if N > 24:
        raise ValueError(f"brute force over N = {N} tokens is too large (at most 24)")
    T = min(budget, N)
    combos = torch.tensor(list(itertools.combinations(range(N), T)), dtype=torch.long)  # (C, T)
    r, K = importance.double(), similarity.double()
    best = torch.full((B,), -1.0, dtype=torch.float64)
    arg = torch.zeros(B, dtype=torch.long)
    for start in range(0, combos.shape[0], chunk):
        part = combos[start : start + chunk]  # (c, T)
        rows = K[:, part]  # (B, c, T, N)
        values = (rows.max(2).values * r[:, None, :]).sum(-1)  # (B, c)
        v, i = values.max(1)
        better = v > best
        best = torch.where(better, v, best)
        arg = torch.where(better, i + start, arg)
    return best, combos[arg]


def approximation_ratios(importance: torch.Tensor, similarity: torch.Tensor, budget: int) -> dict:
    """Greedy facility location against the brute-force optimum on a batch of small instances.

    Returns:
        ``{"greedy", "optimum", "ratio"}``: ``(B,)`` float64 tensors, and ``"bound"``: the
        guarantee :func:`greedy_guarantee` for this budget.
    """
    from .select import coverage, facility_location

    picks = facility_location(importance, budget, similarity=similarity)
    greedy = coverage(importance, similarity, picks)
    optimum, _ = brute_force_optima(importance, similarity, budget)
    return {"greedy": greedy, "optimum": optimum, "ratio": greedy / optimum.clamp(min=1e-300),
            "bound": greedy_guarantee(budget)}


def online_bound(importance: torch.Tensor, similarity: torch.Tensor, picks: torch.Tensor,
                 budget: int | None = None) -> torch.Tensor:
    """An upper bound on the optimum of ``budget`` tokens, from any selection ``A`` (``picks``).

    For a monotone submodular ``f``, ``OPT <= f(A) + sum of the budget largest gains
    f(A + c) - f(A)`` (Minoux, 1978; the "online bound" of Leskovec et al., KDD 2007). It
    needs no enumeration, so it certifies a greedy selection on full-size images:
    ``f(greedy) / online_bound`` is a lower bound on greedy's true ratio there.

    Args:
        importance: ``(B, N)``; similarity: ``(B, N, N)``; picks: ``(B, T)`` (``-1`` unused).
        budget: size of the optimum to bound (default ``T``).
    Returns:
        ``(B,)`` float64.
    """
    from .select import coverage

    check_ndim("picks", picks, 2, "(B, T)")
    T = picks.shape[1] if budget is None else check_budget(budget)
    B, N = importance.shape
    r, K = importance.double(), similarity.double()
    valid = picks >= 0
    rows_k = torch.gather(K, 1, picks.clamp(min=0)[..., None].expand(B, picks.shape[1], N))
    cur = rows_k.masked_fill(~valid[..., None], 0.0).max(1).values  # (B, N)
    gains = (torch.clamp(K - cur[:, None, :], min=0) * r[:, None, :]).sum(-1)  # (B, N)
    top = torch.topk(gains, min(T, N), dim=-1).values.sum(-1)
    return coverage(importance, similarity, picks) + top


def coverage_fraction(importance: torch.Tensor, similarity: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """:func:`prefix_objective` divided by the objective of keeping every token, ``f(V) = sum r``
    (``K[j, j] = 1``): the share of the importance-weighted image a budget covers, in ``[0, 1]``.

    Returns:
        ``(B, T)`` float64.
    """
    full = importance.double().sum(-1, keepdim=True).clamp(min=1e-12)
    return prefix_objective(importance, similarity, picks) / full


def method_picks(inputs, methods, budget: int, settings: dict | None = None) -> dict:
    """Run several registry methods on the same inputs; ``{label: PruneResult}``.

    Args:
        methods: registry names, or ``{label: (registry name, settings or None)}`` to run one
            method under several settings (e.g. EADP's importance with ``selection="topk"``).
        settings: for a list of names, ``{name: settings}`` (others use their defaults).

    Picks come in pick order, so one run at the largest budget gives every smaller budget
    of a nested method (greedy, Top-K, DPP MAP, max-min; not ``pool``).
    """
    from .methods import prune

    settings = settings or {}
    if not isinstance(methods, dict):
        methods = {name: (name, settings.get(name)) for name in methods}
    return {label: prune(name, inputs, budget, config) for label, (name, config) in methods.items()}


def coverage_curves(inputs, methods, budget: int, config=None, settings: dict | None = None) -> dict:
    """Coverage curves of several methods under EADP's objective.

    The objective is ``f(A) = sum_j r_j max_{a in A} K[a, j]`` with ``r`` EADP's final
    importance for ``config`` and ``K`` the coverage similarity of ``inputs.features``; every
    method's pick order is scored with it (``eadp`` maximises it greedily by construction).

    Args:
        inputs: a :class:`~eadp_lab.methods.PruneInputs` of one-row images.
        methods: registry names with nested picks (not ``pool``), or
            ``{label: (registry name, settings or None)}`` (see :func:`method_picks`).
        budget: largest budget ``T``.
        config: :class:`~eadp_lab.config.EADPConfig` of the importance, and of ``eadp`` and
            ``topk_dense`` when ``methods`` is a list.
    Returns:
        ``{"importance": (R, N), label: (R, T) float64 coverage fractions, ...}``.
    """
    from .config import EADPConfig
    from .methods import score
    from .select import coverage_similarity

    config = config or EADPConfig()
    settings = dict(settings or {})
    settings.setdefault("eadp", config)
    settings.setdefault("topk_dense", config)
    importance = torch.cat([score(image, config)[0] for image in inputs.images()])
    K = coverage_similarity(inputs.features)
    out = {"importance": importance}
    for name, result in method_picks(inputs, methods, budget, settings).items():
        if result.merged is not None:
            raise ValueError(f"method {name!r} merges tokens; its picks are not nested")
        out[name] = coverage_fraction(importance, K, result.picks)
    return out


def importance_share(importance: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """``(R,)``: share of each row's importance that sits on kept tokens (Top-K maximises it)."""
    r = importance.double()
    return (r * keep_mask.double()).sum(-1) / r.sum(-1).clamp(min=1e-12)


def kept_clusters(keep_mask: torch.Tensor, grid: tuple[int, int]) -> int:
    """Number of 4-connected groups the kept tokens of one row form on its ``(H, W)`` grid.

    One blob (Top-K on a smooth map) gives few; coverage-seeking selections give many.
    """
    H, W = grid
    keep = keep_mask.bool().flatten()[: H * W].reshape(H, W).tolist()
    seen = [[False] * W for _ in range(H)]
    groups = 0
    for y in range(H):
        for x in range(W):
            if not keep[y][x] or seen[y][x]:
                continue
            groups += 1
            stack = [(y, x)]
            seen[y][x] = True
            while stack:
                cy, cx = stack.pop()
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if 0 <= ny < H and 0 <= nx < W and keep[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        stack.append((ny, nx))
    return groups


def kept_spacing(kept: torch.Tensor, rows: list[torch.Tensor], grids: list[tuple[int, int]]) -> dict:
    """How spread out one image's kept tokens lie, on its grid and along the sequence.

    Args:
        kept: ``(K,)`` indices into the item's flat tokens (the order the language model reads them).
        rows, grids: the item's rows of tokens, ``(N_r,)`` indices into its flat tokens in raster
            order, and each row's ``(H_r, W_r)`` (an :class:`~eadp_lab.models.layouts.ItemLayout`'s).
    Returns:
        ``{"nearest": float, "gap_cv": float}``. ``nearest``: the mean, over the kept tokens that
        lie on a row, of the distance in patches to the nearest other kept token of the same row
        (1 for a solid block, larger when spread out; NaN when no row keeps two). ``gap_cv``: the
        coefficient of variation (standard deviation over mean) of the ``K - 1`` gaps between
        consecutive kept indices in sequence order (0 when evenly spaced along the sequence,
        large when clustered; NaN below two kept tokens).
    """
    kept = kept.detach().to("cpu", torch.long).sort().values
    gaps = kept.diff().double()
    gap_cv = float(gaps.std(correction=0) / gaps.mean()) if len(gaps) else float("nan")
    distances = []
    for row, (H, W) in zip(rows, grids):
        where = torch.nonzero(torch.isin(row.to("cpu"), kept)).flatten()  # raster positions of kept tokens
        if len(where) < 2:
            continue
        xy = torch.stack([where // W, where % W], 1).double()
        d = torch.cdist(xy, xy)
        d.fill_diagonal_(float("inf"))
        distances.append(d.min(1).values)
    nearest = float(torch.cat(distances).mean()) if distances else float("nan")
    return {"nearest": nearest, "gap_cv": gap_cv}


def stack_rows(parts: list, rows_per_image: tuple[int, ...] | None = None):
    """Several one-row :class:`~eadp_lab.methods.PruneInputs` (frames or crops of one image,
    asked the same question) as one input with one row per part.

    The text of the first part of each image is used. Rows with different token counts are
    padded and their grids become a per-row list (ragged rows).

    Args:
        parts: one-row inputs, in row order.
        rows_per_image: rows of each image (default: all parts form one image).
    """
    from .methods import PruneInputs

    if not parts or any(p.num_rows != 1 for p in parts):
        raise ValueError("stack_rows takes a non-empty list of one-row PruneInputs")
    rows_per_image = tuple(rows_per_image or (len(parts),))
    if sum(rows_per_image) != len(parts):
        raise ValueError(f"rows_per_image {rows_per_image} does not add up to the {len(parts)} parts")
    N = max(p.num_tokens for p in parts)
    grids = [p.row_grids(strict=True)[0] for p in parts]
    ragged = len(set(grids)) > 1 or any(h * w != N for h, w in grids)

    def pad(x):
        return torch.nn.functional.pad(x, (0, 0, 0, N - x.shape[1]))

    firsts = [sum(rows_per_image[:i]) for i in range(len(rows_per_image))]
    text = [parts[i] for i in firsts]

    def cat_text(name):
        values = [getattr(p, name) for p in text]
        if values[0] is None:
            return None
        if name == "text_embeds":
            return torch.cat(values)
        L = max(v.shape[2] for v in values)
        if name == "text_mask":
            values = [v if v.shape[2] == L else torch.nn.functional.pad(v, (0, L - v.shape[2])) for v in values]
        else:
            values = [torch.nn.functional.pad(v, (0, 0, 0, L - v.shape[2])) for v in values]
        return torch.cat(values)

    seq = cat_text("text_embeds_seq")
    mask = cat_text("text_mask")
    if seq is not None and mask is None and len({p.text_embeds_seq.shape[2] for p in text}) > 1:
        mask = torch.cat([torch.nn.functional.pad(torch.ones(p.text_embeds_seq.shape[:3], dtype=torch.bool),
                                                  (0, seq.shape[2] - p.text_embeds_seq.shape[2])) for p in text])
    return PruneInputs(
        features=torch.cat([pad(p.features) for p in parts]),
        image_embeds=None if parts[0].image_embeds is None else torch.cat([pad(p.image_embeds) for p in parts]),
        text_embeds=cat_text("text_embeds"),
        text_embeds_seq=seq,
        text_mask=mask,
        grid=grids if ragged else grids[0],
        rows_per_image=rows_per_image,
    )


def row_object_masks(coverage, threshold: float = 0.25) -> torch.Tensor:
    """Patch masks of every object in every row (frame or crop): ``(R, K, gh * gw)`` bool.

    Args:
        coverage: ``(R, K, gh, gw)`` from the lab world (``ClipRecord.coverage``,
            ``MultiCropRecord.crop_coverage``; a single image's ``(K, gh, gw)`` gives ``R = 1``).
        threshold: see :func:`eadp_lab.world.patch_masks`; an object absent from a row has an
            empty mask there.
    """
    import numpy as np

    from .world import patch_masks

    cov = np.asarray(coverage)
    if cov.ndim == 3:
        cov = cov[None]
    R, K = cov.shape[:2]
    masks = np.stack([patch_masks(cov[r], threshold) for r in range(R)]) if K else np.zeros(cov.shape, bool)
    return torch.from_numpy(masks.reshape(R, K, -1))


def row_object_recall(keep_mask: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each object's patches kept, counted over every row it appears in.

    Args:
        keep_mask: ``(R, N)`` bool; masks: ``(R, K, n)`` bool with ``n <= N`` (the row's grid;
            padding columns of ragged rows are never objects).
    Returns:
        ``(K,)`` float (0 for an object in no row).
    """
    n = masks.shape[-1]
    m = masks.bool()
    kept = (m & keep_mask.bool()[:, None, :n]).sum((0, 2)).float()
    return kept / m.sum((0, 2)).clamp(min=1).float()


def row_objects_reached(keep_mask: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(K,)`` bool: at least one patch of the object kept in some row."""
    n = masks.shape[-1]
    return (masks.bool() & keep_mask.bool()[:, None, :n]).any(-1).any(0)


def moving_objects(clip) -> tuple[int, ...]:
    """Objects of a lab-world clip that move (any direction but ``still``)."""
    from .world import direction

    return tuple(k for k in range(len(clip.start.objects)) if direction(clip, k) != "still")


def asked_objects(record) -> tuple[int, ...]:
    """The objects a lab-world question is about: those its colour, shape and size words name,
    its target, and for a clip's count question the objects with the motion it counts.

    Works on :class:`~eadp_lab.world.Record`, ``ClipRecord`` and ``MultiCropRecord``. An
    existence question with the answer "no" names no object (empty tuple).
    """
    from .world import direction

    q = record.question
    found = {k for ref in q.refs for k in ref}
    if isinstance(q.meta.get("target"), int):
        found.add(q.meta["target"])
    clip = getattr(record, "clip", None)
    motion = q.meta.get("motion")
    if clip is not None and motion is not None:
        dirs = [direction(clip, k) for k in range(len(clip.start.objects))]
        found |= {k for k, d in enumerate(dirs) if (d != "still" if motion == "moving" else d == motion)}
    return tuple(sorted(found))


def allocation_study(inputs, masks: torch.Tensor, objects, budget: int, configs: dict) -> list[dict]:
    """The same image's rows (crops or frames) pruned under several EADP settings, typically
    differing only in ``allocation``; what each row gets and what survives of the objects.

    Args:
        inputs: one image's :class:`~eadp_lab.methods.PruneInputs` (its rows).
        masks: ``(R, K, n)`` bool from :func:`row_object_masks`.
        objects: indices of the objects to follow (e.g. :func:`asked_objects`).
        budget: tokens per row before allocation (the image's total is ``R * budget``).
        configs: ``{label: EADPConfig}``.
    Returns:
        One dict per label: ``label``, ``quotas`` (list per row), ``kept`` (total),
        ``recall`` (mean share of the followed objects' patches kept, ``nan`` if none),
        ``reached`` (share of followed objects with a kept patch), ``result``.
    """
    from .methods import prune

    objects = list(objects)
    rows = []
    for label, config in configs.items():
        result = prune("eadp", inputs, budget, config)
        rec = row_object_recall(result.keep_mask, masks)
        hit = row_objects_reached(result.keep_mask, masks)
        present = [k for k in objects if bool(masks[:, k].any())]
        rows.append({
            "label": label,
            "quotas": result.quotas.tolist(),
            "kept": result.num_kept,
            "recall": float(rec[present].mean()) if present else float("nan"),
            "reached": float(hit[present].float().mean()) if present else float("nan"),
            "result": result,
        })
    return rows
