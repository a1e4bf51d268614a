"""The reference runner runs CWM's own env classes, and what they do matches the facts sheet.

These tests pin the reference side of the parity tests (issue 9): if CWM's env behaves differently from
what /work/shared/CWM_FACTS.md says, a test here fails and names the fact.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .cwm_reference import (
    DEFAULT_IMAGE,
    STARTED_CONTAINERS,
    ReferenceEpisode,
    default_release,
    default_tokenizer_model,
    load_cwm,
    load_tokenizer,
    missing_requirement,
    run_reference,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

RELEASE = default_release()
TOKENIZER = default_tokenizer_model()
_missing = missing_requirement(RELEASE, TOKENIZER)
if _missing:
    pytestmark.append(pytest.mark.skip(reason=_missing))

ISSUE = "calc.add(1, 2) returns -1 instead of 3."
FIX_EDIT = "calc/ops.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n>>>>>>> REPLACE"
PATCH = (
    "diff --git a/calc/ops.py b/calc/ops.py\n"
    "index 12ee743..4693ad3 100644\n"
    "--- a/calc/ops.py\n"
    "+++ b/calc/ops.py\n"
    "@@ -1,2 +1,2 @@\n"
    " def add(a, b):\n"
    "-    return a - b\n"
    "+    return a + b\n"
)


def reply(action: str, thought: str = "Thinking.") -> str:
    """A reply as the model writes it after the env's "<think>\\n" prefix."""
    return f"{thought}\n</think>\n{action}"


def call(tool: str, body: str) -> str:
    return reply(f"<tool: {tool}>\n{body}\n</tool>")


def budget_text(turns: int, tokens: int) -> str:
    return f"<budget>\n* Remaining turns: {turns}\n* Remaining tokens: {tokens}\n</budget>"


def tool_body(output: str, turns: int, tokens: int) -> str:
    return f"<output>\n{output}\n</output>\n\n{budget_text(turns, tokens)}"


def remaining_tokens(episode: ReferenceEpisode, step: int, tool: str, output: str, context_size: int) -> int:
    """The budget as the facts sheet states it: context size - tokens so far (through this step's reply)
    - the token length of the tool message rendered with the literal placeholders."""
    tok = load_tokenizer(RELEASE, TOKENIZER)
    eot = tok.eot_id
    ends = [i for i, t in enumerate(episode.context_ids) if t == eot]
    # eots: system, user, then per step the reply and its tool message.
    through_reply = ends[2 + 2 * step] + 1
    placeholder = f"<output>\n{output}\n</output>\n\n" + budget_text("{remaining_turns}", "{remaining_tokens}")  # type: ignore[arg-type]
    message = (
        [tok.header_start_id]
        + tok.encode(f"tool: {tool}")
        + [tok.header_end_id]
        + tok.encode("\n\n")
        + tok.encode(placeholder)
        + [eot]
    )
    return context_size - through_reply - len(message)


def run(replies: list[str], image: str, **kwargs) -> ReferenceEpisode:
    return run_reference(RELEASE, replies, issue=ISSUE, image=image, tokenizer_model=TOKENIZER, **kwargs)


def tool_output(body: str) -> str:
    """RESULT of a tool message body `<output>\nRESULT\n</output>\n\n<budget>...`."""
    assert body.startswith("<output>\n"), body[:40]
    return body[len("<output>\n") : body.rindex("\n</output>\n\n<budget>")]


def assert_tool_messages(episode: ReferenceEpisode, max_turns: int = 128, context_size: int = 131072) -> None:
    """Every tool message is the wrapped output and the budget block, with the facts sheet's numbers."""
    observations = [m for m in episode.messages[2:] if m[0] != "assistant"]
    for step, (role, body) in enumerate(observations):
        if role.startswith("tool: "):
            output = tool_output(body)
            tokens = remaining_tokens(episode, step, role.removeprefix("tool: "), output, context_size)
            assert body == tool_body(output, max_turns - step - 1, tokens), (step, body)


@pytest.fixture(scope="module")
def image() -> str:
    probe = subprocess.run(["docker", "image", "inspect", DEFAULT_IMAGE], capture_output=True)
    if probe.returncode != 0:
        pytest.fail(f"{DEFAULT_IMAGE} is missing: run `bash scripts/setup.sh` (a Docker engine is needed too).")
    return DEFAULT_IMAGE


@pytest.fixture(autouse=True)
def no_container_left():
    yield
    names = [f"--filter=name=^{name}$" for name in STARTED_CONTAINERS]
    if names:
        left = subprocess.run(["docker", "ps", "-aq", *names], capture_output=True, text=True).stdout.split()
        assert left == [], "the reference runner left containers behind"


