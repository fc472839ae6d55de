"""Analytic prefill FLOPs and KV cache: shipped configs, hand counts, torch's counter, the literature's figures."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the configs are local; never reach for the hub

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from eadp_lab.flops import (
    CONFIGS_DIR,
    FULL_VISUAL_TOKENS,
    LanguageModelShape,
    analytic_table,
    kv_cache_bytes,
    language_model_config,
    language_model_shape,
    load_config,
    main,
    prefill_flops,
    reduced_token_counts,
    vision_tower_flops,
)

# folder -> (model_type, d, m, L, H, H_kv, head_dim, V): the language models of the real checkpoints
# (Vicuna-7B-v1.5 for the LLaVA family, Qwen2-7B inside OneVision, Qwen2.5-7B inside Qwen2.5-VL).
SHIPPED = {
    "llava-hf__llava-1.5-7b-hf": ("llava", 4096, 11008, 32, 32, 32, 128, 32064),
    "llava-hf__llava-v1.6-vicuna-7b-hf": ("llava_next", 4096, 11008, 32, 32, 32, 128, 32064),
    "Qwen__Qwen2.5-VL-7B-Instruct": ("qwen2_5_vl", 3584, 18944, 28, 28, 4, 128, 152064),
    "llava-hf__llava-onevision-qwen2-7b-ov-hf": ("llava_onevision", 3584, 18944, 28, 28, 4, 128, 152128),
    "llava-hf__LLaVA-NeXT-Video-7B-hf": ("llava_next_video", 4096, 11008, 32, 32, 32, 128, 32064),
    # Qwen3-VL-8B's own Qwen3-8B-shaped LM (GQA 32/8, head 128), not transformers' Qwen3VLTextConfig defaults
    "Qwen__Qwen3-VL-8B-Instruct": ("qwen3_vl", 4096, 12288, 36, 32, 8, 128, 151936),
}


# --------------------------------------------------------------------------- shipped configs


def test_every_shipped_config_is_listed():
    on_disk = {p.name for p in CONFIGS_DIR.iterdir() if p.is_dir()}
    assert on_disk == set(SHIPPED) == set(FULL_VISUAL_TOKENS)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_loads_offline(name):
    folder = CONFIGS_DIR / name
    raw = json.loads((folder / "config.json").read_text())
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    model_type, d, m, L, H, H_kv, h, V = SHIPPED[name]
    assert raw["model_type"] == config.model_type == model_type
    assert language_model_shape(config) == LanguageModelShape(d, m, L, H, H_kv, h, V)
    assert load_config(folder / "config.json").model_type == model_type  # the file path works too


def test_qwen3_vl_8b_config_is_the_published_one_not_the_defaults():
    """The shipped Qwen3-VL-8B file gives the 8B's values where transformers' defaults differ, and its figures."""
    from transformers import Qwen3VLConfig

    config = load_config(CONFIGS_DIR / "Qwen__Qwen3-VL-8B-Instruct")
    defaults = Qwen3VLConfig()
    assert language_model_shape(config) != language_model_shape(defaults)  # 22016 / 32 layers / 32 kv heads there
    vision = config.vision_config
    assert (vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads, vision.patch_size,
            vision.out_hidden_size, list(vision.deepstack_visual_indexes)) == (27, 1152, 4304, 16, 16, 4096, [8, 16, 24])
    assert vision.out_hidden_size != defaults.vision_config.out_hidden_size  # 3584 by default
    rope = config.text_config.rope_parameters
    assert rope["mrope_section"] == [24, 20, 20] and rope["mrope_interleaved"] and rope["rope_theta"] == 5_000_000
    assert FULL_VISUAL_TOKENS["Qwen__Qwen3-VL-8B-Instruct"] == (1024 // 16 // 2) ** 2  # the authors' 1024 px input
    # per layer 2 * (n d H h + 2 n d H_kv h + n H h d + 2 H h n^2 + 3 n d m), 36 layers, n = 1024
    n, d, m, q, kv = 1024, 4096, 12288, 4096, 1024
    assert prefill_flops(config, 1024) == 2 * 36 * (n * d * q + 2 * n * d * kv + n * q * d + 2 * q * n * n + 3 * n * d * m)
    assert round(prefill_flops(config, 1024) / 1e12, 2) == 14.84
    with pytest.raises(ValueError, match="not a plain CLIP/SigLIP ViT"):
        vision_tower_flops(config)


def test_qwen_hub_layout_is_read_from_the_raw_json_too():
    """Qwen2.5-VL's hub file keeps the text fields at the top level: the raw dict must work as well."""
    raw = json.loads((CONFIGS_DIR / "Qwen__Qwen2.5-VL-7B-Instruct" / "config.json").read_text())
    assert language_model_shape(raw) == language_model_shape(load_config(CONFIGS_DIR / "Qwen__Qwen2.5-VL-7B-Instruct"))


# --------------------------------------------------------------------------- hand counts


