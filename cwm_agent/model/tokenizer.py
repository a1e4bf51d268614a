"""CWM's tokenizer, locally: Llama 3's tiktoken BPE file + CWM's special tokens (no transformers, no server).

CWM tokenizes a prompt piece by piece: each special token is its single id, each text run (role,
the header's "\\n\\n", a body) is BPE-encoded on its own, and a special-token string inside text is
plain text. `encode_pieces` does exactly that for `prompts.render` pieces, so its ids are the
boundaries the model was trained with; encoding the joined text whole can merge across a boundary.

The BPE file is Llama 3's `tokenizer.model` (128000 ranks), shipped in the `llama-models` wheel on
PyPI. `load_tokenizer` finds it (explicit path, an installed `llama_models`, or the cache that
`python -m cwm_agent.model.tokenizer fetch` fills; `scripts/setup.sh --test` runs that). Needs the
`tiktoken` package.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cwm_agent.model.client import ModelError

if TYPE_CHECKING:
    from cwm_agent.prompts.render import Piece

# The pre-tokenizer split of Llama 3 and CWM: contractions, letter runs with one leading
# non-letter, digit groups of up to 3, punctuation runs, newlines, other whitespace.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)
# Special tokens sit right after the BPE ranks (ids 128000..128255); these offsets are named, every
# other offset k in 0..255 is `<|reserved_special_token_k|>`.
RESERVED_SPECIAL_TOKENS = 256
NAMED_SPECIAL_OFFSETS = {
    "<|begin_of_text|>": 0,
    "<|end_of_text|>": 1,
    "<|pad|>": 4,
    "<|start_header_id|>": 6,
    "<|end_header_id|>": 7,
    "<|eom_id|>": 8,
    "<|eot_id|>": 9,
    "<|frame_sep|>": 100,
    "<|action_sep|>": 101,
    "<|return_sep|>": 102,
    "<|call_sep|>": 103,
    "<|line_sep|>": 104,
    "<|exception_sep|>": 105,
    "<|arg_sep|>": 106,
    "<|trace_context_start|>": 107,
    "<|reasoning_thinking_start|>": 120,
    "<|reasoning_thinking_end|>": 121,
}
STOP_TOKENS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
FIRST_SPECIAL_ID = 128000
"""The BPE file's size: the first special token's id."""
SPECIAL_IDS = {name: FIRST_SPECIAL_ID + offset for name, offset in NAMED_SPECIAL_OFFSETS.items()}
"""CWM's named special tokens and their ids."""
# CWM encodes a text this long or longer in chunks of this many characters (a chunk border is a
# token border); matched so long tool outputs split where the model's own code splits them.
MAX_ENCODE_CHARS = 400_000

LLAMA3_BPE_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
BPE_FILE_IN_WHEEL = "llama_models/llama3/tokenizer.model"
INSTALL_HINT = (
    "run `python -m cwm_agent.model.tokenizer fetch` (or `bash scripts/setup.sh --test`), "
    "or pass the path of Llama 3's tokenizer.model"
)


class TokenizerNotFoundError(ModelError):
    """The tiktoken BPE file or the `tiktoken` package is missing."""


def cache_path() -> Path:
    """Where `fetch` puts the BPE file: $CWM_AGENT_CACHE or ~/.cache/cwm-agent, then llama3-tokenizer.model."""
    root = os.environ.get("CWM_AGENT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cwm-agent"
    )
    return Path(root) / "llama3-tokenizer.model"


def _read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError:
            raise TokenizerNotFoundError(f"{path} is not a tiktoken BPE file (line {number}); {INSTALL_HINT}") from None
    return ranks