def assert_layout(episode: ReferenceEpisode) -> None:
    """The context is the chat format, message by message, and `messages` is that context split."""
    tok = load_tokenizer(RELEASE, TOKENIZER)
    assert tok.eot_id == 128009 and tok.eom_id == 128008
    assert episode.context_text == tok.decode(episode.context_ids, cut_at_stop_tokens=False)
    rendered = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{role}<|end_header_id|>\n\n{body}<|eot_id|>" for role, body in episode.messages
    )
    if episode.ending == "running":  # the open generation prompt has no end token
        rendered = rendered.removesuffix("<|eot_id|>")
    assert episode.context_text == rendered
    system = episode.messages[0][1]
    assert system.startswith(
        "You are a helpful AI assistant. You always reason before responding, using the following format:\n\n"
        "<think>\nyour internal reasoning\n</think>\nyour external response\n\n# Environment\n\n"
    )
    assert [r for r, _ in episode.messages[:3]] == ["system", "user", "assistant"]


def test_import_leaves_the_interpreter_as_it_was():
    path, modules = list(sys.path), dict(sys.modules)
    cwm = load_cwm(RELEASE)
    assert sys.path == path
    assert not any(name == "cwm" or name.startswith("cwm.") for name in sys.modules)
    assert all(sys.modules.get(name) is module for name, module in modules.items() if name in ("modal", "unidiff"))
    assert cwm.patch_env.__file__.startswith(str(RELEASE.resolve()))
    # The registered configs are the ones the runner uses.
    config = cwm.env_config.get_env_config("swerl_tool_env:think_tag:modal:eval").init_kwargs["config"]
    assert (config.think, config.use_think_tag, config.strict_format, config.block_network) == (True, True, False, True)
    assert (config.max_turns, config.context_size, config.session_timeout, config.sandbox_timeout) == (
        128,
        131072,
        120,
        7200,
    )


def test_patch_episode_matches_the_facts(image):
    replies = [
        call("bash", "ls"),
        call("bash", "cd calc"),
        call("bash", "echo partial; sleep 3; touch /tmp/after"),
        call("bash", "sleep 1.5; pwd; ls /tmp/after"),
        call("edit", FIX_EDIT),
        call("create", "notes.txt\nfirst\nsecond"),
        call("bash", "printf x"),
        reply("I will now call a tool.", thought="No tool call."),
        "I forgot to close my thinking.",
        call("python", "print(1)"),
        call("bash", "git diff -- calc > /tmp/fix.diff"),
        call("submit", "/tmp/fix.diff"),
        reply("## Summary\nFixed `add`.", thought="Done."),
    ]
    ep = run(replies, image, config={"session_timeout": 2})
    assert_layout(ep)
    assert_tool_messages(ep)
    msgs = ep.messages
    # Each reply continues the "<think>\n" prefix of its assistant message.
    assistants = [b for r, b in msgs if r == "assistant"]
    assert assistants == ["<think>\n" + r for r in replies]
    assert ep.actions == replies
    obs = [m for m in msgs[2:] if m[0] != "assistant"]
    assert len(obs) == len(replies) - 1  # the last reply ended the episode

    # ls: the final newline of the output is kept, the budget follows a blank line.
    assert obs[0][0] == "tool: bash" and tool_output(obs[0][1]) == "README.md\ncalc\n"
    # A timeout drops the partial output, kills the rest of the command line, and resets the directory.
    role, body = obs[2]
    assert role == "tool: bash" and "partial" not in body
    assert "\n" not in tool_output(body) and "timeout" in tool_output(body) and tool_output(body).endswith(".")
    assert tool_output(obs[3][1]) == "/testbed\nls: cannot access '/tmp/after': No such file or directory\n"
    # edit and create print their messages, ending in a newline.
    assert obs[4][0] == "tool: edit" and tool_output(obs[4][1]).endswith("\n")
    assert obs[5][0] == "tool: create" and tool_output(obs[5][1]).endswith("\n")
    assert "notes.txt" in obs[5][1] and "2" in tool_output(obs[5][1])
    # printf x: no newline added.
    assert tool_output(obs[6][1]) == "x"
    # Format errors and an unknown tool are user messages without wrapper or budget; they take turns.
    for role, body in obs[7:10]:
        assert role == "user" and "<output>" not in body and "<budget>" not in body
    assert obs[7][1].startswith("FormatError: ") and obs[8][1].startswith("FormatError: ")
    assert obs[9][1].startswith("NoSuchToolError: ") and "'python'" in obs[9][1]
    assert tool_output(obs[10][1]) == ""
    # submit shows the patch with its final newline kept before </submission>.
    assert obs[11][0] == "tool: submit"
    assert f"<submission>\n{PATCH}\n</submission>" in obs[11][1]
    # A reply without a tool call after a submission ends the episode and the submission is graded.
    assert ep.ending == "graded"
    assert ep.graded_submission == PATCH
    assert ep.infos[-1]["pred_patch"] == PATCH


