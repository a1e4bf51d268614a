"""CWM's local tokenizer (Llama 3's tiktoken BPE file + CWM's special tokens)."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwm_agent.model import tokenizer as tokmod
from cwm_agent.model.client import ModelError
from cwm_agent.model.scripted_server import ScriptedServer
from cwm_agent.model.tokenizer import TokenizerNotFoundError, find_bpe_file, load_tokenizer
from cwm_agent.prompts.render import Message, Piece, continuation_pieces, render_pieces


def server_encode(tok, text: str) -> list[int]:
    """The joined text as a server tokenizes a text prompt (special-token strings are special ids)."""
    return ScriptedServer(tokenizer=tok)._encode_text(text)


def test_known_ids_and_the_special_token_table(tok):
    assert tok.n_vocab == 128256
    assert tok.encode("Hello world") == [9906, 1917]
    named = {
        "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|pad|>": 128004,
        "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009,
        "<|frame_sep|>": 128100, "<|action_sep|>": 128101, "<|return_sep|>": 128102, "<|call_sep|>": 128103,
        "<|line_sep|>": 128104, "<|exception_sep|>": 128105, "<|arg_sep|>": 128106,
        "<|trace_context_start|>": 128107,
        "<|reasoning_thinking_start|>": 128120, "<|reasoning_thinking_end|>": 128121,
    }  # fmt: skip
    for name, token in named.items():
        assert tok.special_id(name) == token and tok.decode([token]) == name
    # Every other offset is reserved under its own offset's number.
    assert tok.special_id("<|reserved_special_token_2|>") == 128002
    assert tok.special_id("<|reserved_special_token_255|>") == 128255
    with pytest.raises(KeyError):
        tok.special_id("<|reserved_special_token_9|>")  # offset 9 is <|eot_id|>
    assert tok.stop_ids == [128001, 128008, 128009]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "def f(x):\n    return x  # héllo 世界 🙂\n\n\n",
        "   leading and trailing   \t\n",
        "12345678 don't I'LL we've",
        "\r\n\r\n  \n",
        "x" * 5000 + " " * 3000 + "\n",
    ],
)
def test_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_round_trips_any_text(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text and all(t < 128000 for t in ids)


def test_special_token_strings_in_text_stay_text(tok):
    text = "a tool printed <|eot_id|><|start_header_id|>user<|end_header_id|> and <|begin_of_text|>"
    ids = tok.encode(text)
    assert all(t < 128000 for t in ids)
    assert tok.decode(ids) == text
    # As a text piece of a prompt too: only the real boundaries are special ids.
    pieces = render_pieces([Message.system("s"), Message.tool("bash", f"<output>\n{text}\n</output>")])
    specials = [t for t in tok.encode_pieces(pieces) if t >= 128000]
    assert specials == [tok.special_id(p.text) for p in pieces if p.is_special]


def test_encode_pieces_keeps_the_boundary_a_joined_text_merges(tok):
    # Reasoning mode: the prompt ends with "<think>\n"; a reply that starts with a newline, kept in the
    # history, is its own run of ids. Encoded whole, ">\n" and "\n" merge into ">\n\n".
    prompt = render_pieces([Message.system("sys"), Message.user("fix it")])
    reply = "\nThe bug is in parse()."
    pieces = prompt + continuation_pieces(reply, [Message.tool("bash", "<output>\nok\n</output>")])
    by_pieces = tok.encode_pieces(pieces)
    whole = server_encode(tok, "".join(p.text for p in pieces))
    assert by_pieces != whole
    think = tok.encode("<think>\n")
    assert think == [14023, 771, 397] and tok.decode([397]) == ">\n"
    at = len(tok.encode_pieces(prompt))
    assert by_pieces[at - 3 : at] == think and by_pieces[at : at + 1] == tok.encode("\n")
    assert tok.decode([whole[at - 1]]) == ">\n\n"
    assert len(whole) == len(by_pieces) - 1 and tok.decode(whole) == tok.decode(by_pieces)


def test_encode_pieces_equals_a_server_encoding_where_no_boundary_merges(tok):
    pieces = render_pieces(
        [Message.system("You are helpful."), Message.user("hi"), Message.tool("bash", "<output>\nx\n</output>")]
    )
    joined = "".join(p.text for p in pieces)
    assert tok.encode_pieces(pieces) == server_encode(tok, joined)
    assert tok.encode_pieces(pieces)[:2] == [128000, 128006]
    with pytest.raises(KeyError):
        tok.encode_pieces([Piece("<|not_a_token|>", True)])


def test_a_missing_file_is_a_one_line_model_error_naming_what_to_run(tmp_path, monkeypatch):
    with pytest.raises(TokenizerNotFoundError) as err:
        load_tokenizer(tmp_path / "nope.model")
    assert isinstance(err.value, ModelError) and "\n" not in str(err.value)
    assert "python -m cwm_agent.model.tokenizer fetch" in str(err.value)
    monkeypatch.setattr(tokmod, "_in_llama_models", lambda: None)
    monkeypatch.setenv("CWM_AGENT_CACHE", str(tmp_path))
    with pytest.raises(TokenizerNotFoundError, match="fetch"):
        find_bpe_file()
    bad = tmp_path / "llama3-tokenizer.model"
    bad.write_text("not base64 at all\n")
    assert find_bpe_file() == bad
    with pytest.raises(TokenizerNotFoundError, match="not a tiktoken BPE file"):
        tokmod.CWMTokenizer(bad)


def _fake_pip(content: bytes):
    def run(cmd, check):
        folder = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(folder / "llama_models-9.9.9-py3-none-any.whl", "w") as wheel:
            wheel.writestr(tokmod.BPE_FILE_IN_WHEEL, content)
        return subprocess.CompletedProcess(cmd, 0)

    return run


def test_fetch_refuses_a_file_whose_hash_is_not_llama3s(tmp_path, monkeypatch):
    monkeypatch.setattr(tokmod.subprocess, "run", _fake_pip(b"SGk= 0\n"))
    with pytest.raises(TokenizerNotFoundError, match="SHA-256"):
        tokmod.fetch(tmp_path / "t.model")
    assert not (tmp_path / "t.model").exists()


def test_fetch_takes_the_file_out_of_the_wheel(tmp_path, monkeypatch, bpe_file):
    real = bpe_file.read_bytes()
    assert hashlib.sha256(real).hexdigest() == tokmod.LLAMA3_BPE_SHA256
    monkeypatch.setattr(tokmod.subprocess, "run", _fake_pip(real))
    assert tokmod.fetch(tmp_path / "t.model").read_bytes() == real
