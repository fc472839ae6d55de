"""The field methods' selection blocks as their authors' code runs them, re-written in the same structure.

Used by ``python -m eadp_lab.bench select`` to time the lab's VisionZip, HiPrune, FastV,
PyramidDrop, DART and SparseVLM cores (:mod:`eadp_lab.methods`) against what the published code
does on the same tensors, and by the tests to check that both select the same tokens. Each
function follows the published block step by step (the same tensor operations, in the same
order, the same Python loops, lists and sets, the same batch row ``[0]`` where the code takes it),
written here in the project's own words; only the plumbing differs: what the published code reads
from a model or a config arrives as an argument. Where the published code draws random noise
(SparseVLM's densities) the draw is an argument too. Sources (commits as in the method modules):

- :func:`visionzip_block`: dvlab-research/VisionZip ``visionzip/clip_encoder.py``,
  ``CLIPVisionTower_VisionZip.forward``, from the dominant tokens to ``hidden_states_save``.
- :func:`hiprune_block`: SJTU-DeepVisionLab/EADP ``LLaVA/llava/model/llava_arch_HiPrune.py``,
  ``encode_images``, from the two attention means to ``index_masks`` (one row at a time).
- :func:`fastv_block`: pkunlp-icler/FastV ``modeling_llama.py``, ``LlamaModel.forward``, the
  in-place branch at ``idx == AGG_LAYER``: head mean of the whole map, its row 0, its last row.
- :func:`pyramiddrop_block`: Cooperx521/PyramidDrop ``modeling_llama_pdrop.py``,
  ``pdrop_rank_drop``, inference: the 4-D causal mask of the whole sequence, then per row the last
  instruction query's attention, head mean, top-k, sort.
- :func:`dart_block`: ModelTC/LightCompress ``llmc/compression/token_reduction/dart.py``
  (``get_retained_image_token`` and the ``keep_indexs`` lines of ``pruning_hook``): key L1 norms,
  Python sets and lists, one cosine top-k per pivot.
- :func:`sparsevlm_block`: Gumpest/SparseVLMs v1.0 ``modelling_sparse_llama.py`` (the rater block
  and one sparse layer's inference branch), ``score.py`` (``attn_postprocess_topk``) and
  ``utils.py`` (``batch_index_select``, ``index_points``, ``cluster_and_merge``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["dart_block", "fastv_block", "hiprune_block", "pyramiddrop_block", "sparsevlm_block", "visionzip_block"]


# ------------------------------------------------------------------------------ in the vision encoder
def visionzip_block(attn_weights: torch.Tensor, hidden_states: torch.Tensor, metric: torch.Tensor,
                    dominant_num: int, contextual_num: int):
    """``(hidden_states_save, all_indices, assign)``: ``(B, 1 + dominant_num + contextual_num, D)``,
    ``(B, 1 + dominant_num)`` (CLS first, then top-k order) and ``(B, M - C)`` each merged token's target."""
    B, S, D = hidden_states.shape
    # dominant tokens: the CLS row summed over the heads
    cls_attention = attn_weights[:, :, 0, 1:]
    topk_indices = cls_attention.sum(dim=1).topk(dominant_num, dim=1).indices + 1
    all_indices = torch.cat([torch.zeros((B, 1), dtype=topk_indices.dtype, device=topk_indices.device),
                             topk_indices], dim=1)
    mask = torch.ones_like(hidden_states[:, :, 0], dtype=torch.bool).scatter_(1, all_indices, False)
    dominant_tokens = hidden_states.masked_select(~mask.unsqueeze(-1)).view(B, dominant_num + 1, D)
    # the rest, in position order
    metric_filtered = metric[mask].view(B, S - (dominant_num + 1), metric.shape[2])
    hidden_filtered = hidden_states.masked_select(mask.unsqueeze(-1)).view(B, S - (dominant_num + 1), D)
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    # contextual tokens: a stride of targets, the others joined to their most similar target
    M = metric_normalized.shape[1]
    step = max(1, M // contextual_num)
    target_indices = torch.arange(0, M, step, device=metric.device)[:contextual_num]
    target_tokens = metric_normalized[:, target_indices, :]
    not_target = ~torch.isin(torch.arange(M, device=metric.device), target_indices)
    tokens_to_merge = metric_normalized[:, not_target, :]
    similarity = torch.bmm(tokens_to_merge, target_tokens.transpose(1, 2))
    assign = similarity.argmax(dim=2)
    assign_one_hot = torch.zeros(B, tokens_to_merge.shape[1], contextual_num, dtype=hidden_filtered.dtype,
                                 device=metric.device)
    assign_one_hot.scatter_(2, assign.unsqueeze(-1), 1)
    counts = assign_one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)
    hidden_to_merge = hidden_filtered[:, ~torch.isin(torch.arange(hidden_filtered.shape[1], device=metric.device),
                                                     target_indices), :]
    aggregated_hidden = torch.bmm(assign_one_hot.transpose(1, 2), hidden_to_merge) / counts
    contextual_tokens = hidden_filtered[:, target_indices, :] + aggregated_hidden
    return torch.cat([dominant_tokens, contextual_tokens], dim=1), all_indices, assign


