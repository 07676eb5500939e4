"""CLIP's byte-level BPE tokenizer from a diffusers folder's ``tokenizer/`` (``vocab.json``,
``merges.txt``, ``special_tokens_map.json`` / ``tokenizer_config.json``), built on the
``tokenizers`` package: NFC, whitespace runs to one space, lower case; CLIP's word regex; byte-level
BPE with the ``</w>`` end-of-word suffix; ``<|startoftext|> ... <|endoftext|>``; padded to
``model_max_length`` (77) as SD pipelines call it (``padding="max_length", truncation=True``).

    tok = CLIPTokenizer.from_folder("sd15/tokenizer")
    ids = tok(["a photo of a cat", ""])          # [2, 77] int32
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from diffusion_jax.pretrained.convert import PretrainedError

WORDS = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
         r"""[^\s\p{L}\p{N}]+""")
FILES = ("vocab.json", "merges.txt")


def _token(value, default: str) -> str:
    """A special token as ``special_tokens_map.json`` stores it (a string or ``{"content": ...}``)."""
    if isinstance(value, dict):
        return str(value.get("content", default))
    return default if value is None else str(value)


class CLIPTokenizer:
    """``tok(prompts) -> ids [len(prompts), max_length]``; prompts longer than the encoder's
    window are cut to it, with a note on stderr naming how many tokens were dropped."""

    def __init__(self, vocab: Path, merges: Path, max_length: int = 77, bos="<|startoftext|>",
                 eos="<|endoftext|>", pad="<|endoftext|>", unk="<|endoftext|>"):
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

        tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges), dropout=None,
                                             continuing_subword_prefix="",
                                             end_of_word_suffix="</w>", fuse_unk=False,
                                             unk_token=unk))
        tok.normalizer = normalizers.Sequence([normalizers.NFC(),
                                               normalizers.Replace(Regex(r"\s+"), " "),
                                               normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(WORDS), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(list(dict.fromkeys([bos, eos, pad, unk])))
        self.tok, self.max_length = tok, max_length
        ids = {name: tok.token_to_id(t) for name, t in (("bos", bos), ("eos", eos), ("pad", pad))}
        missing = [f"{name} token {t!r}" for (name, i), t in zip(ids.items(), (bos, eos, pad))
                   if i is None]
        if missing:
            raise PretrainedError(f"{vocab} has no {', '.join(missing)}")
        self.bos, self.eos, self.pad = ids["bos"], ids["eos"], ids["pad"]

    @classmethod
    def from_folder(cls, folder) -> "CLIPTokenizer":
        folder = Path(folder)
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise PretrainedError(f"{folder / missing[0]} is missing: the tokenizer needs "
                                  f"{' and '.join(FILES)} in {folder}")
        settings = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (folder / name).is_file():
                settings.update(json.loads((folder / name).read_text()))
        kw = {k: _token(settings.get(f"{k}_token"), d) for k, d in
              (("bos", "<|startoftext|>"), ("eos", "<|endoftext|>"), ("pad", "<|endoftext|>"),
               ("unk", "<|endoftext|>"))}
        length = settings.get("model_max_length", 77)
        length = 77 if not isinstance(length, int) or length > 10 ** 6 else length
        return cls(folder / "vocab.json", folder / "merges.txt", max_length=length, **kw)

    def ids(self, prompt: str) -> list[int]:
        """The prompt's BPE ids, without the start/end tokens and uncut."""
        return self.tok.encode(prompt, add_special_tokens=False).ids

    def __call__(self, prompts, quiet: bool = False) -> np.ndarray:
        room = self.max_length - 2
        out = np.full((len(prompts), self.max_length), self.pad, np.int32)
        for i, p in enumerate(prompts):
            ids = self.ids(p)
            if len(ids) > room and not quiet:
                cut = self.decode(ids[room:])
                cut = cut if len(cut) <= 40 else cut[:37] + "..."
                print(f"note: prompt {i} has {len(ids)} tokens; the text encoder reads "
                      f"{room}, so the last {len(ids) - room} are dropped ({cut!r})",
                      file=sys.stderr)
            row = [self.bos] + ids[:room] + [self.eos]
            out[i, :len(row)] = row
        return out

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids)).replace("</w>", " ").strip()
