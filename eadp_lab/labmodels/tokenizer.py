"""Word-level tokenizers of the lab models, built from the world's closed vocabulary.

One vocabulary serves both lab models, so a word has the same id in the tiny CLIP and in the
tiny LLaVA: the specials ``<pad> <unk> <image> <s> </s>``, the prompt words ``USER:`` and
``ASSISTANT:`` (LLaVA-1.5's conversation format: Liu et al., "Improved Baselines with Visual
Instruction Tuning", CVPR 2024), then every word of :func:`eadp_lab.world.vocabulary`.
Text is split on whitespace, as the world writes it. ``</s>`` is deliberately not id 2:
transformers' CLIP text tower pools by ``argmax(input_ids)`` when ``eos_token_id == 2`` (a
legacy rule), and by the first ``</s>`` otherwise. Both tokenizers are
``PreTrainedTokenizerFast`` objects that ``save_pretrained`` / ``AutoTokenizer`` round-trip:

- :func:`clip_tokenizer`: ``<s> words </s>``, right padding (CLIP's text input);
- :func:`llava_tokenizer`: ``<s> words``, left padding (batched generation).

Taught in ``notebooks/00_tour``.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ..world.vocab import vocabulary

__all__ = ["SPECIALS", "PROMPT_WORDS", "vocab_table", "clip_tokenizer", "llava_tokenizer", "PAD", "UNK", "IMAGE",
           "BOS", "EOS"]

SPECIALS = ("<pad>", "<unk>", "<image>", "<s>", "</s>")
PROMPT_WORDS = ("USER:", "ASSISTANT:")
PAD, UNK, IMAGE, BOS, EOS = range(len(SPECIALS))


def vocab_table() -> dict[str, int]:
    """``{token: id}``: the specials, the prompt words, then the world's words in their fixed order."""
    words = list(SPECIALS) + list(PROMPT_WORDS) + [w for w in vocabulary() if w not in SPECIALS + PROMPT_WORDS]
    return {w: i for i, w in enumerate(words)}


def _build(template: str, padding_side: str, model_max_length: int) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.WordLevel(vocab=vocab_table(), unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<s>", BOS), ("</s>", EOS)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        padding_side=padding_side, model_max_length=model_max_length,
        extra_special_tokens={"image_token": "<image>"},
    )
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def clip_tokenizer(model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """The lab CLIP's tokenizer: ``<s> words </s>``, right padding.

    >>> clip_tokenizer()("a red star .")["input_ids"][0] == BOS
    True
    """
    return _build("<s> $A </s>", "right", model_max_length)


def llava_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """The lab LLaVA's tokenizer: ``<s> words`` (no end token: the model writes it), left padding."""
    return _build("<s> $A", "left", model_max_length)