def hiprune_block(attn_shallow: torch.Tensor, attn_deep: torch.Tensor, visual_token_num: int, grid_side: int,
                  alpha: float = 0.1) -> torch.Tensor:
    """``(B, N)`` bool ``index_masks``: the kept patches (CLS excluded), one row at a time."""
    deep_attention = attn_deep.mean(dim=1).mean(dim=1)[:, 1:]
    shallow_attention = attn_shallow.mean(dim=1).mean(dim=1)[:, 1:]
    B, N = deep_attention.shape
    device = deep_attention.device
    shallow_token_num = max(1, round(visual_token_num * float(alpha) / 5))
    max_idx = N - 1
    index_masks = []
    for i in range(B):
        _, anchors = torch.topk(shallow_attention[i].unsqueeze(0), k=min(shallow_token_num, N), dim=1)
        around = torch.cat([anchors, anchors - 1, anchors + 1, anchors - grid_side, anchors + grid_side], dim=1)
        around = torch.unique(around.clamp(0, max_idx), sorted=False).unsqueeze(0)
        deep_token_num = max(0, visual_token_num - around.shape[1])
        chosen = torch.zeros(1, N, dtype=torch.float32, device=device).scatter(1, around, 1.0).bool()
        deep_scores = deep_attention[i].clone() - chosen.int().squeeze()
        if deep_token_num > 0:
            _, deep_indices = torch.topk(deep_scores.unsqueeze(0), k=min(deep_token_num, N), dim=1)
            token_indices = torch.cat([around, deep_indices], dim=1)
        else:
            token_indices = around
        token_indices = torch.sort(torch.unique(token_indices, sorted=False))[0].unsqueeze(0)
        index_masks.append(torch.zeros(1, N, dtype=torch.float32, device=device).scatter(1, token_indices, 1.0).bool())
    return torch.cat(index_masks, dim=0)


# ------------------------------------------------------------------------------ inside the language model
def fastv_block(attention: torch.Tensor, sys_length: int, image_token_length: int, attention_rank: int):
    """``(top_attention_rank_index, keep_indexs)`` of batch row 0, as published (``(R,)`` and ``(L - N + R,)``)."""
    seq_length = attention.shape[-1]
    device = attention.device
    head_mean = torch.mean(attention, dim=1)[0]  # (L, L): the whole map, then row 0
    last_token = head_mean[-1]
    on_image = last_token[sys_length:sys_length + image_token_length]
    top = on_image.topk(attention_rank).indices + sys_length
    keep = torch.cat((torch.arange(sys_length, device=device), top,
                      torch.arange(sys_length + image_token_length, seq_length, device=device)))
    return top, keep.sort().values