def test_limits_end_without_grading(image):
    # The last allowed reply ends the episode without running its tool, even after a submission.
    replies = [
        call("bash", "git diff > fix.diff; echo 'diff x' >> fix.diff"),
        call("submit", "fix.diff"),
        call("bash", "ls"),
    ]
    ep = run(replies, image, config={"max_turns": 3})
    prompt_end = ep.messages[1][1][-200:]
    assert_layout(ep)
    assert_tool_messages(ep, max_turns=3)
    assert ep.ending == "turn_limit" and ep.graded_submission is None
    assert ep.messages[-1] == ("assistant", "<think>\n" + replies[-1])

    # A context over its size ends it at the next reply.
    replies = [call("bash", "seq 1 400"), call("bash", "ls")]
    ep = run(replies, image, config={"context_size": 1500})
    assert_tool_messages(ep, context_size=1500)
    assert "* Remaining tokens: -" in ep.messages[3][1]  # not clamped at 0
    assert ep.ending == "context_limit" and ep.graded_submission is None

    # A sandbox past its lifetime ends it.
    replies = [call("bash", "ls"), call("bash", "sleep 10"), call("bash", "ls")]
    ep = run(replies, image, config={"sandbox_timeout": 3})
    assert ep.ending == "sandbox_timeout" and ep.graded_submission is None
    assert len(ep.actions) == 2

    # The caps apply to whole messages: a tool message is cut on the right, losing its wrapper end and the
    # budget; the issue's user message is cut on the left, keeping its end.
    config = {"max_user_turn_len": 200, "max_prompt_len": 300}
    ep = run_reference(
        RELEASE,
        [call("bash", "seq 1 300")],
        issue="HEAD " + "word " * 400,
        image=image,
        tokenizer_model=TOKENIZER,
        config=config,
    )
    tok = load_tokenizer(RELEASE, TOKENIZER)
    user, tool = ep.messages[1][1], ep.messages[3][1]
    assert user.startswith("[...]") and "HEAD" not in user and user.endswith(prompt_end)
    assert tool.startswith("<output>\n1\n2\n") and tool.endswith("[...]")
    assert "</output>" not in tool and "<budget>" not in tool
    assert len(tok.encode(tool)) <= 200 - len(tok.encode("tool: bash")) - 4

    # Replies that run out leave the episode running, at an open generation prompt.
    ep = run([call("bash", "exit")], image)
    assert_layout(ep)
    assert ep.ending == "running"
    assert ep.messages[-1] == ("assistant", "<think>\n")
    exited = tool_output(ep.messages[-2][1])
    assert "\n" not in exited and "timeout" not in exited and exited.endswith(".")


TEST_SCRIPT = (
    "from calc import add\nif add(1, 2) == 3:\n    print('Issue resolved')\nelse:\n    print('Issue reproduced')\n"
)


def test_test_generation_episode(image):
    replies = [
        call("bash", f"cat > test_issue.py <<'EOF'\n{TEST_SCRIPT}EOF"),
        call("bash", "python3 test_issue.py"),
        call("submit", "test_issue.py"),
        reply("The test calls add(1, 2) and reports whether it returns 3."),
    ]
    ep = run(replies, image, kind="test")
    assert_layout(ep)
    assert_tool_messages(ep)
    assert "test_issue.py" in ep.messages[1][1]
    assert ep.messages[5][1].startswith("<output>\nIssue reproduced\n\n</output>")
    submit = ep.messages[7]
    assert submit[0] == "tool: submit"
    assert f"<submission>\n{TEST_SCRIPT}\n</submission>\n</output>\n\n<budget>" in submit[1]
    assert ep.ending == "graded" and ep.graded_submission == TEST_SCRIPT
    assert ep.infos[-1]["test"] == TEST_SCRIPT

    # Before a submission, any format error ends a test-generation episode.
    ep = run([call("bash", "ls"), reply("No call.")], image, kind="test")
    assert ep.ending == "format_error" and ep.graded_submission is None
