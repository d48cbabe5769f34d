"""The text side of the embedded MMDiT: a word-level tokenizer over the caption grammar's vocabulary and a small
CLIP text encoder trained from scratch with the transformer (no download, no pretrained weights).

The tokenizer is a `tokenizers` WordLevel model wrapped as transformers' `PreTrainedTokenizerFast`, so it saves and
loads with the pipeline like any diffusers tokenizer. It lowercases and splits on whitespace and punctuation; a
word outside the vocabulary is refused by `check_prompt` (naming it) rather than silently mapped to <unk>.
"""

import re

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

from .captions import vocabulary

MAX_LENGTH = 16  # tokens with <bos>/<eos>; the longest caption of the grammar has 11 words
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")  # eos id 3: CLIP pools at the first eos token


def build_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate((*SPECIALS, *(words or vocabulary())))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s.,!?;:]+"), behavior="removed")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_LENGTH,
    )


def words(prompt: str) -> list[str]:
    """The words of a prompt as the tokenizer sees them: lowercased, split at whitespace and . , ! ? ; :"""
    return [w for w in re.split(r"[\s.,!?;:]+", prompt.lower()) if w]


def check_prompt(prompt, tokenizer) -> None:
    """Refuse a prompt the model cannot read: not a string, empty, unknown words (named, with the vocabulary),
    or too long."""
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be text, got {type(prompt).__name__} {prompt!r}")
    known = [w for w in tokenizer.get_vocab() if w not in SPECIALS]
    ws = words(prompt)
    unknown = sorted({w for w in ws if w not in tokenizer.get_vocab() or w in SPECIALS})
    if unknown:
        raise ValueError(
            f"unknown word(s) {', '.join(map(repr, unknown))} in prompt {prompt!r}: this model knows "
            f"{len(known)} words: {' '.join(sorted(known))}"
        )
    if len(ws) + 2 > tokenizer.model_max_length:
        raise ValueError(
            f"prompt {prompt!r} has {len(ws)} words; at most {tokenizer.model_max_length - 2} fit this model"
        )


def build_text_encoder(vocab_size: int, width: int = 128, layers: int = 2, heads: int = 4):
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        projection_dim=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return CLIPTextModelWithProjection(config)