def _causal_4d_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, L, L)`` additive mask of a causal prefill with padding mask ``(B, L)`` (the
    ``_prepare_4d_causal_attention_mask`` the published code calls, past length 0)."""
    B, L = attention_mask.shape
    device = attention_mask.device
    low = torch.finfo(dtype).min
    causal = torch.full((L, L), low, device=device)
    steps = torch.arange(L, device=device)
    causal.masked_fill_(steps < (steps + 1).view(L, 1), 0)
    causal = causal.to(dtype)[None, None].expand(B, 1, L, L)
    expanded = attention_mask[:, None, None, :].expand(B, 1, L, L).to(dtype)
    inverted = (1.0 - expanded).masked_fill((1.0 - expanded).to(torch.bool), low)
    return causal.masked_fill(inverted.to(torch.bool), low)


def pyramiddrop_block(query_states: torch.Tensor, key_states: torch.Tensor, image_index: int, image_tokens: int,
                      keep_length: int, prompt_len: int) -> list[torch.Tensor]:
    """Per row, ``(keep_length,)`` ascending positions of the kept image tokens in the stage's sequence."""
    B, _, L, head_dim = query_states.shape
    attention_mask = torch.ones((B, L), dtype=torch.bool, device=query_states.device)
    eager_attention_mask = _causal_4d_mask(attention_mask, query_states.dtype)
    kept = []
    for i in range(B):
        cur_key_states, cur_query_states = key_states[i], query_states[i]
        cur_mask = eager_attention_mask[i]
        prompt_total_len = prompt_len + image_tokens
        text_query_states = cur_query_states[:, prompt_total_len - 1, :].unsqueeze(1)
        text_mask = cur_mask[:, prompt_total_len - 1, :].unsqueeze(1)
        attn_weights = torch.matmul(text_query_states, cur_key_states.transpose(1, 2)) / math.sqrt(head_dim)
        attn_weights = attn_weights + text_mask
        attn_weights = torch.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attention_avg_head = torch.mean(attn_weights, dim=0)[:, image_index:image_index + image_tokens]
        attention_avg_text = torch.mean(attention_avg_head, dim=0)
        top_rank_index = attention_avg_text.topk(keep_length).indices + image_index
        kept.append(top_rank_index.sort().values)
    return kept


def dart_block(last_layer_state: torch.Tensor, any_states: torch.Tensor, image_token_start_index: int,
               image_token_length: int, pivot_image_token: int, pivot_text_token: int, token_topk: int):
    """``(retained_image_tokens_index, keep_indexs)`` of batch row 0: the kept image tokens in CPython set
    order and the sorted new sequence."""
    device = last_layer_state.device
    seq_length = last_layer_state.shape[1]
    start, n = image_token_start_index, image_token_length
    any_states = any_states.permute(0, 2, 1, 3)
    any_states = any_states.reshape(any_states.shape[0], any_states.shape[1], -1)
    image_norm = torch.norm(any_states[0][start:start + n, :], p=1, dim=-1)
    query_norm = torch.norm(any_states[0][start + n:, :], p=1, dim=-1)
    image_indices = (image_norm.topk(pivot_image_token).indices + start).tolist()
    query_indices = (query_norm.topk(pivot_text_token).indices + start + n).tolist()
    indices_set = set(image_indices + query_indices)
    valid_indices = set(range(start, start + n)) - set(image_indices)
    valid_indices_list = list(valid_indices)
    for item in list(indices_set):
        valid_vectors = last_layer_state[0][valid_indices_list, :]
        cos_sim = -torch.nn.functional.cosine_similarity(last_layer_state[0][item, :], valid_vectors, dim=-1)
        top_k_indices = cos_sim.topk(token_topk).indices
        top_k_real_indices = [valid_indices_list[i] for i in top_k_indices]
        indices_set.update(top_k_real_indices)
        valid_indices.difference_update(top_k_real_indices)
        valid_indices_list = list(valid_indices)
    indices_set.difference_update(query_indices)
    retained = torch.tensor(list(indices_set), device=device)
    keep = torch.cat((torch.arange(start, device=device), retained,
                      torch.arange(start + n, seq_length, device=device)))
    return retained, keep.sort().values


