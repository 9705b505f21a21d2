"""Stream events of several tokens (vLLM's --stream-interval > 1), split back into tokens.

The shapes are those vLLM 0.32 sends (checked against the real server in test_vllm.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from tessy.backends.base import StreamDelta
from tessy.backends.wire import sse_deltas


def deltas(*choices: dict[str, Any]) -> tuple[list[StreamDelta], list[int]]:
    body = "".join(f"data: {json.dumps({'choices': [c]})}\n\n" for c in choices) + "data: [DONE]\n\n"
    unsplit: list[int] = []

    async def go() -> list[StreamDelta]:
        return [d async for d in sse_deltas(httpx.Response(200, content=body.encode()), unsplit.append)]

    return asyncio.run(go()), unsplit


def event(text: str, ids: list[int], tokens: list[str] | None, finish: str | None = None) -> dict[str, Any]:
    logprobs = {"tokens": tokens, "token_logprobs": [-0.1] * len(tokens)} if tokens is not None else None
    return {"text": text, "token_ids": ids, "logprobs": logprobs, "finish_reason": finish, "stop_reason": None}


def test_a_multi_token_event_becomes_one_delta_per_token_with_its_id():
    got, unsplit = deltas(
        event("1", [33], ["1"]),
        event("2 + 3", [34, 1232, 216, 35], ["2", " +", " ", "3"]),
        event(" equation.", [8345, 30, 2], [" equation", ".", "<|im_end|>"], "stop"),  # EOS: no text
    )
    tokens = [d for d in got if d.pieces]
    assert [d.pieces for d in tokens] == [["1"], ["2"], [" +"], [" "], ["3"], [" equation"], ["."]]
    assert [d.token_ids for d in tokens] == [[33], [34], [1232], [216], [35], [8345], [30]]
    assert got[-1].finish_reason == "stop" and unsplit == []


def test_an_event_that_cannot_be_split_keeps_its_text_and_is_counted():
    got, unsplit = deltas(event("2 + 3", [34, 1232, 216, 35], None), event("0", [32], None, "length"))
    assert [(d.pieces, d.token_ids) for d in got if d.pieces] == [(["2 + 3"], None), (["0"], [32])]
    assert unsplit == [4]


def test_the_tokens_of_one_read_go_as_one_delta_and_keep_their_ids() -> None:
    from tessy.backends.wire import merge_deltas

    batch = [
        StreamDelta(pieces=["a"], token_ids=[1]),
        StreamDelta(pieces=[" b"], token_ids=[2]),
        StreamDelta(pieces=[" c d"], token_ids=None),  # an event that could not be split
        StreamDelta(pieces=["e"], token_ids=[5]),
        StreamDelta(pieces=[], finish_reason="length"),
    ]
    merged = merge_deltas(batch)
    assert [(d.pieces, d.token_ids, d.finish_reason) for d in merged] == [
        (["a", " b"], [1, 2], None),
        ([" c d"], None, None),
        (["e"], [5], None),
        ([], None, "length"),
    ]
    assert batch[0].pieces == ["a"]  # the deltas read are left as they were


def test_a_stop_string_inside_a_merged_delta_keeps_the_ids_of_the_pieces_before_it() -> None:
    from tessy.backends.wire import StopHold

    held = StopHold(("</think>",))
    out, hit = held.feed(StreamDelta(pieces=["x", " y", " </th", "ink>", " z"], token_ids=[1, 2, 3, 4, 5]))
    assert hit == "</think>"
    assert [(d.pieces, d.token_ids) for d in out] == [(["x", " y"], [1, 2]), ([" "], None)]