def matmul_shapes(n, d, m, H, H_kv, h, causal):
    """Every matmul of one decoder layer over n tokens as (rows, inner, cols), listed one by one."""
    shapes = [(n, d, H * h), (n, d, H_kv * h), (n, d, H_kv * h)]  # q, k, v projections
    for _head in range(H):
        if causal:  # query i sees keys 0..i
            shapes += [(1, h, i + 1) for i in range(n)] + [(1, i + 1, h) for i in range(n)]
        else:
            shapes += [(n, h, n), (n, n, h)]  # Q K^T, then weights @ V
    shapes += [(n, H * h, d), (n, d, m), (n, d, m), (n, m, d)]  # o_proj, gate, up, down
    return shapes


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lm_head", [None, "last", "all"])
def test_tiny_config_matches_summed_matmul_shapes(causal, lm_head):
    # GQA (4 query heads, 2 kv heads) and a head_dim that is not hidden_size / heads
    config = dict(model_type="llama", hidden_size=8, intermediate_size=12, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=3, vocab_size=50)
    n_vis, n_txt = 5, 2
    n = n_vis + n_txt
    shapes = 3 * matmul_shapes(n, 8, 12, 4, 2, 3, causal)
    if lm_head:
        shapes.append((1 if lm_head == "last" else n, 8, 50))
    expected = sum(2 * r * k * c for r, k, c in shapes)
    got = prefill_flops(config, n_vis, n_txt, include_lm_head=lm_head is not None,
                        lm_head_positions=lm_head or "last", attention="causal" if causal else "full")
    assert got == expected
    assert prefill_flops(config, n_vis, n_txt, include_lm_head=lm_head is not None, lm_head_positions=lm_head or "last",
                         attention="causal" if causal else "full", flops_per_mac=1) * 2 == expected


def test_multi_head_reduces_to_the_literature_formula():
    """H_kv = H and H*h = d: a layer is 4nd^2 + 2n^2d + 3ndm multiply-adds."""
    d, m, L, n = 64, 176, 2, 37
    config = LlamaConfig(hidden_size=d, intermediate_size=m, num_hidden_layers=L, num_attention_heads=8, vocab_size=99)
    assert prefill_flops(config, n, 0, flops_per_mac=1) == L * (4 * n * d * d + 2 * n * n * d + 3 * n * d * m)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_matches_torch_flop_counter_on_a_real_tiny_forward(family):
    """torch's FlopCounterMode over an eager forward counts every matmul; all positions go through the LM head."""
    common = dict(hidden_size=16, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=50)
    if family == "llama":
        config, cls = LlamaConfig(head_dim=6, **common), LlamaForCausalLM
    else:
        config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(config).eval()
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, logits_to_keep=0, use_cache=False)
    assert prefill_flops(config, 6, 3, include_lm_head=True, lm_head_positions="all") == counter.get_total_flops()


# --------------------------------------------------------------------------- the literature's figures


def test_llava_next_7b_reproduces_41_7_tflops_at_2880_visual_tokens():
    """Published: ~41.7 TFLOPs for LLaVA-NeXT-7B at 2880 visual tokens (visual tokens only, no text, no LM head,
    full n^2 attention, 2 FLOPs per multiply-add); the count gives 41.65."""
    config = load_config(CONFIGS_DIR / "llava-hf__llava-v1.6-vicuna-7b-hf")
    tflops = prefill_flops(config, 2880, 0) / 1e12
    assert tflops == pytest.approx(41.7, rel=0.03)
    assert tflops == pytest.approx(41.65, abs=0.01)


def test_llava_15_7b_reproduces_3_8_t_at_576_tokens_counting_multiply_adds():
    """The 3.8 quoted for LLaVA-1.5-7B at 576 tokens is the same count in multiply-adds (flops_per_mac=1)."""
    config = load_config(CONFIGS_DIR / "llava-hf__llava-1.5-7b-hf")
    assert prefill_flops(config, 576, 0, flops_per_mac=1) / 1e12 == pytest.approx(3.82, abs=0.01)
    assert prefill_flops(config, 576, 0) / 1e12 == pytest.approx(7.63, abs=0.01)


def test_pruning_tokens_lowers_flops_and_causal_lowers_attention():
    config = load_config(CONFIGS_DIR / "llava-hf__llava-v1.6-vicuna-7b-hf")
    flops = [prefill_flops(config, n, 40) for n in (2880, 720, 320)]
    assert flops[0] > flops[1] > flops[2]
    assert prefill_flops(config, 2880, 40, attention="causal") < flops[0]
    head = prefill_flops(config, 2880, 40, include_lm_head=True) - flops[0]
    assert head == 2 * 4096 * 32064  # one position through the d x V head


# --------------------------------------------------------------------------- KV cache


def test_kv_cache_llava_15_7b():
    config = load_config(CONFIGS_DIR / "llava-hf__llava-1.5-7b-hf")
    seq = 576 + 64
    assert kv_cache_bytes(config, seq) == 32 * 2 * 4096 * seq * 2 == 335_544_320
    assert kv_cache_bytes(config, seq, dtype_bytes=1, batch=3) == 3 * 32 * 2 * 4096 * seq