def _batch_index_select(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b]]`` for ``(B, N, C)`` ``x`` through one flat gather (the published ``batch_index_select``)."""
    B, N, C = x.size()
    offset = torch.arange(B, dtype=torch.long, device=x.device).view(B, 1) * N
    return x.reshape(B * N, C)[(idx + offset).reshape(-1)].reshape(B, idx.size(1), C)


def _index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    B = points.shape[0]
    batch = torch.arange(B, dtype=torch.long, device=points.device).view(B, 1).repeat(1, idx.shape[1])
    return points[batch, idx, :]


def _cluster_and_merge(x: torch.Tensor, cluster_num: int, noise: torch.Tensor) -> torch.Tensor:
    """DPC-kNN as published (pairwise distances by broadcasting; ``noise`` is the ``torch.rand`` draw)."""
    B, N, C = x.shape
    dist_matrix = (x[:, :, None, :] - x[:, None, :, :]).norm(dim=-1, p=2) / (C ** 0.5)
    dist_nearest, _ = torch.topk(dist_matrix, k=cluster_num, dim=-1, largest=False)
    density = (-(dist_nearest ** 2).mean(dim=-1)).exp()
    density = density + noise.to(density) * 1e-6
    mask = (density[:, None, :] > density[:, :, None]).type(x.dtype)
    dist_max = dist_matrix.flatten(1).max(dim=-1)[0][:, None, None]
    dist, _ = (dist_matrix * mask + dist_max * (1 - mask)).min(dim=-1)
    _, index_down = torch.topk(dist * density, k=cluster_num, dim=-1)
    idx_cluster = _index_points(dist_matrix, index_down).argmin(dim=1)
    idx_batch = torch.arange(B, device=x.device)[:, None].expand(B, cluster_num)
    idx_tmp = torch.arange(cluster_num, device=x.device)[None, :].expand(B, cluster_num)
    idx_cluster[idx_batch.reshape(-1), index_down.reshape(-1)] = idx_tmp.reshape(-1)
    token_weight = x.new_ones(B, N, 1)
    idx = idx_cluster + torch.arange(B, device=x.device)[:, None] * cluster_num
    all_weight = token_weight.new_zeros(B * cluster_num, 1)
    all_weight.index_add_(dim=0, index=idx.reshape(B * N), source=token_weight.reshape(B * N, 1))
    all_weight = all_weight + 1e-6
    norm_weight = token_weight / all_weight[idx]
    x_merged = x.new_zeros(B * cluster_num, C)
    x_merged.index_add_(dim=0, index=idx.reshape(B * N), source=(x * norm_weight).reshape(B * N, C).type(x.dtype))
    return x_merged.reshape(B, cluster_num, C)


def sparsevlm_block(inputs_embeds: torch.Tensor, layer_output: torch.Tensor, attn: torch.Tensor,
                    v_token_start: int, image_shape: int, keep: int, density_noise: torch.Tensor,
                    recycle: float = 0.3):
    """SparseVLM v1.0 (batch 1): the text raters on the input embeddings, then the first sparse layer.

    Returns ``(t_token_idx, mask, merge_token_stage2_idx, merged, select_and_merge_token)``: rater text
    positions, ``(1, v)`` bool kept visual tokens, the recycled tokens (indices into the dropped ones,
    top-k order), the merged tokens and the next sequence.
    """
    text_token_start = v_token_start + image_shape
    v_token_num = image_shape
    # text raters, once, on the input embeddings
    v_t = inputs_embeds[:, v_token_start:text_token_start, :]
    t_t = inputs_embeds[:, text_token_start:, :]
    m_v_t = (v_t @ t_t.transpose(1, 2)).softmax(2).mean(1)
    t_token_idx = torch.where(m_v_t > m_v_t.mean())
    # attn_postprocess_topk: head mean of the whole map, the rater rows, the visual keys
    self_attn_weights = attn.mean(1)
    rater_rows = t_token_idx[1] + text_token_start
    relation_vis_text = self_attn_weights[:, rater_rows, v_token_start:v_token_start + v_token_num].mean(1)
    mask = torch.zeros_like(relation_vis_text, dtype=bool)
    _, indices = torch.topk(relation_vis_text, min(keep, v_token_num - 1), dim=1)
    mask[0][indices] = 1
    B = layer_output.shape[0]
    policy = torch.ones(B, layer_output.shape[1], dtype=layer_output.dtype, device=layer_output.device)
    policy[:, v_token_start:text_token_start] = mask.type(dtype=layer_output.dtype)
    policy[0, :v_token_start] = 1
    policy[0, text_token_start:] = 1
    # recycle the most relevant dropped tokens into DPC-kNN clusters
    total_sparse_token_idx = torch.where(policy == 0)[1].unsqueeze(0)
    total_sparse_token = _batch_index_select(layer_output, total_sparse_token_idx)
    merge_token_idx_stage1 = torch.where(mask == 0)[1]
    merge_token_stage1 = relation_vis_text[0][merge_token_idx_stage1]
    merge_token_num_stage1 = int(merge_token_idx_stage1.shape[0] * recycle) + 1
    merge_token_stage2_idx = merge_token_stage1.topk(merge_token_num_stage1)[1]
    merge_token_stage2 = total_sparse_token[:, merge_token_stage2_idx, :]
    cluster_num = int(merge_token_stage2.shape[1] / 10) + 1
    merged = _cluster_and_merge(merge_token_stage2, cluster_num, density_noise)
    select_token_idx = torch.where(policy == 1)[1].unsqueeze(0)
    select_token = _batch_index_select(layer_output, select_token_idx)
    select_vis_token_num = mask.sum()
    out = torch.cat((select_token[:, :v_token_start + select_vis_token_num, :], merged,
                     select_token[:, v_token_start + select_vis_token_num:, :]), dim=1)
    return t_token_idx[1], mask, merge_token_stage2_idx, merged, out
