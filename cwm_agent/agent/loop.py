"""The think-act-observe loop: one episode of CWM working through the tools.

`Agent.run` loops `step()`; a step is query → parse → act → observe. Every way out of the
loop is an `EpisodeEnd` carrying its exit status, caught in one place.

The prompt is kept as text and only ever grows: each request's prompt is the previous
prompt + the reply + the new message + the generation prompt, byte for byte, so the
server's prefix cache serves everything but the new tail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field

from cwm_agent.agent.config import AgentConfig
from cwm_agent.agent.trajectory import Action, ExitStatus, TokenCounts, TrajectoryWriter, Turn, initial_prompt
from cwm_agent.model.client import Completion, ModelClient, ModelError, SamplingParams
from cwm_agent.prompts.parse import FormatError, parse_reply
from cwm_agent.prompts.render import THINK_START, Message, defuse_special_tokens, render_continuation
from cwm_agent.prompts.templates import TRUNCATION_MARK, observation, truncate_left, truncate_right
from cwm_agent.sandbox.base import SandboxError
from cwm_agent.tools import ToolContext, ToolResult, run_tool


class EpisodeEnd(Exception):
    """Leaves the loop; `status` says why."""

    def __init__(self, status: ExitStatus, detail: str = "") -> None:
        super().__init__(detail or status.value)
        self.status = status
        self.detail = detail


@dataclass
class EpisodeResult:
    status: ExitStatus
    detail: str
    submission: str | None
    turns: int
    context_tokens: int
    """Tokens of the whole dialogue at the end (the context the model last saw, plus its reply)."""
    completion_tokens: int
    """Tokens the model generated over all turns."""
    elapsed: float


@dataclass
class _State:
    prompt: str
    """The dialogue as CWM text (what /v1/completions is sent)."""
    messages: list[dict[str, str]]
    """The same dialogue as chat messages (what /v1/chat/completions is sent, with `model.api: chat`)."""
    turns: int = 0
    tokens_used: int = 0
    """Tokens of the dialogue so far (the server's count after each reply, plus our count of what we appended)."""
    completion_tokens: int = 0
    format_errors_in_a_row: int = 0
    submission: str | None = None
    started: float = field(default_factory=time.monotonic)
    pending: Turn | None = None
    """The turn under way, until it is written (so that a time limit mid-turn still records it)."""


async def cut_to_tokens(model: ModelClient, text: str, max_tokens: int, keep: str) -> tuple[str, int]:
    """Cut `text` to at most `max_tokens` tokens, keeping its start (`keep="left"`) or end ("right").

    Returns the text and its token count (one /tokenize call when nothing is cut).
    """
    count = await model.count_tokens(text)
    while count > max_tokens:
        keep_chars = max(0, int(len(text) * max_tokens / count * 0.95) - len(TRUNCATION_MARK))
        cut = truncate_right(text, keep_chars) if keep == "left" else truncate_left(text, keep_chars)
        if cut == text:  # only the mark is left and it alone is over the limit: cutting cannot help
            break
        text = cut
        count = await model.count_tokens(text)
    return text, count


class Agent:
    """Runs one episode over a model client and the tools of one sandbox."""

    def __init__(
        self,
        config: AgentConfig,
        sampling: SamplingParams,
        model: ModelClient,
        tools: ToolContext,
        writer: TrajectoryWriter | None = None,
    ) -> None:
        self.config = config
        self.sampling = sampling
        self.model = model
        self.tools = tools
        self.writer = writer
        self._wrapper_tokens = 0

    async def run(self, system_prompt: str, user_prompt: str) -> EpisodeResult:
        state = _State(
            prompt=initial_prompt(system_prompt, user_prompt, self.config.reasoning),
            messages=[{"role": "system", "content": system_prompt}, {"role": "user", "content": user_prompt}],
        )
        try:
            self._wrapper_tokens = await self.model.count_tokens(
                render_continuation(
                    "", [Message(role="tool: bash", content=observation("", 0, 0))], self.config.reasoning
                )
            )
            state.tokens_used = await self.model.count_tokens(state.prompt)
            while True:
                remaining = self._remaining(state)
                if remaining <= 0:
                    raise self._time_up()
                try:
                    await asyncio.wait_for(self.step(state), timeout=remaining)
                except asyncio.TimeoutError:
                    raise self._time_up() from None
        except EpisodeEnd as end:
            return self._result(state, end.status, end.detail)
        except ModelError as exc:
            return self._result(state, ExitStatus.MODEL_ERROR, str(exc))
        except SandboxError as exc:
            return self._result(state, ExitStatus.SANDBOX_ERROR, str(exc))
        finally:
            # The model replied but the turn did not finish (time limit, a failure, Ctrl-C): the
            # reply is still part of the record.
            if state.pending is not None:
                self._record(state, state.pending)

    def _remaining(self, state: _State) -> float:
        return self.config.wall_clock_limit - (time.monotonic() - state.started)

    def _time_up(self) -> EpisodeEnd:
        return EpisodeEnd(ExitStatus.TIME_LIMIT, f"wall-clock limit of {self.config.wall_clock_limit:g} s reached")

    def _result(self, state: _State, status: ExitStatus, detail: str) -> EpisodeResult:
        return EpisodeResult(
            status=status,
            detail=detail,
            submission=state.submission,
            turns=state.turns,
            context_tokens=state.tokens_used,
            completion_tokens=state.completion_tokens,
            elapsed=time.monotonic() - state.started,
        )

    async def step(self, state: _State) -> None:
        completion = await self._query(state)
        state.turns += 1
        # Servers that report no usage: our own counts (the prompt's is kept up to date anyway).
        prompt_tokens = completion.prompt_tokens if completion.prompt_tokens is not None else state.tokens_used
        completion_tokens = completion.completion_tokens
        if completion_tokens is None:
            completion_tokens = await self.model.count_tokens(completion.text)
        state.completion_tokens += completion_tokens
        state.tokens_used = prompt_tokens + completion_tokens
        turn = Turn(
            index=state.turns,
            raw=completion.text,
            finish_reason=completion.finish_reason,
            tokens=TokenCounts(prompt=prompt_tokens, completion=completion_tokens, cached=completion.cached_tokens),
            model_seconds=completion.latency,
        )
        state.pending = turn
        try:
            # Before a submission every reply must call a tool; after one, a reply without a
            # call is the final response.
            reply = parse_reply(
                completion.text, reasoning=self.config.reasoning, require_tool_call=state.submission is None
            )
            turn.thinking = reply.thinking
            if reply.tool_call is None:
                self._record(state, turn)
                raise EpisodeEnd(ExitStatus.SUBMITTED)
        except FormatError as error:
            turn.format_error = error.feedback()
            state.format_errors_in_a_row += 1
            if self.config.strict_format:
                self._record(state, turn)
                raise EpisodeEnd(ExitStatus.FORMAT_ERRORS, turn.format_error) from None
            if state.format_errors_in_a_row >= self.config.max_format_errors:
                self._record(state, turn)
                raise EpisodeEnd(
                    ExitStatus.FORMAT_ERRORS,
                    f"{state.format_errors_in_a_row} format errors in a row; last: {turn.format_error}",
                ) from None
            self._check_turns(state, turn)
            await self._answer(state, turn, Message(role="user", content=turn.format_error), completion.text)
            return

        state.format_errors_in_a_row = 0
        call = reply.tool_call
        turn.action = Action(tool=call.name, body=call.body)
        self._check_turns(state, turn)
        started = time.monotonic()
        # A thread cannot be cancelled: at the wall-clock limit the sandbox itself must interrupt
        # the command, or it would run on (and hold the session) after the episode ended.
        tools = dataclasses.replace(
            self.tools, command_timeout=max(1.0, min(self.tools.command_timeout, self._remaining(state)))
        )
        result: ToolResult = await asyncio.to_thread(run_tool, call.name, call.body, tools)
        turn.tool_seconds = time.monotonic() - started
        turn.tool_ok = result.ok
        if result.submission is not None:
            state.submission = result.submission
        output = defuse_special_tokens(result.output)
        text, text_tokens = await cut_to_tokens(self.model, output, self.config.observation_max_tokens, keep="left")
        estimate = text_tokens + self._wrapper_tokens
        remaining_tokens = self.config.context_size - state.tokens_used - estimate
        body = observation(text, self.config.max_turns - state.turns, max(0, remaining_tokens))
        await self._answer(state, turn, Message(role=f"tool: {call.name}", content=body), completion.text, estimate)

    def _check_turns(self, state: _State, turn: Turn) -> None:
        if state.turns >= self.config.max_turns:
            self._record(state, turn)
            raise EpisodeEnd(ExitStatus.TURN_LIMIT, f"reached the limit of {self.config.max_turns} turns")

    async def _answer(self, state: _State, turn: Turn, message: Message, reply: str, tokens: int | None = None) -> None:
        """Append the reply and the harness's answer to the prompt, or end at the context limit.

        `tokens`: what the answer adds to the dialogue, when the caller has counted it already.
        """
        continuation = render_continuation(reply, [message], self.config.reasoning)
        added = tokens if tokens is not None else await self.model.count_tokens(continuation[len(reply) :])
        if state.tokens_used + added >= self.config.context_size:
            # The model never sees this answer: keep it for readers, out of the replayable dialogue.
            turn.unsent_observation = message
            self._record(state, turn)
            raise EpisodeEnd(ExitStatus.CONTEXT_LIMIT, f"the dialogue reached {self.config.context_size} tokens")
        turn.observation = message
        self._record(state, turn)
        state.prompt += continuation
        think = THINK_START if self.config.reasoning else ""
        state.messages += [
            {"role": "assistant", "content": think + reply},
            {"role": message.role, "content": message.content},
        ]
        state.tokens_used += added

    def _record(self, state: _State, turn: Turn) -> None:
        state.pending = None
        if self.writer is not None:
            self.writer.write(turn)

    async def _query(self, state: _State) -> Completion:
        room = self.config.context_size - state.tokens_used
        if room <= 0:
            raise EpisodeEnd(ExitStatus.CONTEXT_LIMIT, f"the dialogue reached {self.config.context_size} tokens")
        # Both knobs hold (a user may set either), and never more than the context has left.
        max_tokens = min(self.config.reply_max_tokens, self.sampling.max_tokens, room)
        sampling = self.sampling.model_copy(update={"max_tokens": max_tokens})
        if self.model.config.api == "chat":
            # The server's chat template renders the dialogue; the reply should continue `<think>\n`
            # like a completion does, so an opening the template left to the model is dropped.
            completion = await self.model.chat(state.messages, sampling, prompt_tokens=state.tokens_used)
            if self.config.reasoning and completion.text.startswith(THINK_START):
                completion.text = completion.text[len(THINK_START) :]
            return completion
        return await self.model.complete(state.prompt, sampling, prompt_tokens=state.tokens_used)