class CWMTokenizer:
    """CWM's tokenizer over a tiktoken BPE file. Thread-safe; load it once with `load_tokenizer`."""

    def __init__(self, path: str | os.PathLike[str]):
        try:
            import tiktoken
        except ImportError:
            raise TokenizerNotFoundError(
                "the CWM tokenizer needs `tiktoken`: pip install tiktoken (or cwm-agent[test])"
            ) from None
        self.path = Path(path)
        ranks = _read_ranks(self.path)
        base = len(ranks)
        names = {f"<|reserved_special_token_{k}|>": base + k for k in range(RESERVED_SPECIAL_TOKENS)}
        for name, offset in NAMED_SPECIAL_OFFSETS.items():
            del names[f"<|reserved_special_token_{offset}|>"]
            names[name] = base + offset
        self._special = names
        self._special_names = {v: k for k, v in names.items()}
        self._encoding = tiktoken.Encoding(
            name=f"cwm-{self.path.stem}", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=names
        )

    @property
    def n_vocab(self) -> int:
        """BPE ranks + the 256 special tokens (128256 for Llama 3's file)."""
        return self._encoding.n_vocab

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a reply: <|end_of_text|>, <|eom_id|>, <|eot_id|> (128001, 128008, 128009)."""
        return [self._special[name] for name in STOP_TOKENS]

    def special_id(self, name: str) -> int:
        """The id of a special token given as its string, e.g. "<|eot_id|>" -> 128009. KeyError if none."""
        try:
            return self._special[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a special token of the CWM tokenizer") from None

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_names

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, no BOS; special-token strings in it are encoded as the plain text they are."""
        if len(text) < MAX_ENCODE_CHARS:
            return self._encoding.encode_ordinary(text)
        chunks = [text[i : i + MAX_ENCODE_CHARS] for i in range(0, len(text), MAX_ENCODE_CHARS)]
        return [t for ids in self._encoding.encode_ordinary_batch(chunks) for t in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special ids as their strings; bytes that are not UTF-8 become U+FFFD."""
        return self._encoding.decode(list(ids))

    def encode_pieces(self, pieces: Sequence[Piece]) -> list[int]:
        """Ids of a rendered prompt (`prompts.render.render_pieces`, `continuation_pieces`): a special
        piece is its one id (KeyError for an unknown name), each text piece is encoded on its own."""
        out: list[int] = []
        for piece in pieces:
            if piece.is_special:
                out.append(self.special_id(piece.text))
            else:
                out += self.encode(piece.text)
        return out


def _in_llama_models() -> Path | None:
    # find_spec locates the installed package without importing it (its __init__ pulls extras).
    try:
        spec = importlib.util.find_spec("llama_models")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for relative in ("llama3/tokenizer.model", "llama3/api/tokenizer.model"):
            candidate = Path(folder) / relative
            if candidate.is_file():
                return candidate
    return None


def find_bpe_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The BPE file: `path` if given, else an installed llama_models' copy, else the fetch cache."""
    if path is not None:
        found = Path(path).expanduser()
        if not found.is_file():
            raise TokenizerNotFoundError(f"no tokenizer file at {found}; {INSTALL_HINT}")
        return found
    for candidate in (_in_llama_models(), cache_path()):
        if candidate is not None and candidate.is_file():
            return candidate
    raise TokenizerNotFoundError(
        f"Llama 3's tokenizer.model is not in llama_models nor at {cache_path()}; {INSTALL_HINT}"
    )


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> CWMTokenizer:
    return CWMTokenizer(path)


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> CWMTokenizer:
    """The CWM tokenizer from `path` or the first file `find_bpe_file` finds; loaded once per file.

    Raises TokenizerNotFoundError (a ModelError) naming what to install when the file or tiktoken is missing.
    """
    return _load(find_bpe_file(path).resolve())


def fetch(dest: Path | None = None) -> Path:
    """Put Llama 3's BPE file at `dest` (default `cache_path()`): `pip download --no-deps llama-models`
    into a temporary folder, take the one file out of the wheel, check its SHA-256. No-op when present."""
    import tempfile
    import zipfile

    dest = dest or cache_path()
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == LLAMA3_BPE_SHA256:
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", tmp]
        subprocess.run([*pip, "llama-models"], check=True)
        wheels = sorted(Path(tmp).glob("llama_models-*.whl"))
        if not wheels:
            raise TokenizerNotFoundError("pip download llama-models gave no wheel")
        with zipfile.ZipFile(wheels[-1]) as wheel:
            data = wheel.read(BPE_FILE_IN_WHEEL)
    digest = hashlib.sha256(data).hexdigest()
    if digest != LLAMA3_BPE_SHA256:
        raise TokenizerNotFoundError(
            f"{BPE_FILE_IN_WHEEL} of the llama-models wheel has SHA-256 {digest}, not Llama 3's"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["fetch"]:
        try:
            print(fetch())
        except (OSError, KeyError, subprocess.CalledProcessError, TokenizerNotFoundError) as exc:
            print(f"error: cannot fetch Llama 3's tokenizer.model: {exc}", file=sys.stderr)
            return 1
        return 0
    if args == ["path"]:
        try:
            print(find_bpe_file())
        except TokenizerNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m cwm_agent.model.tokenizer fetch|path", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
