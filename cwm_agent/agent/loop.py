"""The think-act-observe loop: one episode of CWM working through the tools, with CWM's rules.

`Agent.run` loops `step()`: ask the model, count the reply, stop at a limit, parse, act, answer.
Every way out is an `EpisodeEnd` carrying its status, caught in one place. The rules are those of
CWM's environment: the reply that reaches the turn limit or overflows the context ends the
episode unrun; a malformed reply is answered with a user message (no limit on how many) until a
patch was accepted, after which any reply that is not one valid call ends the episode and the
submission is graded; the test-generation episode ends at its first malformed reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from cwm_agent.agent.config import AgentConfig
from cwm_agent.agent.dialogue import Dialogue
from cwm_agent.agent.trajectory import Action, ExitStatus, TokenCounts, Turn
from cwm_agent.model.base import Model
from cwm_agent.model.client import Completion, ModelError, SamplingParams
from cwm_agent.prompts.parse import FormatError, parse_reply
from cwm_agent.prompts.render import THINK_END, Message
from cwm_agent.prompts.texts import Texts
from cwm_agent.sandbox.base import SandboxError
from cwm_agent.tools import ToolContext, ToolResult, run_tool


class EpisodeEnd(Exception):
    """Leaves the loop; `status` says why."""

    def __init__(self, status: ExitStatus, detail: str = "") -> None:
        super().__init__(detail or status.value)
        self.status = status
        self.detail = detail


@dataclass
class EpisodeState:
    """What the loop knows of the episode so far."""

    turns: int = 0
    submission: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    model_seconds: float = 0.0
    tool_seconds: float = 0.0
    status: ExitStatus = ExitStatus.INTERRUPTED
    detail: str = ""
    started: float = dataclasses.field(default_factory=time.monotonic)


class Agent:
    """Runs one episode over a model and the tools of one sandbox."""

    def __init__(
        self,
        config: AgentConfig,
        sampling: SamplingParams,
        model: Model,
        tools: ToolContext,
        texts: Texts,
        record: Callable[[Turn], None] = lambda turn: None,
        strict: bool | None = None,
        tool_names: tuple[str, ...] = ("bash", "edit", "create", "submit"),
    ) -> None:
        self.config = config
        self.sampling = sampling
        self.model = model
        self.tools = tools
        self.texts = texts
        self.record = record
        """Called once with every turn, when it is complete (the one place a turn is recorded)."""
        self.strict = config.strict_format if strict is None else strict
        self.tool_names = tool_names
        self.state = EpisodeState()

    async def run(self, dialogue: Dialogue) -> EpisodeState:
        """Play the episode on an opened dialogue until it ends; the state says how."""
        state = self.state
        try:
            while True:
                remaining = self._remaining()
                if remaining <= 0:
                    raise self._time_up()
                try:
                    await asyncio.wait_for(self.step(dialogue), timeout=remaining)
                except asyncio.TimeoutError:
                    raise self._time_up() from None
        except EpisodeEnd as end:
            state.status, state.detail = end.status, end.detail
        except ModelError as exc:
            state.status, state.detail = ExitStatus.MODEL_ERROR, str(exc)
        except SandboxError as exc:
            state.status, state.detail = ExitStatus.SANDBOX_ERROR, str(exc)
        return state

    async def step(self, dialogue: Dialogue) -> None:
        state, cfg = self.state, self.config
        completion = await self._query(dialogue)
        state.turns += 1
        turn = self._turn(completion)
        try:
            turn.tokens.completion = await dialogue.add_reply(completion)
            turn.reply_ids = completion.token_ids
            if dialogue.tokens > cfg.context_size:
                raise EpisodeEnd(
                    ExitStatus.CONTEXT_LIMIT, f"the context reached {dialogue.tokens} > {cfg.context_size} tokens"
                )
            if state.turns >= cfg.max_turns:
                raise EpisodeEnd(ExitStatus.TURN_LIMIT, f"reached the limit of {cfg.max_turns} turns")
            if cfg.reasoning and completion.text.count(THINK_END) == 1:
                turn.thinking = completion.text.split(THINK_END, 1)[0]
            try:
                reply = parse_reply(completion.text, cfg.reasoning, tools=self.tool_names, messages=self.texts.parse)
            except FormatError as error:
                turn.format_error = error.feedback()
                await self._malformed(dialogue, turn, error)
                return
            call = reply.tool_call
            turn.action = Action(tool=call.name, body=call.body)
            result = await self._act(call.name, call.body)
            turn.tool_seconds, turn.tool_ok = result.elapsed, result.ok
            state.tool_seconds += result.elapsed
            output = result.output
            if call.name == "submit" and result.ok and result.submission is not None:
                state.submission = result.submission
                feedback = self.texts.test_submission if self.tools.submit_kind == "file" else self.texts.submission
                output = feedback(result.submission)
            await self._observe(dialogue, turn, call.name, output)
        finally:
            self.record(turn)

    # -- the parts of a step -------------------------------------------------------------------

    async def _query(self, dialogue: Dialogue) -> Completion:
        room = self.config.context_size - dialogue.tokens
        if room <= 0:
            raise EpisodeEnd(ExitStatus.CONTEXT_LIMIT, f"the context reached {self.config.context_size} tokens")
        max_tokens = min(self.config.reply_max_tokens, self.sampling.max_tokens, room)
        completion = await self.model.generate(
            dialogue.prompt(), self.sampling.model_copy(update={"max_tokens": max_tokens})
        )
        state = self.state
        state.prompt_tokens += completion.prompt_tokens or 0
        state.completion_tokens += completion.completion_tokens or 0
        if completion.cached_tokens is not None:
            state.cached_tokens = (state.cached_tokens or 0) + completion.cached_tokens
        state.model_seconds += completion.latency
        return completion

    def _turn(self, completion: Completion) -> Turn:
        return Turn(
            index=self.state.turns,
            raw=completion.text,
            finish_reason=completion.finish_reason,
            tokens=TokenCounts(prompt=completion.prompt_tokens or 0, cached=completion.cached_tokens),
            model_seconds=completion.latency,
        )

    async def _malformed(self, dialogue: Dialogue, turn: Turn, error: FormatError) -> None:
        """A reply that is not one valid call: the final response after a submission, else answered or fatal."""
        if self.state.submission is not None and (error.thinking_closed_once or not self.config.reasoning):
            raise EpisodeEnd(ExitStatus.SUBMITTED)
        if self.strict:
            raise EpisodeEnd(ExitStatus.FORMAT_ERRORS, turn.format_error or "")
        message = await dialogue.fit(Message.user(error.feedback()), self.config.observation_max_tokens, keep="start")
        await self._answer(dialogue, turn, message)

    async def _act(self, name: str, body: str) -> ToolResult:
        # A thread cannot be cancelled: at the wall-clock limit the sandbox itself must stop the
        # command, so its timeout is capped at the time left.
        timeout = max(1.0, min(self.tools.command_timeout, self._remaining()))
        tools = dataclasses.replace(self.tools, command_timeout=timeout)
        return await asyncio.to_thread(run_tool, name, body, tools)

    async def _observe(self, dialogue: Dialogue, turn: Turn, tool: str, output: str) -> None:
        """Answer with the tool's result in `<output>` and the budget, the whole message capped."""
        cfg, texts = self.config, self.texts
        result = texts.output(dialogue.safe(output))
        estimate = await dialogue.count_message(Message.tool(tool, f"{result}\n\n{texts.budget_template}"))
        remaining_tokens = cfg.context_size - dialogue.tokens - min(estimate, cfg.observation_max_tokens)
        budget = texts.budget(cfg.max_turns - self.state.turns, remaining_tokens)
        message = Message.tool(tool, f"{result}\n\n{budget}")
        await self._answer(dialogue, turn, await dialogue.fit(message, cfg.observation_max_tokens, keep="start"))

    async def _answer(self, dialogue: Dialogue, turn: Turn, message: Message) -> None:
        turn.observation = message
        turn.observation_ids = await dialogue.answer(message)

    def _remaining(self) -> float:
        return self.config.wall_clock_limit - (time.monotonic() - self.state.started)

    def _time_up(self) -> EpisodeEnd:
        return EpisodeEnd(ExitStatus.TIME_LIMIT, f"the sandbox lifetime of {self.config.wall_clock_limit:g} s ran out")
