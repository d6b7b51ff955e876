"""Tokenizers with exactly the ids the released HealthGPT models were trained and run with.

Phi-3 (M3) was run through transformers 4.41's *slow* SentencePiece ``LlamaTokenizer`` (legacy=False).
Its ids differ from transformers 5's converted tokenizer (it keeps a lone ``▁`` before the first added
token and after an image placeholder), so :class:`SlowSentencePieceTokenizer` reproduces that behaviour
on top of the ``sentencepiece`` library. Other backbones (Phi-4, Qwen2.5) ship fast tokenizers and use
:class:`HFTokenizer`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SPIECE_UNDERLINE = "▁"


class Tokenizer(Protocol):
    bos_token_id: int | None

    def __len__(self) -> int: ...

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...

    def add_special_tokens(self, tokens: list[str]) -> int: ...


@dataclass(frozen=True)
class AddedToken:
    content: str
    lstrip: bool = False
    rstrip: bool = False
    special: bool = True


class SlowSentencePieceTokenizer:
    """transformers 4.41 ``LlamaTokenizer(legacy=False, add_prefix_space=True)``, re-implemented."""

    def __init__(self, folder: Path) -> None:
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2

        config = json.loads((folder / "tokenizer_config.json").read_text())
        if config.get("legacy", True):
            raise ValueError(f"{folder}: only legacy=False SentencePiece tokenizers are supported")
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString((folder / "tokenizer.model").read_bytes())
        # legacy=False: no dummy prefix; the prefix space is added explicitly in encode().
        proto.normalizer_spec.add_dummy_prefix = False
        self._sp = sentencepiece.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(proto.SerializeToString())
        self.vocab_size = self._sp.get_piece_size()

        self._added: dict[str, int] = {}
        self._added_info: dict[str, AddedToken] = {}
        self._id_to_added: dict[int, str] = {}
        for key, entry in sorted(config.get("added_tokens_decoder", {}).items(), key=lambda kv: int(kv[0])):
            token = AddedToken(entry["content"], entry.get("lstrip", False), entry.get("rstrip", False),
                               entry.get("special", True))  # fmt: skip
            self._register(token, int(key))

        def named(key: str) -> str | None:
            value = config.get(key)
            return value["content"] if isinstance(value, dict) else value

        self.bos_token, self.eos_token = named("bos_token"), named("eos_token")
        self.unk_token, self.pad_token = named("unk_token") or "<unk>", named("pad_token")
        self.add_bos_token = config.get("add_bos_token", True)
        self.add_eos_token = config.get("add_eos_token", False)
        self.additional_special_tokens: list[str] = list(config.get("additional_special_tokens") or [])
        self.bos_token_id = self.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_token_id = self.token_to_id(self.eos_token) if self.eos_token else None
        self._unk_length = len(self._sp.encode(self.unk_token, out_type=str))

    def _register(self, token: AddedToken, token_id: int) -> None:
        self._added[token.content] = token_id
        self._added_info[token.content] = token
        self._id_to_added[token_id] = token.content

    def __len__(self) -> int:
        return max(self.vocab_size, max(self._id_to_added, default=-1) + 1)

    @property
    def all_special_tokens(self) -> set[str]:
        named = {t for t in (self.bos_token, self.eos_token, self.unk_token, self.pad_token) if t}
        return named | set(self.additional_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        if token in self._added:
            return self._added[token]
        piece_id = self._sp.piece_to_id(token)
        return None if piece_id == self._sp.unk_id() and token != self.unk_token else piece_id

    def add_special_tokens(self, tokens: list[str]) -> int:
        """Add ``tokens`` as the additional special tokens (replacing the list, as HF does)."""
        added = 0
        for content in tokens:
            if content not in self._added:
                self._register(AddedToken(content), len(self))
                added += 1
        self.additional_special_tokens = list(tokens)
        return added

    # -- encoding ---------------------------------------------------------------------------------
    def _lengths_by_first_char(self) -> dict[str, list[int]]:
        """Distinct added-token lengths per first character, longest first (cached until tokens change)."""
        if getattr(self, "_length_index_size", -1) != len(self._added):
            index: dict[str, set[int]] = {}
            for token in self._added:
                index.setdefault(token[0], set()).add(len(token))
            self._length_index = {c: sorted(lengths, reverse=True) for c, lengths in index.items()}
            self._length_index_size = len(self._added)
        return self._length_index

    def _split_on_added(self, text: str) -> list[str]:
        """Split around added tokens (longest match first), then apply their lstrip/rstrip.

        Lookups go by first character and length, so 8k VQ tokens cost a few dict probes per '<'."""
        lengths = self._lengths_by_first_char()
        pieces: list[str] = []
        start = cursor = 0
        while cursor < len(text):
            match = next(
                (
                    text[cursor : cursor + n]
                    for n in lengths.get(text[cursor], ())
                    if text[cursor : cursor + n] in self._added
                ),
                None,
            )
            if match is None:
                cursor += 1
                continue
            pieces.append(text[start:cursor])
            pieces.append(match)
            cursor += len(match)
            start = cursor
        pieces.append(text[start:])
        for index, piece in enumerate(pieces):
            info = self._added_info.get(piece) if index % 2 == 1 else None
            if info is None:
                continue
            if info.rstrip and index + 1 < len(pieces):
                pieces[index + 1] = pieces[index + 1].lstrip()
            if info.lstrip and index > 0:
                pieces[index - 1] = pieces[index - 1].rstrip()
        return pieces

    def _sp_tokenize(self, text: str) -> list[str]:
        if not text.startswith((SPIECE_UNDERLINE, " ")):
            return self._sp.encode(text, out_type=str)
        # Encode behind the unk token's text so a leading space is kept as "▁", then drop that prefix.
        tokens = self._sp.encode(self.unk_token + text, out_type=str)
        return tokens[self._unk_length :] if len(tokens) >= self._unk_length else tokens

    def tokenize(self, text: str) -> list[str]:
        if not text:
            return []
        text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        tokens: list[str] = []
        for index, piece in enumerate(self._split_on_added(text)):
            if index % 2 == 1:
                tokens.append(piece)
            elif piece:
                tokens.extend(self._sp_tokenize(piece))
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]
        return tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self._added[t] if t in self._added else self._sp.piece_to_id(t) for t in self.tokenize(text)]
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None:
                ids = [self.bos_token_id, *ids]
            if self.add_eos_token and self.eos_token_id is not None:
                ids = [*ids, self.eos_token_id]
        return ids

    # -- decoding ---------------------------------------------------------------------------------
    def _id_to_token(self, token_id: int) -> str:
        return self._id_to_added.get(token_id) or self._sp.id_to_piece(token_id)

    def _pieces_to_string(self, tokens: list[str]) -> str:
        if tokens and tokens[0].startswith(SPIECE_UNDERLINE):
            tokens = [tokens[0][1:], *tokens[1:]]
        out, current, previous_special = "", [], False
        special = self.all_special_tokens
        for index, token in enumerate(tokens):
            if token in special:
                out += self._sp.decode(current) + token
                previous_special, current = True, []
            else:
                if previous_special and index == 1 and not token.startswith(SPIECE_UNDERLINE):
                    out += " "
                current.append(token)
                previous_special = False
        return out + self._sp.decode(current)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """As 4.41 decodes: added tokens stand alone, joined to the text around them by single spaces."""
        special_ids = {self._added.get(t) for t in self.all_special_tokens} | {
            self._sp.piece_to_id(t) for t in self.all_special_tokens if t not in self._added
        }
        special = self.all_special_tokens
        standalone = (set(self._added) - special) | {
            t for t in self.additional_special_tokens if self._added.get(t, -1) >= self.vocab_size
        }
        texts: list[str] = []
        current: list[str] = []
        for token_id in ids:
            if skip_special_tokens and token_id in special_ids:
                continue
            token = self._id_to_token(token_id)
            if token in standalone:
                if current:
                    text = self._pieces_to_string(current)
                    if text:
                        texts.append(text)
                    current = []
                texts.append(token)
            else:
                current.append(token)
        if current:
            texts.append(self._pieces_to_string(current))
        return " ".join(texts)


class HFTokenizer:
    """A transformers (fast) tokenizer behind the same small interface."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self.bos_token_id = self._tokenizer.bos_token_id

    def __len__(self) -> int:
        return len(self._tokenizer)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        token_id = self._tokenizer.convert_tokens_to_ids(token)
        return None if token_id is None or token_id == self._tokenizer.unk_token_id else token_id

    def add_special_tokens(self, tokens: list[str]) -> int:
        return self._tokenizer.add_special_tokens({"additional_special_tokens": tokens})


def load_tokenizer(folder: Path) -> Tokenizer:
    """The slow SentencePiece replica where the backbone ships ``tokenizer.model`` with a Llama
    tokenizer class (Phi-3), the transformers tokenizer otherwise."""
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if (folder / "tokenizer.model").is_file() and config.get("tokenizer_class") in {
        "LlamaTokenizer",
        "LlamaTokenizerFast",
    }:
        return SlowSentencePieceTokenizer(folder)
    return HFTokenizer(folder)