def test_kv_cache_uses_key_value_heads_under_gqa():
    config = load_config(CONFIGS_DIR / "Qwen__Qwen2.5-VL-7B-Instruct")
    assert kv_cache_bytes(config, 1000) == 28 * 2 * 4 * 128 * 1000 * 2


# --------------------------------------------------------------------------- vision tower, table, CLI


def test_vision_tower_clip_and_unsupported_towers():
    config = load_config(CONFIGS_DIR / "llava-hf__llava-1.5-7b-hf")
    n, d, m = 577, 1024, 4096  # 24x24 patches + CLS
    assert vision_tower_flops(config) == 2 * 24 * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)
    assert vision_tower_flops(config, 5) == 5 * vision_tower_flops(config)
    with pytest.raises(ValueError, match="config"):
        vision_tower_flops(load_config(CONFIGS_DIR / "Qwen__Qwen2.5-VL-7B-Instruct"))


def test_reduced_token_counts():
    assert reduced_token_counts(576) == [576, 144, 64]
    assert reduced_token_counts(2880) == [2880, 720, 320]
    with pytest.raises(ValueError, match="ratios"):
        reduced_token_counts(576, (0.5, 0))


def test_analytic_table_rows():
    names = list(FULL_VISUAL_TOKENS)
    counts = [reduced_token_counts(FULL_VISUAL_TOKENS[n]) for n in names]
    rows = analytic_table([CONFIGS_DIR / n for n in names], counts)
    assert len(rows) == 3 * len(FULL_VISUAL_TOKENS) == 18
    assert set(rows[0]) == {"model", "visual_tokens", "text_tokens", "prefill_tflops", "kv_cache_mib"}
    by = {(r["model"], r["visual_tokens"]): r for r in rows}
    assert by["llava-hf__llava-v1.6-vicuna-7b-hf", 2880]["prefill_tflops"] == pytest.approx(41.65, abs=0.01)
    assert by["llava-hf__llava-1.5-7b-hf", 576]["kv_cache_mib"] == pytest.approx(288.0)
    for name in names:
        tflops = [r["prefill_tflops"] for r in rows if r["model"] == name]
        assert tflops == sorted(tflops, reverse=True)


def test_main_prints_the_table(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "41.65" in out and "llava-hf__LLaVA-NeXT-Video-7B-hf" in out


# --------------------------------------------------------------------------- bad input


TINY = dict(model_type="llama", hidden_size=8, intermediate_size=12, num_hidden_layers=2, num_attention_heads=2,
            vocab_size=10)


@pytest.mark.parametrize("args, name", [
    ((-1, 0), "num_visual_tokens"),
    ((4, -2), "num_text_tokens"),
    ((1.5, 0), "num_visual_tokens"),
    ((True, 0), "num_visual_tokens"),
    ((0, 0), "num_visual_tokens"),
])
def test_bad_token_counts(args, name):
    with pytest.raises(ValueError, match=name):
        prefill_flops(TINY, *args)


@pytest.mark.parametrize("kwargs, name", [
    (dict(attention="sparse"), "attention"),
    (dict(flops_per_mac=3), "flops_per_mac"),
    (dict(include_lm_head=True, lm_head_positions="first"), "lm_head_positions"),
])
def test_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        prefill_flops(TINY, 4, 0, **kwargs)


@pytest.mark.parametrize("config", [
    CLIPVisionConfig(),
    {"model_type": "clip_vision_model", "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
     "num_attention_heads": 1, "vocab_size": 8},
    {"model_type": "llava", "vision_config": {"model_type": "clip_vision_model"}},
    None,
])
def test_config_without_language_model(config):
    with pytest.raises(ValueError, match="config"):
        prefill_flops(config, 4, 0)
    with pytest.raises(ValueError, match="config"):
        language_model_config(config)


def test_bad_kv_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        kv_cache_bytes(TINY, -1)
    with pytest.raises(ValueError, match="batch"):
        kv_cache_bytes(TINY, 4, batch=0)
    with pytest.raises(ValueError, match="dtype_bytes"):
        kv_cache_bytes(TINY, 4, dtype_bytes=0)


def test_bad_table_and_path_arguments(tmp_path):
    with pytest.raises(ValueError, match="visual_token_counts"):
        analytic_table([CONFIGS_DIR / "llava-hf__llava-1.5-7b-hf"], [])
    with pytest.raises(ValueError, match="text_tokens"):
        analytic_table([CONFIGS_DIR / "llava-hf__llava-1.5-7b-hf"], [[576]], text_tokens=-1)
    with pytest.raises(ValueError, match="path"):
        load_config(tmp_path)
    with pytest.raises(ValueError, match="num_kv_heads"):
        LanguageModelShape(8, 8, 1, num_heads=3, num_kv_heads=2, head_dim=2, vocab_size=4)
